"""RiskModel against scikit-learn's estimator checks: arrays and frames in, scikit-learn's validation errors out."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from carelens.models.tabular import RiskModel, SchemaError

FAST = {"rounds": 10, "learner": "boosting", "cv": 3}

#: Checks that contradict the design, each with the reason; keep this as short as the design allows.
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_train": "predict flags a row when its risk reaches the goal-chosen threshold_, so it need not "
                               "equal argmax(predict_proba); the rest of the check is test_blobs_are_learned below",
}


@parametrize_with_checks([RiskModel(**FAST)], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def blobs(classes: int):
    """The data of scikit-learn's check_classifiers_train: three standardised blobs, or the first two."""
    X, y = make_blobs(n_samples=300, random_state=0)
    X = StandardScaler().fit_transform(X)
    return X[y < classes], y[y < classes]


@pytest.mark.parametrize("classes", [2, 3])
def test_blobs_are_learned_and_predict_applies_the_threshold(classes):
    X, y = blobs(classes)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        RiskModel(**FAST).fit(X, y[:-1])
    model = RiskModel(**FAST).fit(X.tolist(), y.tolist())
    proba, predicted = model.predict_proba(X), model.predict(X)
    assert list(model.classes_) == list(range(classes)) and proba.shape == (len(y), classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (predicted == y).mean() > 0.83
    flagged = 1 - proba[:, 0] >= model.threshold_
    assert (predicted[~flagged] == 0).all() and (predicted[flagged] != 0).all()
    for method in (model.predict, model.predict_proba):
        with pytest.raises(ValueError, match=f"X has {len(y)} features, but RiskModel is expecting 2 features"):
            method(X.T)


def test_an_array_is_a_frame_with_columns_x0_x1():
    X, y = blobs(2)
    frame = pd.DataFrame(X, columns=["tenure", "calls"])
    from_array, from_frame = RiskModel(**FAST).fit(X, y), RiskModel(**FAST).fit(frame, y)
    assert [f["name"] for f in from_array.feature_schema()] == ["x0", "x1"]
    np.testing.assert_array_equal(from_array.predict_proba(X), from_frame.predict_proba(frame))
    # A model fitted on named columns reads an array's columns as its features in order, and says the names are lost.
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(from_frame.predict_proba(X), from_frame.predict_proba(frame))
    with pytest.raises(SchemaError, match="X has 1 features, but RiskModel is expecting 2 features"):
        from_frame.predict(X[:, :1])
    # Frames are read by name: extra columns and another order are fine, a missing one is named.
    shuffled = frame[["calls", "tenure"]].assign(customer_id="C1")
    np.testing.assert_array_equal(from_frame.predict_proba(shuffled), from_frame.predict_proba(frame))
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) tenure"):
        from_frame.predict(frame[["calls"]])


def test_features_pick_columns_of_an_array_by_their_generated_names():
    X, y = blobs(2)
    wide = np.column_stack([np.zeros(len(y)), X])
    model = RiskModel(features=["x2", "x1"], **FAST).fit(wide, y)
    assert model.n_features_in_ == 2
    np.testing.assert_array_equal(model.predict_proba(wide),
                                  RiskModel(**FAST).fit(X[:, ::-1], y).predict_proba(X[:, ::-1]))
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) x2"):
        model.predict(wide[:, :2])


def test_text_in_an_object_array_is_categorical():
    rng = np.random.default_rng(0)
    channel = rng.choice(["phone", "chat"], 200)
    X = np.empty((200, 2), dtype=object)
    X[:, 0], X[:, 1] = rng.normal(size=200), channel
    y = (channel == "chat") ^ (rng.random(200) < 0.1)
    model = RiskModel(**FAST).fit(X, y)
    assert model.feature_schema() == [{"name": "x0", "kind": "numeric"}, {"name": "x1", "kind": "categorical"}]
    assert (model.predict(X) == y).mean() > 0.85


def test_too_few_rows_of_a_class_to_hold_out_calibrates_on_the_training_rows():
    X, y = blobs(3)
    X, y = np.concatenate([X[y < 2][:40], X[y == 2][:1]]), np.concatenate([y[y < 2][:40], [2]])
    with pytest.warns(UserWarning, match=r"too few rows .*2: 1.*on the training rows themselves"):
        model = RiskModel(**FAST).fit(X, y)
    assert list(model.classes_) == [0, 1, 2] and model.predict_proba(X).shape == (41, 3)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match=r"y has 1 class \(1: 10\); RiskModel needs at least 2 classes"):
        RiskModel(**FAST).fit(np.arange(10.0).reshape(-1, 1), np.ones(10, int))
