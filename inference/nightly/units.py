"""The run's inputs: files found, hashed and cut into units of records, and each unit's records read back."""
from __future__ import annotations

import csv
import glob
import hashlib
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from carelens.data.contracts import ContractError, check_unique_names
from carelens.data.errors import UsageError
from carelens.data.paths import UNDECODABLE_NAME, plain_file, regular_file, shown_path, utf8_name
from carelens.data.readers import (
    arrow_frame, check_long_form_columns, conversation_runs, csv_header, long_form_runs, parsed_json, reappearing_runs,
)
from carelens.inference.nightly.layout import (
    ABCD_SUFFIXES, FORMATS, JSONL_SUFFIXES, PARQUET_SUFFIXES, InputChanged, PathLike,
)
from carelens.models.registry import file_sha256


@dataclass(frozen=True)
class Unit:
    """One chunk of one transcripts file, scored and committed as a whole: records [start, stop) in bytes (JSON Lines),
    rows (long-form Parquet) or list entries (ABCD), the first of which is line / row / entry `first`."""

    key: str
    path: str
    kind: str
    start: int
    stop: int
    first: int
    records: int
    #: The file's (size, modification time in ns) when the run was planned: reading a changed file is refused.
    stamp: tuple[int, int] = (0, 0)
    #: Long-form Parquet: the first row of each conversation whose id already had rows earlier in the file → that
    #: earlier first row (both 0-based); such a conversation is refused.
    repeated: tuple[tuple[int, int], ...] = ()


@dataclass
class InputFile:
    """One input file as the plan saw it: size, SHA-256, records, and why it was rejected whole (None if not)."""

    path: str
    kind: str
    bytes: int
    sha256: Optional[str]
    records: int = 0
    rejected: Optional[str] = None
    units: list[Unit] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "units" and (k != "rejected" or v)}


def expanded_inputs(patterns: Sequence[PathLike], suffixes: Sequence[str],
                    checked: Callable[[PathLike], Path] = plain_file) -> list[Path]:
    """Files named by paths, globs and directories (a directory gives what it holds with one of `suffixes`, folders
    aside), sorted and without repeats; ContractError naming the pattern that matched nothing, or the first path that
    `checked` refuses (by default, one that is not a regular file with a UTF-8 name: a FIFO, a device, a directory a
    glob matched), before any is read."""
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and not p.is_dir())
        else:
            found = [Path(p) for p in sorted(glob.glob(str(pattern), recursive=True))] or \
                ([path] if os.path.lexists(path) else [])
        if not found:
            raise ContractError(str(pattern), f"no input file matches (expected a file, a glob or a directory of "
                                              f"{', '.join(suffixes)} files)")
        files.extend(map(checked, found))
    return list(dict.fromkeys(p.resolve() for p in files))


def _file_kind(path: Path, format: str) -> str:
    """The transcript format of a file: as given, or (auto) by its suffix."""
    if format != "auto":
        return format
    suffix = path.suffix.lower()
    return "parquet" if suffix in PARQUET_SUFFIXES else "abcd" if suffix in ABCD_SUFFIXES else "jsonl"


def file_stamp(path: Union[str, Path]) -> tuple[int, int]:
    """(size, modification time in ns) of a file; InputChanged when it is gone."""
    try:
        status = os.stat(path)
    except FileNotFoundError as exc:
        raise InputChanged(f"{path}: the input disappeared after the run was planned; restore it, or re-run with "
                           f"--restart to plan the run again without it") from exc
    return status.st_size, status.st_mtime_ns


def check_unchanged(path: Union[str, Path], stamp: tuple[int, int]) -> None:
    """InputChanged unless the file still has the size and modification time the plan saw."""
    now = tuple(file_stamp(path))
    if now != tuple(stamp):
        raise InputChanged(f"{path}: the input changed after the run was planned (size {stamp[0]:,} → {now[0]:,} "
                           f"bytes); scoring on would mix two versions of it. Re-run with --restart to score it as "
                           f"it is now")


