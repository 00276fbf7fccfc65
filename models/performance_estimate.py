"""Is tonight's list still as good as at training: the flags' precision and recall expected from calibrated risks."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from carelens.models.drift import MIN_DRIFT_ROWS
from carelens.models.names import TABULAR_MODELS

#: Standard errors either side of a held-out figure within which tonight's estimate is within the training spread
#: (about 95% of nights whose flags are as good as at training).
SPREAD_ERRORS = 2.0
#: The held-out figures of a model's metadata `metrics` an estimate is compared with; a model without them gets none.
HELD_OUT = ("rows", "positive_rate", "flagged_rate", "precision", "recall", "expected_precision", "expected_recall")


def expected_performance(risk: Sequence[float], flagged: Sequence[bool]) -> dict:
    """What calibrated risks expect of the flags when each contact's outcome is drawn with its own risk (the idea of
    NannyML's confidence-based performance estimation, CBPE): the contacts flagged, the positives expected among all
    (Σ risk), the expected precision (the mean risk of the flagged; None when none is) and the expected recall
    (Σ risk of the flagged / Σ risk; None when no positive is expected). No label is read: the estimate holds as long
    as the risks stay calibrated, which drift in the inputs alone does not break and a changed relation between
    inputs and outcome does."""
    risk, flagged = np.asarray(risk, float), np.asarray(flagged, bool)
    count, positives, caught = int(flagged.sum()), float(risk.sum()), float(risk[flagged].sum())
    return {"flagged": count, "expected_positives": positives,
            "expected_precision": caught / count if count else None,
            "expected_recall": caught / positives if positives > 0 else None}


def training_spread(held_out: float, held_out_count: float, tonight_count: float) -> tuple[float, float]:
    """The range, within [0, 1], that a proportion measured on `tonight_count` rows keeps on most nights when it is
    truly the `held_out` figure measured at training on `held_out_count` rows: `held_out` ± SPREAD_ERRORS standard
    errors of the difference of the two measurements, √(p(1 − p)(1/tonight_count + 1/held_out_count)), with p the
    held-out figure after one success and one failure are added (Laplace), so that a held-out 100% on a few rows still
    has a spread. That is the error of proportions counted on labels; a mean of risks in [0, 1] varies less (its
    variance is at most p(1 − p) per row), so the range is generous and a night outside it has moved. All of [0, 1]
    when either count is zero: there is nothing to compare."""
    if held_out_count <= 0 or tonight_count <= 0:
        return 0.0, 1.0
    rate = (held_out * held_out_count + 1) / (held_out_count + 2)
    error = SPREAD_ERRORS * math.sqrt(rate * (1 - rate) * (1 / tonight_count + 1 / held_out_count))
    return max(0.0, held_out - error), min(1.0, held_out + error)


def within_spread(value: Optional[float], spread: Sequence[float]) -> bool:
    """Whether an estimate lies within its spread; an estimate that cannot be made (None) has not left it."""
    return value is None or spread[0] <= value <= spread[1]


def performance_estimate(metrics: dict, risk: Sequence[float], flagged: Sequence[bool]) -> Optional[dict]:
    """`expected_performance` of one model's flags beside the held-out figures recorded at training (`metrics` of its
    metadata): the precision and recall counted on the held-out labels, and the same estimate made from the held-out
    risks, with its `training_spread`. Tonight's estimate is compared with the held-out estimate, like with like: a
    model whose risks are off by the same amount every night (the retaliation model's 1 − P(none) is, on generated
    data, flatter than the truth) would otherwise warn every night. Precision is spread over tonight's flagged
    contacts against the held-out flagged rows (rows × flagged rate), recall over tonight's expected positives
    against the held-out positives (rows × positive rate); `within_spread` says whether both estimates are within
    theirs. None when `metrics` lacks these figures (a model published before they were recorded)."""
    if any(metrics.get(key) is None for key in HELD_OUT):
        return None
    expected = expected_performance(risk, flagged)
    precision_spread = training_spread(metrics["expected_precision"], metrics["rows"] * metrics["flagged_rate"],
                                       expected["flagged"])
    recall_spread = training_spread(metrics["expected_recall"], metrics["rows"] * metrics["positive_rate"],
                                    expected["expected_positives"])
    return {**expected, "held_out_precision": float(metrics["precision"]),
            "held_out_expected_precision": float(metrics["expected_precision"]),
            "precision_spread": list(precision_spread), "held_out_recall": float(metrics["recall"]),
            "held_out_expected_recall": float(metrics["expected_recall"]), "recall_spread": list(recall_spread),
            "within_spread": within_spread(expected["expected_precision"], precision_spread) and
            within_spread(expected["expected_recall"], recall_spread)}


def performance_estimates(metadata: dict, predictions: pd.DataFrame) -> list[dict]:
    """Per tabular model whose metadata records the held-out figures, its `performance_estimate` over the contacts
    of `predictions` (their `<model>_risk` and `<model>_flagged` columns); none on fewer than MIN_DRIFT_ROWS contacts,
    the rule drift follows, where a night's figures are too noisy to compare."""
    if len(predictions) < MIN_DRIFT_ROWS:
        return []
    return [{"model": name, **estimate} for name in TABULAR_MODELS
            if (estimate := performance_estimate(metadata[name].get("metrics", {}), predictions[f"{name}_risk"],
                                                 predictions[f"{name}_flagged"]))]
