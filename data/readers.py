"""Readers for CSV, Parquet and JSON Lines files that check every record against the data contracts."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from carelens.data.contracts import (
    INTERACTIONS, LABELS, ContractError, Conversation, TableContract, check_unique_names, shown, validated,
)
from carelens.data.errors import UsageError
from carelens.data.paths import plain_file

PathLike = Union[str, Path]
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
#: The contract keys of a transcript record, which a format's own fields may stand for (`keys`).
RECORD_KEYS = ("conversation_id", "customer_id", "contact_id")
#: contract key → the field of a record that holds it, a dotted path for a nested field ("scenario.personal.username").
Keys = Mapping[str, str]


def arrow_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a DataFrame by its own column types: the pandas metadata a file carries is ignored, because a
    hostile or mislabelled file can declare dtypes its values cannot take (a list column labelled text). Binary
    columns become text, bytes that are not UTF-8 kept as lone surrogates, which every contract check refuses by
    name instead of failing deep inside pandas. Date-times with a time zone come in UTC, the same instants: shown in a
    local zone (as a dead letter shows its record), one near the end of the calendar overflows."""
    for position, kind in enumerate(table.schema.types):
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            table = table.set_column(position, table.field(position).name,
                                     table.column(position).cast(pa.timestamp(kind.unit, tz="UTC")))
    frame = table.to_pandas(ignore_metadata=True)
    for position, kind in enumerate(table.schema.types):
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            frame.isetitem(position, pd.Series([v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
                                                for v in frame.iloc[:, position]], index=frame.index, dtype=object))
    return frame


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file as written (pandas renames a repeated name to `name.1`); a leading byte-order
    mark, which spreadsheets write and pandas drops, is not part of the first name."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def csv_columns(path: PathLike) -> list[str]:
    """The column names of a plain CSV file, read before the rest of it to tell what kind of file it is; ContractError
    naming the file when it is not a plain file or its header is not UTF-8 CSV."""
    try:
        return csv_header(plain_file(path))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ContractError(str(path), f"cannot be read as CSV: {exc}") from exc


def read_table(path: PathLike) -> pd.DataFrame:
    """A CSV or Parquet file as an untyped DataFrame, or ContractError when it is missing, empty or unreadable."""
    path = plain_file(path)
    if path.stat().st_size == 0:
        raise ContractError(str(path), "the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            check_unique_names(csv_header(path), str(path))
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
            check_unique_names(table.column_names, str(path))
            return arrow_frame(table)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeDecodeError, pa.ArrowException,
            csv.Error) as exc:
        raise ContractError(str(path), f"cannot be read as {suffix[1:].upper()}: {exc}") from exc
    raise ContractError(str(path), f"unknown file type '{suffix}', expected one of {', '.join(TABLE_SUFFIXES)}")


def header_lines(path: PathLike) -> int:
    """How many lines precede the first record, so that row numbers match what an editor shows."""
    return 1 if Path(path).suffix.lower() == ".csv" else 0


def read_checked(path: PathLike, contract: TableContract, extra_numeric: Sequence[str] = (),
                 extra_categorical: Sequence[str] = ()) -> pd.DataFrame:
    """A table file validated against `contract`; raises ContractError naming the first bad row."""
    return validated(read_table(path), contract, str(path), header_rows=header_lines(path),
                     extra_numeric=extra_numeric, extra_categorical=extra_categorical)


def read_interactions(path: PathLike, extra_numeric: Sequence[str] = (),
                      extra_categorical: Sequence[str] = ()) -> pd.DataFrame:
    """Interactions (one row per contact), typed and validated, with any declared extra feature columns."""
    return read_checked(path, INTERACTIONS, extra_numeric, extra_categorical)


def read_labels(path: PathLike) -> pd.DataFrame:
    """Training labels (contact_id, churned, retaliation), typed and validated."""
    return read_checked(path, LABELS)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's members as a dict, refusing a key given twice (json.loads would keep the last silently)."""
    record = dict(pairs)
    if len(record) < len(pairs):
        repeated = next(key for i, (key, _) in enumerate(pairs) if key in dict(pairs[:i]))
        raise ValueError(f"key {repeated!r} appears more than once in one object")
    return record


