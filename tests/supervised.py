"""Worker targets for `supervise` in tests: a module that imports nothing heavy, since every spawned worker imports it."""
import os
import sys
from pathlib import Path

#: uvicorn's exit code for a failed startup, which `carelens.inference.service.workers.STARTUP_FAILURE` names (the
#: package that holds it imports the whole service, which a spawned target should not pay for).
STARTUP_FAILURE = 3


def dying_worker(starts: str) -> None:
    """Records its start and dies; from its third start it cannot start serving."""
    with open(starts, "a") as record:
        record.write(f"{os.getpid()}\n")
    sys.exit(STARTUP_FAILURE if len(Path(starts).read_text().split()) >= 3 else 9)
