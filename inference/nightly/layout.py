"""What a run reads and writes, by name: input suffixes and formats, output files and folders, the features schema, and the errors of a run that would mix two runs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import pyarrow as pa

from carelens.data.errors import CareLensError
from carelens.models.conversation_features import AGENT, DRIVER, EVIDENCE, FEATURE_COLUMNS, KEYS

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
                  *(pa.field(k, pa.string()) for k in [*KEYS, AGENT]), *(pa.field(f, pa.float64()) for f in FEATURE_COLUMNS),
                  pa.field(EVIDENCE, pa.string()), pa.field(DRIVER, pa.string())]


FEATURES_SCHEMA = pa.schema(FEATURE_FIELDS)


class RunConflict(CareLensError, ValueError):
    """The output folder holds a run over other inputs, models or chunking; resuming it would mix two runs."""


class InputChanged(CareLensError, RuntimeError):
    """An input file changed or disappeared after the run was planned; reading on would mix two versions of it."""


PREDICTION_DTYPES = {"customer_id": str, "contact_id": str, "churn_risk": float, "retaliation_risk": float,
                     "retaliation_type": str, "churn_flagged": bool, "retaliation_flagged": bool, AGENT: str,
                     EVIDENCE: str, DRIVER: str, "inferred_csat": float}


PathLike = Union[str, Path]
