"""Heads mode: linear heads fitted on the frozen encoder's pooled embeddings, or refitted from a model being adapted."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from carelens.data.contracts import MECHANISMS
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import TranscriptModel
from carelens.training.splits import Data, head_targets, soft_sentiment_targets
from carelens.training.transcript_options import Options

#: Regularisation strengths tried for the linear heads (on standardised embeddings), picked on validation macro-F1.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def soft_rows(features: np.ndarray, soft: np.ndarray, class_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, classes, weights): each row once per class it has a share of, weighted by that share (and, with
    `class_weights`, balanced over classes), so a logistic regression fits the soft targets' cross-entropy."""
    row, label = np.nonzero(soft > 0)
    weight = soft[row, label].astype(float)
    if class_weights:
        totals = np.bincount(label, weights=weight, minlength=soft.shape[1])
        weight *= (weight.sum() / (soft.shape[1] * np.maximum(totals, 1e-12)))[label]
    return features[row], label, weight


def linear_head(features: np.ndarray, truth: np.ndarray, validation: np.ndarray, validation_truth: np.ndarray,
                options: Options, soft: Optional[np.ndarray] = None,
                prior: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(weight [3, hidden], bias [3], C) of a logistic regression on standardised embeddings, the scaling folded
    into the weights so the head is one linear layer on raw pooled embeddings; C is picked on validation macro-F1.
    With `soft` targets [n, 3] it fits their cross-entropy instead of the hard labels'. With a `prior` head (weight,
    bias: the head being adapted), its logits join the features and are folded back in, so that a few labels correct
    what the head knew (strong regularisation keeps it) rather than start from nothing."""
    if prior is not None:
        def augmented(x: np.ndarray) -> np.ndarray:
            return np.hstack([x, x @ prior[0].T + prior[1]])
        weight, bias, c = linear_head(augmented(features), truth, augmented(validation), validation_truth, options, soft)
        hidden = features.shape[1]
        return weight[:, :hidden] + weight[:, hidden:] @ prior[0], bias + weight[:, hidden:] @ prior[1], c
    keep, validation_keep = truth >= 0, validation_truth >= 0
    scaler = StandardScaler().fit(features[keep])
    if soft is None:
        rows, labels, weights = features[keep], truth[keep], None
        balance = "balanced" if options.class_weights else None
    else:
        (rows, labels, weights), balance = soft_rows(features[keep], soft[keep], options.class_weights), None
    best = None
    for c in C_GRID:
        fitted = LogisticRegression(C=c, max_iter=3000, random_state=options.seed, class_weight=balance)
        fitted.fit(scaler.transform(rows), labels, sample_weight=weights)
        score = f1_score(validation_truth[validation_keep],
                         fitted.predict(scaler.transform(validation[validation_keep])), average="macro") \
            if validation_keep.any() else 0.0
        if best is None or score > best[0]:
            best = (score, c, fitted)
    _, c, fitted = best
    coef, intercept = _per_class(fitted)
    weight = coef / scaler.scale_
    return weight, intercept - weight @ scaler.mean_, c


def _per_class(fitted: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """A fitted classifier's coefficients as one row per class of 0..2; absent classes get a logit far below."""
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    full_coef, full_intercept = np.zeros((3, coef.shape[1])), np.full(3, -30.0)
    full_coef[fitted.classes_], full_intercept[fitted.classes_] = coef, intercept
    return full_coef, full_intercept


def _current_head(model: TranscriptModel, head: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight [3, hidden], bias [3]) of one head as the model has it now."""
    if head == "sentiment":
        return model.heads.sentiment.weight.detach().numpy().copy(), model.heads.sentiment.bias.detach().numpy().copy()
    k = MECHANISMS.index(head)
    return (model.heads.empathy.weight.detach().numpy()[3 * k:3 * k + 3].copy(),
            model.heads.empathy.bias.detach().numpy()[3 * k:3 * k + 3].copy())


def train_heads(model: TranscriptModel, data: Data, options: Options, keep_unlabelled: bool = False) -> dict:
    """Fit the linear heads on frozen, windowed mean-pooled embeddings; returns the C picked for each head. With
    `keep_unlabelled` (a model being adapted) a labelled head is fitted from its current one (`linear_head`'s prior)
    and a head without labels keeps its weights; otherwise an unlabelled head says nothing (zeros)."""
    pipeline = TranscriptPipeline(model)
    embedded = {task: {split: _embedded(pipeline, task, frame, options.show_progress_bar)
                       for split, frame in getattr(data, task).items() if split != "test"}
                for task in ("sentiment", "empathy")}
    train, validation = head_targets(data, "train"), head_targets(data, "validation")
    chosen, weights = {}, {}
    if len(embedded["sentiment"]["train"]):
        weight, bias, chosen["sentiment"] = linear_head(embedded["sentiment"]["train"], train["sentiment"],
                                                        embedded["sentiment"]["validation"], validation["sentiment"],
                                                        options, soft_sentiment_targets(data.sentiment["train"]),
                                                        _current_head(model, "sentiment") if keep_unlabelled else None)
        weights["sentiment.weight"], weights["sentiment.bias"] = weight, bias
    empathy_weights, empathy_biases = [], []
    for mechanism in MECHANISMS:
        labelled = train[mechanism] >= 0
        if labelled.sum() and len(set(train[mechanism][labelled])) > 1:
            weight, bias, chosen[mechanism] = linear_head(embedded["empathy"]["train"], train[mechanism],
                                                          embedded["empathy"]["validation"], validation[mechanism],
                                                          options, prior=_current_head(model, mechanism)
                                                          if keep_unlabelled else None)
        elif keep_unlabelled:
            weight, bias = _current_head(model, mechanism)
        else:
            weight, bias = np.zeros((3, model.encoder.config.hidden_size)), np.zeros(3)
        empathy_weights.append(weight)
        empathy_biases.append(bias)
    weights["empathy.weight"], weights["empathy.bias"] = np.vstack(empathy_weights), np.concatenate(empathy_biases)
    state = model.heads.state_dict()
    state.update({k: torch.tensor(v, dtype=state[k].dtype) for k, v in weights.items()})
    model.heads.load_state_dict(state)
    return {"C": chosen}


def _embedded(pipeline: TranscriptPipeline, task: str, frame: pd.DataFrame, progress: bool) -> np.ndarray:
    """Pooled embeddings of one task's table (sentiment: texts; empathy: (customer, agent) pairs)."""
    if task == "sentiment":
        return pipeline.encode(frame["text"].tolist(), desc="embedding tweets", show_progress_bar=progress)
    return pipeline.encode(frame["response"].tolist(), frame["context"].tolist(), desc="embedding pairs",
                           show_progress_bar=progress)
