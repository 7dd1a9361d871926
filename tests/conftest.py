"""Shared pytest fixtures: async tests run on asyncio through anyio's plugin; the prepared
synthetic track, built once per session for the tracks and harness tests."""

from pathlib import Path

import pytest

from autoresearchd.tracks import PreparedTrack, prepare_track


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the prepared synthetic track (about a second to build)."""
    data_dir = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def synthetic(synthetic_data_dir: Path) -> PreparedTrack:
    return prepare_track("synthetic", synthetic_data_dir)
