"""The churn and retaliation models: a learner chosen by cross-validation, cross-fitted calibration, a goal-chosen threshold."""
from __future__ import annotations

import functools

import re
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted, column_or_1d
from threadpoolctl import ThreadpoolController

from carelens.data.contracts import plain_ascii, without_attrs
from carelens.data.errors import CareLensError, UsageError
from carelens.models.drift import distribution
from carelens.models.learners import (
    HIGH_CARDINALITY, Candidate, Goal, candidates, categorical_columns, generated_names, learner_pipeline,
    one_standard_error_choice, parse_goal, threshold_for_f1, threshold_for_rate, threshold_for_recall,
)
from carelens.models.registry import Registry, RegistryError
from carelens.models.scoring_form import scoring_form

ARTIFACT = "model.skops"


#: Types a stored tabular model may contain beyond those skops trusts by default; anything else is refused on load.
TRUSTED_TYPES = frozenset({
    "carelens.models.tabular.RiskModel",
    # A model fitted on more than HELD_OUT_FROM rows: one fitted pipeline, calibrated on held-out rows.
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # HistGradientBoosting keeps partial(check_array, ...) to type its numeric columns.
    "functools.partial",
    # The trees of the random forest and extra-trees learners.
    "sklearn.tree._tree.Tree",
    # TargetEncoder keeps its seeded folds; OneHotEncoder and TargetEncoder record the dtypes they saw.
    "sklearn.model_selection._split.StratifiedKFold",
    "numpy.dtype",
    "sklearn.utils.validation.check_array",
})


#: Rows scored at a time: large enough that the per-tree parallel regions stay few (250,000 scored a million contacts
#: at 219,000 rows/s for retaliation against 182,000 at 100,000), small enough to bound the memory of one block.
SCORING_ROWS = 250_000


#: Fewer rows than this are scored on one thread: a booster opens an OpenMP parallel region per tree, and for a
#: request of 40 customers waking the threads hundreds of times cost more than the trees (0.18 s against 0.42 s per
#: flag call, and 4 s while another process held the cores).
PARALLEL_SCORING_ROWS = 10_000


@functools.lru_cache(maxsize=1)
def _thread_pools() -> ThreadpoolController:
    """The process's thread pools, found once: `threadpool_limits` looks for them on every call (3 ms each, more than
    scoring a request's few contacts takes)."""
    return ThreadpoolController()


def _openmp_threads(limit: Optional[int]):
    """A context in which OpenMP runs at most `limit` threads (None: as many as it likes)."""
    return _thread_pools().limit(limits=limit, user_api="openmp")


CALIBRATIONS = ("auto", "isotonic", "sigmoid")


#: Percentiles kept per numeric feature (0, 1, ..., 100) to say where a value lies among the training rows.
PROFILE_POINTS = 101


#: Calibration folds smaller than this use Platt scaling: isotonic regression overfits small sets.
ISOTONIC_MIN_ROWS = 5000


#: Classes with fewer rows than this are kept whole when candidates are compared on a sample of the rows.
RARE_CLASS_ROWS = 50


#: From this many rows on, the chosen learner is fitted once on all but a stratified HELD_OUT_SHARE of them and
#: calibrated (and thresholded) on that share: at least 10,000 held-out rows, so cross-fitting would add nothing but
#: `cv` fold models to run at every scoring (5x the scoring time) and `cv` − 1 extra fits.
HELD_OUT_FROM = 100_000


HELD_OUT_SHARE = 0.1


class SchemaError(CareLensError, ValueError):
    """A frame whose columns do not match the features a model was trained on."""


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
    cells = values.to_numpy(dtype=object, na_value=np.nan)
    # Plain ASCII text (as the contract hands it on) trimmed and lower-cased in Python, which takes a fraction of
    # pandas' string operations on a request's rows.
    if all(plain_ascii(cell) or (isinstance(cell, float) and cell != cell) for cell in cells):
        return np.array([cell.strip().lower() if isinstance(cell, str) else np.nan for cell in cells], dtype=object)
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


