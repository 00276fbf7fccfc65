"""Paths the commands read and write, checked before anything is read or written: plain input files, output files and
output folders."""
from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Union

from carelens.data.contracts import ContractError
from carelens.data.errors import UsageError

PathLike = Union[str, Path]
#: The file whose lock a writer holds: one per model of a registry, one per output folder of a run.
LOCK = ".lock"
#: What a path that is not a regular file holds, in words.
KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def shown_path(path: PathLike) -> str:
    """A path as text that a terminal, JSON and Parquet can all hold: bytes of a name that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def kind_of(mode: int) -> str:
    return next((kind for test, kind in KINDS if test(mode)), "not a regular file")


#: Why an input whose name is not UTF-8 is refused.
UNDECODABLE_NAME = ("the file name is not valid UTF-8, expected a regular file with a UTF-8 name (the outputs cite "
                    "each input by its path); rename it")


def regular_file(path: PathLike) -> Path:
    """`path` when it names a regular file (links followed); ContractError naming it otherwise, before a byte of it is
    read: a FIFO never ends or never starts, a device like /dev/zero never ends, a directory holds no records."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ContractError(shown_path(path), "no such file") from None
    except OSError as exc:
        raise ContractError(shown_path(path), f"cannot be read ({exc.strerror}), expected a regular file") from exc
    if not stat.S_ISREG(mode):
        raise ContractError(shown_path(path), f"is {kind_of(mode)}, expected a regular file")
    return Path(path)


def utf8_name(path: PathLike) -> bool:
    """Whether the path's bytes are UTF-8, so that outputs, which cite their inputs by path, can hold it."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def plain_file(path: PathLike) -> Path:
    """`path` when it names a regular file (`regular_file`) whose name is UTF-8 (`utf8_name`); ContractError naming
    it otherwise, before a byte of it is read."""
    if not utf8_name(regular_file(path)):
        raise ContractError(shown_path(path), UNDECODABLE_NAME)
    return Path(path)


def existing_mode(path: PathLike) -> Optional[int]:
    """The mode of what `path` names (links followed), or None when nothing is there."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def output_file(path: PathLike) -> Path:
    """`path` unless something other than a regular file is there: a folder (a command writes one file there), a
    FIFO (writing to it waits for ever for a reader) or a device; UsageError before any work."""
    mode = existing_mode(path)
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"--out {path}: is {'a folder' if stat.S_ISDIR(mode) else kind_of(mode)}; expected a file "
                         f"to write")
    return Path(path)


def output_folder(path: PathLike, option: str = "--out") -> Path:
    """`path` unless something other than a folder is there (a run, a registry or a data set is many files);
    UsageError, naming the option that gave it, before any work."""
    mode = existing_mode(path)
    if mode is not None and not stat.S_ISDIR(mode):
        raise UsageError(f"{option} {path}: is {'a file' if stat.S_ISREG(mode) else kind_of(mode)}; expected a folder to "
                         f"write into (a new one, or one this command wrote before)")
    return Path(path)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def held_lock(path: PathLike, wait: bool = True) -> Iterator[IO[str]]:
    """The lock file `path` (made if absent), open for reading and writing and locked exclusively for the block; the
    lock goes with the process (fcntl), so a killed holder never leaves it taken. Without `wait`, BlockingIOError at
    once when another process holds it."""
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
