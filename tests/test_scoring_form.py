"""The fast scoring form: a fitted RiskModel's probabilities, through treelite and the encoders on arrays, equal to
scikit-learn's own for every learner, calibration and form a model is fitted or published in."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from carelens.models import scoring_form as forms
from carelens.models import tabular
from carelens.models.learners import CANDIDATES, learner_pipeline
from carelens.models.tabular import RiskModel

#: One candidate of each learner, by the name a fitted model records (`learner_`), which fits it alone.
LEARNERS = {c.learner: c for c in reversed(CANDIDATES)}


def table(rows: int, seed: int, classes: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Numbers with gaps, a narrow category with a rare value, a wide category (target-encoded) and a flag; labels
    that depend on them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "minutes": np.where(rng.random(rows) < 0.2, np.nan, rng.gamma(2.0, 3.0, rows)),
        "transfers": rng.integers(0, 4, rows).astype(float),
        "channel": rng.choice(["phone", "chat", "email", "rare"], rows, p=[0.5, 0.3, 0.19, 0.01]),
        "region": rng.choice([f"r{i}" for i in range(14)], rows),
        "resolved": rng.random(rows) < 0.6,
    })
    signal = np.nan_to_num(frame["minutes"], nan=9.0) / 6 + frame["transfers"] - 2 * frame["resolved"]
    signal = signal + (frame["channel"] == "phone") + rng.normal(size=rows)
    labels = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1]))
    return frame, np.array(["none", "switch", "escalate", "vent"])[labels]


def columns_of(frame: pd.DataFrame) -> dict:
    """The frame as the forms read it: its columns by name, as arrays."""
    return {name: frame[name].to_numpy() for name in frame.columns}


def sklearn_proba(model: RiskModel, frame: pd.DataFrame) -> np.ndarray:
    return model.estimator_.predict_proba(model._model_frame(frame))


def scoring_rows(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rows to score: the training rows' values shuffled, a category never seen, missing values and a negative code."""
    rng = np.random.default_rng(seed + 1)
    rows = frame.sample(40, random_state=seed, ignore_index=True)
    rows.loc[rng.random(40) < 0.2, "channel"] = "fax"
    rows.loc[rng.random(40) < 0.2, "region"] = "nowhere"
    rows.loc[rng.random(40) < 0.2, "minutes"] = np.nan
    return rows


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(learner=st.sampled_from(sorted(LEARNERS)), classes=st.sampled_from([2, 3]), seed=st.integers(0, 10_000),
       calibration=st.sampled_from(["sigmoid", "isotonic"]))
def test_property_the_form_scores_as_scikit_learn_does(learner, classes, seed, calibration):
    frame, y = table(400, seed, classes)
    model = RiskModel(learner=LEARNERS[learner].name, negative_class="none", rounds=20, trees=20, cv=3,
                      calibration=calibration, random_state=seed).fit(frame, y)
    rows = scoring_rows(frame, seed)
    assert isinstance(forms.scoring_form(model.estimator_), forms._Calibrated)
    np.testing.assert_allclose(model.predict_proba(rows), sklearn_proba(model, rows), rtol=0, atol=1e-12)
    many = pd.concat([rows] * 10, ignore_index=True)
    # Not bit for bit: a forest's threads add their trees' probabilities in whatever order they finish.
    np.testing.assert_allclose(model.predict_proba(many), sklearn_proba(model, many), rtol=0, atol=1e-12)


def test_a_category_a_fold_booster_never_saw_scores_as_scikit_learn_scores_it():
    # "once" is in one row: the fold booster fitted without that row numbers its categories without it (so "phone"
    # and "rare" get other codes in its trees) and takes "once" for missing. Read by treelite as they come, the
    # codes send that row elsewhere (the premise, checked first).
    frame, y = table(400, 0, 3)
    frame["channel"] = np.where(y == "vent", "phone", frame["channel"])
    frame.loc[0, "channel"] = "once"
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=30, cv=3).fit(frame, y)
    form = forms.scoring_form(model.estimator_)
    encoded = form.columns.transform(model._model_columns(frame.iloc[:1]))
    as_they_come = [np.asarray(forms.treelite.gtil.predict(booster.model, encoded, pred_margin=True)).reshape(1, -1)
                    for booster, _, _ in form.folds]
    assert any(np.abs(raw - booster.estimator.decision_function(encoded)).max() > 0.1
               for raw, (booster, _, _) in zip(as_they_come, form.folds))
    rows = frame.iloc[[0, 1, 2]]
    np.testing.assert_allclose(model.predict_proba(rows), sklearn_proba(model, rows), rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), position=st.integers(0, 2), classes=st.sampled_from([2, 3]))
