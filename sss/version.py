"""The package version (setup.cfg says the same): study cells record it in their identity."""
__version__ = "0.1.0"
