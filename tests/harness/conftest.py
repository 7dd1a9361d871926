"""Fixtures for the harness tests: torch imported quietly, synthetic data prepared once."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

# torch warns on import when numpy is absent, and the suite turns warnings into errors.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from autoresearchd.harness import PreparedTrack, prepare_track


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the prepared synthetic track (about a second to build)."""
    data_dir = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def synthetic(synthetic_data_dir: Path) -> PreparedTrack:
    return prepare_track("synthetic", synthetic_data_dir)
