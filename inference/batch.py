"""The batch scorer: transcript (and interaction) files streamed in bounded chunks into Parquet parts, a dead-letter
file and a manifest, resumable after a crash.

Every input file is cut into units of `chunk_size` records by a quick first pass (which also hashes it). A unit is
scored as a whole and committed atomically: its dead letters first, then its Parquet part (temporary name, then
rename). A unit is done exactly when its part exists, so a re-run skips finished units and a killed run never leaves
a half-written part. The engines (local here, Ray in `ray_engine`) differ only in how they run `score_unit`.
"""
from __future__ import annotations

import csv
import datetime as dt
import errno
import glob
import hashlib
import json
import os
import re
import shlex
import stat
import sys
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from carelens.data.adapters import abcd_conversation
from carelens.data.contracts import (
    INTERACTIONS, SURROGATE, ContractError, Conversation, check_table, check_unique_names,
)
from carelens.data.errors import CareLensError, OutOfSpace, UsageError
from carelens.data.paths import (
    LOCK, UNDECODABLE_NAME, held_lock, output_folder, plain_file, regular_file, shown_path, utf8_name,
)
from carelens.data.readers import (
    TABLE_SUFFIXES, arrow_frame, check_long_form_columns, conversation_from_json,
    conversation_runs, csv_header, header_lines, long_form_conversation, long_form_runs, parsed_json, reappearing_runs,
)
from carelens.data.redaction import redacted, redacted_conversation, redacted_record
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
from carelens.models.registry import Registry, file_sha256
from carelens.models.scoring import ScoringOptions, TranscriptPipeline, load_scoring_pipeline, transcript_features
from carelens.models.transcript import MODEL_NAME

PathLike = Union[str, Path]
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ABCD_SUFFIXES = (".json",)
#: Transcript formats: the contract's JSON Lines and long-form Parquet, and ABCD JSON (a list of chats); `auto` goes
#: by the file suffix.
FORMATS = ("auto", "jsonl", "parquet", "abcd")
FEATURES, PREDICTIONS, DEAD = "features", "predictions", "dead"
PLAN, MANIFEST, DEAD_LETTER = "_plan.json", "_manifest.json", "dead_letter.jsonl"
#: What the nightly job writes after the scoring stages.
FLAGGED_PARQUET, FLAGGED_CSV, SUMMARY = "flagged.parquet", "flagged.csv", "summary.html"
#: Markers of the stages after scoring (flags, summary): a stage whose marker exists is done.
STAGES = "_stages"
ENGINES = ("local", "ray")
TEMPORARY_MARK = ".tmp-"
#: Every name a run writes, by folder below --out: a restart removes these and nothing else, and a temporary name is
#: one of these behind a dot with TEMPORARY_MARK and a process id after it. Files of the user's own are left alone.
RUN_FILES = {".": re.compile("|".join(map(re.escape, (PLAN, MANIFEST, DEAD_LETTER, FLAGGED_PARQUET, FLAGGED_CSV,
                                                       SUMMARY)))),
             FEATURES: re.compile(r"t[0-9]{4}-c[0-9]{6}\.parquet"),
             PREDICTIONS: re.compile(r"i[0-9]{4}-c[0-9]{6}\.parquet"),
             DEAD: re.compile(r"[ti][0-9]{4}-c[0-9]{6}\.jsonl"), STAGES: re.compile(r"[a-z]+\.json")}
TEMPORARY_NAME = re.compile(rf"\.(?P<target>.+){re.escape(TEMPORARY_MARK)}[0-9]+")
#: Where each scored conversation came from, beside its ids and features.
FEATURE_FIELDS = [pa.field("source", pa.string()), pa.field("line", pa.int64()),
                  *(pa.field(k, pa.string()) for k in KEYS), *(pa.field(f, pa.float64()) for f in FEATURE_COLUMNS)]
FEATURES_SCHEMA = pa.schema(FEATURE_FIELDS)


class RunConflict(CareLensError, ValueError):
    """The output folder holds a run over other inputs, models or chunking; resuming it would mix two runs."""


class InputChanged(CareLensError, RuntimeError):
    """An input file changed or disappeared after the run was planned; reading on would mix two versions of it."""


