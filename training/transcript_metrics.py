"""How a transcript head is measured: per-class figures with bootstrap intervals, calibration, worst mistakes."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from carelens.data.contracts import LEVEL_NAMES, MECHANISMS, SENTIMENTS
from carelens.training.bootstrap import bootstrap_intervals, class_figures, confusion, predicted_classes
from carelens.training.metrics import expected_calibration_error
from carelens.training.splits import Data

HEADS = ("sentiment", *MECHANISMS)
#: Most confidently wrong rows shown per head.
EXAMPLES = 10


def head_metrics(truth: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
                 weights: Optional[Sequence[float]] = None) -> dict:
    """Accuracy, macro-F1 over all classes, per-class precision/recall/F1 with support, the confusion matrix (rows:
    truth), bootstrap intervals, and top-label calibration error; the predicted class is the argmax of the
    probabilities times the decision `weights` (none: plain argmax)."""
    keep = truth >= 0
    truth, probabilities = truth[keep], probabilities[keep]
    if truth.size == 0:
        return {"n": 0}
    predicted = predicted_classes(probabilities, weights)
    counts = confusion(truth, predicted, len(labels))
    figures = class_figures(counts)
    per_class = {label: {"precision": float(figures["precision"][k]), "recall": float(figures["recall"][k]),
                         "f1": float(figures["f1"][k]), "support": int(figures["support"][k])}
                 for k, label in enumerate(labels)}
    return {"n": int(truth.size), "accuracy": float(figures["accuracy"]), "macro_f1": float(figures["f1"].mean()),
            "per_class_f1": {label: scores["f1"] for label, scores in per_class.items()}, "per_class": per_class,
            "confusion": counts.tolist(), "intervals": bootstrap_intervals(counts, labels),
            "ece": expected_calibration_error(predicted == truth, probabilities.max(axis=1)),
            "reliability": _reliability(predicted == truth, probabilities.max(axis=1))}


def _reliability(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width confidence bin with rows: mean confidence, accuracy and row count (the reliability diagram)."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "n": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def _head_labels(head: str) -> tuple[str, ...]:
    """The class names of a head, in the order of its probability columns."""
    return SENTIMENTS if head == "sentiment" else LEVEL_NAMES


def all_head_metrics(truth: dict[str, np.ndarray], probabilities: dict[str, np.ndarray],
                     weights: Optional[dict] = None) -> dict:
    """head_metrics for every head that has rows, each with its decision weights (none: plain argmax)."""
    return {head: head_metrics(truth[head], probabilities[head], _head_labels(head), (weights or {}).get(head))
            for head in HEADS if head in probabilities}


def confidently_wrong(truth: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
                      texts: Optional[Sequence[str]] = None, contexts: Optional[Sequence[str]] = None,
                      weights: Optional[Sequence[float]] = None, n: int = EXAMPLES) -> list[dict]:
    """The `n` labelled rows predicted wrongly with the highest probability of the predicted class, most confident
    first (ties: earlier row first): row position, true and predicted label, that probability, and the row's text
    and context when given."""
    predicted = predicted_classes(probabilities, weights)
    confidence = probabilities[np.arange(len(predicted)), predicted]
    wrong = np.flatnonzero((truth >= 0) & (predicted != truth))
    return [{"row": int(row), "truth": labels[truth[row]], "predicted": labels[predicted[row]],
             "confidence": float(confidence[row]), **({"context": contexts[row]} if contexts is not None else {}),
             **({"text": texts[row]} if texts is not None else {})}
            for row in wrong[np.argsort(-confidence[wrong], kind="stable")][:n]]


def head_examples(data: Data, split: str, truth: dict[str, np.ndarray], probabilities: dict[str, np.ndarray],
                  weights: Optional[dict] = None) -> dict[str, list[dict]]:
    """Per head, the most confidently wrong rows of a split. Their text (empathy: the agent's reply and the customer
    turn it answers) only when every row is from the public CSVs: contract transcripts may hold customers' words,
    so their rows are named by position alone."""
    def column(frame: pd.DataFrame, name: str) -> Optional[list]:
        return frame[name].tolist() if data.public_text else None

    sentiment, empathy = data.sentiment[split], data.empathy[split]
    texts = {"sentiment": (column(sentiment, "text"), None),
             **{m: (column(empathy, "response"), column(empathy, "context")) for m in MECHANISMS}}
    return {head: confidently_wrong(truth[head], probabilities[head], _head_labels(head), *texts[head],
                                    (weights or {}).get(head))
            for head in HEADS if head in probabilities}
