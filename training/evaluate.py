"""Judging a published churn or retaliation model on labelled data it never saw."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.models.registry import Registry, frame_fingerprint
from carelens.models.tabular import load_tabular
from carelens.training.tabular import (
    FITTED_CONTACTS, TASKS, LabelledData, contact_hashes, held_out_figures, load_labelled, target_values,
)

PathLike = Union[str, Path]


def fitted_rows(directory: Path, frame: pd.DataFrame) -> Optional[int]:
    """How many rows are contacts the model was fitted or calibrated on, by the hashed contact_ids stored beside it;
    None when the model stored none or the rows have no contact_id."""
    path = directory / FITTED_CONTACTS
    if not path.is_file() or "contact_id" not in frame.columns:
        return None
    fitted = pd.read_parquet(path)["contact_hash"].to_numpy(np.uint64)
    return int(np.isin(contact_hashes(frame["contact_id"]), fitted).sum())


def is_training_data(metadata: dict, labelled: LabelledData) -> bool:
    """Whether the table is the one the model was trained on: its features and target have the training fingerprint."""
    columns = [*(f["name"] for f in metadata["features"]), labelled.target]
    if not set(columns) <= set(labelled.frame.columns):
        return False
    return frame_fingerprint(labelled.frame[columns]) == metadata.get("training_data_fingerprint")


def held_out_check(name: str, metadata: dict, labelled: LabelledData, fitted: Optional[int]) -> dict:
    """Whether the figures are held-out, how many rows the model trained on (when known), and a warning if not."""
    rows, version = len(labelled.frame), metadata["version"]
    if is_training_data(metadata, labelled):
        trained = fitted if fitted is not None else metadata["split"]["train"]
        warning = (f"this is the data {name} {version} was trained on (its training data fingerprint matches): it was "
                   f"fitted and calibrated on {trained:,} of these {rows:,} rows, so these figures are not held-out; "
                   f"its held-out figures are in its metadata and report; evaluate on data it never saw")
    elif fitted:
        trained = fitted
        warning = (f"{fitted:,} of the {rows:,} evaluated rows ({fitted / rows:.0%}) are contacts {name} {version} "
                   f"was fitted or calibrated on, so these figures are not held-out; evaluate on contacts it never saw")
    else:
        return {"held_out": True, "rows_trained_on": fitted, "warning": None}
    return {"held_out": False, "rows_trained_on": trained, "warning": warning}


def evaluate_tabular(registry: Union[Registry, PathLike], name: str, data: PathLike, labels: Optional[PathLike] = None,
                     target: Optional[str] = None, version: str = "latest",
                     features_from: Sequence[PathLike] = ()) -> dict:
    """The model's metrics on the labelled data (and per seed group when a truth.parquet lies beside it), and whether
    they are held-out: `held_out` is False, with a `warning`, when the rows include ones the model trained on."""
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    model, metadata = load_tabular(registry, name, version)
    task = TASKS[metadata["task"]]
    labelled = load_labelled(data, task, labels=labels, target=target or metadata["target"],
                             features_from=features_from)
    fitted = fitted_rows(registry.root / name / metadata["version"], labelled.frame)
    return {"model": name, "version": metadata["version"], "data": labelled.source, "goal": metadata["goal"],
            "threshold": model.threshold_, **held_out_check(name, metadata, labelled, fitted),
            **held_out_figures(model, task, labelled.frame, target_values(labelled, task), labelled.groups)}