#: errno values and messages (pyarrow's OSErrors may carry no errno) of a write that found no room.
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
FULL_MESSAGES = ("No space left", "File too large", "Disk quota exceeded")


# -- the plan: input files, cut into units ----------------------------------------------------------------------------

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


def file_kind(path: Path, format: str) -> str:
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
        return InputFile(shown_path(path), file_kind(path, format), path.stat().st_size, None,
                         rejected=UNDECODABLE_NAME)
    stamp = file_stamp(path)
    planned = described_file(path, index, chunk_size, format)
    planned.units = [replace(unit, stamp=stamp) for unit in planned.units]
    return planned


def described_file(path: Path, index: int, chunk_size: int, format: str) -> InputFile:
    """The file's kind, size, hash and units, or why it is rejected whole."""
    kind = file_kind(path, format)
    if path.stat().st_size == 0:
        return InputFile(str(path), kind, 0, file_sha256(path), rejected="the file is empty: no conversations")
    if kind == "jsonl":
        return jsonl_plan(path, index, chunk_size)
    planned = InputFile(str(path), kind, path.stat().st_size, file_sha256(path))
    try:
        planned.records, planned.units = record_units(path, kind, index, chunk_size)
    except (ContractError, pa.ArrowException, OSError) as exc:
        what = "long-form Parquet transcripts" if kind == "parquet" else "ABCD JSON (a list of chats)"
        planned.rejected = f"cannot be read as {what}: {exc}"
    return planned


def record_units(path: Path, kind: str, index: int, chunk_size: int) -> tuple[int, list[Unit]]:
    """(conversations, units) of a long-form Parquet or an ABCD file."""
    if kind == "parquet":
        return parquet_units(path, index, chunk_size)
    count = len(abcd_records_of(str(path), path.stat().st_mtime_ns))
    units = [Unit(unit_key(index, k), str(path), "abcd", start, min(start + chunk_size, count), start + 1,
                  min(chunk_size, count - start)) for k, start in enumerate(range(0, count, chunk_size))]
    return count, units


