"""The package version (ground floor: reports and the CLI cite it without importing the API)."""

__version__ = "0.1.0"
