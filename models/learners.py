"""What the tabular models choose among: the candidate learners as scikit-learn pipelines, the one-standard-error choice, and the goals a decision threshold is set for."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from carelens.data.errors import UsageError

LEARNERS = ("logistic", "boosting", "forest", "extra-trees")


#: Categorical features with more distinct values than this are target-encoded (cross-fitted by TargetEncoder):
#: one-hot or native categories of, say, 51 US states let trees chase noise in a few hundred rows.
HIGH_CARDINALITY = 10


#: Rows each forest tree draws at most: beyond it more rows cost time and add little to hundreds of trees.
FOREST_ROWS = 100_000


@dataclass(frozen=True)
class Goal:
    """What the decision threshold is chosen for: best F1, a recall target, or a daily capacity of K contacts."""

    kind: str
    value: Optional[float] = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_goal(text: str) -> Goal:
    """`f1`, `recall:0.8` or `top-k:500` as a Goal; ValueError saying what was expected otherwise."""
    kind, _, value = text.strip().lower().partition(":")
    expected = "expected 'f1', 'recall:R' with 0 < R <= 1, or 'top-k:K' with K > 0 contacts a day"
    if kind == "f1" and not value:
        return Goal("f1")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"goal {text!r} is not understood; {expected}") from None
    if (kind == "recall" and 0 < number <= 1) or (kind == "top-k" and number > 0):
        return Goal(kind, number)
    raise UsageError(f"goal {text!r} is not understood; {expected}")


def threshold_for_recall(positive: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """The highest threshold whose flags (score >= threshold) catch at least `recall` of the positives."""
    ranked = np.sort(scores[np.asarray(positive, bool)])[::-1]
    if ranked.size == 0:
        raise UsageError("cannot choose a threshold for a recall goal: the validation data has no positive rows")
    # The tolerance keeps 0.7 * 10 == 7.000000000000001 from demanding an eighth positive.
    needed = max(1, math.ceil(recall * ranked.size - 1e-9))
    return float(ranked[needed - 1])


def threshold_for_rate(scores: np.ndarray, rate: float) -> float:
    """The threshold that flags the riskiest `rate` share of rows (at least one)."""
    ranked = np.sort(scores)[::-1]
    flagged = min(ranked.size, max(1, math.ceil(rate * ranked.size - 1e-9)))
    return float(ranked[flagged - 1])


def threshold_for_f1(positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold with the best F1 for flagging positives."""
    precision, recall, thresholds = precision_recall_curve(np.asarray(positive, bool), scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    return float(thresholds[np.argmax(f1[:-1])])


@dataclass(frozen=True)
class Candidate:
    """One learner with one setting of its main hyper-parameters, as compared by cross-validation."""

    learner: str
    params: tuple

    @property
    def name(self) -> str:
        return f"{self.learner}({', '.join(f'{k}={v:g}' for k, v in self.params)})"


#: The candidates, simplest first: the one-standard-error rule picks the first whose cross-validated ROC-AUC is
#: within one standard error of the best, since smaller differences are fold-to-fold noise.
CANDIDATES = (
    Candidate("logistic", (("C", 0.1),)),
    Candidate("logistic", (("C", 1.0),)),
    Candidate("boosting", (("learning_rate", 0.05), ("max_leaf_nodes", 7))),
    Candidate("forest", (("min_samples_leaf", 1),)),
    Candidate("extra-trees", (("min_samples_leaf", 3),)),
    Candidate("boosting", (("learning_rate", 0.1), ("max_leaf_nodes", 15))),
)


def candidates(learner: str) -> list[Candidate]:
    """The candidates of one learner, of every learner for 'auto', or the one candidate named (a fitted model's
    `learner_`: refitting it selects nothing); UsageError naming the learners otherwise."""
    offered = [c for c in CANDIDATES if learner in ("auto", c.learner, c.name)]
    if not offered:
        raise UsageError(f"learner {learner!r} is not offered; expected auto or one of {', '.join(LEARNERS)}")
    return offered


def one_standard_error_choice(selection: Sequence[dict]) -> int:
    """The first candidate whose mean fold ROC-AUC is within one standard error of the best mean."""
    means = [c["roc_auc_folds"]["mean"] for c in selection]
    best = int(np.argmax(means))
    spread = selection[best]["roc_auc_folds"]["std"] / math.sqrt(selection[best]["folds"])
    return next(i for i, mean in enumerate(means) if mean >= means[best] - spread)


def _columns(learner: str, numeric: Sequence[str], narrow: Sequence[str], wide: Sequence[str],
             random_state: int) -> ColumnTransformer:
    """Features encoded for the learner, in the order narrow categories, wide categories, numbers: boosting reads
    narrow categories natively (ordinal codes), the others one-hot; wide ones are target-encoded for all; the
    logistic regression gets missing values imputed (with indicators) and every column standardised."""
    if learner == "boosting":
        categories = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                    encoded_missing_value=np.nan, max_categories=255)
    else:
        # Dense: a sparse block would hide the numeric columns' NaN from the trees, which then refuse it.
        categories = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    wide_encoder = TargetEncoder(cv=StratifiedKFold(5, shuffle=True, random_state=random_state))
    numbers = "passthrough"
    if learner == "logistic":
        wide_encoder = make_pipeline(wide_encoder, StandardScaler())
        numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                                StandardScaler())
    return ColumnTransformer([("categorical", categories, list(narrow)), ("wide", wide_encoder, list(wide)),
                              ("numeric", numbers, list(numeric))], verbose_feature_names_out=False)


def learner_pipeline(candidate: Candidate, numeric: Sequence[str], narrow: Sequence[str], wide: Sequence[str], *,
                     rows: int, early_stopping: bool, rounds: int, trees: int, random_state: int) -> Pipeline:
    """ColumnTransformer (`_columns`) → the candidate's classifier, ready to fit on `rows` rows. Boosting runs
    `rounds` rounds at learning rate 0.1 and proportionally more at lower rates; from 10,000 rows on it stops once
    ten rounds gain less than 1e-3 in the loss on its own held-out tenth (below that the tenth is too noisy)."""
    params = dict(candidate.params)
    if candidate.learner == "boosting":
        # Narrow categories come first out of the ColumnTransformer: their positions are 0 .. len(narrow) - 1.
        model = HistGradientBoostingClassifier(
            max_iter=round(rounds * 0.1 / params["learning_rate"]), l2_regularization=1.0,
            categorical_features=list(range(len(narrow))) or None, early_stopping=early_stopping and rows >= 10_000,
            tol=1e-3, random_state=random_state, **params)
    elif candidate.learner in ("forest", "extra-trees"):
        kind = RandomForestClassifier if candidate.learner == "forest" else ExtraTreesClassifier
        model = kind(n_estimators=trees, bootstrap=candidate.learner == "forest" or rows > FOREST_ROWS,
                     max_samples=min(rows, FOREST_ROWS) if rows > FOREST_ROWS else None, n_jobs=-1,
                     random_state=random_state, **params)
    else:
        model = LogisticRegression(max_iter=2000, **params)
    return Pipeline([("columns", _columns(candidate.learner, numeric, narrow, wide, random_state)),
                     ("model", model)])


def categorical_columns(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """The features whose dtype holds categories (text, category) rather than numbers or booleans."""
    return [f for f in features if not (pd.api.types.is_numeric_dtype(frame[f]) or pd.api.types.is_bool_dtype(frame[f]))]


def generated_names(count: int) -> list[str]:
    """The names given to the columns of an array without names: x0, x1, ..., as scikit-learn names them."""
    return [f"x{i}" for i in range(count)]