@lru_cache(maxsize=1)
def abcd_records_of(path: str, modified_ns: int) -> list:
    """The records of an ABCD JSON file, parsed once per process and file version (its units share them)."""
    try:
        records = parsed_json(Path(path).read_text(encoding="utf-8"), path, None)
    except UnicodeDecodeError as exc:
        raise ContractError(path, f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ContractError(path, f"expected a JSON list of ABCD records, got {type(records).__name__}")
    return records


def unit_key(index: int, chunk: int) -> str:
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
                    units.append(Unit(unit_key(index, len(units)), str(path), "jsonl", start, offset, first, chunk_size))
                    start, first = offset, line_no
                records += 1
            offset += len(line)
    if records:
        units.append(Unit(unit_key(index, len(units)), str(path), "jsonl", start, offset, first,
                          records - chunk_size * len(units)))
    return InputFile(str(path), "jsonl", offset, digest.hexdigest(), records, units=units)


def parquet_units(path: Path, index: int, chunk_size: int) -> tuple[int, list[Unit]]:
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
        units.append(Unit(unit_key(index, k), str(path), "parquet", start, stop, start + 1,
                          min(chunk_size, len(starts) - i),
                          tuple((row, first) for row, first in again.items() if start <= row < stop)))
    return len(starts), units


def transcript_files(patterns: Sequence[PathLike], format: str = "auto") -> list[Path]:
    if format not in FORMATS:
        raise UsageError(f"format {format!r} is not offered; expected one of {', '.join(FORMATS)}")
    # Only regular files here: a name that is not UTF-8 is rejected with its file by `planned_file`, not the run.
    return expanded_inputs(patterns, (*JSONL_SUFFIXES, *PARQUET_SUFFIXES, *ABCD_SUFFIXES), regular_file)


# -- reading and scoring a unit ---------------------------------------------------------------------------------------

def jsonl_records(unit: Unit) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a unit; undecodable bytes are kept as lone surrogates, as
    `iter_jsonl_lines` keeps them."""
    with open(unit.path, "rb") as handle:
        handle.seek(unit.start)
        data = handle.read(unit.stop - unit.start)
    for offset, raw in enumerate(data.split(b"\n")):
        if raw.strip():
            yield unit.first + offset, raw.decode("utf-8", errors="surrogateescape").rstrip("\r")


def parquet_rows(path: str, start: int, stop: int) -> pd.DataFrame:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    bounds = np.cumsum([0, *sizes])
    groups = [g for g in range(len(sizes)) if bounds[g] < stop and bounds[g + 1] > start]
    table = parquet.read_row_groups(groups).slice(start - int(bounds[groups[0]]), stop - start)
    frame = arrow_frame(table)
    frame.index = pd.RangeIndex(start, stop)
    return frame


def parquet_records(unit: Unit) -> Iterator[tuple[int, pd.DataFrame]]:
    """(row number of its first turn, its rows) of each conversation in a long-form Parquet unit."""
    for begin, turns in long_form_runs(parquet_rows(unit.path, unit.start, unit.stop)):
        yield unit.start + begin + 1, turns


def abcd_records(unit: Unit) -> Iterator[tuple[int, object]]:
    """(record number, record) of each chat in an ABCD unit."""
    records = abcd_records_of(unit.path, Path(unit.path).stat().st_mtime_ns)
    for number in range(unit.start, unit.stop):
        yield number + 1, records[number]


def unit_records(unit: Unit) -> Iterator[tuple[int, Union[str, dict, pd.DataFrame]]]:
    """The unit's records as its reader gives them, after checking the file is the one the plan cut."""
    check_unchanged(unit.path, unit.stamp)
    readers = {"jsonl": jsonl_records, "parquet": parquet_records, "abcd": abcd_records}
    return readers[unit.kind](unit)


def dead_letter(source: str, kind: str, number: int, reason: str, record: Union[str, dict, pd.DataFrame],
                redact: bool = False) -> dict:
    """One dead-letter entry: the file, the line (JSON Lines) or row (tables), why, and the record as it came (a
    long-form conversation as its rows); with `redact`, personal data masked in the record and in the reason (which
    may quote a value)."""
    place = {"jsonl": "line", "abcd": "entry"}.get(kind, "row")
    if isinstance(record, pd.DataFrame):
        record = record.to_dict("records")
    text = record if isinstance(record, str) else json.dumps(record, default=str, ensure_ascii=False)
    return {"source": source, place: number, "reason": redacted(reason) if redact else reason,
            "record": redacted_record(text) if redact else text}


def parsed(unit: Unit, number: int, record: Union[str, dict, pd.DataFrame]) -> Union[Conversation, str]:
    """The record as a Conversation, or the contract's reason for refusing it."""
    try:
        if unit.kind == "abcd":
            return abcd_conversation(record, unit.path, number)
        if unit.kind == "parquet":
            earlier = dict(unit.repeated).get(number - 1)
            return long_form_conversation(record, unit.path, number, None if earlier is None else earlier + 1)
        return conversation_from_json(record, unit.path, number)
    except ContractError as exc:
        return str(exc)


def isolated_features(pipeline: TranscriptPipeline, conversations: list[Conversation]
                      ) -> tuple[list[pd.DataFrame], list[Optional[str]]]:
    """Each conversation scored alone: its features, or why scoring it failed (only after the whole batch failed)."""
    frames, reasons = [], []
    for conversation in conversations:
        try:
            frames.append(transcript_features(pipeline, [conversation]))
            reasons.append(None)
        except Exception as exc:  # noqa: BLE001 - one unscorable conversation must not sink its unit
            frames.append(None)
            reasons.append(f"scoring failed: {type(exc).__name__}: {exc}")
    if all(reason is not None for reason in reasons):
        raise RuntimeError(f"every conversation of the batch failed to score; the first: {reasons[0]}")
    return frames, reasons


def score_unit(pipeline: TranscriptPipeline, unit: Unit, redact: bool = False
               ) -> tuple[pd.DataFrame, list[dict]]:
    """(features of every conversation that parsed and scored, dead letters of the rest), in input order; with
    `redact`, personal data is masked before scoring and in the dead letters."""
    good, numbers, raw, dead = [], [], [], []
    for number, record in unit_records(unit):
        result = parsed(unit, number, record)
        if isinstance(result, str):
            dead.append(dead_letter(unit.path, unit.kind, number, result, record, redact))
        else:
            good.append(redacted_conversation(result) if redact else result)
            numbers.append(number)
            raw.append(record)
    features = feature_frame(pipeline, good)
    if features is None:
        frames, reasons = isolated_features(pipeline, good)
        for number, record, reason in zip(numbers, raw, reasons):
            if reason is not None:
                dead.append(dead_letter(unit.path, unit.kind, number, reason, record, redact))
        keep = [r is None for r in reasons]
        numbers = [n for n, k in zip(numbers, keep) if k]
        features = pd.concat([f for f in frames if f is not None], ignore_index=True)
    features.insert(0, "line", np.asarray(numbers, dtype=np.int64))
    features.insert(0, "source", unit.path)
    return features[FEATURES_SCHEMA.names], dead


def feature_frame(pipeline: TranscriptPipeline, conversations: list[Conversation]) -> Optional[pd.DataFrame]:
    """The conversations' features scored together, or None when that failed (so they are retried one by one)."""
    try:
        return transcript_features(pipeline, conversations)
    except Exception:  # noqa: BLE001 - retried conversation by conversation, where the failure gets its reason
        return None


# -- committing, atomically ------------------------------------------------------------------------------------------

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


def jsonl_text(entries: Sequence[dict]) -> str:
    return "".join(map(json_line, entries))


def commit_unit(out: Path, folder: str, key: str, rows: pd.DataFrame, dead: Sequence[dict],
                schema: Optional[pa.Schema] = None) -> None:
    """A unit's dead letters, then its part: once the part exists, the unit is done and both are complete."""
    write_text(jsonl_text(dead), out / DEAD / f"{key}.jsonl")
    write_parquet(rows, out / folder / f"{key}.parquet", schema)


def done_keys(out: Path, folder: str) -> set[str]:
    return {p.stem for p in (out / folder).glob("*.parquet")}


def run_files(out: Path) -> list[Path]:
    """Every file below `out` a run wrote (RUN_FILES), finished or temporary; nothing else, however it is named."""
    found = []
    for folder, names in RUN_FILES.items():
        place = out / folder
        entries = sorted(place.iterdir()) if place.is_dir() else []
        found += [p for p in entries if stat.S_ISREG(p.lstat().st_mode) and written_as(p.name, names)]
    return found


def written_as(name: str, names: re.Pattern) -> bool:
    """Whether a file name is one of `names`, or the temporary name one of them is written under."""
    temporary = TEMPORARY_NAME.fullmatch(name)
    return bool(names.fullmatch(temporary["target"] if temporary else name))


def removed_leftovers(out: Path) -> int:
    """Temporary files a killed run left behind (the run's own temporary names, matched exactly), deleted; how many
    there were."""
    leftovers = [p for p in run_files(out) if TEMPORARY_NAME.fullmatch(p.name)]
    for path in leftovers:
        path.unlink()
    return len(leftovers)


def discarded_run(out: Path) -> None:
    """An earlier run in `out` removed, its manifest first (outputs without their manifest are not a finished run's),
    then every other file it wrote and its folders once empty; the user's own files stay where they are."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in run_files(out):
        path.unlink()
    for folder in (FEATURES, PREDICTIONS, DEAD, STAGES):
        with suppress(OSError):  # absent, or holding files of the user's own
            (out / folder).rmdir()


# -- engines ----------------------------------------------------------------------------------------------------------

def run_local(units: Sequence[Unit], pipeline: TranscriptPipeline, out: Path, show_progress_bar: bool,
              redact: bool = False) -> None:
    """Score the units one after another in this process; memory holds one unit at a time."""
    with tqdm(total=sum(u.records for u in units), unit="conv", desc="scoring", disable=not show_progress_bar,
              smoothing=0.1) as bar:
        for unit in units:
            features, dead = score_unit(pipeline, unit, redact)
            commit_unit(out, FEATURES, unit.key, features, dead, FEATURES_SCHEMA)
            bar.update(unit.records)


# -- interactions: contact-level predictions with the transcript features --------------------------------------------

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


def saved_features(out: Path) -> pd.DataFrame:
    """Every committed conversation's contact_id and features (the last conversation of a contact wins)."""
    columns = ["contact_id", *FEATURE_COLUMNS]
    frame = read_parts(out, FEATURES, columns) if done_keys(out, FEATURES) else pd.DataFrame(columns=columns)
    return frame.dropna(subset=["contact_id"]).drop_duplicates("contact_id", keep="last")


PREDICTION_DTYPES = {"customer_id": str, "contact_id": str, "churn_risk": float, "retaliation_risk": float,
                     "retaliation_type": str, "churn_flagged": bool, "retaliation_flagged": bool}


def predict_contacts(scorer, run: "Run", chunk_size: int) -> dict:
    """Per contact of the run's interactions files, each read and validated once: churn and retaliation risk, type,
    flags and the features the models read, with the transcript features joined on contact_id; rows that break the
    contract go to the dead letters. Returns each file's rows read (or why it was rejected whole); InputChanged when a
    file is not the one the plan hashed."""
    features = saved_features(run.out) if scorer.uses_transcripts else None
    numeric, categorical = scorer.extra_columns()
    # contact_id → the file it came first in, over every file and chunk: a contact is predicted once per run.
    done, seen, earlier = done_keys(run.out, PREDICTIONS), {}, {}
    for index, (path, stamp) in enumerate(zip(run.tables, run.table_stamps)):
        check_unchanged(path, stamp)
        rows = 0
        try:
            for chunk_no, chunk in enumerate(table_chunks(path, chunk_size)):
                key = f"i{index:04d}-c{chunk_no:06d}"
                if key in done:
                    predicted = pq.read_table(run.out / PREDICTIONS / f"{key}.parquet", columns=["contact_id"])
                    contacts = predicted.column("contact_id").to_pylist()
                else:
                    scored, dead = predicted_chunk(scorer, chunk, str(path), rows + header_lines(path) + 1, features,
                                                   numeric, categorical, run.redact, earlier)
                    commit_unit(run.out, PREDICTIONS, key, scored, dead)
                    contacts = scored["contact_id"].tolist()
                earlier.update(dict.fromkeys(contacts, str(path)))
                rows += len(chunk)
            seen[str(path)] = {"records": rows}
        except OutOfSpace:
            raise
        except (ContractError, OSError) as exc:
            seen[str(path)] = {"records": rows, "rejected": f"after {rows:,} rows: {exc}"}
        check_unchanged(path, stamp)
    return seen


def predicted_chunk(scorer, chunk: pd.DataFrame, source: str, first_row: int, features: Optional[pd.DataFrame],
                    numeric: Sequence[str], categorical: Sequence[str], redact: bool = False,
                    earlier: Optional[dict] = None) -> tuple[pd.DataFrame, list[dict]]:
    """(the predictions of a chunk's good rows with the features they were made from, a dead letter for each bad
    row, numbered as in the file); a contact that `earlier` chunks or files held (contact_id → file) is a bad row."""
    checked = check_table(chunk, INTERACTIONS, source, numeric, categorical, earlier)
    dead = [dead_letter(source, "table", first_row + int(i), reason, chunk.iloc[int(i)].to_dict(), redact)
            for i, reason in checked.problems[checked.problems != ""].items()]
    scored = scorer.contact_predictions(scorer.joined(checked.good, features))
    return scored.astype(PREDICTION_DTYPES), dead


# -- the run ----------------------------------------------------------------------------------------------------------

def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def this_run() -> dict:
    """What names this process's run to another that finds its folder taken: process id, command and start."""
    return {"pid": os.getpid(), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "started_at": now()}


def holder_of(lock: Path) -> str:
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
        raise RunConflict(f"{out}: another run is writing into this folder ({holder_of(out / LOCK)}); wait for it to "
                          f"finish, or choose another --out") from None
    handle.truncate(0)
    handle.write(json.dumps(this_run()))
    handle.flush()
    stack.callback(handle.truncate, 0)  # before the lock goes: a later holder never reads a finished run as its rival
    return stack


def checked_plan(out: Path, plan: dict) -> int:
    """Start or resume the run recorded in `out`: RunConflict when `out` holds a run of another plan. Returns how many
    units were already done."""
    recorded = out / PLAN
    if recorded.is_file():
        differing = plan_differences(json.loads(recorded.read_text()), plan)
        if differing:
            raise RunConflict(f"{out}: holds a run with other {', '.join(differing)}; resuming it would mix two runs. "
                              f"Choose another --out, or pass --restart to discard it")
    out.mkdir(parents=True, exist_ok=True)
    removed_leftovers(out)
    write_text(json.dumps(plan, indent=2), recorded)
    return len(done_keys(out, FEATURES)) + len(done_keys(out, PREDICTIONS))


def plan_differences(before: dict, plan: dict) -> list[str]:
    """What a recorded plan has other than this one, in words: a model is compared by its content, so another model
    published under the same version name (another registry's churn v1) is another model."""
    differing = [k for k in plan if k != "model_sha256" and before.get(k) != plan[k]]
    recorded = before.get("model_sha256") or {}
    changed = [f"{name} {plan['models'][name]}" for name, digest in plan["model_sha256"].items()
               if recorded.get(name) != digest]
    if changed and "models" not in differing:
        differing.append(f"models ({', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} in content)")
    return differing


def parquet_rows_in(folder: Path, prefix: str = "") -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob(f"{prefix}*.parquet"))


