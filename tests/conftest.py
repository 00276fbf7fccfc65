"""Shared test fixtures: where ../shared lies, a skip marker for tests that need it, a registry of all models and a
time limit for code that could hang."""
import os
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples every run, so a red build always reproduces; locally hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# pytest-xdist gives its workers COLUMNS=80, and rich fixes a console's width from COLUMNS when the console is made (on
# import): the tests that widen the terminal for one command (CliRunner's env) would then get 80 columns.
os.environ.pop("COLUMNS", None)

# `--runtime auto` remembers its choice per CPU and model: one cache for this test session (and the commands it runs),
# never the user's.
os.environ.setdefault("CARELENS_CACHE_DIR", tempfile.mkdtemp(prefix="carelens-test-cache-"))

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


@pytest.fixture(scope="session")
def registry_with_models(tmp_path_factory):
    """A registry holding churn, retaliation and a tiny transcript model, and an unseen synthetic day to score; one for
    the whole run, whichever of `make test`'s worker processes asks first building it in the folder they share."""
    from scored_registry import shared_scored_registry
    run_folder = tmp_path_factory.getbasetemp()
    # A worker's folder lies in the run's; without workers the folder above is every run's.
    shared = run_folder.parent if os.environ.get("PYTEST_XDIST_WORKER") else run_folder
    return shared_scored_registry(shared / "scored")


@pytest.fixture(scope="session")
def scorer(registry_with_models):
    """The Scorer over `registry_with_models`, loaded once."""
    from carelens.inference.api import Scorer
    return Scorer.load(registry_with_models.root)


@pytest.fixture(scope="session")
def day(registry_with_models):
    """The unseen synthetic day of `registry_with_models` (interactions and conversations)."""
    return registry_with_models.day


@pytest.fixture
def time_limit():
    """Fail (instead of hanging the suite) when the block runs past `seconds`."""
    from contextlib import contextmanager

    @contextmanager
    def limited(seconds: int):
        def expired(*_):
            raise TimeoutError(f"still running after {seconds} s")
        previous = signal.signal(signal.SIGALRM, expired)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return limited


#: The HTTP service's test settings: an API key for the guarded client, and request limits small enough to reach.
SERVICE_KEY = "s3cret-key"
SERVICE_LIMITS = {"max_body_bytes": 400_000, "max_batch": 80}


@pytest.fixture(scope="module")
def client(scorer):
    """A test client of the service over `scorer`, without an API key."""
    from fastapi.testclient import TestClient

    from carelens.inference.service import ServiceSettings, create_app
    with TestClient(create_app(scorer, ServiceSettings(**SERVICE_LIMITS))) as client:
        yield client


@pytest.fixture(scope="module")
def guarded_client(scorer):
    """A test client of the service over `scorer` that requires SERVICE_KEY."""
    from fastapi.testclient import TestClient

    from carelens.inference.service import ServiceSettings, create_app
    with TestClient(create_app(scorer, ServiceSettings(api_key=SERVICE_KEY, **SERVICE_LIMITS))) as client:
        yield client
