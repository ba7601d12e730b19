"""The configuration: the model (frozen dataclasses, the only place defaults live) and its loader."""