def planned_file(path: Path, index: int, chunk_size: int, format: str = "auto") -> InputFile:
    """An input file described and cut into units, each stamped with the file's size and modification time as they
    were before planning read it (so a change while planning shows too); an empty or unreadable file is rejected
    whole, with the reason, and so is one whose name is not UTF-8, unread and named as the outputs can hold it: one
    such file dropped among a night's transcripts must not stop the others."""
    if not utf8_name(path):
        return InputFile(shown_path(path), _file_kind(path, format), path.stat().st_size, None,
                         rejected=UNDECODABLE_NAME)
    stamp = file_stamp(path)
    planned = _described_file(path, index, chunk_size, format)
    planned.units = [replace(unit, stamp=stamp) for unit in planned.units]
    return planned


def _described_file(path: Path, index: int, chunk_size: int, format: str) -> InputFile:
    """The file's kind, size, hash and units, or why it is rejected whole."""
    kind = _file_kind(path, format)
    if path.stat().st_size == 0:
        return InputFile(str(path), kind, 0, file_sha256(path), rejected="the file is empty: no conversations")
    if kind == "jsonl":
        return jsonl_plan(path, index, chunk_size)
    planned = InputFile(str(path), kind, path.stat().st_size, file_sha256(path))
    try:
        planned.records, planned.units = _record_units(path, kind, index, chunk_size)
    except (ContractError, pa.ArrowException, OSError) as exc:
        what = "long-form Parquet transcripts" if kind == "parquet" else "ABCD JSON (a list of chats)"
        planned.rejected = f"cannot be read as {what}: {exc}"
    return planned


def _record_units(path: Path, kind: str, index: int, chunk_size: int) -> tuple[int, list[Unit]]:
    """(conversations, units) of a long-form Parquet or an ABCD file."""
    if kind == "parquet":
        return _parquet_units(path, index, chunk_size)
    count = len(_abcd_records_of(str(path), path.stat().st_mtime_ns))
    units = [Unit(_unit_key(index, k), str(path), "abcd", start, min(start + chunk_size, count), start + 1,
                  min(chunk_size, count - start)) for k, start in enumerate(range(0, count, chunk_size))]
    return count, units