class RiskModel(ClassifierMixin, BaseEstimator):
    """A calibrated classifier on a table; `risk` is 1 − P(negative_class) and a goal sets the flag threshold.

    Binary (churn) and multi-class (retaliation) alike: `predict_proba` columns follow `classes_`, `risk` is the
    probability of anything but the negative class, and `predict` flags a row when its risk reaches `threshold_`,
    naming the most likely non-negative class.

    fit(X, y) compares the candidates of `learner` (`candidates`: 'auto' tries boosting, random forest,
    extra-trees and logistic regression, each at a few settings) by `cv`-fold cross-validation: each candidate's
    columns are encoded once and its classifier fitted as a CalibratedClassifierCV over the same stratified folds, so
    every row trains `cv` − 1 fold models and calibrates the one that did not see it. The simplest candidate whose
    out-of-fold risk ranks the outcome within one standard error of the best (mean ROC-AUC over the folds;
    `one_standard_error_choice`) is kept as it is: its encoding and the ensemble of its calibrated fold models, no
    refit and no row spent only on calibration. The threshold is chosen on the same out-of-fold risks. Beyond
    `selection_rows`, candidates are compared on a stratified sample of that many rows and the winner alone is then
    fitted on all of them: cross-fitted as above below HELD_OUT_FROM rows, and from there on fitted once on 90% and
    calibrated and thresholded on a stratified 10% (at least 10,000 rows), so that one model scores instead of `cv`.
    `selection_` records every candidate's cross-validated figures and time.

    X is a DataFrame, whose feature columns are picked by name (others are ignored, the order is free) and
    whose text columns are categorical, or any 2-d array-like, whose columns are named x0, x1, ... (see
    `_frame`). NaN marks a missing value. `feature_names_in_` lists the features used, in order, and
    `n_features_in_` counts them.
    """

    def __init__(self, features: Optional[Sequence[str]] = None, categorical: Optional[Sequence[str]] = None,
                 negative_class=None, goal: str = "f1", contacts_per_day: Optional[float] = None,
                 learner: str = "auto", cv: int = 5, calibration: str = "auto", selection_rows: int = 20_000,
                 rounds: int = 200, trees: int = 500, random_state: int = 0):
        self.features = features
        self.categorical = categorical
        self.negative_class = negative_class
        self.goal = goal
        self.contacts_per_day = contacts_per_day
        self.learner = learner
        self.cv = cv
        self.calibration = calibration
        self.selection_rows = selection_rows
        self.rounds = rounds
        self.trees = trees
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # every learner takes missing values (logistic: imputed)
        tags.input_tags.string = True  # text columns are categories
        tags.input_tags.categorical = True
        return tags

    def fit(self, X, y) -> "RiskModel":
        goal = self._checked_goal()
        tried = candidates(self.learner)
        X, y = self._frame(X, fitting=True), self._labels(y)
        check_consistent_length(X, y)
        self._check_classes(y)
        self._learn_schema(X)
        frame = self._model_frame(X)
        empty = [f for f in self.feature_names_in_
                 if f not in set(self.categorical_features_) and frame[f].isna().all()]
        if empty:
            warnings.warn(f"feature(s) {', '.join(empty)} have no value in any training row: not used")
        self.profile_ = feature_profile(frame, self.categorical_features_)
        self.classes_ = np.unique(y)
        self.negative_class_ = self.negative_class if self.negative_class is not None else self.classes_[0]
        sample = self._selection_sample(y)
        results = [self._cross_fitted(c, frame.iloc[sample], y[sample]) for c in tried]
        self.selection_ = [figures for _, figures, _ in results]
        best = one_standard_error_choice(self.selection_)
        self.learner_ = tried[best].name
        if len(sample) == len(y):
            (self.estimator_, final, risk), truth = results[best], y
        elif len(y) < HELD_OUT_FROM:
            (self.estimator_, final, risk), truth = self._cross_fitted(tried[best], frame, y), y
        else:
            self.estimator_, final, risk, truth = self._held_out_fitted(tried[best], frame, y)
        self.calibration_method_ = final["calibration"]
        self.flag_rate_ = min(1.0, goal.value / self.contacts_per_day) if goal.kind == "top-k" else None
        self.threshold_ = self._threshold(goal, truth != self.negative_class_, risk)
        return self

    def _folds(self, y: np.ndarray):
        """Stratified folds, as many as `cv` and the rarest class allow; with a class of one row, one 'fold' that
        trains and calibrates on every row (optimistic, and said so in a warning)."""
        rarest = int(np.unique(y, return_counts=True)[1].min())
        if rarest >= 2:
            return StratifiedKFold(min(self.cv, rarest), shuffle=True, random_state=self.random_state)
        warnings.warn(f"y has too few rows per class ({self._class_counts(y)}) for two stratified folds; "
                      f"calibrating and choosing the threshold on the training rows themselves, which overstates how "
                      f"well the model separates the classes", UserWarning, stacklevel=3)
        return [(np.arange(len(y)), np.arange(len(y)))]

    def _selection_sample(self, y: np.ndarray) -> np.ndarray:
        """Row positions the candidates are compared on: all rows, or a stratified `selection_rows` of them that keeps
        every row of a class rarer than RARE_CLASS_ROWS (a sample could otherwise leave it too few for the folds)."""
        if len(y) <= self.selection_rows:
            return np.arange(len(y))
        classes, counts = np.unique(y, return_counts=True)
        rare = np.isin(y, classes[counts < RARE_CLASS_ROWS])
        common = np.flatnonzero(~rare)
        wanted = max(self.selection_rows - int(rare.sum()), len(np.unique(y[common])))
        if wanted >= len(common):
            return np.arange(len(y))
        chosen = train_test_split(common, train_size=wanted, stratify=y[common], random_state=self.random_state)[0]
        return np.sort(np.concatenate([chosen, np.flatnonzero(rare)]))

    def _cross_fitted(self, candidate: Candidate, frame: pd.DataFrame,
                      y: np.ndarray) -> tuple[Pipeline, dict, np.ndarray]:
        """(the candidate's column encoding, fitted once on the rows, then its classifier as a CalibratedClassifierCV
        over stratified folds of them; its cross-validated figures; the out-of-fold risk of every row): each row's
        risk comes from the fold model that did not see it."""
        started = time.perf_counter()
        folds = self._folds(y)
        splits = list(folds.split(frame, y) if hasattr(folds, "split") else folds)
        method = self._calibration_method(min(len(test) for _, test in splits))
        (_, columns), (_, classifier) = self._candidate_pipeline(candidate, frame, y).steps
        # Encoded once, not once per fold: scoring encodes a row once for the `cv` fold models, whose encodings cost
        # more than their trees (a request of 10 contacts: churn 31 → 19 ms, retaliation 38 → 25 ms). A target
        # encoding is cross-fitted on these rows, so no fold model sees a row's own label in that row's encoding.
        # Arrays whatever scikit-learn's global output setting, so that the folds' rows are taken by position.
        encoded = columns.set_output(transform="default").fit_transform(frame, y)
        # The splitter, not its splits, is stored with the model: fold indices of a large table would bloat it.
        calibrated = CalibratedClassifierCV(classifier, method=method, cv=folds, ensemble=True).fit(encoded, y)
        proba = np.zeros((len(y), len(self.classes_)))
        for (_, test), fold_model in zip(splits, calibrated.calibrated_classifiers_):
            proba[test] = fold_model.predict_proba(encoded[test])
        risk = self.risk_from_proba(proba)
        positive = y != self.negative_class_
        per_fold = [roc_auc_score(positive[test], risk[test]) for _, test in splits if 0 < positive[test].mean() < 1]
        figures = {"candidate": candidate.name, "learner": candidate.learner, "params": dict(candidate.params),
                   "roc_auc": float(roc_auc_score(positive, risk)),
                   "roc_auc_folds": {"mean": float(np.mean(per_fold)),
                                     "std": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0},
                   "log_loss": float(log_loss(y, proba, labels=self.classes_)), "calibration": method,
                   "rows": int(len(y)), "folds": len(splits), "seconds": round(time.perf_counter() - started, 2)}
        return Pipeline([("columns", columns), ("calibrated", calibrated)]), figures, risk

    def _held_out_fitted(self, candidate: Candidate, frame: pd.DataFrame,
                         y: np.ndarray) -> tuple[CalibratedClassifierCV, dict, np.ndarray, np.ndarray]:
        """(the candidate fitted once on all but a stratified HELD_OUT_SHARE of the rows and calibrated on that share,
        its figures on the held-out rows, their risk, their labels): for tables of HELD_OUT_FROM rows or more."""
        started = time.perf_counter()
        fit_rows, held_out = train_test_split(np.arange(len(y)), test_size=HELD_OUT_SHARE, stratify=y,
                                              random_state=self.random_state)
        method = self._calibration_method(len(held_out))
        fitted = self._candidate_pipeline(candidate, frame, y).fit(frame.iloc[fit_rows], y[fit_rows])
        calibrated = CalibratedClassifierCV(FrozenEstimator(fitted), method=method).fit(frame.iloc[held_out],
                                                                                       y[held_out])
        proba = calibrated.predict_proba(frame.iloc[held_out])
        risk, truth = self.risk_from_proba(proba), y[held_out]
        auc = float(roc_auc_score(truth != self.negative_class_, risk))
        figures = {"candidate": candidate.name, "learner": candidate.learner, "params": dict(candidate.params),
                   "roc_auc": auc, "roc_auc_folds": {"mean": auc, "std": 0.0},
                   "log_loss": float(log_loss(truth, proba, labels=self.classes_)), "calibration": method,
                   "rows": int(len(y)), "folds": 0, "held_out_rows": int(len(held_out)),
                   "seconds": round(time.perf_counter() - started, 2)}
        return calibrated, figures, risk, truth

    def _candidate_pipeline(self, candidate: Candidate, frame: pd.DataFrame, y: np.ndarray) -> Pipeline:
        """The candidate's unfitted pipeline for these rows: numeric columns as they are, narrow categories encoded
        for the learner, wide ones target-encoded."""
        # A column with no value in these rows says nothing (and boosting's binning fails on it): left out.
        numeric = [f for f in self.feature_names_in_
                   if f not in set(self.categorical_features_) and frame[f].notna().any()]
        wide = [f for f in self.categorical_features_ if frame[f].nunique() > HIGH_CARDINALITY]
        narrow = [f for f in self.categorical_features_ if f not in set(wide)]
        return learner_pipeline(candidate, numeric, narrow, wide, rows=len(y),
                                # Each booster holds out a stratified tenth of its rows to stop early.
                                early_stopping=int(np.unique(y, return_counts=True)[1].min()) >= 2 * self.cv,
                                rounds=self.rounds, trees=self.trees, random_state=self.random_state)

    def _checked_goal(self) -> Goal:
        goal = parse_goal(self.goal)
        if goal.kind == "top-k" and not self.contacts_per_day:
            raise UsageError("goal 'top-k' needs contacts_per_day (how many contacts a day are scored) to turn K "
                             "into a share of contacts")
        if self.calibration not in CALIBRATIONS:
            raise UsageError(f"calibration {self.calibration!r} is not offered; expected one of {', '.join(CALIBRATIONS)}")
        if not (isinstance(self.cv, int) and self.cv >= 2):
            raise UsageError(f"cv {self.cv!r} is not a number of folds; expected a whole number of at least 2")
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
        return pd.DataFrame(self._model_columns(X), index=X.index)

    def _model_columns(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """`_model_frame`'s columns by feature name; the columns already numeric converted together."""
        self._check_columns(X, self.feature_names_in_)
        X = without_attrs(X)  # a joined table carries its join report
        categorical = set(self.categorical_features_)
        kinds = X.dtypes
        together = [f for f in self.feature_names_in_ if f not in categorical and kinds[f].kind in "biuf"]
        block = X[together].to_numpy(dtype=np.float64, na_value=np.nan) if together else None
        converted = {f: block[:, i] for i, f in enumerate(together)}
        return {f: converted[f] if f in converted else _as_categories(X[f]) if f in categorical else _as_numbers(X[f])
                for f in self.feature_names_in_}

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`, for a frame or an array (see `_frame`)."""
        check_is_fitted(self, "estimator_")
        frame = self._frame(X)
        columns, form = self._model_columns(frame), scoring_form(self.estimator_)
        with _openmp_threads(1 if len(frame) < PARALLEL_SCORING_ROWS else None):
            return np.concatenate([form.predict_proba({f: c[start:start + SCORING_ROWS] for f, c in columns.items()})
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
        flagged = self.risk_from_proba(proba) >= self.threshold_
        return np.where(flagged, self.likeliest_other_class(proba), self.negative_class_)

    def likeliest_other_class(self, proba: np.ndarray) -> np.ndarray:
        """Per row, the most likely class other than the negative one (for retaliation: escalate, switch or vent)."""
        negative = self.classes_.tolist().index(self.negative_class_)
        return self.classes_[np.where(np.arange(len(self.classes_)) == negative, -np.inf, proba).argmax(axis=1)]

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
