"""A fitted tabular estimator in the form that scores a request's few rows fast: encoders on arrays, trees in treelite."""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd
import treelite
import treelite.gtil
import treelite.sklearn
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils import assert_all_finite

from carelens.models.compiled_trees import COMPILED_TREES, cached_trees, compiled_trees

#: From this many rows on, treelite walks the trees on every core; fewer go on one thread, for which waking a pool
#: costs more than a request's few rows take.
PARALLEL_ROWS = 10_000

Columns = Mapping[str, np.ndarray]

#: Each fitted estimator's scoring form, built on its first scoring and dropped with it.
_FORMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Estimator:
    """A fitted classifier scored as calibration reads it: its decision function, else its probabilities (of the
    positive class when binary)."""

    def __init__(self, estimator):
        self.estimator = estimator

    def scores(self, X: np.ndarray) -> np.ndarray:
        if hasattr(self.estimator, "decision_function"):
            return self.estimator.decision_function(X)
        proba = self.estimator.predict_proba(X)
        return proba[:, 1] if proba.shape[1] == 2 else proba


class _Linear(_Estimator):
    """A fitted linear classifier (the logistic regression): its decision function computed as scikit-learn computes
    it, X @ coef_.T + intercept_, without the input checks that cost a request's rows more than the product; a value
    that is not finite is refused as scikit-learn refuses it."""

    def scores(self, X: np.ndarray) -> np.ndarray:
        assert_all_finite(X, input_name="X")
        scores = np.asarray(X, dtype=np.float64) @ self.estimator.coef_.T + self.estimator.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores


class _Trees(_Estimator):
    """A fitted tree ensemble scored by its trees imported into treelite (float64), whatever the number of rows: a
    row's score then does not depend on the rows scored beside it (scikit-learn's own trees walk many rows faster, 2–2.5×
    on 200,000, but add a row's leaves in another order, 1e-16 apart), so a request answers alike alone, batched with
    others, or in the nightly job. A booster of many trees runs them compiled where the cache holds its library
    (`compile`), to the same float64 sums."""

    margins = True
    #: Whether this kind of ensemble is compiled once large enough: a booster's many shallow trees compile in seconds,
    #: a forest's deep ones would take minutes.
    compiles = False

    def __init__(self, ensemble):
        super().__init__(ensemble)
        self.model = treelite.sklearn.import_model(ensemble)
        self.compiled = cached_trees(self.model) if self._worth_compiling() else None

    def _worth_compiling(self) -> bool:
        return self.compiles and self.model.num_tree >= COMPILED_TREES

    def compile(self) -> bool:
        """Compile the trees into the cache where they are worth it and not yet compiled; whether they now score
        compiled."""
        if self.compiled is None and self._worth_compiling():
            self.compiled = compiled_trees(self.model)
        return self.compiled is not None

    def scores(self, X: np.ndarray) -> np.ndarray:
        rows = self._prepared(np.array(X, dtype=np.float64))
        if rows is None:
            return super().scores(X)
        parallel = len(rows) >= PARALLEL_ROWS
        outputs = self.compiled.predict(rows, self.margins, parallel) if self.compiled is not None else \
            np.asarray(treelite.gtil.predict(self.model, rows, pred_margin=self.margins, nthread=0 if parallel else 1))
        outputs = outputs.reshape(len(rows), -1)
        return outputs[:, -1] if outputs.shape[1] <= 2 else outputs

    def _prepared(self, rows: np.ndarray) -> Optional[np.ndarray]:
        """The rows as the ensemble's trees read them; None where only the ensemble itself can answer them."""
        return rows


class _Booster(_Trees):
    """A HistGradientBoostingClassifier: treelite's margins are its decision function to rounding (1e-15)."""

    compiles = True

    def __init__(self, ensemble: HistGradientBoostingClassifier):
        super().__init__(ensemble)
        categorical = np.flatnonzero(ensemble.is_categorical_ if ensemble.is_categorical_ is not None else [])
        # A category the booster's own encoder did not see while fitting (one absent from its fold) is a missing value
        # to scikit-learn, while treelite would send it wherever the split's category set does not hold it.
        seen = ensemble._preprocessor.named_transformers_["encoder"].categories_ if len(categorical) else []
        self.known_categories = dict(zip(categorical.tolist(), seen))

    def _prepared(self, rows: np.ndarray) -> np.ndarray:
        for column, known in self.known_categories.items():
            rows[~np.isin(rows[:, column], known), column] = np.nan
        return rows


