"""The version of compress (its own module, so modules can read it without importing the package API)."""

__version__ = "0.1.0"
