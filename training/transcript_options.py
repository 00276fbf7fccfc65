"""The transcript model's training choices (mode, schedule, ablation switches), recorded in its metadata."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
