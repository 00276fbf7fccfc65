"""Shared test fixtures: where ../shared lies, and a skip marker for tests that need it."""
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples every run, so a red build always reproduces; locally hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CARELENS_SHARED", REPO.parent / "shared"))

requires_shared = pytest.mark.skipif(
    not (SHARED / "data").is_dir(),
    reason=f"needs the shared data folder at {SHARED} (absent on this machine)",
)


@pytest.fixture
def shared_data() -> Path:
    """The public training data in ../shared/data (tests using it must carry @requires_shared)."""
    return SHARED / "data"