def parsed_json(text: str, source: str, line_no: Optional[int]) -> Any:
    """A JSON document, or ContractError saying why it is not one this toolkit takes (repeated keys, nesting too
    deep for the parser)."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ContractError(source, f"not valid JSON ({exc.msg} at character {exc.pos})", row=line_no,
                            unit="line") from exc
    except ValueError as exc:
        raise ContractError(source, f"not valid JSON for this toolkit: {exc}", row=line_no, unit="line") from exc
    except RecursionError as exc:
        raise ContractError(source, "not valid JSON for this toolkit: nested too deeply", row=line_no,
                            unit="line") from exc


def checked_keys(keys: Optional[Keys]) -> dict[str, str]:
    """`keys` as a plain dict, or UsageError naming a key the contract does not have or a field path that is blank."""
    if keys is not None and not isinstance(keys, Mapping):
        raise UsageError(f"keys: got {type(keys).__name__}, expected a mapping such as {{'contact_id': 'call_id'}}")
    keys = dict(keys or {})
    for key, path in keys.items():
        if key not in RECORD_KEYS:
            raise UsageError(f"cannot map {key!r}: the keys a transcript record carries are {', '.join(RECORD_KEYS)}")
        if not isinstance(path, str) or not path.strip() or "" in path.split("."):
            raise UsageError(f"{key}: expected the name of a record field (a dotted path for a nested one), got "
                             f"{path!r}")
    return keys


def parsed_keys(mappings: Sequence[str]) -> dict[str, str]:
    """`--key KEY=FIELD` options as keys: UsageError naming one that is not of that form."""
    pairs = [m.partition("=") for m in mappings]
    bad = next((m for m, (key, equals, field) in zip(mappings, pairs) if not (equals and key.strip() and field.strip())),
               None)
    if bad is not None:
        raise UsageError(f"--key {bad!r}: expected KEY=FIELD, e.g. contact_id=convo_id")
    return checked_keys({key.strip(): field.strip() for key, _, field in pairs})


def field_at(record: dict, path: str) -> Any:
    """The value at a dotted path of a JSON record, or None where a step of the path is missing."""
    value: Any = record
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def keyed_record(record: dict, keys: Keys) -> dict:
    """The record with each contract key read from the field `keys` names; a key whose field is missing is left out
    (a conversation without a contact_id is still one; a missing conversation_id is refused by the contract)."""
    if not keys:
        return record
    mapped = {key: field_at(record, path) for key, path in keys.items()}
    return {**{k: v for k, v in record.items() if k not in keys}, **{k: v for k, v in mapped.items() if v is not None}}


def conversation_from_json(line: str, source: str, line_no: int, keys: Optional[Keys] = None) -> Conversation:
    """One JSON Lines record as a Conversation, or ContractError naming the line and the field at fault."""
    return conversation_from_record(parsed_json(line, source, line_no), source, line_no, keys=keys)


def conversation_from_record(record: object, source: str, line_no: Optional[int], unit: str = "line",
                             keys: Optional[Keys] = None) -> Conversation:
    """A parsed record as a Conversation, its contract keys read from the fields `keys` names, or ContractError naming
    the field and what it should hold."""
    if not isinstance(record, dict):
        raise ContractError(source, f"expected a JSON object (a conversation), got {type(record).__name__}",
                            row=line_no, unit=unit)
    keys = keys or {}
    try:
        return Conversation.model_validate(keyed_record(record, keys))
    except ValidationError as exc:
        first = exc.errors()[0]
        column = ".".join(str(p) for p in first["loc"])
        mapped = f"; {column} is read from the field {keys[column]!r}" if column in keys else ""
        raise ContractError(source, f"{first['msg']} (got {shown(first.get('input'))}){mapped}", row=line_no,
                            column=column, unit=unit) from exc


def iter_jsonl_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line. Undecodable bytes are kept as lone surrogates, the one policy of
    every reader: an id holding them is refused by name, a turn's text is scored with U+FFFD in their place."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, line


LONG_FORM_COLUMNS = ["conversation_id", "turn_index", "speaker", "text"]
LONG_FORM_TURN_FIELDS = ("speaker", "text", "start_s", "end_s")
LONG_FORM_CONVERSATION_FIELDS = ("customer_id", "contact_id", "channel", "started_at")


def check_long_form_columns(columns: Sequence[str], source: str) -> None:
    """ContractError when a long-form transcripts table lacks a column it needs."""
    missing = [c for c in LONG_FORM_COLUMNS if c not in columns]
    if missing:
        raise ContractError(source, f"missing column(s) {', '.join(missing)}; long-form transcripts need "
                                    f"{', '.join(LONG_FORM_COLUMNS)}", column=missing[0])


def conversation_runs(ids: pd.Series) -> np.ndarray:
    """Where each conversation of a long-form id column starts: a conversation is a run of rows sharing one id, and
    a row without an id stands alone (to be refused). An id that comes back after another is a new conversation."""
    missing = ids.isna().to_numpy()
    text = np.array([str(v) for v in ids], dtype=object)  # not astype(str): pandas' Arrow strings refuse bad UTF-8
    if not len(text):
        return np.zeros(0, dtype=int)
    return np.flatnonzero(np.r_[True, (text[1:] != text[:-1]) | missing[1:] | missing[:-1]])


def reappearing_runs(ids: pd.Series, starts: np.ndarray) -> dict[int, int]:
    """For each run whose conversation_id already had an earlier run: its first row → the earlier run's first row."""
    first, again = {}, {}
    for start, value in zip(starts.tolist(), ids.to_numpy()[starts]):
        if present(value):
            again.update({start: first[str(value)]} if str(value) in first else {})
            first.setdefault(str(value), start)
    return again