def gathered_dead_letters(out: Path) -> dict[str, int]:
    """Every unit's dead letters gathered into dead_letter.jsonl (written atomically); how many came from units of
    transcripts ("t") and of interactions ("i")."""
    counts = {"t": 0, "i": 0}
    with atomic_path(out / DEAD_LETTER) as temporary, open(temporary, "w", encoding="utf-8") as gathered:
        for part in sorted((out / DEAD).glob("*.jsonl")):
            text = part.read_text(encoding="utf-8")
            gathered.write(text)
            counts[part.name[0]] += text.count("\n")
    return counts


@dataclass
class Run:
    """A batch run under way: its folder, the inputs cut into units, the model versions resolved once, its clock."""

    out: Path
    store: Registry
    inputs: list[InputFile]
    tables: list[Path]
    models: dict
    pinned: bool
    plan: dict
    already: int
    #: (size, modification time) of each interactions file before the plan hashed it.
    table_stamps: list = field(default_factory=list)
    #: What the user should know about how the run scores (a runtime that fell back).
    warnings: list = field(default_factory=list)
    started: str = field(default_factory=now)
    clock: float = field(default_factory=time.perf_counter)
    #: Holds the lock on `out` (`run_folder_lock`) until the run ends: `with planned_run(...) as run:`.
    lock: ExitStack = field(default_factory=ExitStack, repr=False)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc_info) -> None:
        self.lock.close()

    @property
    def redact(self) -> bool:
        return self.plan["redact"]

    @property
    def pending(self) -> list[Unit]:
        """The transcript units whose features part is not yet committed."""
        done = done_keys(self.out, FEATURES)
        return [u for f in self.inputs for u in f.units if u.key not in done]