def test_property_a_booster_s_margins_through_treelite_are_its_decision_function(seed, position, classes):
    # A categorical column anywhere among the numbers, codes the booster never saw, negative codes and gaps.
    rng = np.random.default_rng(seed)
    numbers = rng.normal(size=(300, 2))
    codes = rng.choice([0.0, 1.0, 3.0, 7.0], 300)
    X = np.insert(numbers, position, codes, axis=1)
    X[rng.random(300) < 0.1, 1 - position % 2] = np.nan
    y = (numbers[:, 0] + (codes == 3) + rng.normal(size=300) > 0).astype(int) + (classes == 3) * (codes == 7)
    booster = HistGradientBoostingClassifier(categorical_features=[position], max_iter=15, random_state=0).fit(X, y)
    rows = np.insert(rng.normal(size=(60, 2)), position, rng.choice([0.0, 1.0, 2.0, 3.0, 7.0, -1.0, 9.5, np.nan], 60),
                     axis=1)
    np.testing.assert_allclose(forms._Booster(booster).scores(rows), booster.decision_function(rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_infinite_huge_and_float32_edge_values_score_or_fail_as_scikit_learn_does(learner):
    frame, y = table(300, 8, 3)
    model = RiskModel(learner=LEARNERS[learner].name, negative_class="none", rounds=10, trees=10, cv=3).fit(frame, y)
    finite = frame.iloc[:4].assign(minutes=[1e-40, 3.0000001, np.nextafter(np.float32(7.5), np.float32(8)) + 1e-9, 1e30])
    np.testing.assert_allclose(model.predict_proba(finite), sklearn_proba(model, finite), rtol=0, atol=1e-12)
    endless = frame.iloc[:4].assign(minutes=[np.inf, -np.inf, 1e300, 0.0])
    try:
        expected = sklearn_proba(model, endless)
    except ValueError as refused:  # forests and the logistic regression refuse what float32 / float64 cannot hold
        with pytest.raises(ValueError, match="infinity or a value too large"):
            model.predict_proba(endless)
        assert "infinity" in str(refused)
    else:
        np.testing.assert_allclose(model.predict_proba(endless), expected, rtol=0, atol=1e-12)


def test_the_held_out_form_of_a_large_table_scores_as_scikit_learn_does(monkeypatch):
    monkeypatch.setattr(tabular, "HELD_OUT_FROM", 300)
    frame, y = table(400, 1, 2)
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=20, cv=3,
                      selection_rows=300).fit(frame, y)
    assert len(model.estimator_.calibrated_classifiers_) == 1  # one booster, calibrated on held-out rows
    rows = scoring_rows(frame, 1)
    np.testing.assert_allclose(model.predict_proba(rows), sklearn_proba(model, rows), rtol=0, atol=1e-12)


def test_a_model_published_with_a_pipeline_per_fold_scores_as_before():
    frame, y = table(400, 2, 3)
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=20, cv=3).fit(frame, y)
    typed = model._model_frame(frame)
    pipeline = learner_pipeline(LEARNERS["boosting"], ["minutes", "transfers", "resolved"], ["channel"], ["region"],
                                rows=400, early_stopping=False, rounds=20, trees=20, random_state=0)
    model.estimator_ = CalibratedClassifierCV(pipeline, cv=3, ensemble=True).fit(typed, y)
    rows = scoring_rows(frame, 2)
    np.testing.assert_allclose(model.predict_proba(rows), sklearn_proba(model, rows), rtol=0, atol=1e-12)


