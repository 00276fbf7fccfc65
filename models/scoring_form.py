"""A fitted tabular estimator in the form that scores a request's few rows fast: encoders on arrays, trees in treelite."""
from __future__ import annotations

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
from sklearn.isotonic import IsotonicRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

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


class _Trees(_Estimator):
    """A fitted tree ensemble scored by its trees imported into treelite (float64), whatever the number of rows: a
    row's score then does not depend on the rows scored beside it (scikit-learn's own trees walk many rows faster, 2–2.5×
    on 200,000, but add a row's leaves in another order, 1e-16 apart), so a request answers alike alone, batched with
    others, or in the nightly job."""

    margins = True

    def __init__(self, ensemble):
        super().__init__(ensemble)
        self.model = treelite.sklearn.import_model(ensemble)

    def scores(self, X: np.ndarray) -> np.ndarray:
        rows = self._prepared(np.array(X, dtype=np.float64))
        if rows is None:
            return super().scores(X)
        outputs = np.asarray(treelite.gtil.predict(self.model, rows, pred_margin=self.margins,
                                                   nthread=1 if len(rows) < PARALLEL_ROWS else 0))
        outputs = outputs.reshape(len(rows), -1)
        return outputs[:, -1] if outputs.shape[1] <= 2 else outputs

    def _prepared(self, rows: np.ndarray) -> Optional[np.ndarray]:
        """The rows as the ensemble's trees read them; None where only the ensemble itself can answer them."""
        return rows


class _Booster(_Trees):
    """A HistGradientBoostingClassifier: treelite's margins are its decision function to rounding (1e-15)."""

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
    """A fitted ColumnTransformer's `transform`, its parts applied to the typed columns directly."""

    def __init__(self, transformer: ColumnTransformer):
        self.parts = [(None if _passes_through(part) else _codes(part) or part.transform, list(names))
                      for _, part, names in transformer.transformers_ if part != "drop" and len(names)]

    def transform(self, columns: Columns) -> np.ndarray:
        blocks = [np.column_stack([columns[name] for name in names]).astype(np.float64, copy=False) if part is None
                  else part(pd.DataFrame({name: columns[name] for name in names}))
                  for part, names in self.parts]
        return np.hstack(blocks)


def _codes(encoder) -> Optional[Callable[[pd.DataFrame], np.ndarray]]:
    """An OrdinalEncoder's `transform` as a lookup of each category's code, missing and unseen categories NaN, for the
    encoder the boosting learner fits (its input checks cost more than a request's rows); None for any other part."""
    if not (isinstance(encoder, OrdinalEncoder) and encoder.handle_unknown == "use_encoded_value"
            and _is_nan(encoder.unknown_value) and _is_nan(encoder.encoded_missing_value)
            and all(c is None for c in getattr(encoder, "infrequent_categories_", [None]))
            and all(isinstance(category, str) or _is_nan(category)
                    for categories in encoder.categories_ for category in categories)):
        return None
    codes = [{category: float(code) for code, category in enumerate(categories) if isinstance(category, str)}
             for categories in encoder.categories_]

    def transform(frame: pd.DataFrame) -> np.ndarray:
        return np.column_stack([[known.get(value, np.nan) if isinstance(value, str) else np.nan
                                 for value in frame.iloc[:, i]] for i, known in enumerate(codes)])
    return transform


def _is_nan(value) -> bool:
    """Whether the value is a float NaN (an encoder's setting or category may be anything)."""
    return isinstance(value, float) and np.isnan(value)


def _passes_through(part) -> bool:
    """Whether a fitted ColumnTransformer part hands its columns on unchanged ('passthrough' once fitted)."""
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
    return _Estimator(estimator)


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
