"""The nightly job: the day's transcripts and contacts → features → predictions → flagged customers → summary → manifest.

Each stage runs once and reads the committed output of the one before: `plan` (hash inputs, cut units) → `features`
(the transcript model, unit by unit) → `predictions` (churn and retaliation per contact, chunk by chunk) → `flags`
(per customer, reasons for the flagged only, drift against the training profiles) → `summary` (summary.html) →
`_manifest.json`. The scoring stages commit unit by unit; `flags` and `summary` commit their files atomically and
then a marker under `_stages/`, so a run killed anywhere finishes, when run again, with the same outputs.
"""
from __future__ import annotations

import gc
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import pandas as pd

from carelens.data.errors import UsageError
from carelens.data.spreadsheet import write_csv
from carelens.inference.api import (
    PREDICTION_COLUMNS, MissingConversations, Scorer, checked_selection, ranked_customers, selection_rule,
)
from carelens.inference.batch import (
    DEAD_LETTER, FLAGGED_CSV, FLAGGED_PARQUET, MANIFEST, PREDICTION_DTYPES, PREDICTIONS, STAGES, SUMMARY, Run,
    atomic_path, done_keys, finish, now, planned_run, predict_contacts, read_parts, scored_units, tabular_scorer,
    write_parquet, write_text,
)
from carelens.models.drift import PSI_WARNING, drift_row, feature_drift
from carelens.models.registry import file_sha256
from carelens.models.scoring import ScoringOptions

PathLike = Union[str, Path]
TABULAR = ("churn", "retaliation")
#: Tonight's flagged share of contacts may range from half to twice the training share before it is a warning.
FLAG_SHARE_BAND = (0.5, 2.0)


@contextmanager
def timed(timings: dict, stage: str) -> Iterator[None]:
    """Record how long the block took under `stage`, in seconds."""
    clock = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - clock, 3)


def stage_marker(out: Path, stage: str) -> Path:
    return out / STAGES / f"{stage}.json"


def finished_stage(out: Path, stage: str, key: dict) -> Optional[dict]:
    """What a committed stage recorded, when its marker exists and was made with the same `key`; else None."""
    marker = stage_marker(out, stage)
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    return recorded if recorded.get("key") == key else None


def commit_stage(out: Path, stage: str, key: dict, result: dict) -> dict:
    """Mark a stage done (atomically, after its outputs): a re-run with the same key skips it."""
    marker = stage_marker(out, stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, **result}
    write_text(json.dumps(record, indent=2, default=str), marker)
    return record


# -- drift --------------------------------------------------------------------------------------------------------

def score_drift(scorer: Scorer, predictions: pd.DataFrame) -> list[dict]:
    """Per model: PSI of tonight's risks against the held-out risks at training, and the flagged share of contacts
    tonight against the training share (outside half to twice it is a shift)."""
    rows = []
    for name in TABULAR:
        profile = scorer.metadata[name].get("risk_profile")
        if not profile:
            continue
        share, trained = float(predictions[f"{name}_flagged"].mean()), profile["flagged_share"]
        low, high = FLAG_SHARE_BAND
        rows.append({**drift_row(f"{name}_risk", profile["distribution"], predictions[f"{name}_risk"]),
                     "flagged_share": share, "training_flagged_share": trained,
                     "share_shifted": not (low * trained <= share <= high * trained)})
    return rows


def drift_warnings(drift: Sequence[dict]) -> list[str]:
    """Each shift in words, naming the feature (or score) and how far it moved."""
    warnings = [f"{row['feature']}: PSI {row['psi']:.2f} against the training profile (above {PSI_WARNING}): "
                f"tonight's distribution differs from the training data; consider retraining"
                for row in drift if row["shifted"]]
    warnings += [f"{row['feature'].removesuffix('_risk')} model flagged {row['flagged_share']:.1%} of tonight's contacts, "
                 f"against {row['training_flagged_share']:.1%} of the held-out contacts at training (outside half to "
                 f"twice that share)" for row in drift if row.get("share_shifted")]
    return warnings


# -- the stages after scoring -------------------------------------------------------------------------------------

def write_flagged_csv(flagged: pd.DataFrame, target: Path) -> None:
    """The flagged customers as the CSV a supervisor opens in a spreadsheet: reasons joined into one cell, every text
    cell inert (see `write_csv`)."""
    with atomic_path(target) as temporary:
        # As Python objects: pandas' Arrow strings cannot hold a lone surrogate that an id or a reason may carry.
        reasons = pd.Series(["; ".join(reasons) for reasons in flagged["reasons"]], index=flagged.index, dtype=object)
        write_csv(flagged.assign(reasons=reasons), temporary)


