"""The flags stage: tonight's customers selected by the rule, drift against the training profiles, the flagged list written."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pandas as pd

from carelens.data.spreadsheet import write_csv
from carelens.inference.api import Scorer
from carelens.inference.contacts import CONTEXT_COLUMNS, PREDICTION_COLUMNS, MissingConversations
from carelens.inference.nightly.layout import FLAGGED_CSV, FLAGGED_PARQUET, PREDICTION_DTYPES, PREDICTIONS
from carelens.inference.nightly.plan import Run
from carelens.inference.reasons import evidence_text
from carelens.inference.nightly.storage import (
    atomic_path, commit_stage, discarded_list, done_keys, finished_stage, read_parts, write_parquet,
)
from carelens.inference.selection import ranked_customers, selection_rule
from carelens.models.drift import MIN_DRIFT_ROWS, PSI_WARNING, drift_row, feature_drift
from carelens.models.names import TABULAR_MODELS
from carelens.models.performance_estimate import performance_estimates, within_spread


#: Tonight's flagged share of contacts may range from half to twice the training share before it is a warning.
FLAG_SHARE_BAND = (0.5, 2.0)


def _score_drift(scorer: Scorer, predictions: pd.DataFrame) -> list[dict]:
    """Per model: PSI of tonight's risks against the held-out risks at training, and the flagged share of contacts
    tonight against the training share (outside half to twice it is a shift)."""
    rows = []
    for name in TABULAR_MODELS:
        profile = scorer.metadata[name].get("risk_profile")
        if not profile:
            continue
        share, trained = float(predictions[f"{name}_flagged"].mean()), profile["flagged_share"]
        low, high = FLAG_SHARE_BAND
        rows.append({**drift_row(f"{name}_risk", profile["distribution"], predictions[f"{name}_risk"]),
                     "flagged_share": share, "training_flagged_share": trained,
                     "share_shifted": not (low * trained <= share <= high * trained)})
    return rows


#: How many of the features and scores that moved most a drift warning names.
NAMED_SHIFTS = 3


def _drift_warnings(drift: Sequence[dict], contacts: int) -> list[str]:
    """The night's drift in one line: how many features and scores moved beyond PSI_WARNING, the NAMED_SHIFTS that
    moved most, and each model whose flagged share left the training band; on fewer than MIN_DRIFT_ROWS contacts, that
    drift was not measured."""
    if 0 < contacts < MIN_DRIFT_ROWS:
        return [f"drift not measured: {contacts:,} contacts tonight, and PSI on fewer than {MIN_DRIFT_ROWS} is noise"]
    moved = sorted((row for row in drift if row["shifted"]), key=lambda row: -row["psi"])
    shares = [f"the {row['feature'].removesuffix('_risk')} model flagged {row['flagged_share']:.1%} of contacts against "
              f"{row['training_flagged_share']:.1%} at training" for row in drift if row.get("share_shifted")]
    if not moved and not shares:
        return []
    named = ", ".join(f"{row['feature']} {row['psi']:.2f}" for row in moved[:NAMED_SHIFTS]) + \
        (f" and {len(moved) - NAMED_SHIFTS} more" if len(moved) > NAMED_SHIFTS else "")
    parts = [*([f"{len(moved)} of {len(drift)} features and scores differ from the training data (PSI above "
                f"{PSI_WARNING}: {named})"] if moved else []), *shares]
    return [f"drift: {'; '.join(parts)}; consider retraining (every PSI is in summary.html)"]


def _strayed(name: str, value: Optional[float], held_out: float, spread: list) -> list[str]:
    """'precision 41% against 66% at training (spread 58%–74%)' when the estimate left its spread; else nothing."""
    if within_spread(value, spread):
        return []
    return [f"{name} {value:.0%} against {held_out:.0%} at training (spread {spread[0]:.0%}–{spread[1]:.0%})"]


def performance_warnings(estimates: Sequence[dict]) -> list[str]:
    """The night's expected performance in one line: each model whose expected precision or recall of its flags left
    the training spread, with both figures and the spread."""
    parts = [f"the {e['model']} model's {e['flagged']:,} flagged contacts: expected " + ", ".join(
        [*_strayed("precision", e["expected_precision"], e["held_out_expected_precision"], e["precision_spread"]),
         *_strayed("recall", e["expected_recall"], e["held_out_expected_recall"], e["recall_spread"])])
        for e in estimates if not e["within_spread"]]
    if not parts:
        return []
    return [f"expected performance: {'; '.join(parts)}; tonight's list does not perform as it did at "
            f"training; consider retraining (every estimate is in summary.html)"]


def ranked_warnings(run: Run, scorer: Scorer, flags: dict) -> list[str]:
    """Every warning of the night, those that change tonight's list most first: contacts scored without their
    conversations, then how the models ran (a runtime that fell back, models that disagree on lineage), then drift."""
    return [*flags["warnings"], *run.warnings, *scorer.warnings, *flags.get("drift_warnings", [])]


def write_flagged_csv(flagged: pd.DataFrame, target: Path) -> None:
    """The flagged customers as the CSV a supervisor opens in a spreadsheet: reasons joined into one cell, the turns
    they stand on into another, every text cell inert (see `write_csv`)."""
    with atomic_path(target) as temporary:
        # As Python objects: pandas' Arrow strings cannot hold a lone surrogate that an id or a reason may carry.
        reasons = pd.Series(["; ".join(reasons) for reasons in flagged["reasons"]], index=flagged.index, dtype=object)
        evidence = pd.Series([evidence_text(cited) for cited in flagged["evidence"]], index=flagged.index, dtype=object)
        write_csv(flagged.assign(reasons=reasons, evidence=evidence), temporary)


def _write_flags(run: Run, scorer: Scorer, predictions: pd.DataFrame, customers: pd.DataFrame,
                 joins: Optional[dict]) -> tuple[dict, pd.DataFrame]:
    """(what the stage records: the rule used, how many customers each model alone would flag, drift, the expected
    precision and recall of each model's flags (`performance_estimates`) and warnings;
    the flagged customers), after writing these to flagged.parquet and flagged.csv, riskiest first. With the run's
    `strict`, answered contacts without conversation features raise MissingConversations instead of a warning that
    says, from `joins`, why their conversations did not match."""
    spec = run.spec
    gap = scorer.missing_conversations(predictions, joins)
    if gap and spec.strict:
        raise MissingConversations(gap)
    flagged = scorer.flagged_customers(customers, spec.capacity, spec.threshold)
    write_parquet(flagged, run.out / FLAGGED_PARQUET)
    write_flagged_csv(flagged, run.out / FLAGGED_CSV)
    # A night with too few predictions has no distribution to compare: drift is left out, not computed over noise.
    drift = [*feature_drift(scorer.profile["distributions"], predictions), *_score_drift(scorer, predictions)] \
        if len(predictions) >= MIN_DRIFT_ROWS else []
    performance = performance_estimates(scorer.metadata, predictions)
    return {"counts": {"in": len(predictions), "out": len(predictions), "dead": 0, "customers": len(customers),
                       "flagged": len(flagged)},
            "rule": selection_rule(spec.capacity, spec.threshold),
            "alone": {name: int(customers[f"{name}_flagged"].sum()) for name in TABULAR_MODELS},
            "drift": drift, "expected_performance": performance, "warnings": [gap] if gap else [],
            "drift_warnings": [*_drift_warnings(drift, len(predictions)), *performance_warnings(performance)]}, flagged


def committed_predictions(out: Path, scorer: Scorer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every committed per-contact prediction with the features it was made from, in input order; each customer's
    riskiest contact, riskiest first); empty when no contact could be predicted (every row dead-lettered, every file
    rejected), which is a night to report, not a missing stage."""
    columns = [*PREDICTION_COLUMNS, *CONTEXT_COLUMNS, *[f for f in scorer.features if f not in PREDICTION_COLUMNS]]
    predictions = read_parts(out, PREDICTIONS, columns) if done_keys(out, PREDICTIONS) else \
        pd.DataFrame(columns=columns).astype({**dict.fromkeys(columns, float), **PREDICTION_DTYPES})
    return predictions, ranked_customers(predictions)


class Tonight(NamedTuple):
    """What the flags stage hands the summary in memory: every prediction, each customer's riskiest contact, the
    flagged list."""

    predictions: pd.DataFrame
    customers: pd.DataFrame
    flagged: pd.DataFrame


def flags_stage(run: Run, scorer: Scorer, joins: Optional[dict] = None) -> tuple[dict, Optional[Tonight]]:
    """(what the flags stage recorded, tonight's tables when it ran now); a stage its marker says is done under the
    same rule is not run again (None). The list and summary of an earlier rule are removed first; `joins` (how the
    conversations met the contacts) words the warning about contacts without one."""
    flags = finished_stage(run.out, "flags", run.spec.flag_key)
    if flags is not None:
        return flags, None
    discarded_list(run.out)
    predictions, customers = committed_predictions(run.out, scorer)
    recorded, flagged = _write_flags(run, scorer, predictions, customers, joins)
    return commit_stage(run.out, "flags", run.spec.flag_key, recorded), Tonight(predictions, customers, flagged)
