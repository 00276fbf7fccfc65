"""Finetune mode: multi-task fine-tuning of encoder and heads on alternating task batches, with early stopping."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from carelens.data.adapters import RATIONALE_COLUMNS
from carelens.data.contracts import MECHANISMS
from carelens.models.runtimes import mean_pooled
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import TranscriptModel
from carelens.training.calibration import split_metrics
from carelens.training.splits import Data, empathy_targets, sentiment_targets, soft_sentiment_targets
from carelens.training.transcript_options import Options

#: Length-sorted buckets span this many batches: batches of similar length, still shuffled across the epoch.
BUCKET_BATCHES = 50
#: Fewer validation rows than this (both tasks together) cannot choose between checkpoints: an accuracy on 30 rows
#: has a standard error near 9 points, wider than what separates them, so choosing added noise (adapted on 300
#: tweets: 0.781-0.816 held-out accuracy over three label draws with the choice, 0.818-0.822 keeping the last
#: state). Fine-tuning then runs its whole schedule and keeps its last state.
MIN_SELECTION_ROWS = 200


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


def _rationale_token_labels(frame: pd.DataFrame, windows: dict, first: np.ndarray) -> list[np.ndarray]:
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
                      _rationale_token_labels(frame, windows, first) if rationales else None)


def _bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length: shuffle, sort within buckets of many batches, cut, shuffle."""
    order = rng.permutation(len(lengths))
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        bucket = order[start:start + span]
        bucket = bucket[np.argsort(-lengths[bucket], kind="stable")]
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _alternating(sentiment: list, empathy: list) -> list[tuple[str, np.ndarray]]:
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


