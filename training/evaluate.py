"""Judging a published churn or retaliation model on labelled data it never saw."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from carelens.models.registry import Registry
from carelens.models.tabular import load_tabular
from carelens.training.tabular import TASKS, held_out_figures, load_labelled, target_values

PathLike = Union[str, Path]


def evaluate_tabular(registry: Union[Registry, PathLike], name: str, data: PathLike, labels: Optional[PathLike] = None,
                     target: Optional[str] = None, version: str = "latest",
                     features_from: Sequence[PathLike] = ()) -> dict:
    """The model's metrics on the labelled data (and per seed group when a truth.parquet lies beside it)."""
    model, metadata = load_tabular(registry, name, version)
    task = TASKS[metadata["task"]]
    labelled = load_labelled(data, task, labels=labels, target=target or metadata["target"],
                             features_from=features_from)
    return {"model": name, "version": metadata["version"], "data": labelled.source, "goal": metadata["goal"],
            "threshold": model.threshold_,
            **held_out_figures(model, task, labelled.frame, target_values(labelled, task), labelled.groups)}