class _Forest(_Trees):
    """A random forest or extra-trees: treelite's averaged leaf probabilities are its own `predict_proba`."""

    margins = False

    def _prepared(self, rows: np.ndarray) -> Optional[np.ndarray]:
        # scikit-learn's trees compare a value rounded to float32 with each threshold: so do these. What float32
        # cannot hold (infinity, 1e300) the forest refuses with its own error.
        with np.errstate(over="ignore"):
            single = rows.astype(np.float32)
        return None if np.isinf(single).any() else single.astype(np.float64)


class _Columns:
    """A fitted ColumnTransformer's `transform`, each part applied to its typed columns in its array form
    (`_part_form`)."""

    def __init__(self, transformer: ColumnTransformer):
        self.parts = [(_part_form(part), list(names))
                      for _, part, names in transformer.transformers_ if part != "drop" and len(names)]

    def transform(self, columns: Columns) -> np.ndarray:
        return np.hstack([form({name: columns[name] for name in names}) for form, names in self.parts])


def _part_form(part) -> Callable[[Columns], np.ndarray]:
    """A fitted ColumnTransformer part's `transform` of its columns, step by step when it is a Pipeline: each step on
    arrays where this module knows its form (a pass-through, an ordinal or one-hot encoding of text categories,
    imputing and standardising numbers), else by scikit-learn (the first step on a frame of the columns, as it was
    fitted). A request's rows took 2–4 ms a part through scikit-learn's input checks and frames, a linear model's call
    5–7 ms of its 12."""
    first, *rest = [step for _, step in part.steps] if isinstance(part, Pipeline) else [part]
    then = [_on_numbers(step) or step.transform for step in rest if not _passes_through(step)]
    start = _numbers if _passes_through(first) else _codes(first) or _one_hot(first) or _numbers_first(first)
    return lambda columns: functools.reduce(lambda rows, step: step(rows), then, start(columns))


def _numbers_first(step) -> Callable[[Columns], np.ndarray]:
    """A pipeline's first step on its columns: its form on their numbers side by side where it has one, else
    scikit-learn's own `transform` of a frame of them."""
    form = _on_numbers(step)
    return (lambda columns: form(_numbers(columns))) if form else (lambda columns: step.transform(pd.DataFrame(columns)))


def _numbers(columns: Columns) -> np.ndarray:
    """The columns (numbers, NaN where missing) side by side as float64."""
    return np.column_stack(list(columns.values())).astype(np.float64, copy=False)


def _codes(encoder) -> Optional[Callable[[Columns], np.ndarray]]:
    """An OrdinalEncoder's `transform` as a lookup of each category's code, missing and unseen categories NaN, for the
    encoder the boosting learner fits (its input checks cost more than a request's rows); None for any other part."""
    if not (isinstance(encoder, OrdinalEncoder) and encoder.handle_unknown == "use_encoded_value"
            and _is_nan(encoder.unknown_value) and _is_nan(encoder.encoded_missing_value)
            and _text_categories(encoder)):
        return None
    codes = [{category: float(code) for code, category in enumerate(categories) if isinstance(category, str)}
             for categories in encoder.categories_]

    def transform(columns: Columns) -> np.ndarray:
        return np.column_stack([[known.get(value, np.nan) if isinstance(value, str) else np.nan for value in values]
                                for values, known in zip(columns.values(), codes)])
    return transform


def _one_hot(encoder) -> Optional[Callable[[Columns], np.ndarray]]:
    """A dense OneHotEncoder's `transform` that ignores unseen categories, as a lookup of each category's column:
    an unseen category, or a missing value the encoder did not see, is all zeros; None for any other part."""
    if not (isinstance(encoder, OneHotEncoder) and encoder.handle_unknown == "ignore" and encoder.drop is None
            and not encoder.sparse_output and _text_categories(encoder)):
        return None
    widths = [len(categories) for categories in encoder.categories_]
    # Each category's column in the encoded block; a missing value's (None or NaN) where the encoder saw one.
    columns = [({c: n for n, c in enumerate(categories) if isinstance(c, str)},
                next((n for n, c in enumerate(categories) if _is_nan(c)), None)) for categories in encoder.categories_]
    starts = np.cumsum([0, *widths[:-1]])

    def transform(given: Columns) -> np.ndarray:
        encoded = np.zeros((len(next(iter(given.values()))), sum(widths)), dtype=encoder.dtype)
        for values, (known, missing), start in zip(given.values(), columns, starts):
            hot = [known.get(v) if isinstance(v, str) else missing if v is None or _is_nan(v) else None
                   for v in values]
            rows = [row for row, column in enumerate(hot) if column is not None]
            encoded[rows, [start + hot[row] for row in rows]] = 1
        return encoded
    return transform


