"""Model catalogue: presets, the registry and the builder (mmdet is imported only on build)."""