def test_an_estimator_of_another_form_is_scored_by_scikit_learn():
    frame, y = table(200, 4, 2)
    model = RiskModel(learner=LEARNERS["logistic"].name, negative_class="none", cv=3).fit(frame, y)
    pipeline = learner_pipeline(LEARNERS["logistic"], ["minutes", "transfers", "resolved"], ["channel"], ["region"],
                                rows=200, early_stopping=False, rounds=20, trees=20, random_state=0)
    model.estimator_ = pipeline.fit(model._model_frame(frame), y)  # uncalibrated: no form known
    assert isinstance(forms.scoring_form(model.estimator_), forms._Unchanged)
    np.testing.assert_array_equal(model.predict_proba(frame), sklearn_proba(model, frame))


def test_the_form_is_built_once_per_fitted_estimator_and_again_after_a_refit(monkeypatch):
    frame, y = table(200, 5, 2)
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=5, cv=3).fit(frame, y)
    built = []
    monkeypatch.setattr(forms, "_form", lambda estimator, made=forms._form: built.append(estimator) or made(estimator))
    model.predict_proba(frame.iloc[:5])
    model.predict_proba(frame.iloc[5:9])
    assert len(built) == 1
    model.fit(frame, y)
    model.predict_proba(frame.iloc[:5])
    assert len(built) == 2 and built[1] is model.estimator_


def test_a_row_scores_the_same_alone_and_among_many_rows(monkeypatch):
    # A request batched with others, or in the nightly's large blocks, answers exactly as it does alone.
    frame, y = table(400, 6, 3)
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=5, cv=3).fit(frame, y)
    calls = []
    monkeypatch.setattr(forms.treelite.gtil, "predict", lambda *a, made=forms.treelite.gtil.predict, **k:
                        calls.append((len(a[1]), k["nthread"])) or made(*a, **k))
    many = pd.concat([frame] * 30, ignore_index=True)
    np.testing.assert_array_equal(model.predict_proba(many)[:10], model.predict_proba(frame.iloc[:10]))
    # One call per fold model, all the rows at once; threads only for a large frame.
    assert calls == [(len(many), 0)] * 3 + [(10, 1)] * 3


def test_a_call_encodes_its_categories_once_for_all_fold_models(monkeypatch):
    frame, y = table(300, 7, 2)
    model = RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=5, cv=4).fit(frame, y)
    encodings, transform = [], forms._Columns.transform
    monkeypatch.setattr(forms._Columns, "transform",
                        lambda self, columns: encodings.append(len(columns["channel"])) or transform(self, columns))
    model.predict_proba(frame.iloc[:10])
    assert encodings == [10]  # one encoding of the ten rows, not one per fold model (4)


@pytest.mark.parametrize("seen_missing", [False, True])
def test_category_codes_are_the_ordinal_encoders_own(seen_missing):
    fitted = ["phone", "chat", "email", *([np.nan] if seen_missing else [])]
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                             max_categories=255)
    encoder.fit(pd.DataFrame({"c": fitted * 3, "d": ["a", "b", "a"] * len(fitted)}))
    rows = pd.DataFrame({"c": np.array(["chat", "fax", np.nan, None, "email", "Phone", 3], dtype=object),
                         "d": np.array(["b", "a", "a", "c", None, "b", "a"], dtype=object)})
    codes = forms._codes(encoder)(columns_of(rows))
    np.testing.assert_array_equal(codes, encoder.transform(rows))
    assert codes[[0, 4], 0].tolist() == [0.0, 1.0] and np.isnan(codes[[1, 2, 3, 5, 6], 0]).all()  # sorted: chat, email
    assert forms._codes(OrdinalEncoder().fit(rows.fillna("x").astype(str))) is None  # unseen categories refused
    numbers = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)
    assert forms._codes(numbers.fit(pd.DataFrame({"c": [1, 2, 3]}))) is None  # categories that are not text