@lru_cache(maxsize=1)
def _abcd_records_of(path: str, modified_ns: int) -> list:
    """The records of an ABCD JSON file, parsed once per process and file version (its units share them)."""
    try:
        records = parsed_json(Path(path).read_text(encoding="utf-8"), path, None)
    except UnicodeDecodeError as exc:
        raise ContractError(path, f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ContractError(path, f"expected a JSON list of ABCD records, got {type(records).__name__}")
    return records


def _unit_key(index: int, chunk: int) -> str:
    return f"t{index:04d}-c{chunk:06d}"


def jsonl_plan(path: Path, index: int, chunk_size: int) -> InputFile:
    """A JSON Lines file hashed and cut every `chunk_size` non-blank lines, in one pass that holds one line at a time."""
    digest, units = hashlib.sha256(), []
    offset, records, start, first = 0, 0, 0, 1
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            digest.update(line)
            if line.strip():
                if records % chunk_size == 0 and records:
                    units.append(Unit(_unit_key(index, len(units)), str(path), "jsonl", start, offset, first, chunk_size))
                    start, first = offset, line_no
                records += 1
            offset += len(line)
    if records:
        units.append(Unit(_unit_key(index, len(units)), str(path), "jsonl", start, offset, first,
                          records - chunk_size * len(units)))
    return InputFile(str(path), "jsonl", offset, digest.hexdigest(), records, units=units)


def _parquet_units(path: Path, index: int, chunk_size: int) -> tuple[int, list[Unit]]:
    """(conversations, units) of a long-form Parquet file: a conversation is a run of rows with one conversation_id
    (`conversation_runs`), and a unit holds `chunk_size` runs. Only the id column is read."""
    names = pq.ParquetFile(path).schema_arrow.names
    check_unique_names(names, str(path))
    check_long_form_columns(names, str(path))
    ids = arrow_frame(pq.read_table(path, columns=["conversation_id"]))["conversation_id"]
    starts = conversation_runs(ids)
    again = reappearing_runs(ids, starts)
    bounds = np.r_[starts, len(ids)]
    units = []
    for k, i in enumerate(range(0, len(starts), chunk_size)):
        start, stop = int(bounds[i]), int(bounds[min(i + chunk_size, len(starts))])
        units.append(Unit(_unit_key(index, k), str(path), "parquet", start, stop, start + 1,
                          min(chunk_size, len(starts) - i),
                          tuple((row, first) for row, first in again.items() if start <= row < stop)))
    return len(starts), units


def transcript_files(patterns: Sequence[PathLike], format: str = "auto") -> list[Path]:
    if format not in FORMATS:
        raise UsageError(f"format {format!r} is not offered; expected one of {', '.join(FORMATS)}")
    # Only regular files here: a name that is not UTF-8 is rejected with its file by `planned_file`, not the run.
    return expanded_inputs(patterns, (*JSONL_SUFFIXES, *PARQUET_SUFFIXES, *ABCD_SUFFIXES), regular_file)


def jsonl_records(unit: Unit) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a unit; undecodable bytes are kept as lone surrogates, as
    `iter_jsonl_lines` keeps them."""
    with open(unit.path, "rb") as handle:
        handle.seek(unit.start)
        data = handle.read(unit.stop - unit.start)
    for offset, raw in enumerate(data.split(b"\n")):
        if raw.strip():
            yield unit.first + offset, raw.decode("utf-8", errors="surrogateescape").rstrip("\r")


def _parquet_rows(path: str, start: int, stop: int) -> pd.DataFrame:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    bounds = np.cumsum([0, *sizes])
    groups = [g for g in range(len(sizes)) if bounds[g] < stop and bounds[g + 1] > start]
    table = parquet.read_row_groups(groups).slice(start - int(bounds[groups[0]]), stop - start)
    frame = arrow_frame(table)
    frame.index = pd.RangeIndex(start, stop)
    return frame


def _parquet_records(unit: Unit) -> Iterator[tuple[int, pd.DataFrame]]:
    """(row number of its first turn, its rows) of each conversation in a long-form Parquet unit."""
    for begin, turns in long_form_runs(_parquet_rows(unit.path, unit.start, unit.stop)):
        yield unit.start + begin + 1, turns


def _abcd_records(unit: Unit) -> Iterator[tuple[int, object]]:
    """(record number, record) of each chat in an ABCD unit."""
    records = _abcd_records_of(unit.path, Path(unit.path).stat().st_mtime_ns)
    for number in range(unit.start, unit.stop):
        yield number + 1, records[number]


def unit_records(unit: Unit) -> Iterator[tuple[int, Union[str, dict, pd.DataFrame]]]:
    """The unit's records as its reader gives them, after checking the file is the one the plan cut."""
    check_unchanged(unit.path, unit.stamp)
    readers = {"jsonl": jsonl_records, "parquet": _parquet_records, "abcd": _abcd_records}
    return readers[unit.kind](unit)


def table_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """A CSV (as text, like the contract readers) or Parquet table in chunks of at most `chunk_size` rows;
    ContractError when the file stops being readable (the rows before it were already handed on)."""
    try:
        if path.suffix.lower() == ".csv":
            check_unique_names(csv_header(path), str(path))
            yield from pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_size)
        else:
            parquet = pq.ParquetFile(path)
            check_unique_names(parquet.schema_arrow.names, str(path))
            for batch in parquet.iter_batches(batch_size=chunk_size):
                yield arrow_frame(pa.Table.from_batches([batch]))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise ContractError(str(path), f"cannot be read as {path.suffix[1:].upper() or 'a table'}: {exc}") from exc