def planned_run(transcripts: Sequence[PathLike], out: PathLike, registry: Optional[PathLike] = None,
                version: Union[str, dict] = "latest", interactions: Sequence[PathLike] = (), chunk_size: int = 1_000,
                restart: bool = False, format: str = "auto", redact: bool = False,
                scoring: ScoringOptions = ScoringOptions()) -> Run:
    """The first stage: inputs expanded (each a regular file, refused by path before any is read), `out` locked for
    the run (it ends with the Run: `with planned_run(...) as run:`), inputs hashed and cut into units, model versions
    resolved, and the plan recorded in `out` (RunConflict when another run is writing into `out`, or `out` holds a run
    of another plan; `restart` discards an earlier run before anything is hashed). Models are part of the plan by
    their content, so another model under the same version name is another plan; so is `redact`, so a run is never
    resumed half masked, and the runtime and precision the transcript model scores with (a run is never resumed with
    features scored two ways)."""
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be at least 1, got {chunk_size}")
    out, store = output_folder(out), Registry(registry)
    files = transcript_files(transcripts, format)
    tables = expanded_inputs(interactions, TABLE_SUFFIXES) if interactions else []
    with run_folder_lock(out) as lock:  # released here only when planning fails; the Run holds it from then on
        if restart:
            discarded_run(out)
        wanted = version if isinstance(version, dict) else {}
        table_stamps = [file_stamp(p) for p in tables]
        names = (MODEL_NAME, "churn", "retaliation") if tables else (MODEL_NAME,)
        models = {name: store.resolve(name, wanted.get(name, "latest") if wanted else version) for name in names}
        inputs = [planned_file(path, index, chunk_size, format) for index, path in enumerate(files)]
        runtime, precision, warning = scoring.resolved(store.directory(MODEL_NAME, models[MODEL_NAME]))
        plan = {"inputs": [f.summary() for f in inputs], "interactions": [str(p) for p in tables],
                "interaction_hashes": [file_sha256(p) for p in tables], "models": models,
                "model_sha256": {name: store.content_sha256(name, v) for name, v in models.items()},
                "chunk_size": chunk_size, "redact": redact, "runtime": f"{runtime} {precision}"}
        already = checked_plan(out, plan)
        return Run(out, store, inputs, tables, models, bool(wanted), plan, already, table_stamps,
                   warnings=[warning] if warning else [], lock=lock.pop_all())


