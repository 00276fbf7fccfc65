"""Honest uncertainty for classifiers: per-class precision, recall and F1, and percentile bootstrap intervals."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: Bootstrap resamples of the rows behind every interval, and the seed that makes each interval reproducible.
RESAMPLES = 1000
SEED = 0
#: The share of the bootstrap distribution an interval covers.
LEVEL = 0.95


def predicted_classes(probabilities: np.ndarray, weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Each row's class index: the argmax of the probabilities times the decision `weights` (none: plain argmax)."""
    return (probabilities * np.asarray(weights if weights is not None else 1.0)).argmax(axis=1)


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts [classes, classes] of rows by true class (rows) and predicted class (columns)."""
    return np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def class_figures(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per class precision, recall, F1 and support, and the accuracy, of confusion matrices [..., k, k]; a class
    never predicted has precision 0, one never seen recall 0, and one neither F1 0 (scikit-learn's zero_division=0)."""
    hits = np.diagonal(counts, axis1=-2, axis2=-1).astype(float)
    support, named = counts.sum(axis=-1), counts.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": np.where(named > 0, hits / named, 0.0),
                "recall": np.where(support > 0, hits / support, 0.0),
                "f1": np.where(support + named > 0, 2 * hits / (support + named), 0.0),
                "support": support, "accuracy": hits.sum(axis=-1) / counts.sum(axis=(-2, -1))}


def resampled(counts: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """`resamples` bootstrap copies [resamples, *counts.shape] of tables of row counts. Drawing n rows with replacement
    from n rows puts each draw in a cell with probability count / n, so the resampled counts are one multinomial
    draw: the same distribution as resampling an index matrix of rows, at the cost of the cells instead of the rows."""
    cells = counts.ravel()
    rows = int(cells.sum())
    draws = np.random.default_rng(seed).multinomial(rows, cells / rows, size=resamples)
    return draws.reshape(resamples, *counts.shape)


def percentile_interval(values: np.ndarray) -> list:
    """[lo, hi] of the central LEVEL share of bootstrap values along the first axis (one pair per remaining entry)."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return np.stack([low, high], axis=-1).tolist()


def bootstrap_intervals(counts: np.ndarray, labels: Sequence[str], resamples: int = RESAMPLES,
                        seed: int = SEED) -> dict:
    """Percentile bootstrap intervals over the rows of a confusion matrix for accuracy, macro-F1 and each class's F1:
    `{"accuracy": [lo, hi], "macro_f1": [lo, hi], "f1": {label: [lo, hi]}}`. A resample that happens to lack a
    class scores its F1 0, as the point estimate would, so on a few dozen rows the F1 intervals err wide."""
    figures = class_figures(resampled(np.asarray(counts), resamples, seed))
    return {"accuracy": percentile_interval(figures["accuracy"]),
            "macro_f1": percentile_interval(figures["f1"].mean(axis=-1)),
            "f1": dict(zip(labels, percentile_interval(figures["f1"])))}


def macro_f1_difference(truth: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray, classes: int,
                        resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Macro-F1 of predictions a minus that of predictions b on the same rows (truth < 0: unlabelled, left out), with
    its paired percentile bootstrap interval; `differs` only when the interval excludes 0, since a difference smaller
    than the spread is no difference."""
    keep = truth >= 0
    if not keep.any():
        raise ValueError("a macro-F1 difference needs at least one labelled row, got none")
    cells = (truth[keep] * classes + predicted_a[keep]) * classes + predicted_b[keep]
    joint = np.bincount(cells, minlength=classes ** 3).reshape(classes, classes, classes)
    # Both prediction sets are scored on the same resampled rows, so the spread is that of the difference itself.
    both = np.concatenate([joint[None], resampled(joint, resamples, seed)])
    difference = _macro_f1(both.sum(axis=-1)) - _macro_f1(both.sum(axis=-2))
    low, high = percentile_interval(difference[1:])
    return {"difference": float(difference[0]), "interval": [low, high], "differs": bool(low > 0 or high < 0)}


def _macro_f1(counts: np.ndarray) -> np.ndarray:
    return class_figures(counts)["f1"].mean(axis=-1)