@pytest.mark.parametrize("seen_missing", [False, True])
def test_one_hot_columns_are_the_encoder_s_own(seen_missing):
    fitted = ["phone", "chat", "email", *([np.nan] if seen_missing else [])]
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    encoder.fit(pd.DataFrame({"c": np.array(fitted * 3, dtype=object), "d": ["a", "b", "a"] * len(fitted)}))
    rows = pd.DataFrame({"c": np.array(["chat", "fax", np.nan, "email", "Phone", 3, "phone"], dtype=object),
                         "d": np.array(["b", "a", "a", "c", np.nan, "b", "a"], dtype=object)})
    encoded = forms._one_hot(encoder)(columns_of(rows))
    np.testing.assert_array_equal(encoded, encoder.transform(rows))
    # chat, email, phone (sorted), then the missing value's column where one was seen; then a, b.
    assert encoded[0].tolist() == [1, 0, 0, *([0] if seen_missing else []), 0, 1]
    assert encoded[2, :encoded.shape[1] - 2].tolist() == [0, 0, 0, *([1] if seen_missing else [])]
    assert not encoded[[1, 4, 5], :3].any()  # unseen, another case, a number: no column
    assert forms._one_hot(OneHotEncoder(handle_unknown="error", sparse_output=False).fit(rows.fillna("x").astype(str))) \
        is None  # unseen categories refused: scikit-learn raises
    assert forms._one_hot(OneHotEncoder(handle_unknown="ignore").fit(rows.fillna("x").astype(str))) is None  # sparse


def test_imputed_and_standardised_numbers_are_the_pipeline_s_own():
    rng = np.random.default_rng(3)
    fitted = np.column_stack([np.where(rng.random(50) < 0.3, np.nan, rng.normal(5, 2, 50)), rng.normal(size=50),
                              np.full(50, np.nan)])  # gaps; none; never recorded (kept, imputed as 0)
    numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                            StandardScaler()).fit(pd.DataFrame(fitted, columns=["a", "b", "c"]))
    rows = pd.DataFrame({"a": [np.nan, 1.5, 7.0, np.nan], "b": [0.2, np.nan, -1.0, 3.0], "c": [np.nan, 2.0, np.nan, 1.0]})
    form = forms._part_form(numbers)
    np.testing.assert_array_equal(form(columns_of(rows)), numbers.transform(rows))
    assert form(columns_of(rows)).shape == (4, 3 + 2)  # an indicator for the columns seen missing: a and c
    with pytest.raises(ValueError, match="infinity or a value too large"):
        form(columns_of(rows.assign(b=[0.0, np.inf, 1.0, 2.0])))
    with pytest.raises(ValueError, match="infinity or a value too large"):
        numbers.transform(rows.assign(b=[0.0, np.inf, 1.0, 2.0]))
    passing = make_pipeline("passthrough", StandardScaler()).fit(pd.DataFrame(fitted[:, :2], columns=["a", "b"]))
    np.testing.assert_array_equal(forms._part_form(passing)(columns_of(rows[["a", "b"]])),
                                  passing.transform(rows[["a", "b"]]))
    dropping = SimpleImputer(strategy="median").fit(pd.DataFrame(fitted, columns=["a", "b", "c"]))
    assert forms._on_numbers(dropping) is None  # drops the column never recorded: scikit-learn's own transform


def test_a_linear_model_scores_through_no_scikit_learn_call_and_as_scikit_learn_does(monkeypatch):
    frame, y = table(300, 9, 3)
    model = RiskModel(learner=LEARNERS["logistic"].name, negative_class="none", cv=3).fit(frame, y)
    rows = scoring_rows(frame, 9)
    expected = sklearn_proba(model, rows)
    linear = forms.scoring_form(model.estimator_).folds[0][0]  # the form is built before the patches
    assert isinstance(linear, forms._Linear)
    for kind, method in ((SimpleImputer, "transform"), (StandardScaler, "transform"), (OneHotEncoder, "transform"),
                         (LogisticRegression, "decision_function")):
        monkeypatch.setattr(kind, method, lambda *a, **k: pytest.fail("scored through scikit-learn"))
    np.testing.assert_allclose(model.predict_proba(rows), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        linear.scores(np.full((1, linear.estimator.n_features_in_), np.nan))
