"""Judging a trained transcript model on labelled files: every head's metrics and its most confidently wrong rows."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from carelens.data.adapters import read_labelled_text
from carelens.data.errors import UsageError
from carelens.models.scoring import TranscriptPipeline
from carelens.training.calibration import split_probabilities
from carelens.training.splits import Data
from carelens.training.transcript_metrics import all_head_metrics, head_examples

PathLike = Union[str, Path]


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