def _text_categories(encoder) -> bool:
    """Whether a fitted encoder's categories are all text (or NaN, a missing value seen) and none is grouped as
    infrequent: those the lookups above read."""
    return all(c is None for c in getattr(encoder, "infrequent_categories_", [None])) and \
        all(isinstance(category, str) or _is_nan(category)
            for categories in encoder.categories_ for category in categories)


def _on_numbers(step) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """A SimpleImputer's or a StandardScaler's `transform` of an array of numbers; None for any other step, or one
    in a form not computed here."""
    return _imputed(step) if isinstance(step, SimpleImputer) else _scaled(step) if isinstance(step, StandardScaler) \
        else None


def _imputed(imputer: SimpleImputer) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """A SimpleImputer's `transform` of float64 numbers with NaN missing: each missing value its column's statistic,
    then (`add_indicator`) whether it was missing in each column the imputer saw missing while fitting; None where
    it would drop a column it saw empty or hand on a sparse indicator."""
    statistics = imputer.statistics_
    dense_indicator = not imputer.add_indicator or imputer.indicator_.sparse in ("auto", False)
    if not (_is_nan(imputer.missing_values) and statistics.dtype == np.float64 and dense_indicator
            and (imputer.keep_empty_features or not np.isnan(statistics).any())):
        return None
    marked = imputer.indicator_.features_ if imputer.add_indicator else None

    def transform(rows: np.ndarray) -> np.ndarray:
        assert_all_finite(rows, allow_nan=True, input_name="X")
        missing = np.isnan(rows)
        filled = np.where(missing, statistics, rows)
        return filled if marked is None else np.hstack((filled, missing[:, marked]))
    return transform


def _scaled(scaler: StandardScaler) -> Callable[[np.ndarray], np.ndarray]:
    """A StandardScaler's `transform` of dense float64 numbers."""
    def transform(rows: np.ndarray) -> np.ndarray:
        assert_all_finite(rows, allow_nan=True, input_name="X")
        rows = rows - scaler.mean_ if scaler.with_mean else rows
        return rows / scaler.scale_ if scaler.with_std else rows
    return transform


def _is_nan(value) -> bool:
    """Whether the value is a float NaN (an encoder's setting or category may be anything)."""
    return isinstance(value, float) and np.isnan(value)


def _passes_through(part) -> bool:
    """Whether a fitted ColumnTransformer part, or a step of a Pipeline, hands its columns on unchanged ('passthrough',
    a FunctionTransformer once fitted in a ColumnTransformer, as it is named or None in a Pipeline)."""
    if part is None or isinstance(part, str):
        return part in (None, "passthrough")
    return isinstance(part, FunctionTransformer) and part.func is None and part.inverse_func is None


class _Chain:
    """An encoding, then a classifier: a fitted Pipeline of a ColumnTransformer and a classifier."""

    def __init__(self, columns: _Columns, classifier: _Estimator):
        self.columns, self.classifier = columns, classifier

    def scores(self, columns: Columns) -> np.ndarray:
        return self.classifier.scores(self.columns.transform(columns))


class _Calibrated:
    """A fitted CalibratedClassifierCV's `predict_proba`: each fold model's scores through its calibrators, the class
    probabilities normalised as scikit-learn normalises them, averaged over the folds; after the columns' encoding
    when the calibrated models share one."""

    def __init__(self, calibrated: CalibratedClassifierCV, columns: _Columns = None):
        self.columns, self.classes = columns, calibrated.classes_
        self.folds = [(_scorer(fold.estimator), [_calibration(c) for c in fold.calibrators],
                       np.searchsorted(fold.classes, fold.estimator.classes_))
                      for fold in calibrated.calibrated_classifiers_]

    def predict_proba(self, columns: Columns) -> np.ndarray:
        encoded = self.columns.transform(columns) if self.columns is not None else columns
        return sum(self._fold_proba(fold, encoded) for fold in self.folds) / len(self.folds)

    def _fold_proba(self, fold, encoded) -> np.ndarray:
        scorer, calibrators, positions = fold
        scores = scorer.scores(encoded)
        scores = scores.reshape(len(scores), -1)
        proba = np.zeros((len(scores), len(self.classes)))
        if len(self.classes) == 2:
            proba[:, 1] = calibrators[0](scores[:, 0])
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            for position, column, calibrator in zip(positions, scores.T, calibrators):
                proba[:, position] = calibrator(column)
            total = proba.sum(axis=1, keepdims=True)
            proba = np.divide(proba, total, out=np.full_like(proba, 1 / len(self.classes)), where=total != 0)
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