def scored_units(run: Run, engine: str = "local", show_progress_bar: bool = True, ray_address: Optional[str] = None,
                 workers: Optional[int] = None, scoring: ScoringOptions = ScoringOptions(),
                 pipeline: Optional[TranscriptPipeline] = None) -> int:
    """The transcript-features stage: every pending unit scored and committed; how many units were scored. The local
    engine uses `pipeline` or loads the transcript model once as `scoring` says; the Ray engine's actors load it
    once each."""
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    pending = run.pending
    if pending and engine == "ray":
        from carelens.inference.ray_engine import run_ray
        run_ray(pending, run.store.root, run.models[MODEL_NAME], run.out, scoring, ray_address, workers,
                show_progress_bar, run.redact)
    elif pending:
        pipeline = pipeline or load_scoring_pipeline(run.store, run.models[MODEL_NAME], scoring)[0]
        run_local(pending, pipeline, run.out, show_progress_bar, run.redact)
    return len(pending)


def score_batch(transcripts: Sequence[PathLike], out: PathLike, registry: Optional[PathLike] = None,
                version: Union[str, dict] = "latest", interactions: Sequence[PathLike] = (), engine: str = "local",
                chunk_size: int = 1_000, restart: bool = False, show_progress_bar: bool = True,
                ray_address: Optional[str] = None, workers: Optional[int] = None,
                scoring: ScoringOptions = ScoringOptions(), format: str = "auto", redact: bool = False) -> dict:
    """Score transcript files (JSON Lines, long-form Parquet or ABCD JSON; paths, globs or directories) into `out`:
    Parquet parts of conversation features, with `interactions` also per-contact predictions, every bad record in
    dead_letter.jsonl, and `_manifest.json`. Re-running resumes. `scoring` says how the transcript model runs
    (runtime, precision, threads, token budget, encodings remembered). The first stages of `carelens nightly`, which
    calls the same functions. Returns the manifest (its `failures` name every input that produced nothing or was
    rejected); raises when in != out + dead. With `redact`, e-mail addresses, phone numbers, card and order numbers
    are masked before scoring and in the dead letters."""
    with planned_run(transcripts, out, registry, version, interactions, chunk_size, restart, format, redact,
                     scoring) as run:
        check_no_nightly_outputs(run.out)
        scorer = tabular_scorer(run)
        scored = scored_units(run, engine, show_progress_bar, ray_address, workers, scoring)
        table_counts = predict_contacts(scorer, run, chunk_size) if scorer else {}
        return finish(run, engine, table_counts, scored)


