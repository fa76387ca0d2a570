"""Datasets: image decoding, annotation parsers, splitters, transforms and data loaders."""
