"""The run folder: atomic writes, units committed with their dead letters, stage markers, the lock, and what a restart removes."""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import shlex
import stat
import sys
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from carelens.data.contracts import SURROGATE
from carelens.data.errors import OutOfSpace, UsageError
from carelens.data.paths import LOCK, held_lock
from carelens.inference.nightly.layout import (
    DEAD, DEAD_LETTER, FEATURES, FLAGGED_CSV, FLAGGED_PARQUET, MANIFEST, PREDICTIONS, RUN_FILES, STAGES, SUMMARY,
    TEMPORARY_MARK, TEMPORARY_NAME, PathLike, RunConflict,
)

#: errno values and messages (pyarrow's OSErrors may carry no errno) of a write that found no room.
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


FULL_MESSAGES = ("No space left", "File too large", "Disk quota exceeded")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` that becomes `target` (by rename) only when the block completes."""
    temporary = target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, target)
    except OSError as exc:
        if exc.errno in FULL or any(message in str(exc) for message in FULL_MESSAGES):
            raise OutOfSpace(f"{target}: cannot be written ({exc.strerror or exc}): the disk, quota or file-size limit "
                             f"is full. Nothing half-written was kept; free space and re-run the same command to "
                             f"resume") from exc
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet(frame: pd.DataFrame, target: Path, schema: Optional[pa.Schema] = None) -> None:
    with atomic_path(target) as temporary:
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), temporary)


def write_text(text: str, target: Path) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")


def json_line(entry: dict) -> str:
    """One JSON line, non-ASCII text as it is unless it holds a lone surrogate (which UTF-8 cannot write: escaped)."""
    text = json.dumps(entry, ensure_ascii=False, default=str)
    return (json.dumps(entry, default=str) if SURROGATE.search(text) else text) + "\n"


def _jsonl_text(entries: Sequence[dict]) -> str:
    return "".join(map(json_line, entries))


def commit_unit(out: Path, folder: str, key: str, rows: pd.DataFrame, dead: Sequence[dict],
                schema: Optional[pa.Schema] = None) -> None:
    """A unit's dead letters, then its part: once the part exists, the unit is done and both are complete."""
    write_text(_jsonl_text(dead), out / DEAD / f"{key}.jsonl")
    write_parquet(rows, out / folder / f"{key}.parquet", schema)


def done_keys(out: Path, folder: str) -> set[str]:
    return {p.stem for p in (out / folder).glob("*.parquet")}


def _run_files(out: Path) -> list[Path]:
    """Every file below `out` a run wrote (RUN_FILES), finished or temporary; nothing else, however it is named."""
    found = []
    for folder, names in RUN_FILES.items():
        place = out / folder
        entries = sorted(place.iterdir()) if place.is_dir() else []
        found += [p for p in entries if stat.S_ISREG(p.lstat().st_mode) and _written_as(p.name, names)]
    return found


def _written_as(name: str, names: re.Pattern) -> bool:
    """Whether a file name is one of `names`, or the temporary name one of them is written under."""
    temporary = TEMPORARY_NAME.fullmatch(name)
    return bool(names.fullmatch(temporary["target"] if temporary else name))


def removed_leftovers(out: Path) -> int:
    """Temporary files a killed run left behind (the run's own temporary names, matched exactly), deleted; how many
    there were."""
    leftovers = [p for p in _run_files(out) if TEMPORARY_NAME.fullmatch(p.name)]
    for path in leftovers:
        path.unlink()
    return len(leftovers)


def discarded_run(out: Path) -> None:
    """An earlier run in `out` removed, its manifest first (outputs without their manifest are not a finished run's),
    then every other file it wrote and its folders once empty; the user's own files stay where they are."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in _run_files(out):
        path.unlink()
    for folder in (FEATURES, PREDICTIONS, DEAD, STAGES):
        with suppress(OSError):  # absent, or holding files of the user's own
            (out / folder).rmdir()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _this_run() -> dict:
    """What names this process's run to another that finds its folder taken: process id, command and start."""
    return {"pid": os.getpid(), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "started_at": now()}


def _holder_of(lock: Path) -> str:
    """The run that holds a folder's lock, in words, as it recorded itself (it may not have yet)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return f"pid {holder['pid']}, `{holder['command']}`, started {holder['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that is just starting"


def run_folder_lock(out: Path) -> ExitStack:
    """`out` (made if absent) locked for this process's run until the returned stack closes; RunConflict naming the
    folder and the run that holds it when another process is writing into it, since two runs in one folder would
    interleave their plans, parts and manifests. Not waited for: a second run started by mistake should say so now,
    not run after the first over what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    stack = ExitStack()
    try:
        handle = stack.enter_context(held_lock(out / LOCK, wait=False))
    except BlockingIOError:
        raise RunConflict(f"{out}: another run is writing into this folder ({_holder_of(out / LOCK)}); wait for it to "
                          f"finish, or choose another --out") from None
    handle.truncate(0)
    handle.write(json.dumps(_this_run()))
    handle.flush()
    stack.callback(handle.truncate, 0)  # before the lock goes: a later holder never reads a finished run as its rival
    return stack


def parquet_rows_in(folder: Path, prefix: str = "") -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob(f"{prefix}*.parquet"))


def gathered_dead_letters(out: Path) -> list[tuple[str, dict]]:
    """Every unit's dead letters gathered into dead_letter.jsonl (written atomically), and each as (what was dropped,
    the entry) in part order: a part's name says whether it holds contacts ("i…") or transcripts ("t…")."""
    letters = []
    with atomic_path(out / DEAD_LETTER) as temporary, open(temporary, "w", encoding="utf-8") as gathered:
        for part in sorted((out / DEAD).glob("*.jsonl")):
            text = part.read_text(encoding="utf-8")
            gathered.write(text)
            what = "contact" if part.name.startswith("i") else "transcript"
            letters += [(what, json.loads(line)) for line in text.splitlines()]
    return letters


def read_parts(out: PathLike, folder: str = FEATURES, columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Every committed part of a batch run's output folder (`features` or `predictions`) as one DataFrame, with all
    or only the named columns."""
    parts = sorted((Path(out) / folder).glob("*.parquet"))
    if not parts:
        raise UsageError(f"{Path(out) / folder}: no Parquet parts; run `carelens score` first")
    return pd.concat([pq.read_table(p, columns=columns).to_pandas() for p in parts], ignore_index=True)


def _stage_marker(out: Path, stage: str) -> Path:
    return out / STAGES / f"{stage}.json"


def finished_stage(out: Path, stage: str, key: dict) -> Optional[dict]:
    """What a committed stage recorded, when its marker exists and was made with the same `key`; else None."""
    marker = _stage_marker(out, stage)
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    return recorded if recorded.get("key") == key else None


def commit_stage(out: Path, stage: str, key: dict, result: dict) -> dict:
    """Mark a stage done (atomically, after its outputs): a re-run with the same key skips it."""
    marker = _stage_marker(out, stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, **result}
    write_text(json.dumps(record, indent=2, default=str), marker)
    return record


def discarded_list(out: Path) -> None:
    """The manifest and the list and summary it dated, removed before a run makes them anew under another rule: a
    list that outlived its manifest would look current."""
    for name in (MANIFEST, SUMMARY, FLAGGED_CSV, FLAGGED_PARQUET):
        (out / name).unlink(missing_ok=True)