def check_no_nightly_outputs(out: Path) -> None:
    """RunConflict when `out` holds what the nightly job writes after scoring: the scoring stages alone would write
    their own manifest, which dates neither the list nor the summary left beside it, so a stale list would look as
    if no run had made it, or a finished night would lose the manifest that vouches for its list."""
    found = [name for name in (FLAGGED_CSV, FLAGGED_PARQUET, SUMMARY, STAGES) if (out / name).exists()]
    if found:
        raise RunConflict(f"{out}: holds a nightly run ({', '.join(found)}); scoring alone would rewrite its manifest "
                          f"without them. Run `carelens nightly` with the same options to resume it, choose another "
                          f"--out, or pass --restart to discard it")


def tabular_scorer(run: Run, load_encoder: bool = False, scoring: ScoringOptions = ScoringOptions()):
    """The models of the plan (the encoder only with `load_encoder`, run as `scoring` says), checked to fit together
    before anything is scored; None when no interactions are to be predicted."""
    if not run.tables:
        return None
    from carelens.inference.api import Scorer
    return Scorer.load(run.store, run.models, load_encoder=load_encoder, pinned=run.pinned, scoring=scoring)


def stage_counts(run: Run, table_counts: dict) -> dict[str, dict]:
    """in / out / dead records of the scoring stages: transcripts → features, interactions → predictions."""
    dead = gathered_dead_letters(run.out)
    kinds = {"transcripts": {"in": sum(f.records for f in run.inputs), "out": parquet_rows_in(run.out / FEATURES),
                             "dead": dead["t"]}}
    if run.tables:
        kinds["interactions"] = {"in": sum(c["records"] for c in table_counts.values()),
                                 "out": parquet_rows_in(run.out / PREDICTIONS), "dead": dead["i"]}
    return kinds


