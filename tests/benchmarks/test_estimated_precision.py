"""How close the expected precision and recall of tonight's flags (estimated from calibrated risks, without labels) come
to the realised ones on generated days whose labels are known: normal days, a day whose inputs drifted, and a day whose
outcomes drifted for the same inputs (which an estimate from risks cannot see)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carelens.data.contracts import CATEGORICAL_FEATURES, INTERACTION_FEATURES
from carelens.data.synthetic import GeneratorParams, generate
from carelens.inference.api import Scorer
from carelens.models.performance_estimate import performance_estimates
from carelens.models.registry import Registry
from carelens.training.tabular import TASKS, LabelledData, publish_tabular, train_tabular
from harness import record

HISTORY, HISTORY_SEED = 4_000, 0
DAY = 2_000
NORMAL_SEEDS = (101, 102, 103, 104, 105)
#: More product problems and three times the wait: the inputs move, the relation to the outcome stays.
INPUTS_DRIFTED = GeneratorParams(problem_share=0.7, mean_answer_time_s=90.0)
#: A problem met by ineffective care is re-purchased 15% of the time instead of 32%: the same inputs, more churn.
OUTCOMES_DRIFTED = GeneratorParams(repurchase_problem_ineffective=0.15)
DAYS = [*((f"normal (seed {seed})", seed, None) for seed in NORMAL_SEEDS),
        ("inputs drifted (seed 201)", 201, INPUTS_DRIFTED), ("outcomes drifted (seed 202)", 202, OUTCOMES_DRIFTED)]


def published_scorer(root) -> Scorer:
    """Churn and retaliation models (logistic) trained on a generated history without transcripts, loaded."""
    data = generate(HISTORY, seed=HISTORY_SEED, transcripts=False)
    frame = data.interactions.merge(data.labels, on="contact_id")
    for name in ("churn", "retaliation"):
        labelled = LabelledData(frame, TASKS[name].target, list(INTERACTION_FEATURES), list(CATEGORICAL_FEATURES),
                                "synthetic")
        publish_tabular(train_tabular(labelled, TASKS[name], learner="logistic", spread_seeds=1), Registry(root))
    return Scorer.load(root, load_encoder=False)


def realised(positive: np.ndarray, flagged: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the flags counted on the labels."""
    hits = float((positive & flagged).sum())
    return hits / max(flagged.sum(), 1), hits / max(positive.sum(), 1)


def day_rows(scorer: Scorer, label: str, seed: int, params) -> list[dict]:
    """Per model, the day's flags: estimated and realised precision and recall, and whether the estimate warned."""
    day = generate(DAY, seed=seed, transcripts=False, params=params)
    predictions = scorer.contact_predictions(scorer.contact_table(day.interactions))
    labels = predictions[["contact_id"]].merge(day.labels, on="contact_id", how="left")
    positives = {"churn": labels["churned"].astype(bool).to_numpy(),
                 "retaliation": (labels["retaliation"] != "none").to_numpy()}
    rows = []
    for estimate in performance_estimates(scorer.metadata, predictions):
        name = estimate["model"]
        precision, recall = realised(positives[name], predictions[f"{name}_flagged"].to_numpy(bool))
        rows.append({"day": label, "model": name, "flagged": estimate["flagged"],
                     "est. precision": estimate["expected_precision"], "real precision": precision,
                     "precision error": estimate["expected_precision"] - precision,
                     "est. recall": estimate["expected_recall"], "real recall": recall,
                     "recall error": estimate["expected_recall"] - recall,
                     "held-out precision": estimate["held_out_precision"],
                     "held-out est. precision": estimate["held_out_expected_precision"],
                     "held-out recall": estimate["held_out_recall"],
                     "held-out est. recall": estimate["held_out_expected_recall"],
                     "within spread": estimate["within_spread"]})
    return rows


@pytest.mark.slow
def test_expected_precision_tracks_the_realised_precision(tmp_path):
    scorer = published_scorer(tmp_path / "registry")
    rows = [row for label, seed, params in DAYS for row in day_rows(scorer, label, seed, params)]
    normal = pd.DataFrame([r for r in rows if r["day"].startswith("normal")])
    summary = {model: {"mean |precision error|": float(group["precision error"].abs().mean()),
                       "mean |recall error|": float(group["recall error"].abs().mean())}
               for model, group in normal.groupby("model")}
    record("performance_estimate", {"history": HISTORY, "history_seed": HISTORY_SEED, "day": DAY,
                                    "learner": "logistic", "days": [label for label, _, _ in DAYS],
                                    "text": "synthetic contacts without transcripts"},
           rows, ", ".join(f"{n} {v}" for n, v in scorer.versions.items()), normal_days=summary)
    # Days like the history stay within the training spread; the day whose inputs drifted leaves it.
    assert normal["within spread"].all()
    assert not all(r["within spread"] for r in rows if r["day"].startswith("inputs drifted"))
