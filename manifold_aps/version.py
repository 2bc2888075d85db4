"""The package version, in a module of its own so that any station can read it without importing
the package namespace (which imports every station)."""

__version__ = "0.1.0"
