"""The library version, in a module of its own so that provenance records can read it without importing
the package's public API (which would import them back)."""

__version__ = "0.1.0"