def present(value: Any) -> bool:
    """Whether a cell holds a value (NaN, None, NA and NaT do not; a nested value does, to be judged later)."""
    return not (value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)))


def turn_number(value: Any) -> float:
    """A turn_index as a number to sort by; NaN for anything that is not one (a bool, a list, text that is not a
    number)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.number)):
        return math.nan
    try:
        return float(value)
    except (ValueError, OverflowError):
        return math.nan


def long_form_record(turns: pd.DataFrame, source: str, row: int, keys: Optional[Keys] = None) -> dict:
    """One conversation's rows (one per turn, any order, the first at file row `row`) as a transcripts-contract record,
    turns in turn_index order, customer_id and contact_id read from the columns `keys` names; ContractError when it
    has no conversation_id or a turn_index is not a number."""
    head = turns.iloc[0]
    if not present(head["conversation_id"]):
        raise ContractError(source, "missing value, expected a conversation_id", row=row, column="conversation_id")
    order = np.array([turn_number(v) for v in turns["turn_index"]], dtype=float)
    if not np.isfinite(order).all():
        bad = turns["turn_index"].iloc[int(np.flatnonzero(~np.isfinite(order))[0])]
        raise ContractError(source, f"got {shown(bad)}, expected a whole number", row=row, column="turn_index")
    turns = turns.iloc[np.argsort(order, kind="stable")]
    turn_fields = [c for c in LONG_FORM_TURN_FIELDS if c in turns.columns]
    columns = {field: (keys or {}).get(field, field) for field in LONG_FORM_CONVERSATION_FIELDS}
    conversation_fields = {f: c for f, c in columns.items() if c in turns.columns}
    return {"conversation_id": head["conversation_id"],
            **{f: head[c] for f, c in conversation_fields.items() if present(head[c])},
            "turns": [{k: v for k, v in turn.items() if present(v)} for turn in turns[turn_fields].to_dict("records")]}


def long_form_runs(frame: pd.DataFrame) -> Iterator[tuple[int, pd.DataFrame]]:
    """(position of its first row, its rows) for each conversation of a long-form table."""
    starts = conversation_runs(frame["conversation_id"])
    for begin, end in zip(starts, [*starts[1:], len(frame)]):
        yield int(begin), frame.iloc[begin:end]


def long_form_conversation(turns: pd.DataFrame, source: str, row: int, earlier_row: Optional[int] = None,
                           keys: Optional[Keys] = None) -> Conversation:
    """One conversation's long-form rows (the first at file row `row`) as a Conversation, or ContractError; with
    `earlier_row`, its id already had rows there, and splitting or merging the two would both be guesses."""
    if earlier_row is not None:
        raise ContractError(source, f"conversation_id {shown(turns.iloc[0]['conversation_id'])} already had rows from "
                                    f"row {earlier_row}; the rows of one conversation must be contiguous (sort the "
                                    f"file by conversation_id)", row=row, column="conversation_id")
    return conversation_from_record(long_form_record(turns, source, row, keys), source, row, unit="row")


def check_long_form_keys(keys: Optional[Keys], source: str) -> None:
    """UsageError when `keys` maps the conversation_id of long-form transcripts: their rows are grouped into
    conversations by that column before any record is read, so it must be named so."""
    if "conversation_id" in (keys or {}):
        raise UsageError(f"{source}: long-form transcripts group their turns by the conversation_id column; rename "
                         f"the column {keys['conversation_id']!r} to conversation_id instead of mapping it")


def _conversations_from_long_parquet(path: PathLike, keys: Optional[Keys] = None) -> list[Conversation]:
    """Long-form transcripts (one row per turn, each conversation's rows together) as conversations; the first bad
    one raises."""
    check_long_form_keys(keys, str(path))
    frame = read_table(path)
    check_long_form_columns(frame.columns, str(path))
    again = reappearing_runs(frame["conversation_id"], conversation_runs(frame["conversation_id"]))
    return [long_form_conversation(turns, str(path), begin + 1, again[begin] + 1 if begin in again else None, keys)
            for begin, turns in long_form_runs(frame)]


def read_transcripts(path: PathLike, keys: Optional[Keys] = None) -> list[Conversation]:
    """All conversations of a JSON Lines (or long-form Parquet) file, their contract keys read from the fields `keys`
    names; the first bad record raises ContractError."""
    path = plain_file(path)
    if path.stat().st_size == 0:
        raise ContractError(str(path), "the file is empty")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _conversations_from_long_parquet(path, keys)
    return [conversation_from_json(line, str(path), line_no, keys) for line_no, line in iter_jsonl_lines(path)]


def write_transcripts(conversations: Sequence[Union[Conversation, dict]], path: PathLike) -> Path:
    """Conversations written as JSON Lines, one per line, in the transcripts contract."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for conversation in conversations:
            record = conversation.model_dump(exclude_none=True) if isinstance(conversation, Conversation) else conversation
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
