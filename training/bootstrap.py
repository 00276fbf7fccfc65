"""Honest uncertainty for classifiers: per-class precision, recall and F1, and percentile bootstrap intervals."""
from __future__ import annotations

import itertools
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


#: Cells of the [resamples, rows] draw-count matrix held at once when resampling ROC-AUC: about 32 MB of float64.
AUC_CHUNK_CELLS = 4_000_000


def stratified_draw_counts(positive: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, rows] how often each row is drawn when positives and negatives are each resampled with replacement
    from their own rows: every resample keeps both classes at their counts, so its ROC-AUC is always defined."""
    cells = np.arange(resamples)[:, None] * positive.size
    drawn = [rows[rng.integers(0, rows.size, (resamples, rows.size))] + cells
             for rows in (np.flatnonzero(positive), np.flatnonzero(~positive))]
    flat = np.concatenate([d.ravel() for d in drawn])
    return np.bincount(flat, minlength=resamples * positive.size).reshape(resamples, positive.size)


def weighted_roc_auc(positive: np.ndarray, risk: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC-AUC of `risk` for each row of `counts` [k, rows] (how often each row is drawn), ties counting half: the
    drawn-weighted share of (positive, negative) pairs the risk orders correctly."""
    order = np.argsort(risk, kind="stable")
    ranked = risk[order]
    first_of_value = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    drawn = counts[:, order]
    positives = np.add.reduceat(drawn * positive[order], first_of_value, axis=1)
    negatives = np.add.reduceat(drawn, first_of_value, axis=1) - positives
    below = np.cumsum(negatives, axis=1) - negatives / 2
    return (positives * below).sum(axis=1) / (positives.sum(axis=1) * negatives.sum(axis=1))


def roc_auc_differences(positive: np.ndarray, risk: np.ndarray, alternatives: Sequence[np.ndarray],
                        resamples: int = RESAMPLES, seed: int = SEED) -> list[dict]:
    """For each alternative risk of the same rows: ROC-AUC of `risk` minus the alternative's, with its paired percentile
    bootstrap interval (both scored on the same stratified resamples of the rows, so the spread is that of the
    difference itself) and `differs` when the interval excludes 0. ValueError without both outcomes."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError(f"a ROC-AUC needs positive and negative rows, got {int(positive.sum())} positive of "
                         f"{positive.size}")
    risks = [np.asarray(risk, float), *(np.asarray(a, float) for a in alternatives)]
    rng = np.random.default_rng(seed)
    chunk = max(1, AUC_CHUNK_CELLS // positive.size)
    draws = itertools.chain([np.ones((1, positive.size))],  # the rows as they are, then the resamples
                            (stratified_draw_counts(positive, min(chunk, resamples - done), rng)
                             for done in range(0, resamples, chunk)))
    aucs = np.concatenate([np.column_stack([weighted_roc_auc(positive, r, counts) for r in risks])
                           for counts in draws])
    differences = aucs[:, :1] - aucs[:, 1:]
    return [_difference(aucs[0, j + 1], differences[:, j]) for j in range(len(alternatives))]


def _difference(alternative_auc: float, differences: np.ndarray) -> dict:
    """The alternative's ROC-AUC, the difference on the rows as they are (first), and its interval over the rest."""
    low, high = percentile_interval(differences[1:])
    return {"roc_auc": float(alternative_auc), "difference": float(differences[0]), "interval": [low, high],
            "differs": bool(low > 0 or high < 0)}
