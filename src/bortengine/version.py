"""The package version, in one place (profiles, reports and `bortengine --version` record it)."""
__version__ = "0.1.0"