def _empathy_batches(task: TaskTokens, options: Options, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass of empathy batches: every row once, or with `balanced_sampling` as many rows drawn with replacement
    in proportion to `balanced_row_weights`."""
    if not options.balanced_sampling:
        return _bucketed_batches(task.lengths, options.batch_size, rng)
    weights = balanced_row_weights(task.targets)
    drawn = rng.choice(len(weights), size=len(weights), p=weights / weights.sum())
    return [drawn[b] for b in _bucketed_batches(task.lengths[drawn], options.batch_size, rng)]


def _epoch_schedule(tokens: dict[str, TaskTokens], options: Options, rng: np.random.Generator) -> list:
    """One epoch of (task, rows) batches: every sentiment batch once, the empathy data `empathy_repeats` times."""
    sentiment = _bucketed_batches(tokens["sentiment"].lengths, options.batch_size, rng) if "sentiment" in tokens else []
    empathy = [b for _ in range(options.empathy_repeats)
               for b in _empathy_batches(tokens["empathy"], options, rng)] if "empathy" in tokens else []
    if not sentiment or not empathy:
        return [("sentiment", b) for b in sentiment] + [("empathy", b) for b in empathy]
    return _alternating(sentiment, empathy)


def _class_weight_tensors(tokens: dict[str, TaskTokens], options: Options) -> dict[str, Optional[torch.Tensor]]:
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


def _rationale_loss(token_logits: torch.Tensor, labels: Sequence[np.ndarray]) -> torch.Tensor:
    """Binary cross-entropy of the token-level rationale logits [batch, tokens, mechanisms] over scored tokens."""
    padded = torch.full(token_logits.shape, -100, dtype=torch.long)
    for row, marks in enumerate(labels):
        padded[row, :len(marks)] = torch.from_numpy(marks)
    scored = padded >= 0
    if not scored.any():
        return token_logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(token_logits[scored], padded[scored].float())


def _batch_loss(model: TranscriptModel, task: TaskTokens, rows: np.ndarray, weights: dict,
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
        losses.append(rationale_weight * _rationale_loss(rationale_head(hidden), [task.token_labels[i] for i in rows]))
    return torch.stack(losses).sum()


def _linear_warmup_decay(optimizer: torch.optim.Optimizer, total: int,
                         warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly over `warmup` steps, then falling linearly to zero at `total`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))


def train_finetune(model: TranscriptModel, data: Data, options: Options, log: Callable[[str], None] = print) -> dict:
    """Multi-task fine-tuning of encoder and heads with alternating task batches, AdamW, warmup/decay and early
    stopping on the validation selection score; the best state is restored at the end, when the validation split is
    large enough to choose one (`_chooses_checkpoints`), else the whole schedule runs and the last state is kept."""
    tokens = {task: task_tokens(model, task, getattr(data, task)["train"], options.rationales)
              for task in ("sentiment", "empathy") if len(getattr(data, task)["train"])}
    run = _Finetuning(model, data, options, tokens, log)
    rng = np.random.default_rng(options.seed)
    for epoch in range(options.epochs):
        run.run_epoch(epoch, rng)
        if run.stop:
            log(run.stop)
            break
    if run.choosing:
        model.load_state_dict(run.best.state)
    return {"history": run.history, "best_selection_score": run.best.score, "steps": run.steps,
            "stopped": run.stop or "all epochs",
            "kept": "the best validated state" if run.choosing else f"the last state (fewer than {MIN_SELECTION_ROWS} "
                                                                     "validation rows choose no checkpoint)",
            "truncated_training_rows": {t: tok.truncated for t, tok in tokens.items()}}


class _Finetuning:
    """One fine-tuning run as it goes: the model and, when rationales are learnt, a rationale head; AdamW over both
    with warmup/decay; the steps taken, the validation history, the best state, and why it stopped ('' until then)."""

    def __init__(self, model: TranscriptModel, data: Data, options: Options, tokens: dict[str, TaskTokens],
                 log: Callable[[str], None]):
        self.model, self.data, self.options, self.tokens, self.log = model, data, options, tokens, log
        self.weights = _class_weight_tensors(tokens, options)
        # The rationale head only shapes the encoder during training; scoring never reads it, so it is not saved.
        self.rationale_head = (torch.nn.Sequential(torch.nn.Dropout(0.1),
                                                   torch.nn.Linear(model.encoder.config.hidden_size, len(MECHANISMS)))
                               if "empathy" in tokens and tokens["empathy"].token_labels is not None else None)
        steps_per_epoch = len(_epoch_schedule(tokens, options, np.random.default_rng(options.seed)))
        total = steps_per_epoch * options.epochs
        self.parameters = [*model.parameters(),
                           *(self.rationale_head.parameters() if self.rationale_head is not None else ())]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=options.lr, weight_decay=0.01)
        self.scheduler = _linear_warmup_decay(self.optimizer, total, int(options.warmup_fraction * total))
        self.checkpoints = set(np.linspace(0, steps_per_epoch, options.evals_per_epoch + 1, dtype=int)[1:])
        self.best, self.history, self.steps, self.stop = _BestState(), [], 0, ""
        self.choosing = _chooses_checkpoints(data)
        self.started = time.monotonic()

    def run_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """One epoch of batches, validated at each checkpoint and once the time budget is spent, until `stop` is set."""
        options = self.options
        self.model.train()
        if self.rationale_head is not None:
            self.rationale_head.train()
        bar = tqdm(_epoch_schedule(self.tokens, options, rng), desc=f"epoch {epoch + 1}/{options.epochs}",
                   disable=not options.show_progress_bar, unit="batch")
        for position, (task, rows) in enumerate(bar, start=1):
            loss = self._step(task, rows)
            bar.set_postfix(task=task[:4], loss=f"{loss.item():.3f}")
            budget = options.time_budget_minutes
            out_of_time = budget and time.monotonic() - self.started > budget * 60
            if position not in self.checkpoints and not out_of_time:
                continue
            self._validate(epoch, out_of_time)
            if self.stop:
                break

    def _step(self, task: str, rows: np.ndarray) -> torch.Tensor:
        """One optimiser step on a batch of one task; returns its loss."""
        loss = _batch_loss(self.model, self.tokens[task], rows, self.weights, self.rationale_head,
                           self.options.rationale_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.steps += 1
        return loss

    def _validate(self, epoch: int, out_of_time) -> None:
        """Record the validation figures, keep the state when it is the best, and set `stop` when patience or the time
        budget has run out."""
        options, history = self.options, self.history
        history.append(validation_record(self.model, self.data, options, epoch + 1, self.steps,
                                         time.monotonic() - self.started))
        self.log(f"step {self.steps}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                              if isinstance(v, float) and k != "seconds"))
        self.model.train()
        improved = self.best.update(history[-1]["selection_score"], self.model)
        if not improved and self.choosing and self.best.waited >= options.patience:
            self.stop = f"early stop: no validation gain in {options.patience} evaluations"
        self.stop = self.stop or (f"time budget of {options.time_budget_minutes} minutes spent" if out_of_time else "")


def _chooses_checkpoints(data: Data) -> bool:
    """Whether the validation split has rows enough (both tasks together) to choose between training checkpoints."""
    return sum(len(getattr(data, task)["validation"]) for task in ("sentiment", "empathy")) >= MIN_SELECTION_ROWS


class _BestState:
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
    return {"epoch": epoch, "step": step, "seconds": round(seconds, 1), "selection_score": _selection_score(metrics),
            **{head: metrics[head]["macro_f1"] for head in metrics if metrics[head].get("n")}}


def _selection_score(metrics: dict) -> float:
    """What early stopping maximises: the mean of the sentiment macro-F1 and the mean empathy macro-F1."""
    sentiment = [metrics["sentiment"]["macro_f1"]] if metrics.get("sentiment", {}).get("n") else []
    empathy = [metrics[m]["macro_f1"] for m in MECHANISMS if metrics.get(m, {}).get("n")]
    parts = sentiment + ([float(np.mean(empathy))] if empathy else [])
    return float(np.mean(parts)) if parts else 0.0
