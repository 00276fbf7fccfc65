"""A booster's trees compiled to native code by tl2cgen: built once per model and machine into the cache, loaded after."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import shutil
import tempfile
import threading
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tl2cgen
import treelite

from carelens.models.runtime_choice import cache_root

try:
    import fcntl
except ImportError:  # not a POSIX system: processes that start together may each compile the same trees
    fcntl = None

log = logging.getLogger(__name__)

#: From this many trees on, a booster is worth compiling: treelite's tree runtime walks a row at ~140 ns a tree and the
#: compiled trees at ~18 ns (7.6× on a request's 40 rows, 9× on 400, AMD EPYC Zen 3), while compiling costs ~8 ms a
#: tree, once per model and machine. Smaller ensembles score in microseconds either way.
COMPILED_TREES = 200
#: C compilers tried, in this order.
COMPILERS = ("gcc", "clang", "cc")


class CompiledTrees:
    """A compiled library of one treelite model: its outputs exactly as treelite's own runtime computes them (the
    same float64 additions in the same order: tl2cgen compiles with -O3, without -ffast-math)."""

    def __init__(self, path: Path):
        self.path = path
        self._one_thread = tl2cgen.Predictor(path, nthread=1)
        self._every_core: Optional[tl2cgen.Predictor] = None
        # One call at a time per library: a predictor's thread pool is not shared between concurrent calls.
        self._lock = threading.Lock()

    def predict(self, rows: np.ndarray, margins: bool, parallel: bool) -> np.ndarray:
        """The model's outputs for float64 rows (NaN missing), on one thread or (`parallel`) on every core."""
        with self._lock:
            if parallel and self._every_core is None:
                self._every_core = tl2cgen.Predictor(self.path)
            predictor = self._every_core if parallel else self._one_thread
            return np.asarray(predictor.predict(tl2cgen.DMatrix(rows, dtype="float64"), pred_margin=margins))


def library_path(model: treelite.Model) -> Path:
    """Where the model's library is kept: named by its trees' digest, tl2cgen's version and the machine's
    architecture, so that another model, tl2cgen or kind of machine never loads it (the code is compiled without
    -march, so machines of one architecture share it)."""
    digest = hashlib.sha256(model.serialize_bytes()).hexdigest()[:32]
    return cache_root() / "trees" / f"{digest}-tl2cgen{package_version('tl2cgen')}-{platform.machine()}.so"


def cached_trees(model: treelite.Model) -> Optional[CompiledTrees]:
    """The model's compiled trees when the cache holds them, else None (nothing is compiled here)."""
    path = library_path(model)
    return _loaded(path) if path.is_file() else None


def compiled_trees(model: treelite.Model) -> Optional[CompiledTrees]:
    """The model's compiled trees, compiling them into the cache first where it lacks them; None where they cannot be
    built or loaded (no C compiler; tl2cgen or the compiler refused the model), which then scores through treelite's
    runtime as before: logged, never raised."""
    compiler = next((name for name in COMPILERS if shutil.which(name)), None)
    if compiler is None:
        log.warning("no C compiler (%s) on PATH: the trees score through treelite's runtime", ", ".join(COMPILERS))
        return None
    path = library_path(model)
    try:
        _write_library(model, compiler, path)
    except Exception as error:  # whatever the compiler or tl2cgen raise, the trees still score, uncompiled
        log.warning("compiling %s trees with %s failed, so they score through treelite's runtime: %s",
                    f"{model.num_tree:,}", compiler, error)
        return None
    return _loaded(path)


def _loaded(path: Path) -> Optional[CompiledTrees]:
    """The library at `path`, or None (logged) when it cannot be loaded (a truncated or foreign file)."""
    try:
        return CompiledTrees(path)
    except Exception as error:  # a library that does not load leaves the trees to treelite's runtime
        log.warning("the compiled trees %s could not be loaded, so they score through treelite's runtime: %s", path,
                    error)
        return None


def _write_library(model: treelite.Model, compiler: str, path: Path) -> None:
    """Compile the model into `path` unless it is there: one process compiles while the others wait for it (a service's
    workers start together), into a scratch folder beside it, then renamed, so that no reader sees half a library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return
        cores = os.cpu_count() or 1
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch, _said() as said:
            built = Path(scratch) / path.name
            tl2cgen.export_lib(model, toolchain=compiler, libpath=built, params={"parallel_comp": cores},
                               nthread=cores)
            os.replace(built, path)
        log.info("compiled %s trees with %s into %s: %s", f"{model.num_tree:,}", compiler, path, said.getvalue())


@contextlib.contextmanager
def _said() -> Iterator[io.StringIO]:
    """What tl2cgen says while compiling, kept for the log: its progress, printed to stdout (which a command may be
    writing its answer to), and its native library's notes, written to the process's stderr (the treelite it bundles
    notes that the model came from a newer treelite, which it reads)."""
    said = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as native:
        saved = os.dup(2)
        try:
            os.dup2(native.fileno(), 2)
            with contextlib.redirect_stdout(said):
                yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            native.seek(0)
            said.write(native.read().decode("utf-8", "replace"))
