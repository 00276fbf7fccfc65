"""Calibrating the transcript heads on validation (temperatures, decision weights); the probabilities they ship."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from carelens.data.contracts import LEVEL_NAMES, MECHANISMS
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import TranscriptModel, softmax
from carelens.training.splits import Data, head_targets, head_texts
from carelens.training.transcript_metrics import all_head_metrics
from carelens.training.transcript_options import Options

#: Calibration temperatures searched (log-spaced); the one with the lowest validation log-loss is kept.
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
#: Decision weights tried for the weak and strong empathy levels (none stays at 1), picked on validation macro-F1.
DECISION_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 13))


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(truth, predicted, labels=list(range(len(LEVEL_NAMES))), average="macro", zero_division=0))


def fitted_decision_weights(probabilities: np.ndarray, truth: np.ndarray) -> list[float]:
    """Weights on (none, weak, strong) whose weighted argmax maximises validation macro-F1; ties go to the weights
    nearest 1. Plain argmax rarely names a rare level (EPITOME's weak interpretations: 4% of rows), which costs
    macro-F1 a whole class; the probabilities themselves stay calibrated."""
    keep = truth >= 0
    probabilities, truth = probabilities[keep], truth[keep]
    best, chosen = -1.0, [1.0, 1.0, 1.0]
    if truth.size == 0:
        return chosen
    candidates = sorted(((1.0, weak, strong) for weak in DECISION_GRID for strong in DECISION_GRID),
                        key=lambda w: abs(np.log(w[1])) + abs(np.log(w[2])))
    for weights in candidates:
        score = _macro_f1(truth, (probabilities * np.array(weights)).argmax(axis=1))
        if score > best + 1e-12:
            best, chosen = score, [float(w) for w in weights]
    return chosen


def _fitted_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that minimises validation log-loss (1.0 when there is nothing to fit on)."""
    keep = truth >= 0
    if keep.sum() == 0:
        return 1.0
    logits, truth = logits[keep], truth[keep]
    losses = []
    for temperature in TEMPERATURE_GRID:
        scaled = logits / temperature
        log_norm = np.log(np.exp(scaled - scaled.max(1, keepdims=True)).sum(1)) + scaled.max(1)
        losses.append(float((log_norm - scaled[np.arange(len(truth)), truth]).mean()))
    return float(TEMPERATURE_GRID[int(np.argmin(losses))])


def _head_logits(pipeline: TranscriptPipeline, data: Data, split: str, progress: bool = False) -> dict[str, np.ndarray]:
    """Raw logits of every head on a split, through the scoring pipeline (windowed, token-budget batches)."""
    logits, model = {}, pipeline.model
    if len(data.sentiment[split]):
        pooled = pipeline.encode(data.sentiment[split]["text"].tolist(), desc=f"sentiment {split}",
                                 show_progress_bar=progress)
        logits["sentiment"] = model.head_logits(pooled)[0]
    if len(data.empathy[split]):
        frame = data.empathy[split]
        pooled = pipeline.encode(frame["response"].tolist(), frame["context"].tolist(), desc=f"empathy {split}",
                                 show_progress_bar=progress)
        empathy = model.head_logits(pooled)[1]
        logits.update({m: empathy[:, k] for k, m in enumerate(MECHANISMS)})
    return logits


def calibrate(pipeline: TranscriptPipeline, data: Data, options: Options) -> dict[str, dict]:
    """Per-head temperatures, then (when asked for) the empathy heads' decision weights, fitted on the validation
    split and set on the model."""
    truth, model = head_targets(data, "validation"), pipeline.model
    logits = _head_logits(pipeline, data, "validation", options.show_progress_bar)
    model.temperatures.update({head: _fitted_temperature(logits[head], truth[head]) for head in logits
                               if (truth[head] >= 0).any()})
    if options.decision_weights:
        probabilities = _calibrated_probabilities(model, logits)
        model.decision_weights.update({head: fitted_decision_weights(probabilities[head], truth[head])
                                       for head in MECHANISMS if head in probabilities})
    return {"temperatures": dict(model.temperatures), "decision_weights": dict(model.decision_weights)}


def _calibrated_probabilities(model: TranscriptModel, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Softmax of each head's logits at its calibrated temperature."""
    return {head: softmax(values, model.temperatures[head]) for head, values in logits.items()}


def split_probabilities(pipeline: TranscriptPipeline, data: Data, split: str,
                        progress: bool = False) -> tuple[dict, dict]:
    """(per head: the class index of every row, the probabilities the model ships: calibrated, and pooled with the
    TF-IDF floor where the model has one) on one split."""
    model = pipeline.model
    calibrated = _calibrated_probabilities(model, _head_logits(pipeline, data, split, progress))
    return head_targets(data, split), {head: model.pooled(head, values, head_texts(data, split, head))
                                       for head, values in calibrated.items()}


def split_metrics(pipeline: TranscriptPipeline, data: Data, split: str, progress: bool = False) -> dict:
    """Every head's metrics on one split, empathy levels named with the model's decision weights."""
    return all_head_metrics(*split_probabilities(pipeline, data, split, progress), pipeline.model.decision_weights)
