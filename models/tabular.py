"""The churn and retaliation models: calibrated gradient boosting over a table, with a goal-chosen decision threshold."""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted, column_or_1d

from carelens.data.errors import CareLensError, UsageError
from carelens.models.drift import distribution
from carelens.models.registry import Registry, RegistryError

ARTIFACT = "model.skops"
#: Types a stored tabular model may contain beyond those skops trusts by default; anything else is refused on load.
TRUSTED_TYPES = frozenset({
    "carelens.models.tabular.RiskModel",
    "carelens.models.tabular.OneFold",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # HistGradientBoosting keeps partial(check_array, ...) to type its numeric columns.
    "functools.partial",
    "sklearn.utils.validation.check_array",
})
#: Rows scored at a time: every tree walks a block that stays in cache instead of streaming the whole table again.
SCORING_ROWS = 100_000
CALIBRATIONS = ("auto", "isotonic", "sigmoid")
#: Percentiles kept per numeric feature (0, 1, ..., 100) to say where a value lies among the training rows.
PROFILE_POINTS = 101
#: Calibration below this many validation rows uses Platt scaling: isotonic regression overfits small sets.
ISOTONIC_MIN_ROWS = 5000


class SchemaError(CareLensError, ValueError):
    """A frame whose columns do not match the features a model was trained on."""


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


def boosting_pipeline(numeric: Sequence[str], categorical: Sequence[str], *, max_iter: int, learning_rate: float,
                      max_leaf_nodes: int, l2_regularization: float, early_stopping: bool, tol: float,
                      random_state: int) -> Pipeline:
    """ColumnTransformer (categories → ordinal codes, numbers passed through) → HistGradientBoostingClassifier."""
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                             max_categories=255)
    columns = ColumnTransformer([("categorical", encoder, list(categorical)), ("numeric", "passthrough", list(numeric))],
                                verbose_feature_names_out=False)
    # Categories come first out of the ColumnTransformer, so the mask is categories-then-numbers.
    mask = [True] * len(categorical) + [False] * len(numeric)
    booster = HistGradientBoostingClassifier(
        learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
        l2_regularization=l2_regularization, categorical_features=mask if categorical else None,
        early_stopping=early_stopping, tol=tol, random_state=random_state)
    return Pipeline([("columns", columns), ("boosting", booster)])