def _calibration(calibrator) -> Callable[[np.ndarray], np.ndarray]:
    """A fitted calibrator's `predict` of a column of float scores, computed as scikit-learn computes it (Platt's
    sigmoid; isotonic regression clipped to its range) without its input checks, which cost more per call than
    calibrating a request's rows (40% of a retaliation call); any other calibrator by its own `predict`."""
    if isinstance(calibrator, _SigmoidCalibration):
        return lambda scores: expit(-(calibrator.a_ * scores + calibrator.b_))
    if isinstance(calibrator, IsotonicRegression) and calibrator.out_of_bounds == "clip":
        return lambda scores: calibrator.f_(np.clip(scores, calibrator.X_min_, calibrator.X_max_)).astype(scores.dtype)
    return calibrator.predict


class _Unchanged:
    """An estimator of no form known here: scored by scikit-learn on a frame of the columns."""

    def __init__(self, estimator):
        self.estimator = estimator

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return self.estimator.predict_proba(pd.DataFrame(columns))


def _classifier(estimator) -> _Estimator:
    if isinstance(estimator, HistGradientBoostingClassifier):
        return _Booster(estimator)
    if isinstance(estimator, (RandomForestClassifier, ExtraTreesClassifier)):
        return _Forest(estimator)
    if _is_plain_linear(estimator):
        return _Linear(estimator)
    return _Estimator(estimator)


def _is_plain_linear(estimator) -> bool:
    """Whether the estimator is a linear classifier whose decision function is scikit-learn's own over dense
    coefficients."""
    return isinstance(estimator, LinearClassifierMixin) and isinstance(getattr(estimator, "coef_", None), np.ndarray) \
        and type(estimator).decision_function is LinearClassifierMixin.decision_function


def _scorer(estimator):
    """A calibrated fold's model in its fast form: a classifier, or an encoding then a classifier."""
    estimator = estimator.estimator if isinstance(estimator, FrozenEstimator) else estimator
    if isinstance(estimator, Pipeline):
        (_, columns), (_, classifier) = estimator.steps
        return _Chain(_Columns(columns), _classifier(classifier))
    return _classifier(estimator)


def _calibrates(estimator) -> bool:
    """Whether `estimator` is a CalibratedClassifierCV whose folds calibrate one class at a time."""
    return isinstance(estimator, CalibratedClassifierCV) and \
        all(fold.method in ("sigmoid", "isotonic") for fold in estimator.calibrated_classifiers_)


def _form(estimator):
    """The fast form of what a RiskModel fits: its cross-fitted Pipeline(ColumnTransformer, CalibratedClassifierCV),
    its held-out CalibratedClassifierCV(FrozenEstimator(Pipeline)), and the CalibratedClassifierCV of fold
    pipelines that models published before them hold; `_Unchanged` for anything else."""
    if _calibrates(estimator):
        return _Calibrated(estimator)
    steps = estimator.steps if isinstance(estimator, Pipeline) else []
    if len(steps) == 2 and isinstance(steps[0][1], ColumnTransformer) and _calibrates(steps[1][1]):
        return _Calibrated(steps[1][1], _Columns(steps[0][1]))
    return _Unchanged(estimator)


def scoring_form(estimator):
    """The form a RiskModel's fitted estimator scores in, built once per estimator: its `predict_proba` to rounding
    (1e-15), from the typed feature columns by name. A request's ten contacts took 15–17 ms through scikit-learn
    (the column transformer's plumbing, per-tree calls, per-fold checks of each response)."""
    form = _FORMS.get(estimator)
    if form is None:
        form = _FORMS[estimator] = _form(estimator)
    return form


def compile_trees(estimator) -> int:
    """Compile the trees of the estimator's scoring form where they are worth it (a booster of at least
    COMPILED_TREES trees; `carelens.models.compiled_trees`), into the cache that later processes load them from; how
    many of its fold models now score compiled."""
    form = scoring_form(estimator)
    scorers = [scorer for scorer, _, _ in form.folds] if isinstance(form, _Calibrated) else []
    trees = [getattr(scorer, "classifier", scorer) for scorer in scorers]
    return sum(model.compile() for model in trees if isinstance(model, _Trees))