def flag_stage(out: Path, scorer: Scorer, capacity: Optional[int], threshold: Optional[float], strict: bool,
               predictions: pd.DataFrame, customers: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """(what the stage records: the rule used, how many customers each model alone would flag, drift and warnings;
    the flagged customers), after writing these to flagged.parquet and flagged.csv, riskiest first. With `strict`,
    answered contacts without conversation features raise MissingConversations instead of a warning."""
    gap = scorer.missing_conversations(predictions)
    if gap and strict:
        raise MissingConversations(gap)
    flagged = scorer.flagged_customers(customers, capacity, threshold)
    write_parquet(flagged, out / FLAGGED_PARQUET)
    write_flagged_csv(flagged, out / FLAGGED_CSV)
    # A night with no prediction has no distribution to compare: drift is left out, not computed over nothing.
    drift = [*feature_drift(scorer.profile["distributions"], predictions), *score_drift(scorer, predictions)] \
        if len(predictions) else []
    return {"counts": {"in": len(predictions), "out": len(predictions), "dead": 0, "customers": len(customers),
                       "flagged": len(flagged)},
            "rule": selection_rule(capacity, threshold),
            "alone": {"churn": int(customers["churn_flagged"].sum()),
                      "retaliation": int(customers["retaliation_flagged"].sum())},
            "drift": drift, "warnings": [*drift_warnings(drift), *([gap] if gap else [])]}, flagged


def summary_stage(run: Run, scorer: Scorer, flags: dict, flagged: pd.DataFrame, predictions: pd.DataFrame,
                  customers: pd.DataFrame) -> dict:
    """summary.html: tonight's facts (the run's start among them) and rule, the top flagged customers and why, risk
    distributions, actions, empathy vs risk, and whether tonight's data looks like the training data."""
    from carelens.inference.summary import nightly_summary
    facts = [{"item": "run started", "value": run.started},
             {"item": "models", "value": ", ".join(f"{n} {v}" for n, v in scorer.versions.items())},
             {"item": "contacts scored", "value": f"{len(predictions):,} ({flags['counts']['customers']:,} customers)"},
             {"item": "rule", "value": flags["rule"]},
             {"item": "flagged", "value": f"{len(flagged):,} customers"},
             *({"item": f"{name} model alone would flag", "value": f"{count:,} customers"}
               for name, count in flags["alone"].items())]
    page = nightly_summary(customers, flagged, predictions, facts, flags["drift"],
                           [*scorer.warnings, *flags["warnings"]])
    write_text(page, run.out / SUMMARY)
    return {"path": str(run.out / SUMMARY)}


def committed_predictions(out: Path, scorer: Scorer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every committed per-contact prediction with the features it was made from, in input order; each customer's
    riskiest contact, riskiest first); empty when no contact could be predicted (every row dead-lettered, every file
    rejected), which is a night to report, not a missing stage."""
    columns = [*PREDICTION_COLUMNS, *[f for f in scorer.features if f not in PREDICTION_COLUMNS]]
    predictions = read_parts(out, PREDICTIONS, columns) if done_keys(out, PREDICTIONS) else \
        pd.DataFrame(columns=columns).astype({**dict.fromkeys(columns, float), **PREDICTION_DTYPES})
    return predictions, ranked_customers(predictions)


def discarded_list(out: Path) -> None:
    """The manifest and the list and summary it dated, removed before a run makes them anew under another rule: a
    list that outlived its manifest would look current."""
    for name in (MANIFEST, SUMMARY, FLAGGED_CSV, FLAGGED_PARQUET):
        (out / name).unlink(missing_ok=True)


# -- the job ------------------------------------------------------------------------------------------------------

def run_nightly(transcripts: Sequence[PathLike], interactions: Sequence[PathLike], out: PathLike,
                registry: Optional[PathLike] = None, version: Union[str, dict] = "latest",
                capacity: Optional[int] = None, threshold: Optional[float] = None, engine: str = "local",
                chunk_size: int = 1_000, restart: bool = False, show_progress_bar: bool = True,
                ray_address: Optional[str] = None, workers: Optional[int] = None,
                scoring: ScoringOptions = ScoringOptions(), format: str = "auto", strict: bool = False,
                redact: bool = False) -> dict:
    """Run (or resume) the nightly job into `out`; returns the manifest. Flags the `capacity` riskiest customers, or
    those at risk >= `threshold`, or (neither) those either model's own threshold flags. The manifest's `failures`
    name every input a stage produced nothing for; with `strict`, answered contacts without conversation features
    fail the run (MissingConversations) instead of warning; with `redact`, personal data in transcript text is masked
    before scoring and in every output."""
    checked_selection(capacity, threshold)
    if not interactions:
        raise UsageError("the nightly job needs the day's interactions (--interactions) to flag customers")
    timings: dict[str, float] = {}
    with timed(timings, "plan"):
        run = planned_run(transcripts, out, registry, version, interactions, chunk_size, restart, format, redact,
                          scoring)
    with run:
        with timed(timings, "load"):
            scorer = tabular_scorer(run, load_encoder=engine == "local" and bool(run.pending), scoring=scoring)
        with timed(timings, "features"):
            scored = scored_units(run, engine, show_progress_bar, ray_address, workers, scoring, scorer.transcripts)
            # The encoder's night is over: its weights, runtime and cache go back before the day's predictions are
            # read whole for flagging, so that the job's peak does not grow with the day.
            scorer.transcripts = None
            gc.collect()
        with timed(timings, "predictions"):
            table_counts = predict_contacts(scorer, run, chunk_size)
        scored_manifest = finish(run, engine, table_counts, scored, write=False)
        # The plan needs no place in the key: `planned_run` refuses an `out` that holds a run of another plan.
        key = {"capacity": capacity, "threshold": threshold, "strict": strict}
        day = None
        with timed(timings, "flags"):
            flags, flagged = finished_stage(run.out, "flags", key), None
            if flags is None:
                discarded_list(run.out)
                day = committed_predictions(run.out, scorer)
                recorded, flagged = flag_stage(run.out, scorer, capacity, threshold, strict, *day)
                flags = commit_stage(run.out, "flags", key, recorded)
        with timed(timings, "summary"):
            if finished_stage(run.out, "summary", key) is None:
                # A resumed run reads back what the earlier stages committed; an uninterrupted one hands it on in
                # memory.
                day = committed_predictions(run.out, scorer) if day is None else day
                flagged = pd.read_parquet(run.out / FLAGGED_PARQUET) if flagged is None else flagged
                commit_stage(run.out, "summary", key, summary_stage(run, scorer, flags, flagged, *day))
        return nightly_manifest(run, scored_manifest, flags, scorer, timings)


def nightly_manifest(run: Run, scored_manifest: dict, flags: dict, scorer: Scorer, timings: dict) -> dict:
    """The scoring manifest with the later stages: counts and in = out + dead per stage, the rule, per-model flag
    counts, drift, warnings, timings per stage; written last, atomically."""
    kinds = scored_manifest["by_input"]
    planned = len(run.inputs) + len(run.tables)
    rejected = len(scored_manifest["rejected_inputs"])
    stages = {"plan": {"in": planned, "out": planned - rejected, "dead": rejected},
              "features": kinds["transcripts"], "predictions": kinds["interactions"], "flags": flags["counts"]}
    manifest = {**scored_manifest, "ended_at": now(), "elapsed_s": round(time.perf_counter() - run.clock, 3),
                "stages": stages,
                "balanced": all(s["in"] == s["out"] + s["dead"] for s in stages.values()),
                "rule": flags["rule"], "flagged": flags["counts"]["flagged"], "flagged_by_model_alone": flags["alone"],
                "drift": [{k: row[k] for k in ("feature", "psi", "shifted") if k in row} for row in flags["drift"]],
                # The runtime's fallback reaches both the plan and the Scorer: said once.
                "warnings": list(dict.fromkeys([*scored_manifest["warnings"], *scorer.warnings, *flags["warnings"]])),
                "timings_s": timings,
                "outputs": {**scored_manifest["outputs"], "flagged": [FLAGGED_PARQUET, FLAGGED_CSV], "summary": SUMMARY},
                # What this manifest dates: a file whose digest differs is not this run's.
                "output_sha256": {name: file_sha256(run.out / name) for name in (FLAGGED_PARQUET, FLAGGED_CSV,
                                                                                  SUMMARY, DEAD_LETTER)}}
    write_text(json.dumps(manifest, indent=2, default=str), run.out / MANIFEST)
    return manifest