def failures(run: Run, table_counts: dict) -> list[dict]:
    """Every input a stage produced nothing for, or rejected whole, with the reason: a scheduler must see these."""
    found = []
    for index, planned in enumerate(run.inputs):
        if planned.rejected or not parquet_rows_in(run.out / FEATURES, f"t{index:04d}-"):
            found.append({"source": planned.path, "stage": "features",
                          "reason": planned.rejected or f"none of its {planned.records:,} conversations could be "
                                                         f"scored (see {DEAD_LETTER})"})
    for index, path in enumerate(run.plan["interactions"]):
        counts = table_counts.get(path, {})
        if "rejected" in counts or not parquet_rows_in(run.out / PREDICTIONS, f"i{index:04d}-"):
            found.append({"source": path, "stage": "predictions",
                          "reason": counts.get("rejected") or f"none of its {counts.get('records', 0):,} rows could be "
                                                              f"predicted (see {DEAD_LETTER})"})
    return found


def finish(run: Run, engine: str, table_counts: dict, scored_units: int, write: bool = True) -> dict:
    """Gather the dead letters, count, check in = out + dead for each kind of input, and (with `write`) write the
    manifest (the nightly job writes its own, with the later stages)."""
    kinds = stage_counts(run, table_counts)
    counts = {key: sum(k[key] for k in kinds.values()) for key in ("in", "out", "dead")}
    rejected = [{"source": f.path, "reason": f.rejected} for f in run.inputs if f.rejected] + \
               [{"source": p, "reason": c["rejected"]} for p, c in table_counts.items() if "rejected" in c]
    found = failures(run, table_counts)
    if run.redact:  # a reason can quote what it refused
        for entry in (*rejected, *found):
            entry["reason"] = redacted(entry["reason"])
    manifest = {"carelens": package_version("carelens"), "engine": engine, "started_at": run.started,
                "ended_at": now(), "elapsed_s": round(time.perf_counter() - run.clock, 3), "models": run.plan["models"],
                "runtime": run.plan["runtime"], "warnings": run.warnings,
                "chunk_size": run.plan["chunk_size"], "inputs": run.plan["inputs"],
                "interactions": [{"path": p, "sha256": h, **table_counts.get(p, {})}
                                 for p, h in zip(run.plan["interactions"], run.plan["interaction_hashes"])],
                "rejected_inputs": rejected, "failures": found, "counts": counts,
                "by_input": kinds, "units": {"scored_now": scored_units, "already_done": run.already},
                "outputs": {"features": FEATURES, "predictions": PREDICTIONS if run.tables else None,
                            "dead_letter": DEAD_LETTER},
                "balanced": all(k["in"] == k["out"] + k["dead"] for k in kinds.values())}
    if not manifest["balanced"]:
        raise RuntimeError(f"{run.out / MANIFEST}: records do not add up ({json.dumps(kinds)}); in must equal out + dead")
    if write:
        write_text(json.dumps(manifest, indent=2, default=str), run.out / MANIFEST)
    return manifest


def read_parts(out: PathLike, folder: str = FEATURES, columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Every committed part of a batch run's output folder (`features` or `predictions`) as one DataFrame, with all
    or only the named columns."""
    parts = sorted((Path(out) / folder).glob("*.parquet"))
    if not parts:
        raise UsageError(f"{Path(out) / folder}: no Parquet parts; run `carelens score` first")
    return pd.concat([pq.read_table(p, columns=columns).to_pandas() for p in parts], ignore_index=True)
