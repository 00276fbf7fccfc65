"""The features stage for one unit: its conversations parsed, scored by the transcript model, bad records dead-lettered."""
from __future__ import annotations

import json
from typing import Optional, Union

import numpy as np
import pandas as pd

from carelens.data.adapters import abcd_conversation
from carelens.data.contracts import ContractError, Conversation
from carelens.data.readers import Keys, conversation_from_json, long_form_conversation
from carelens.data.redaction import redacted, redacted_conversation, redacted_record
from carelens.inference.nightly.layout import FEATURES_SCHEMA
from carelens.inference.nightly.units import Unit, unit_records
from carelens.models.scoring import TranscriptPipeline, transcript_features


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


def parsed(unit: Unit, number: int, record: Union[str, dict, pd.DataFrame], keys: Optional[Keys] = None
           ) -> Union[Conversation, str]:
    """The record as a Conversation, its contract keys read from the fields `keys` names, or the contract's reason
    for refusing it."""
    try:
        if unit.kind == "abcd":
            return abcd_conversation(record, unit.path, number, keys)
        if unit.kind == "parquet":
            earlier = dict(unit.repeated).get(number - 1)
            return long_form_conversation(record, unit.path, number, None if earlier is None else earlier + 1, keys)
        return conversation_from_json(record, unit.path, number, keys)
    except ContractError as exc:
        return str(exc)


def _isolated_features(pipeline: TranscriptPipeline, conversations: list[Conversation]
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


def score_unit(pipeline: TranscriptPipeline, unit: Unit, redact: bool = False, keys: Optional[Keys] = None
               ) -> tuple[pd.DataFrame, list[dict]]:
    """(features of every conversation that parsed and scored, dead letters of the rest), in input order; with
    `redact`, personal data is masked before scoring and in the dead letters; `keys` as `parsed` takes them."""
    good, numbers, raw, dead = [], [], [], []
    for number, record in unit_records(unit):
        result = parsed(unit, number, record, keys)
        if isinstance(result, str):
            dead.append(dead_letter(unit.path, unit.kind, number, result, record, redact))
        else:
            good.append(redacted_conversation(result) if redact else result)
            numbers.append(number)
            raw.append(record)
    features = _feature_frame(pipeline, good)
    if features is None:
        frames, reasons = _isolated_features(pipeline, good)
        for number, record, reason in zip(numbers, raw, reasons):
            if reason is not None:
                dead.append(dead_letter(unit.path, unit.kind, number, reason, record, redact))
        keep = [r is None for r in reasons]
        numbers = [n for n, k in zip(numbers, keep) if k]
        features = pd.concat([f for f in frames if f is not None], ignore_index=True)
    features.insert(0, "line", np.asarray(numbers, dtype=np.int64))
    features.insert(0, "source", unit.path)
    return features[FEATURES_SCHEMA.names], dead


def _feature_frame(pipeline: TranscriptPipeline, conversations: list[Conversation]) -> Optional[pd.DataFrame]:
    """The conversations' features scored together, or None when that failed (so they are retried one by one)."""
    try:
        return transcript_features(pipeline, conversations)
    except Exception:  # noqa: BLE001 - retried conversation by conversation, where the failure gets its reason
        return None
