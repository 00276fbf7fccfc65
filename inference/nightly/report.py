"""What a run tells a person first: how the transcripts met the contacts, and which records were dropped and why."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow.parquet as pq

from carelens.inference.contacts import join_lines, join_report
from carelens.inference.nightly.layout import DEAD_LETTER, FEATURES, PREDICTIONS
from carelens.inference.nightly.storage import done_keys, read_parts

#: Dropped records shown of each kind (input and field); the rest are counted, and all are in dead_letter.jsonl.
SHOWN_PER_KIND = 3
#: The field a contract error names: "… column 'channel': …".
_FIELD = re.compile(r"column '([^']*)'")
#: Where a dead letter was read, by the key its entry uses: a table row, a JSON Lines line, an ABCD entry.
PLACES = ("row", "line", "entry")


def run_joins(out: Path, dead: list[tuple[str, dict]], keys: dict) -> Optional[dict]:
    """How the run's scored conversations met its predicted contacts (`join_report`), the contacts of its `dead`
    letters counted as dropped; None when it predicted none. Reads only the keys of each part (and whether a contact
    was abandoned, where the models read that)."""
    if not done_keys(out, PREDICTIONS):
        return None
    parts = sorted((out / PREDICTIONS).glob("*.parquet"))
    wanted = [c for c in ("contact_id", "abandoned") if c in pq.read_schema(parts[0]).names]
    contacts = read_parts(out, PREDICTIONS, wanted)
    conversations = read_parts(out, FEATURES, ["conversation_id", "contact_id"]) if done_keys(out, FEATURES) else \
        pd.DataFrame(columns=["conversation_id", "contact_id"])
    return join_report(conversations, contacts, _dropped_contact_ids(dead), keys.get("contact_id"))


def _dropped_contact_ids(dead: list[tuple[str, dict]]) -> set[str]:
    """The contact_id of each dropped contact whose record still names one."""
    ids = set()
    for what, entry in dead:
        record = _record(entry) if what == "contact" else {}
        if isinstance(record, dict) and record.get("contact_id") is not None:
            ids.add(str(record["contact_id"]))
    return ids


def _record(entry: dict) -> object:
    """A dead letter's record as it came, parsed back from its JSON text (or the text itself when it is not JSON)."""
    try:
        return json.loads(entry.get("record", ""))
    except ValueError:
        return entry.get("record")


def _field(entry: dict) -> str:
    """The field a dead letter's reason names as at fault, or 'record' when it names none."""
    found = _FIELD.search(str(entry.get("reason", "")))
    return found.group(1) if found else "record"


def _place(entry: dict) -> str:
    """'contacts.csv row 3': the file's name and where in it."""
    where = next((f"{key} {entry[key]}" for key in PLACES if key in entry), "")
    return f"{Path(str(entry['source'])).name} {where}".strip()


def _problem(entry: dict) -> str:
    """The reason without the file and place the line already names."""
    reason = str(entry.get("reason", ""))
    for prefix in (f"{entry['source']}: ", *(f"{key} {entry[key]}, " for key in PLACES if key in entry),
                   *(f"{key} {entry[key]}: " for key in PLACES if key in entry)):
        reason = reason.removeprefix(prefix)
    return reason


def dropped_records(dead: list[tuple[str, dict]]) -> list[dict]:
    """The run's dead letters by kind (contact or transcript, and the field at fault), most first: each kind's count
    and its first SHOWN_PER_KIND records as 'file row N: reason' (the records themselves stay in dead_letter.jsonl)."""
    kinds: dict[tuple[str, str], dict] = {}
    for what, entry in dead:
        kind = kinds.setdefault((what, _field(entry)), {"what": what, "field": _field(entry), "count": 0, "first": []})
        kind["count"] += 1
        if len(kind["first"]) < SHOWN_PER_KIND:
            kind["first"].append(f"{_place(entry)}: {_problem(entry)}")
    return sorted(kinds.values(), key=lambda k: -k["count"])


def counted(count: int, what: str) -> str:
    """'1 contact', '3 contacts'."""
    return f"{count:,} {what}{'s' if count != 1 else ''}"


def dropped_lines(dropped: list[dict], out: Path) -> list[str]:
    """The dropped records a person reads first: how many of each input, the first few of each kind with the reason,
    and where they all are."""
    if not dropped:
        return []
    totals = {what: sum(k["count"] for k in dropped if k["what"] == what) for what in ("contact", "transcript")}
    lines = [f"dropped {' and '.join(counted(n, what) for what, n in totals.items() if n)} (every one with its "
             f"reason in {out / DEAD_LETTER}):"]
    for kind in dropped:
        lines += [f"  {text}" for text in kind["first"]]
        if kind["count"] > len(kind["first"]):
            lines.append(f"  … and {counted(kind['count'] - len(kind['first']), 'more ' + kind['what'])} with a bad "
                         f"{kind['field']}")
    return lines


def first_lines(manifest: dict, out: Path) -> list[str]:
    """The lines a run's report opens with: how the transcripts met the contacts, and the records dropped and why."""
    joins = manifest.get("joins")
    return [*(join_lines(joins) if joins else []), *dropped_lines(manifest.get("dropped", []), out)]
