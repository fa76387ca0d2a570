"""Core data types: records and class maps."""
