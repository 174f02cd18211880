"""The package version (a leaf module, so that anything can read it without importing the package's parts)."""

__version__ = "0.1.0"
