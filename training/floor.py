"""The TF-IDF + logistic regression floor each transcript head is measured against and pooled with."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from carelens.data.contracts import MECHANISMS
from carelens.models.empathy_rules import RuleLevels
from carelens.models.transcript import pooled_with_floor
from carelens.training.splits import Data, head_targets
from carelens.training.transcript_options import Options

FLOOR = "TF-IDF + logistic regression"
#: Shares of the TF-IDF floor in a stacked head, tried on the validation split.
STACK_GRID = np.linspace(0.0, 1.0, 21)


def _floor_fitted(texts: pd.Series, truth: np.ndarray, options: Options):
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
        fitted["sentiment"] = _floor_fitted(data.sentiment["train"]["text"], train["sentiment"], options)
    for mechanism in MECHANISMS:
        if options.empathy_floor == "rules":
            fitted[mechanism] = RuleLevels(mechanism).fit()
        elif len(set(train[mechanism][train[mechanism] >= 0])) > 1:
            fitted[mechanism] = _floor_fitted(data.empathy["train"]["response"], train[mechanism], options)
    return fitted


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
