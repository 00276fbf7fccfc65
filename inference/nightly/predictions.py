"""The predictions stage: each contact of the interactions files validated once, joined to its conversation features and predicted."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import pyarrow.parquet as pq

from carelens.data.contracts import INTERACTIONS, ContractError, check_table
from carelens.data.errors import OutOfSpace
from carelens.data.readers import header_lines
from carelens.inference.api import Scorer
from carelens.inference.contacts import last_per_contact
from carelens.inference.nightly.features import dead_letter
from carelens.inference.nightly.layout import FEATURES, PREDICTION_DTYPES, PREDICTIONS
from carelens.inference.nightly.plan import Run
from carelens.inference.nightly.storage import commit_unit, done_keys, read_parts
from carelens.inference.nightly.units import check_unchanged, table_chunks
from carelens.models.conversation_features import AGENT, DRIVER, EVIDENCE, FEATURE_COLUMNS


def _saved_features(out: Path) -> pd.DataFrame:
    """Every committed conversation's contact_id and features (the last conversation of a contact wins)."""
    columns = ["contact_id", AGENT, *FEATURE_COLUMNS, EVIDENCE, DRIVER]
    return last_per_contact(read_parts(out, FEATURES, columns) if done_keys(out, FEATURES)
                            else pd.DataFrame(columns=columns))


def predict_contacts(scorer: Scorer, run: Run) -> dict:
    """Per contact of the run's interactions files, each read and validated once: churn and retaliation risk, type,
    flags and the features the models read, with the transcript features joined on contact_id; rows that break the
    contract go to the dead letters. Returns each file's rows read (or why it was rejected whole); InputChanged when a
    file is not the one the plan hashed."""
    features = _saved_features(run.out) if scorer.uses_transcripts else None
    numeric, categorical = scorer.extra_columns()
    # contact_id → the file it came first in, over every file and chunk: a contact is predicted once per run.
    done, seen, earlier = done_keys(run.out, PREDICTIONS), {}, {}
    for index, (path, stamp) in enumerate(zip(run.tables, run.table_stamps)):
        check_unchanged(path, stamp)
        rows = 0
        try:
            for chunk_no, chunk in enumerate(table_chunks(path, run.spec.chunk_size)):
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


def tabular_scorer(run: Run, load_encoder: bool = False) -> Optional[Scorer]:
    """The models of the plan (the encoder only with `load_encoder`, run as the run scores), checked to fit together
    before anything is scored, their large boosters compiled (`Scorer.compile_trees`: once per model and machine, the
    nights after load them); None when no interactions are to be predicted."""
    if not run.tables:
        return None
    scorer = Scorer.load(run.store, run.models, load_encoder=load_encoder, pinned=run.pinned, scoring=run.scoring)
    scorer.compile_trees()
    return scorer
