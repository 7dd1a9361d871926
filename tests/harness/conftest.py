"""Fixtures for the torch harness tests: torch imported quietly, before any test module does."""

import warnings

# torch warns on import when numpy is absent, and the suite turns warnings into errors.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401
