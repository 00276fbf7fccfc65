"""What the inferred-satisfaction model is: a calibrated classifier of the 1–5 survey score whose expected score stands in for the survey most contacts never answer."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from carelens.models.registry import Registry
from carelens.models.tabular import RiskModel, load_tabular

#: The registry name of the inferred-satisfaction model, and the prediction column it writes.
SATISFACTION_NAME, INFERRED_CSAT = "satisfaction", "inferred_csat"


def expected_score(model: RiskModel, table: pd.DataFrame) -> np.ndarray:
    """Per row, the expected survey score (1–5): each score weighted by its calibrated probability."""
    if len(table) == 0:
        return np.zeros(0)
    return model.predict_proba(table) @ model.classes_.astype(float)


def satisfaction_for(registry: Registry, transcript_version: Optional[str]) -> tuple[Optional[RiskModel], Optional[str]]:
    """(the promoted satisfaction model, None) when the registry has one that fits the transcript model; (None, why)
    when its conversation features were scored by another transcript model; (None, None) when there is none."""
    if SATISFACTION_NAME not in registry.models():
        return None, None
    model, metadata = load_tabular(registry, SATISFACTION_NAME)
    trained_on = metadata.get("transcript_model")
    if trained_on is not None and trained_on != transcript_version:
        return None, (f"satisfaction {metadata['version']} was trained on features of transcripts {trained_on}, not "
                      f"{transcript_version}: no inferred satisfaction until it is retrained (`carelens train "
                      f"satisfaction`)")
    return model, None