def categorical_columns(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """The features whose dtype holds categories (text, category) rather than numbers or booleans."""
    return [f for f in features if not (pd.api.types.is_numeric_dtype(frame[f]) or pd.api.types.is_bool_dtype(frame[f]))]


def _as_numbers(values: pd.Series) -> np.ndarray:
    """A numeric (or boolean) column as float64 with NaN for missing; SchemaError when it holds text."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise SchemaError(f"feature '{values.name}': got {values[bad].iloc[0]!r}, expected a number (the model was "
                          f"trained on it as numeric)")
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def _as_categories(values: pd.Series) -> np.ndarray:
    """A categorical column as an object array of strings with NaN for missing, as OrdinalEncoder expects."""
    text = values.astype("string").str.strip().str.lower()
    return text.to_numpy(dtype=object, na_value=np.nan)


def feature_profile(frame: pd.DataFrame, categorical: Sequence[str]) -> dict:
    """What the training rows looked like, for explaining one row against them and for noticing when tonight's rows
    differ: each feature's typical value (median; most common category), for numbers the percentiles 0..100 of its
    observed values, and each feature's binned distribution (`carelens.models.drift`)."""
    typical, percentiles = {}, {}
    distributions = {name: distribution(frame[name], name in set(categorical)) for name in frame.columns}
    for name in frame.columns:
        values = frame[name].dropna()
        if name in set(categorical):
            typical[name] = str(values.mode().iloc[0]) if len(values) else None
        elif len(values):
            typical[name] = float(values.median())
            percentiles[name] = np.percentile(values.to_numpy(float), np.arange(PROFILE_POINTS)).tolist()
        else:
            typical[name] = None
    return {"typical": typical, "percentiles": percentiles, "distributions": distributions}


def generated_names(count: int) -> list[str]:
    """The names given to the columns of an array without names: x0, x1, ..., as scikit-learn names them."""
    return [f"x{i}" for i in range(count)]


def can_stratify(y: np.ndarray, fraction: float) -> bool:
    """Whether `fraction` of the rows can be held out with every class on both sides, as a stratified
    train_test_split needs: two rows of each class at least, and room for every class in each part."""
    counts = np.unique(y, return_counts=True)[1]
    held_out = math.ceil(fraction * len(y))
    return counts.min() >= 2 and len(counts) <= held_out <= len(y) - len(counts)


class OneFold:
    """Cross-validation of one fold that trains on and scores every row, for calibrating a frozen pipeline.

    Calibration refits nothing there, so folds would only split up the same predictions, while the default
    stratified 5-fold demands five rows of every class: with one fold, calibration takes the rows there are.
    """

    def split(self, X, y=None, groups=None):
        rows = np.arange(len(X))
        yield rows, rows

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return 1

    def __repr__(self) -> str:
        return "OneFold()"


class RiskModel(ClassifierMixin, BaseEstimator):
    """Calibrated gradient boosting on a table; `risk` is 1 − P(negative_class) and a goal sets the flag threshold.

    Binary (churn) and multi-class (retaliation) alike: `predict_proba` columns follow `classes_`, `risk` is the
    probability of anything but the negative class, and `predict` flags a row when its risk reaches `threshold_`,
    naming the most likely non-negative class.

    fit(X, y, X_val=..., y_val=...) trains the booster on X, calibrates it on X_val (at most `calibration_rows`
    of it) and chooses the threshold there; without X_val, `validation_fraction` of X is held out for that.
    Boosting stops once ten rounds gain less than `tol` in validation loss: later trees change no reported
    figure and each one costs scoring time.

    X is a DataFrame, whose feature columns are picked by name (others are ignored, the order is free) and
    whose text columns are categorical, or any 2-d array-like, whose columns are named x0, x1, ... (see
    `_frame`). NaN marks a missing value. `feature_names_in_` lists the features used, in order, and
    `n_features_in_` counts them.
    """

    def __init__(self, features: Optional[Sequence[str]] = None, categorical: Optional[Sequence[str]] = None,
                 negative_class=None, goal: str = "f1", contacts_per_day: Optional[float] = None,
                 calibration: str = "auto", calibration_rows: int = 200_000, validation_fraction: float = 0.25,
                 max_iter: int = 300, learning_rate: float = 0.1, max_leaf_nodes: int = 15,
                 l2_regularization: float = 1.0, early_stopping: bool = True, tol: float = 1e-3,
                 random_state: int = 0):
        self.features = features
        self.categorical = categorical
        self.negative_class = negative_class
        self.goal = goal
        self.contacts_per_day = contacts_per_day
        self.calibration = calibration
        self.calibration_rows = calibration_rows
        self.validation_fraction = validation_fraction
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.early_stopping = early_stopping
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # the booster routes missing values
        tags.input_tags.string = True  # text columns are categories
        tags.input_tags.categorical = True
        return tags

    def fit(self, X, y, *, X_val=None, y_val=None) -> "RiskModel":
        goal = self._checked_goal()
        X, y = self._frame(X, fitting=True), self._labels(y)
        check_consistent_length(X, y)
        self._check_classes(y)
        if X_val is None and can_stratify(y, self.validation_fraction):
            X, X_val, y, y_val = train_test_split(X, y, test_size=self.validation_fraction, stratify=y,
                                                  random_state=self.random_state)
        elif X_val is None:
            # Too few rows to hold out a part with every class in it and every class left to train on: any split
            # would drop a class from the booster or from calibration. Calibrate and choose the threshold on the
            # training rows themselves instead; that is optimistic, so say so.
            warnings.warn(f"y has too few rows per class ({self._class_counts(y)}) to hold out a stratified "
                          f"validation_fraction={self.validation_fraction:g} with every class on both sides; "
                          f"calibrating and choosing the threshold "
                          f"on the training rows themselves, which overstates how well the model separates the "
                          f"classes. Pass X_val and y_val to avoid this.", UserWarning, stacklevel=2)
            X_val, y_val = X, y
        self._learn_schema(X)
        if y_val is None:
            raise ValueError("X_val was passed without y_val")
        X_val, y_val = self._frame(X_val), self._labels(y_val, name="y_val")
        check_consistent_length(X_val, y_val)
        self.profile_ = feature_profile(self._model_frame(X), self.categorical_features_)
        pipeline = self._pipeline()
        if pipeline[-1].early_stopping and not can_stratify(y, pipeline[-1].validation_fraction):
            # The booster holds out a stratified part of its rows to decide when to stop; with too few rows for
            # that, it runs all max_iter rounds.
            pipeline.set_params(boosting__early_stopping=False)
        pipeline.fit(self._model_frame(X), y)
        self.classes_ = pipeline.classes_
        self.negative_class_ = self.negative_class if self.negative_class is not None else self.classes_[0]
        self.n_iter_ = int(pipeline[-1].n_iter_)
        self.estimator_ = self._calibrated(pipeline, X_val, y_val)
        self.flag_rate_ = min(1.0, goal.value / self.contacts_per_day) if goal.kind == "top-k" else None
        self.threshold_ = self._threshold(goal, y_val != self.negative_class_, self.risk(X_val))
        return self

    def _checked_goal(self) -> Goal:
        goal = parse_goal(self.goal)
        if goal.kind == "top-k" and not self.contacts_per_day:
            raise UsageError("goal 'top-k' needs contacts_per_day (how many contacts a day are scored) to turn K "
                             "into a share of contacts")
        if self.calibration not in CALIBRATIONS:
            raise UsageError(f"calibration {self.calibration!r} is not offered; expected one of {', '.join(CALIBRATIONS)}")
        if not 0 < self.validation_fraction < 1:
            raise UsageError(f"validation_fraction {self.validation_fraction!r} is not a share of the rows; expected "
                             f"a number between 0 and 1")
        return goal

    @staticmethod
    def _labels(y, name: str = "y") -> np.ndarray:
        """Class labels as a 1-d array, validated as scikit-learn does: one column, no NaN, classes not numbers."""
        if y is None:
            raise ValueError(f"RiskModel requires {name} to be passed, but the target {name} is None.")
        y = column_or_1d(y, warn=True, input_name=name)
        check_classification_targets(y)
        return y

    @staticmethod
    def _class_counts(y: np.ndarray) -> str:
        return ", ".join(f"{label}: {count}" for label, count in zip(*np.unique(y, return_counts=True)))

    def _check_classes(self, y: np.ndarray) -> None:
        """At least two classes (risk is the chance of anything but the negative class), one of them the negative."""
        labels = np.unique(y)
        if len(labels) < 2:
            raise ValueError(f"y has {len(labels)} class ({self._class_counts(y)}); RiskModel needs at least 2 "
                             f"classes to tell the negative class from the others")
        if self.negative_class is not None and self.negative_class not in set(labels.tolist()):
            raise UsageError(f"negative class {self.negative_class!r} is not among the labels "
                             f"{', '.join(map(str, labels))}")

    def _learn_schema(self, X: pd.DataFrame) -> None:
        """Record the features in order and which of them are categorical (declared, else from dtypes)."""
        features = list(self.features) if self.features is not None else list(X.columns)
        if not features:
            raise ValueError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required by RiskModel.")
        self._check_columns(X, features)
        declared = self.categorical if self.categorical is not None else categorical_columns(X, features)
        self.feature_names_in_ = np.asarray(features, dtype=object)
        self.n_features_in_ = len(features)
        self.categorical_features_ = [f for f in features if f in set(declared)]

    def _pipeline(self) -> Pipeline:
        numeric = [f for f in self.feature_names_in_ if f not in set(self.categorical_features_)]
        return boosting_pipeline(numeric, self.categorical_features_, max_iter=self.max_iter,
                                 learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
                                 l2_regularization=self.l2_regularization, early_stopping=self.early_stopping,
                                 tol=self.tol, random_state=self.random_state)

    def _calibrated(self, pipeline: Pipeline, X_val: pd.DataFrame, y_val: np.ndarray) -> CalibratedClassifierCV:
        """The fitted pipeline, frozen, with probabilities calibrated on validation rows."""
        X_cal, y_cal = self._calibration_rows(X_val, y_val)
        self.calibration_method_ = self._calibration_method(len(y_cal))
        return CalibratedClassifierCV(FrozenEstimator(pipeline), method=self.calibration_method_, cv=OneFold()).fit(
            self._model_frame(X_cal), y_cal)

    def _calibration_rows(self, X: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """Validation rows for calibration, stratified down to `calibration_rows` so that large data stays fast."""
        if len(y) <= self.calibration_rows:
            return X, y
        X, _, y, _ = train_test_split(X, y, train_size=self.calibration_rows, stratify=y, random_state=self.random_state)
        return X, y

    def _calibration_method(self, rows: int) -> str:
        if self.calibration != "auto":
            return self.calibration
        return "isotonic" if rows >= ISOTONIC_MIN_ROWS else "sigmoid"

    def _threshold(self, goal: Goal, positive: np.ndarray, scores: np.ndarray) -> float:
        if goal.kind == "recall":
            return threshold_for_recall(positive, scores, goal.value)
        if goal.kind == "top-k":
            return threshold_for_rate(scores, self.flag_rate_)
        return threshold_for_f1(positive, scores)

    def _frame(self, X, *, fitting: bool = False) -> pd.DataFrame:
        """X as a frame whose columns the model then picks by name (`_model_frame`).

        A DataFrame is taken as it is: extra columns and any order are fine. Any other array-like is validated as
        scikit-learn validates X (2-d, not sparse, at least one row and one column, no infinity, no complex
        numbers; NaN is allowed: the booster takes it for missing) and its columns are named x0, x1, ... in
        order; a column of text is categorical, as in a frame. When scoring, an array given to a model fitted on
        an array must have the fitted number of columns (or, if `features` picked some, hold those at their
        places); given to a model fitted on named columns, its columns are read as those features in order, with
        scikit-learn's warning that the names are lost.
        """
        if isinstance(X, pd.DataFrame):
            if fitting and len(X) == 0:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required "
                                 f"by RiskModel.")
            return X
        array = check_array(X, dtype=None, ensure_all_finite="allow-nan", estimator=self)
        if array.dtype.kind in "US":
            # Text keeps its Python objects (and a list keeps its numbers as numbers) rather than one string type.
            array = check_array(X, dtype=object, ensure_all_finite="allow-nan", estimator=self)
        frame = pd.DataFrame(array, columns=generated_names(array.shape[1]))
        if array.dtype == object:
            frame = frame.infer_objects()  # numbers held as objects are numbers, text stays categorical
        if fitting:
            return frame
        width, expected = array.shape[1], self.n_features_in_
        by_position = all(isinstance(f, str) and re.fullmatch(r"x\d+", f) for f in self.feature_names_in_)
        if by_position and list(self.feature_names_in_) != generated_names(expected):
            return frame  # fitted on an array with `features` picking some of its columns: found by their names
        if width != expected:
            raise SchemaError(f"X has {width} features, but RiskModel is expecting {expected} features as input.")
        if not by_position:
            warnings.warn("X does not have valid feature names, but RiskModel was fitted with feature names",
                          UserWarning, stacklevel=3)
            frame.columns = self.feature_names_in_
        return frame

    @staticmethod
    def _check_columns(X: pd.DataFrame, features: Sequence) -> None:
        """SchemaError naming any of the features the frame lacks."""
        missing = [f for f in features if f not in X.columns]
        if missing:
            raise SchemaError(f"the frame lacks feature column(s) {', '.join(map(str, missing))}; this model needs "
                              f"{', '.join(map(str, features))}")

    def _model_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """The feature columns typed as the pipeline expects; SchemaError naming any feature the frame lacks."""
        self._check_columns(X, self.feature_names_in_)
        categorical = set(self.categorical_features_)
        return pd.DataFrame({f: _as_categories(X[f]) if f in categorical else _as_numbers(X[f])
                             for f in self.feature_names_in_}, index=X.index)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`, for a frame or an array (see `_frame`)."""
        check_is_fitted(self, "estimator_")
        frame = self._model_frame(self._frame(X))
        return np.concatenate([self.estimator_.predict_proba(frame.iloc[start:start + SCORING_ROWS])
                               for start in range(0, max(len(frame), 1), SCORING_ROWS)])

    def risk(self, X) -> np.ndarray:
        """P(anything but the negative class): P(churn), or P(retaliate) = 1 − P(none)."""
        return self.risk_from_proba(self.predict_proba(X))

    def risk_from_proba(self, proba: np.ndarray) -> np.ndarray:
        return 1.0 - proba[:, self.classes_.tolist().index(self.negative_class_)]

    def predict(self, X) -> np.ndarray:
        return self.predict_from_proba(self.predict_proba(X))

    def predict_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """Flagged rows get their most likely non-negative class, the others the negative class."""
        negative = self.classes_.tolist().index(self.negative_class_)
        likeliest_other = np.where(np.arange(len(self.classes_)) == negative, -np.inf, proba).argmax(axis=1)
        flagged = self.risk_from_proba(proba) >= self.threshold_
        return np.where(flagged, self.classes_[likeliest_other], self.negative_class_)

    def feature_schema(self) -> list[dict]:
        """The features in order, each with its kind (numeric or categorical), as recorded in metadata."""
        check_is_fitted(self, "feature_names_in_")
        categorical = set(self.categorical_features_)
        return [{"name": f, "kind": "categorical" if f in categorical else "numeric"} for f in self.feature_names_in_]


def save_model(model: RiskModel, directory: Union[str, Path]) -> Path:
    """The model written with skops (a format that runs no code on load) as `model.skops` in the directory."""
    path = Path(directory) / ARTIFACT
    sio.dump(model, path)
    return path


def _check_skops_container(path: Path) -> None:
    """RegistryError unless `path` is a plain file that starts as a skops file (a zip archive) does: a pickle or
    joblib file put in its place is named as such and never opened by anything that would unpickle it."""
    if not path.is_file():
        raise RegistryError(f"{path}: missing or not a plain file; expected a skops file — refusing to load it")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise RegistryError(f"{path}: cannot be read ({exc}); expected a skops file — refusing to load it") from exc
    if head != b"PK\x03\x04":
        looks = ("a pickle" if head[:1] == b"\x80" else "a compressed joblib file" if head[:1] in (b"x", b"\x1f", b"\xfd", b"B")
                 else "something else")
        raise RegistryError(f"{path}: is not a skops file (expected a zip archive starting with 'PK', found bytes "
                            f"{head.hex(' ') or 'none'}: {looks}); CareLens never unpickles a model — refusing to "
                            f"load it")


def load_model(path: Union[str, Path]) -> RiskModel:
    """A skops-stored model, after checking that every type it holds is on the explicit allow-list (TRUSTED_TYPES)
    and that it is a RiskModel. Nothing in the file is unpickled or run; anything unreadable is a RegistryError
    naming the file."""
    path = Path(path)
    _check_skops_container(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged or foreign zip: whatever skops or zipfile raises, the answer is refusal
        raise RegistryError(f"{path}: not a readable skops file ({type(exc).__name__}: {exc}); refusing to load "
                            f"it") from exc
    unexpected = sorted(set(untrusted) - TRUSTED_TYPES)
    if unexpected:
        raise RegistryError(f"{path}: holds type(s) outside the allow-list: {', '.join(unexpected)}; "
                            f"refusing to load it")
    try:
        model = sio.load(path, trusted=sorted(TRUSTED_TYPES))
    except Exception as exc:  # skops' UntrustedTypesFoundException, zipfile, json and construction errors alike
        raise RegistryError(f"{path}: the skops file could not be loaded with the allow-list "
                            f"({type(exc).__name__}: {exc}); refusing to load it") from exc
    if not isinstance(model, RiskModel):
        raise RegistryError(f"{path}: holds a {type(model).__module__}.{type(model).__qualname__}; expected a "
                            f"carelens RiskModel — refusing to load it")
    return model


def load_tabular(registry: Union[Registry, str, Path], name: str, version: str = "latest") -> tuple[RiskModel, dict]:
    """A verified model and its metadata: checksums match, libraries are compatible, the feature schema agrees."""
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    artifact = registry.open(name, version, requires=("scikit-learn", "skops"))
    model = load_model(artifact.path / ARTIFACT)
    try:
        schema = model.feature_schema()
    except Exception as exc:  # an unfitted or hollowed-out model
        raise RegistryError(f"{artifact.path / ARTIFACT}: the stored model has no feature schema "
                            f"({type(exc).__name__}: {exc}); refusing to load it") from exc
    if schema != artifact.metadata.get("features"):
        raise RegistryError(f"{artifact.path}: the stored model's features {model.feature_schema()} differ from "
                            f"those in its metadata {artifact.metadata.get('features')}; refusing to load it")
    return model, artifact.metadata
