"""The figures a risk model is judged by: ranking, calibration, accuracy at its threshold, and per-class F1."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score, average_precision_score, brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score,
)

from carelens.models.performance_estimate import expected_performance

ECE_BINS = 10


def expected_calibration_error(positive: Sequence, probability: Sequence, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over `bins` equal-width probability bins on [0, 1], the row-weighted mean of
    |observed positive rate − mean predicted probability| in each bin (a probability of exactly 1 falls in the last)."""
    positive = np.asarray(positive, dtype=float)
    probability = np.asarray(probability, dtype=float)
    if probability.size == 0:
        raise ValueError("expected calibration error needs at least one row, got none")
    which = np.minimum((probability * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, positive, bins) - np.bincount(which, probability, bins))
    return float(gap.sum() / counts.sum())


def _ranking(positive: np.ndarray, risk: np.ndarray, score) -> Optional[float]:
    """A ranking score, or None when only one outcome occurs (it is undefined then, and JSON has no NaN)."""
    return float(score(positive, risk)) if 0 < positive.sum() < positive.size else None


def risk_metrics(positive: Sequence, risk: Sequence, flagged: Sequence) -> dict:
    """How well the risk ranks (ROC-AUC, PR-AUC), how honest it is (Brier, ECE), and how the flags fare: counted on
    the labels, and expected from the risks alone (what a night without labels is compared with)."""
    positive, risk, flagged = np.asarray(positive, bool), np.asarray(risk, float), np.asarray(flagged, bool)
    expected = expected_performance(risk, flagged)
    return {
        "rows": int(positive.size),
        "positive_rate": float(positive.mean()),
        "roc_auc": _ranking(positive, risk, roc_auc_score),
        "pr_auc": _ranking(positive, risk, average_precision_score),
        "brier": float(brier_score_loss(positive, risk)),
        "ece": expected_calibration_error(positive, risk),
        "accuracy": float(accuracy_score(positive, flagged)),
        "precision": float(precision_score(positive, flagged, zero_division=0)),
        "recall": float(recall_score(positive, flagged, zero_division=0)),
        "flagged_rate": float(flagged.mean()),
        "expected_precision": expected["expected_precision"],
        "expected_recall": expected["expected_recall"],
    }


def class_metrics(actual: Sequence, predicted: Sequence, classes: Sequence) -> dict:
    """Accuracy, macro-F1 and F1 per class of multi-class predictions."""
    per_class = f1_score(actual, predicted, labels=list(classes), average=None, zero_division=0)
    return {
        "class_accuracy": float(accuracy_score(actual, predicted)),
        "macro_f1": float(per_class.mean()),
        "f1_per_class": {str(c): float(f) for c, f in zip(classes, per_class)},
    }


def model_metrics(model, proba: np.ndarray, y: Sequence) -> dict:
    """Risk metrics of a fitted RiskModel's probabilities for labelled rows, plus class metrics beyond two classes."""
    y = np.asarray(y)
    risk = model.risk_from_proba(proba)
    metrics = risk_metrics(y != model.negative_class_, risk, risk >= model.threshold_)
    if len(model.classes_) > 2:
        metrics.update(class_metrics(y, model.predict_from_proba(proba), model.classes_))
    return metrics


def group_rates(groups: Sequence, observed: Sequence, predicted: Sequence) -> list[dict]:
    """Per group: its rows, the observed rate of an outcome and the mean predicted probability of it."""
    groups, observed, predicted = np.asarray(groups), np.asarray(observed, float), np.asarray(predicted, float)
    return [{"group": str(g), "rows": int((groups == g).sum()), "observed": float(observed[groups == g].mean()),
             "predicted": float(predicted[groups == g].mean())} for g in sorted(set(groups.tolist()))]
