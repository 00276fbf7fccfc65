"""Readers for CSV, Parquet and JSON Lines files that check every record against the data contracts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import pandas as pd
import pyarrow.parquet as pq
from pydantic import ValidationError

from carelens.data.contracts import (
    INTERACTIONS, LABELS, ContractError, Conversation, TableContract, validated,
)

PathLike = Union[str, Path]
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def read_table(path: PathLike) -> pd.DataFrame:
    """A CSV or Parquet file as an untyped DataFrame, or ContractError when it is missing, empty or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(str(path), "no such file")
    if path.stat().st_size == 0:
        raise ContractError(str(path), "the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path).to_pandas()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeDecodeError) as exc:
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


def conversation_from_json(line: str, source: str, line_no: int) -> Conversation:
    """One JSON Lines record as a Conversation, or ContractError naming the line and the field at fault."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ContractError(source, f"not valid JSON ({exc.msg} at character {exc.pos})", row=line_no,
                            unit="line") from exc
    return conversation_from_record(record, source, line_no)


def conversation_from_record(record: object, source: str, line_no: Optional[int]) -> Conversation:
    """A parsed record as a Conversation, or ContractError naming the field and what it should hold."""
    if not isinstance(record, dict):
        raise ContractError(source, f"expected a JSON object (a conversation), got {type(record).__name__}",
                            row=line_no, unit="line")
    try:
        return Conversation.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        column = ".".join(str(p) for p in first["loc"])
        raise ContractError(source, f"{first['msg']} (got {first.get('input')!r})", row=line_no, column=column,
                            unit="line") from exc


def iter_jsonl_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line; undecodable bytes are replaced so the line still reports."""
    with open(path, encoding="utf-8", errors="replace") as handle:
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


def long_form_record(turns: pd.DataFrame) -> dict:
    """One conversation's rows (one per turn, any order) as a transcripts-contract record, turns in turn order."""
    turns = turns.sort_values("turn_index", kind="stable")
    head = turns.iloc[0]
    turn_fields = [c for c in LONG_FORM_TURN_FIELDS if c in turns.columns]
    conversation_fields = [c for c in LONG_FORM_CONVERSATION_FIELDS if c in turns.columns]
    return {"conversation_id": str(head["conversation_id"]),
            **{c: head[c] for c in conversation_fields if pd.notna(head[c])},
            "turns": [{k: v for k, v in row.items() if pd.notna(v)} for row in turns[turn_fields].to_dict("records")]}


def _conversations_from_long_parquet(path: PathLike) -> list[Conversation]:
    """Long-form transcripts (one row per turn) grouped back into conversations in turn order."""
    frame = read_table(path)
    check_long_form_columns(frame.columns, str(path))
    return [conversation_from_record(long_form_record(turns), str(path), int(turns.index.min()) + 1)
            for _, turns in frame.groupby("conversation_id", sort=True)]


def read_transcripts(path: PathLike) -> list[Conversation]:
    """All conversations of a JSON Lines (or long-form Parquet) file; the first bad record raises ContractError."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(str(path), "no such file")
    if path.stat().st_size == 0:
        raise ContractError(str(path), "the file is empty")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _conversations_from_long_parquet(path)
    return [conversation_from_json(line, str(path), line_no) for line_no, line in iter_jsonl_lines(path)]


def write_transcripts(conversations: Sequence[Union[Conversation, dict]], path: PathLike) -> Path:
    """Conversations written as JSON Lines, one per line, in the transcripts contract."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for conversation in conversations:
            record = conversation.model_dump(exclude_none=True) if isinstance(conversation, Conversation) else conversation
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
