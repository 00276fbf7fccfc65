"""Churn and retaliation models: threshold goals, calibration error, schema checks, and the train/evaluate/export CLI."""
import json

import joblib
import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from carelens.data.contracts import ContractError
from carelens.data.errors import UsageError
from carelens.data.html import figure_html, html_report, table_html
from carelens.data.synthetic import generate, write_synthetic
from carelens.models.conversation_features import COUNT_FEATURES, FEATURE_COLUMNS, FEATURE_GROUPS, TIMING_FEATURES
from carelens.models.learners import (
    CANDIDATES, LEARNERS, Goal, one_standard_error_choice, parse_goal, threshold_for_f1, threshold_for_rate,
    threshold_for_recall,
)
from carelens.models.registry import Registry
from carelens.models.tabular import RiskModel, SchemaError, load_tabular
from carelens.training.bootstrap import roc_auc_differences
from carelens.training.cli import evaluate_app, export_command, train_app
from carelens.training.evaluate import evaluate_tabular
from carelens.training.metrics import expected_calibration_error, group_rates, risk_metrics
from carelens.training.report import comparison_rows, feature_group_rows, tabular_report
from carelens.training.tabular import (
    ADDED_GROUP, FITTED_CONTACTS, TASKS, gap_recovered, load_labelled, publish_tabular, refitted_without, train_tabular,
)
from conftest import requires_shared

FAST = {"rounds": 15, "trees": 30, "spread_seeds": 1, "cv": 3}
UNTIMED = [f for f in FEATURE_COLUMNS if f not in (*TIMING_FEATURES, *COUNT_FEATURES)]
GROUPS = ("no_problem", "problem_ineffective", "problem_effective")


def contact_tables(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Contract interactions, labels and seed-group truth in which problems without resolution drive churn."""
    rng = np.random.default_rng(seed)
    group = rng.choice(GROUPS, n, p=[0.5, 0.25, 0.25])
    problem, resolved = group != "no_problem", group == "problem_effective"
    interactions = pd.DataFrame({
        "customer_id": [f"C{i // 2}" for i in range(n)], "contact_id": [f"K{i}" for i in range(n)],
        "started_at": pd.Timestamp("2026-11-02", tz="UTC") + pd.to_timedelta(rng.integers(0, 10, n), unit="D"),
        "channel": rng.choice(["phone", "chat", "email", "social"], n), "answer_time_s": rng.exponential(30, n),
        "abandoned": rng.random(n) < 0.03, "hold_time_s": rng.exponential(20, n), "handle_time_s": rng.gamma(4, 80, n),
        "transfers": rng.poisson(0.3, n), "product_problem": problem, "resolved": resolved,
        "repeat_contacts_30d": rng.poisson(0.5, n), "tenure_months": rng.gamma(2, 12, n),
        "monthly_value": rng.gamma(3, 15, n), "csat": np.where(rng.random(n) < 0.2, rng.integers(1, 6, n), np.nan),
    })
    churn_p = np.select([group == "no_problem", group == "problem_ineffective"], [0.22, 0.68], 0.11)
    churned = rng.random(n) < churn_p
    retaliation = np.where(rng.random(n) < np.where(problem & ~resolved, 0.6, 0.1),
                           rng.choice(["escalate", "switch", "vent"], n), "none")
    labels = pd.DataFrame({"contact_id": interactions["contact_id"], "churned": churned.astype(int),
                           "retaliation": retaliation})
    return interactions, labels, pd.DataFrame({"contact_id": interactions["contact_id"], "seed_group": group})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A directory shaped like the synthetic generator's output, with truth.parquet beside it."""
    directory = tmp_path_factory.mktemp("synthetic")
    for name, table in zip(("interactions", "labels", "truth"), contact_tables(1500)):
        table.to_parquet(directory / f"{name}.parquet")
    return directory


@pytest.fixture(scope="module")
def own_csv(tmp_path_factory):
    """A bring-your-own-data CSV: free-form columns and a yes/no target in mixed case."""
    rng = np.random.default_rng(3)
    n = 800
    calls = rng.poisson(2, n)
    plan = rng.choice(["Yes", "No"], n)
    churn = rng.random(n) < 1 / (1 + np.exp(-(calls - 3 + (plan == "Yes") * 1.5)))
    path = tmp_path_factory.mktemp("own") / "customers.csv"
    pd.DataFrame({"State": rng.choice(["KS", "OH", "NJ"], n), "Service calls": calls, "Intl plan": plan,
                  "Minutes": rng.normal(180, 50, n).round(1),
                  "Left": np.where(churn, rng.choice(["yes", "YES", "Yes"], n), rng.choice(["no", "No"], n))}
                 ).to_csv(path, index=False)
    return path


# Threshold goals, on hand-made scores.

def test_recall_goal_takes_the_highest_threshold_that_reaches_it():
    positive = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.85, 0.5, 0.1])
    assert threshold_for_recall(positive, scores, 0.5) == 0.8
    assert threshold_for_recall(positive, scores, 0.51) == 0.3
    assert threshold_for_recall(positive, scores, 1.0) == 0.2


def test_recall_goal_is_not_pushed_over_by_rounding():
    positive = np.ones(10, bool)
    scores = np.linspace(1.0, 0.1, 10)
    assert threshold_for_recall(positive, scores, 0.7) == pytest.approx(scores[6])


def test_rate_goal_flags_that_share_of_rows():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert threshold_for_rate(scores, 0.4) == 0.7
    assert threshold_for_rate(scores, 0.0001) == 0.9
    assert threshold_for_rate(scores, 5.0) == 0.1


def test_f1_goal_picks_the_cut_between_the_classes():
    positive = np.array([0, 0, 0, 1, 1, 1], bool)
    assert threshold_for_f1(positive, np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])) == 0.6


@pytest.mark.parametrize("text, goal", [("f1", Goal("f1")), ("recall:0.8", Goal("recall", 0.8)),
                                        ("TOP-K:500", Goal("top-k", 500))])
def test_goals_parse(text, goal):
    assert parse_goal(text) == goal


@pytest.mark.parametrize("text", ["recall", "recall:1.5", "top-k:0", "top-k:many", "precision:0.9", "f1:2"])
def test_bad_goals_say_what_was_expected(text):
    with pytest.raises(ValueError, match=r"expected 'f1', 'recall:R' with 0 < R <= 1, or 'top-k:K'"):
        parse_goal(text)


# Metrics.

def test_ece_on_a_hand_made_example():
    # Bin 1: predicted 0.1, observed 0.5 (gap 0.4); bin 9: predicted 0.9, observed 1.0 (gap 0.1); half the rows each.
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=200))
def test_ece_lies_in_the_unit_interval(rows):
    positive, probability = zip(*rows)
    assert 0.0 <= expected_calibration_error(positive, probability) <= 1.0


def test_ranking_metrics_are_none_when_only_one_outcome_occurs():
    metrics = risk_metrics([0, 0, 0], [0.1, 0.2, 0.3], [False, False, True])
    assert metrics["roc_auc"] is None and metrics["pr_auc"] is None
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_group_rates_compare_observed_and_predicted():
    rows = group_rates(["a", "b", "a"], [1, 0, 0], [0.6, 0.2, 0.4])
    assert rows == [{"group": "a", "rows": 2, "observed": 0.5, "predicted": 0.5},
                    {"group": "b", "rows": 1, "observed": 0.0, "predicted": 0.2}]


# The model.

@pytest.fixture(scope="module")
def churn_trained(generated):
    return train_tabular(load_labelled(generated, TASKS["churn"]), TASKS["churn"], goal="recall:0.8", **FAST)


def test_churn_model_learns_the_problem_signal_and_records_its_setup(churn_trained):
    metadata = churn_trained.metadata
    assert metadata["metrics"]["roc_auc"] > 0.7
    # No row is spent only on calibration or the threshold: all 1,200 non-test rows train the chosen learner.
    assert metadata["split"] == {"train": 1200, "test": 300}
    assert metadata["classes"] == [False, True] and metadata["goal"] == "recall:0.8"
    assert {f["name"]: f["kind"] for f in metadata["features"]}["channel"] == "categorical"
    assert metadata["calibration"] == "sigmoid" and metadata["seed"] == 0
    assert metadata["metrics"]["recall"] > 0.6


def test_every_candidate_learner_is_cross_validated_and_the_choice_recorded(churn_trained):
    metadata = churn_trained.metadata
    selection = {c["candidate"]: c for c in metadata["selection"]}
    assert set(selection) == {c.name for c in CANDIDATES} and metadata["learner"] in selection
    assert all(c["folds"] == 3 and c["rows"] == 1200 and c["seconds"] > 0 for c in selection.values())
    best = max(c["roc_auc_folds"]["mean"] for c in selection.values())
    chosen = selection[metadata["learner"]]["roc_auc_folds"]["mean"]
    assert chosen >= best - max(c["roc_auc_folds"]["std"] for c in selection.values()) / 3 ** 0.5
    assert metadata["learner_requested"] == "auto" and metadata["training_seconds"] > 0


def test_the_one_standard_error_rule_takes_the_simplest_candidate_within_reach():
    def cv(mean, std):
        return {"roc_auc_folds": {"mean": mean, "std": std}, "folds": 4}
    # Best is 0.90 ± 0.04 / sqrt(4) = 0.02: 0.885 is within reach, 0.87 is not.
    assert one_standard_error_choice([cv(0.87, 0.01), cv(0.885, 0.05), cv(0.90, 0.04)]) == 1
    assert one_standard_error_choice([cv(0.87, 0.01), cv(0.875, 0.05), cv(0.90, 0.0)]) == 2


def test_a_forced_learner_is_the_only_one_tried_and_an_unknown_one_is_refused(generated):
    data = load_labelled(generated, TASKS["churn"])
    trained = train_tabular(data, TASKS["churn"], learner="forest", **FAST)
    assert [c["learner"] for c in trained.metadata["selection"]] == ["forest"]
    assert trained.metadata["learner"] == "forest(min_samples_leaf=1)"
    with pytest.raises(UsageError, match="learner 'svm' is not offered; expected auto or one of logistic, boosting, "
                                         "forest, extra-trees"):
        train_tabular(data, TASKS["churn"], learner="svm", **FAST)


@pytest.mark.parametrize("learner", LEARNERS)
def test_every_learner_family_round_trips_through_the_registry(generated, tmp_path, learner):
    data = load_labelled(generated, TASKS["churn"])
    trained = train_tabular(data, TASKS["churn"], learner=learner, **FAST)
    publish_tabular(trained, Registry(tmp_path))
    loaded, metadata = load_tabular(Registry(tmp_path), "churn")
    assert metadata["learner"].startswith(learner) and loaded.learner_ == trained.model.learner_
    # Forests average their trees in parallel threads, so the last bit may differ from one call to the next.
    np.testing.assert_allclose(loaded.predict_proba(trained.test_frame), trained.model.predict_proba(trained.test_frame),
                               rtol=0, atol=1e-12)


def test_a_large_table_is_fitted_once_and_calibrated_on_held_out_rows(generated, tmp_path, monkeypatch):
    import carelens.models.tabular as tabular
    monkeypatch.setattr(tabular, "HELD_OUT_FROM", 500)  # what 100,000 rows would do, on the fixture's rows
    data = load_labelled(generated, TASKS["churn"])
    trained = train_tabular(data, TASKS["churn"], learner="boosting", selection_rows=400, **FAST)
    estimator = trained.model.estimator_
    assert len(estimator.calibrated_classifiers_) == 1  # one model to score, not one per fold
    assert type(estimator.estimator).__name__ == "FrozenEstimator"
    publish_tabular(trained, Registry(tmp_path))
    loaded, _ = load_tabular(Registry(tmp_path), "churn")
    np.testing.assert_allclose(loaded.predict_proba(trained.test_frame), trained.model.predict_proba(trained.test_frame),
                               rtol=0, atol=1e-12)
    assert loaded.threshold_ == trained.model.threshold_


def test_the_spread_over_split_seeds_is_the_mean_and_std_of_each_seed_s_figures(generated):
    data = load_labelled(generated, TASKS["churn"])
    spread = train_tabular(data, TASKS["churn"], seed=3, learner="logistic", **{**FAST, "spread_seeds": 3}
                           ).metadata["spread"]
    assert spread["seeds"] == [3, 4, 5] and [r["seed"] for r in spread["rows"]] == [3, 4, 5]
    aucs = [r["roc_auc"] for r in spread["rows"]]
    assert len(set(aucs)) == 3  # three different test splits
    assert spread["mean"]["roc_auc"] == pytest.approx(np.mean(aucs))
    assert spread["std"]["roc_auc"] == pytest.approx(np.std(aucs, ddof=1))
    # The published model is the first seed's: its own held-out figure is the first row.
    alone = train_tabular(data, TASKS["churn"], seed=3, learner="logistic", **FAST).metadata
    assert alone["metrics"]["roc_auc"] == aucs[0]


def test_churn_seed_groups_report_re_purchase(churn_trained):
    groups = churn_trained.metadata["seed_groups"]
    assert groups["outcome"] == "re-purchase"
    rates = {row["group"]: row for row in groups["rows"]}
    assert set(rates) == set(GROUPS) and sum(r["rows"] for r in rates.values()) == 300
    assert rates["problem_effective"]["predicted"] > rates["problem_ineffective"]["predicted"]


def test_scoring_a_frame_without_a_feature_names_it(churn_trained):
    frame = churn_trained.test_frame.drop(columns=["hold_time_s"])
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) hold_time_s"):
        churn_trained.model.risk(frame)


def test_scoring_text_in_a_numeric_feature_names_it(churn_trained):
    frame = churn_trained.test_frame.astype({"transfers": object})
    frame.iloc[0, frame.columns.get_loc("transfers")] = "many"
    with pytest.raises(SchemaError, match=r"feature 'transfers': got 'many', expected a number"):
        churn_trained.model.risk(frame)


def test_retaliation_risk_is_one_minus_p_none_and_flags_name_a_retaliation(generated):
    trained = train_tabular(load_labelled(generated, TASKS["retaliation"]), TASKS["retaliation"], **FAST)
    model, frame = trained.model, trained.test_frame
    proba = model.predict_proba(frame)
    np.testing.assert_allclose(model.risk(frame), 1 - proba[:, list(model.classes_).index("none")])
    predicted = model.predict(frame)
    flagged = model.risk(frame) >= model.threshold_
    assert set(predicted[flagged]) <= {"escalate", "switch", "vent"} and set(predicted[~flagged]) == {"none"}
    assert set(trained.metadata["metrics"]["f1_per_class"]) == {"none", "escalate", "switch", "vent"}
    assert trained.metadata["seed_groups"]["outcome"] == "retaliation"


def test_top_k_goal_flags_k_a_day_as_a_share_of_contacts(generated):
    data = load_labelled(generated, TASKS["churn"])
    assert data.contacts_per_day == 150.0
    trained = train_tabular(data, TASKS["churn"], goal="top-k:30", **FAST)
    assert trained.metadata["flag_rate"] == pytest.approx(0.2)
    assert trained.metadata["metrics"]["flagged_rate"] == pytest.approx(0.2, abs=0.08)


def test_the_same_seed_gives_the_same_model(generated):
    data = load_labelled(generated, TASKS["churn"])
    first, second = (train_tabular(data, TASKS["churn"], seed=5, **FAST).metadata for _ in range(2))
    assert first["metrics"] == second["metrics"] and first["threshold"] == second["threshold"]


def test_a_model_fits_and_scores_under_scikit_learn_s_pandas_output_setting():
    import sklearn
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "kind": rng.choice(["a", "b", "c"], 300)})
    y = frame["x"] + rng.normal(size=300) > 0
    with sklearn.config_context(transform_output="pandas"):
        under_pandas = RiskModel(learner="boosting", rounds=5, cv=3).fit(frame, y).predict_proba(frame)
    by_default = RiskModel(learner="boosting", rounds=5, cv=3).fit(frame, y).predict_proba(frame)
    np.testing.assert_allclose(under_pandas, by_default)


@pytest.mark.parametrize("learner", ["boosting", "logistic"])
def test_a_wide_category_of_pure_noise_does_not_lift_the_cross_validated_roc_auc(learner):
    # 200 categories of two rows each and a label of coin flips: an encoding fitted on the rows it then encodes would
    # hand every fold model the label (cross-validated ROC-AUC near 0.8); cross-fitted, it knows nothing.
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"ticket": [f"t{i // 2}" for i in range(400)], "x": rng.normal(size=400)})
    model = RiskModel(learner=learner, rounds=10, cv=5).fit(frame, rng.random(400) < 0.5)
    assert model.selection_[0]["roc_auc_folds"]["mean"] < 0.6


def test_top_k_without_a_daily_volume_is_refused():
    frame = pd.DataFrame({"x": np.arange(40.0)})
    with pytest.raises(ValueError, match=r"top-k' needs contacts_per_day"):
        RiskModel(goal="top-k:5").fit(frame, frame["x"] > 20)


@pytest.mark.parametrize("learner", ["boosting", "forest", "logistic"])
def test_a_feature_with_no_value_in_any_training_row_is_left_out_with_a_warning(learner):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "answer_time_s": np.nan})
    with pytest.warns(UserWarning, match="answer_time_s have no value in any training row"):
        model = RiskModel(learner=learner, rounds=5, trees=10).fit(frame, frame["x"] + rng.normal(size=200) > 0)
    scored = model.predict_proba(frame.assign(answer_time_s=rng.normal(size=200)))
    np.testing.assert_allclose(scored, model.predict_proba(frame))


# Loading labelled data.

def test_own_csv_with_a_yes_no_target_trains(own_csv):
    data = load_labelled(own_csv, TASKS["churn"], target="Left")
    assert data.features == ["State", "Service calls", "Intl plan", "Minutes"]
    assert data.frame["Left"].dtype == "boolean"
    trained = train_tabular(data, TASKS["churn"], **FAST)
    kinds = {f["name"]: f["kind"] for f in trained.metadata["features"]}
    assert kinds == {"State": "categorical", "Service calls": "numeric", "Intl plan": "categorical", "Minutes": "numeric"}
    assert trained.metadata["metrics"]["roc_auc"] > 0.65


def test_declared_features_and_categories_are_used(own_csv):
    data = load_labelled(own_csv, TASKS["churn"], target="Left", features="Service calls,Minutes",
                         categorical="Service calls")
    model = train_tabular(data, TASKS["churn"], **FAST).model
    assert model.feature_schema() == [{"name": "Service calls", "kind": "categorical"},
                                      {"name": "Minutes", "kind": "numeric"}]


def test_an_unreadable_target_value_names_its_row(tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("x,Left\n1,yes\n2,perhaps\n")
    with pytest.raises(ContractError, match=r"own\.csv: row 3, column 'Left': got 'perhaps', expected 0/1, true/false"):
        load_labelled(path, TASKS["churn"], target="Left")


def test_a_missing_target_column_lists_the_columns(own_csv):
    with pytest.raises(ContractError, match=r"no target column 'Churn'; found State, .*--target"):
        load_labelled(own_csv, TASKS["churn"], target="Churn")


def test_features_from_joins_numeric_columns_by_contact(generated, tmp_path):
    interactions = pd.read_parquet(generated / "interactions.parquet")
    extra = pd.DataFrame({"contact_id": interactions["contact_id"][::2], "empathy_mean": 0.5,
                          "conversation_id": "V"})
    extra.to_csv(tmp_path / "conversation_features.csv", index=False)
    data = load_labelled(generated, TASKS["churn"], features_from=[tmp_path / "conversation_features.csv"])
    assert data.features[-1] == "empathy_mean" and "conversation_id" not in data.features
    assert data.frame["empathy_mean"].notna().sum() == len(extra)


def test_added_features_are_compared_with_the_same_model_without_them(generated, tmp_path):
    labels = pd.read_parquet(generated / "labels.parquet")
    # A feature that carries the outcome through noise: the comparison must show it raises ROC-AUC.
    noise = np.random.default_rng(3).normal(0, 0.5, len(labels))
    pd.DataFrame({"contact_id": labels["contact_id"], "signal": labels["churned"] + noise}).to_parquet(
        tmp_path / "signal.parquet")
    data = load_labelled(generated, TASKS["churn"], features_from=[tmp_path / "signal.parquet"])
    assert data.added == ["signal"]
    trained = train_tabular(data, TASKS["churn"], **FAST)
    without = trained.metadata["without_added_features"]
    assert without["added"] == ["signal"] and "signal" not in without.get("features", [])
    assert trained.metadata["metrics"]["roc_auc"] > without["metrics"]["roc_auc"] + 0.05
    rows = {r["figure"]: r for r in comparison_rows(trained.metadata)}
    assert rows["roc_auc"]["difference"] == pytest.approx(
        trained.metadata["metrics"]["roc_auc"] - without["metrics"]["roc_auc"])
    assert rows["seed gap recovered"]["without"] == without["seed_groups"]["gap_recovered"]
    assert rows["features added"]["with"] == "signal"


@pytest.fixture(scope="module")
def conversation_features_file(generated, tmp_path_factory):
    """The conversation features of transcripts without timestamps for the generated contacts: noise but for the
    agent's interpretations, which carry the outcome."""
    labels = pd.read_parquet(generated / "labels.parquet")
    rng = np.random.default_rng(5)
    features = pd.DataFrame(rng.random((len(labels), len(UNTIMED))), columns=UNTIMED)
    features["agent_interpretations_mean"] = 1.0 - labels["churned"] + rng.normal(0, 0.5, len(labels))
    features.insert(0, "contact_id", labels["contact_id"])
    path = tmp_path_factory.mktemp("conversations") / "conversation_features.parquet"
    features.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def conversation_trained(generated, conversation_features_file):
    data = load_labelled(generated, TASKS["churn"], features_from=[conversation_features_file])
    return train_tabular(data, TASKS["churn"], **FAST)


def test_each_recorded_feature_group_s_effect_on_held_out_roc_auc_has_an_interval(conversation_trained):
    metadata = conversation_trained.metadata
    effects = metadata["feature_groups"]
    rows = {r["group"]: r for r in effects["rows"]}
    assert list(rows) == [*(g for g in FEATURE_GROUPS if g != "timing"), ADDED_GROUP]
    assert rows[ADDED_GROUP]["features"] == UNTIMED and rows["customer sentiment"]["features"] == FEATURE_GROUPS[
        "customer sentiment"]
    assert not set(COUNT_FEATURES) & set(conversation_trained.model.feature_names_in_)  # written, never read
    assert (effects["learner"], effects["test_rows"]) == (metadata["learner"], metadata["split"]["test"])
    assert effects["roc_auc"] == pytest.approx(metadata["metrics"]["roc_auc"])
    for row in rows.values():
        assert row["lower"] <= row["difference"] <= row["upper"]
        assert row["roc_auc_without"] + row["difference"] == pytest.approx(effects["roc_auc"])
    assert rows["agent interpretations"]["difference"] > 0.05 and rows["agent interpretations"]["differs"]
    # The with vs without comparison is the same refit as the added-features row.
    assert metadata["without_added_features"]["metrics"]["roc_auc"] == pytest.approx(rows[ADDED_GROUP]["roc_auc_without"])


def test_the_feature_group_table_is_in_the_report(conversation_trained):
    report = tabular_report(conversation_trained.model, conversation_trained.test_frame, conversation_trained.test_y,
                            conversation_trained.metadata)
    assert "Effect of each feature group on held-out ROC-AUC" in report and "agent interpretations" in report
    shown = feature_group_rows(conversation_trained.metadata)
    assert [r["group"] for r in shown] == [r["group"] for r in conversation_trained.metadata["feature_groups"]["rows"]]
    assert all(r["95% interval"].startswith("[") for r in shown)


def test_a_group_is_refitted_with_the_chosen_learner_alone(conversation_trained):
    model = conversation_trained.model
    refit = refitted_without(model, FEATURE_GROUPS["customer sentiment"], conversation_trained.test_frame,
                             conversation_trained.test_y)
    assert [c["candidate"] for c in refit.selection_] == [model.learner_] and refit.learner_ == model.learner_
    assert "customer_sentiment_slope" not in refit.feature_names_in_ and refit.random_state == model.random_state


def test_without_each_group_only_all_added_features_together_are_measured(generated, conversation_features_file):
    from carelens.training.tabular import measured_groups
    data = load_labelled(generated, TASKS["churn"], features_from=[conversation_features_file])
    assert list(measured_groups(data, each_group=False)) == [ADDED_GROUP]
    assert len(measured_groups(data)) > 1


def test_training_without_conversation_or_added_features_measures_no_group(churn_trained):
    assert "feature_groups" not in churn_trained.metadata and "without_added_features" not in churn_trained.metadata


def test_cli_prints_the_feature_group_table(generated, conversation_features_file, tmp_path):
    result = runner.invoke(train_app, ["churn", "--data", str(generated), "--features-from",
                                       str(conversation_features_file), "--learner", "logistic", "--spread-seeds", "1",
                                       "--out", str(tmp_path / "registry"), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "Effect of each feature group on held-out ROC-AUC" in result.output
    _, metadata = load_tabular(Registry(tmp_path / "registry"), "churn")
    assert [r["group"] for r in metadata["feature_groups"]["rows"]][-1] == ADDED_GROUP
    assert "Effect of each feature group" in (tmp_path / "registry" / "churn" / "v1" / "report.html").read_text()


def test_roc_auc_differences_match_scikit_learn_and_pair_the_resamples():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.3
    risk = np.round(positive + rng.normal(0, 1, 400), 1)  # rounded: ties count half
    weaker = np.round(positive + rng.normal(0, 2, 400), 1)
    same, worse = roc_auc_differences(positive, risk, [risk, weaker], resamples=200, seed=1)
    assert same == {"roc_auc": pytest.approx(roc_auc_score(positive, risk)), "difference": 0.0,
                    "interval": [0.0, 0.0], "differs": False}
    assert worse["roc_auc"] == pytest.approx(roc_auc_score(positive, weaker))
    assert worse["difference"] == pytest.approx(roc_auc_score(positive, risk) - roc_auc_score(positive, weaker))
    assert worse["interval"][0] <= worse["difference"] <= worse["interval"][1]
    assert roc_auc_differences(positive, risk, [weaker], resamples=200, seed=1)[0] == worse
    with pytest.raises(ValueError, match="needs positive and negative rows"):
        roc_auc_differences(np.ones(5, bool), risk[:5], [weaker[:5]])


def test_gap_recovered_is_the_predicted_share_of_the_observed_gap():
    rows = [{"group": "problem_effective", "observed": 0.9, "predicted": 0.8},
            {"group": "problem_ineffective", "observed": 0.3, "predicted": 0.5}]
    assert gap_recovered(rows) == pytest.approx(0.5)
    assert gap_recovered(rows[:1]) is None


def test_numeric_looking_keys_stay_text_so_features_join(tmp_path):
    (tmp_path / "own.csv").write_text("customer_id,x,Left\n001,1,yes\n002,2,no\n")
    (tmp_path / "extra.csv").write_text("customer_id,calls\n001,5\n002,7\n")
    data = load_labelled(tmp_path / "own.csv", TASKS["churn"], target="Left", features_from=[tmp_path / "extra.csv"])
    assert data.frame["customer_id"].tolist() == ["001", "002"] and data.frame["calls"].tolist() == [5, 7]


def test_features_from_needs_a_shared_key(generated, tmp_path):
    pd.DataFrame({"conversation_id": ["V1"], "x": [1]}).to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(ContractError, match=r"f\.csv: no key column shared.*contact_id, customer_id"):
        load_labelled(generated, TASKS["churn"], features_from=[tmp_path / "f.csv"])


# The command line.

runner = CliRunner()


# Slow (36 s): the README's training block covers `train` and `evaluate --json` from the command line in the default run.
@pytest.mark.slow
def test_cli_trains_evaluates_and_exports_own_data(own_csv, tmp_path):
    registry, runs = tmp_path / "registry", tmp_path / "runs"
    result = runner.invoke(train_app, ["churn", "--data", str(own_csv), "--target", "Left", "--out", str(registry),
                                       "--runs", str(runs), "--goal", "recall:0.7", "--spread-seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "learner selection" in result.output and "held-out figures over 2 split seeds" in result.output
    assert "published churn v1" in result.output and (runs / "churn" / "v1" / "report.html").is_file()
    report = (registry / "churn" / "v1" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4 and "Permutation feature importance" in report
    _, metadata = load_tabular(Registry(registry), "churn")
    assert metadata["goal"] == "recall:0.7"

    result = runner.invoke(evaluate_app, ["churn", "--registry", str(registry), "--data", str(own_csv),
                                          "--target", "Left", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["version"] == "v1" and evaluated["metrics"]["rows"] == 800
    # No contact ids in this file: the training data fingerprint alone tells that these are the training rows.
    assert (evaluated["held_out"], evaluated["rows_trained_on"]) == (False, 640)
    assert "warning: this is the data churn v1 was trained on" in result.stderr

    exported = tmp_path / "churn.joblib"
    app = typer.Typer()
    app.command()(export_command)
    result = runner.invoke(app, ["churn", "--registry", str(registry), "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert "runs code when it is loaded" in result.output
    assert joblib.load(exported).threshold_ == metadata["threshold"]


@pytest.fixture(scope="module")
def synthetic_churn(tmp_path_factory):
    """A churn model published from generator data (seed 1), with that data and an unseen seed-2 day beside it."""
    root = tmp_path_factory.mktemp("held_out")
    write_synthetic(generate(1500, seed=1, transcripts=False), root / "history")
    write_synthetic(generate(400, seed=2, transcripts=False), root / "day")
    trained = train_tabular(load_labelled(root / "history", TASKS["churn"]), TASKS["churn"], **FAST)
    publish_tabular(trained, Registry(root / "registry"))
    return root, trained


def test_the_contacts_a_model_was_fitted_on_are_stored_as_hashes(synthetic_churn):
    root, trained = synthetic_churn
    stored = pd.read_parquet(root / "registry" / "churn" / "v1" / FITTED_CONTACTS)
    assert list(stored.columns) == ["contact_hash"] and stored["contact_hash"].dtype == np.uint64
    assert len(stored) == 1200 and stored["contact_hash"].is_unique


def test_evaluating_on_the_training_data_warns_that_it_is_not_held_out(synthetic_churn):
    root, _ = synthetic_churn
    result = runner.invoke(evaluate_app, ["churn", "--registry", str(root / "registry"), "--data",
                                          str(root / "history"), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    warning = ("this is the data churn v1 was trained on (its training data fingerprint matches): it was fitted and "
               "calibrated on 1,200 of these 1,500 rows, so these figures are not held-out; its held-out figures are "
               "in its metadata and report; evaluate on data it never saw")
    assert (evaluated["held_out"], evaluated["rows_trained_on"], evaluated["warning"]) == (False, 1200, warning)
    assert result.stderr.strip() == f"warning: {warning}"


def test_evaluating_on_another_seed_is_held_out_without_a_warning(synthetic_churn):
    root, _ = synthetic_churn
    result = runner.invoke(evaluate_app, ["churn", "--registry", str(root / "registry"), "--data", str(root / "day")])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "held-out metrics" in result.stdout
    evaluated = evaluate_tabular(root / "registry", "churn", root / "day")
    assert (evaluated["held_out"], evaluated["rows_trained_on"], evaluated["warning"]) == (True, 0, None)


def test_training_contacts_mixed_into_other_data_are_counted(synthetic_churn, tmp_path):
    root, trained = synthetic_churn
    for name in ("interactions", "labels"):
        pd.read_parquet(root / "history" / f"{name}.parquet").head(300).to_parquet(tmp_path / f"{name}.parquet")
    fitted = 300 - int(pd.read_parquet(tmp_path / "interactions.parquet")["contact_id"]
                       .isin(trained.test_frame["contact_id"]).sum())
    evaluated = evaluate_tabular(root / "registry", "churn", tmp_path)
    assert (evaluated["held_out"], evaluated["rows_trained_on"]) == (False, fitted)
    assert evaluated["warning"] == (f"{fitted:,} of the 300 evaluated rows ({fitted / 300:.0%}) are contacts churn v1 "
                                    f"was fitted or calibrated on, so these figures are not held-out; evaluate on "
                                    f"contacts it never saw")


def test_cli_reports_bad_input_without_a_traceback(own_csv, tmp_path):
    result = runner.invoke(train_app, ["churn", "--data", str(own_csv), "--target", "Nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no target column 'Nope'" in result.output and "Traceback" not in result.output


def test_a_registry_out_that_is_a_file_is_refused_before_training(own_csv, tmp_path, monkeypatch):
    import carelens.training.tabular as tabular
    (tmp_path / "registry").write_text("not a folder")
    monkeypatch.setattr(tabular, "train_tabular", lambda *a, **k: pytest.fail("trained for a registry it cannot write"))
    result = runner.invoke(train_app, ["churn", "--data", str(own_csv), "--target", "Left", "--out",
                                       str(tmp_path / "registry")])
    assert result.exit_code == 2, result.output
    assert f"--out {tmp_path / 'registry'}: is a file; expected a folder" in " ".join(result.output.split())


def test_report_pieces_are_self_contained():
    from matplotlib.figure import Figure
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    page = html_report("A <title>", [("Numbers", table_html([{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}])),
                                     ("Plot", figure_html(fig))])
    assert page.startswith("<!doctype html>") and "A &lt;title&gt;" in page
    assert "<th>a</th><th>b</th><th>c</th>" in page and "0.5000" in page and "data:image/png;base64," in page


@pytest.mark.slow
@requires_shared
def test_telecom_churn_mean_held_out_roc_auc_over_five_split_seeds_reaches_0_93(shared_data, tmp_path):
    registry = tmp_path / "registry"
    result = runner.invoke(train_app, ["churn", "--data", str(shared_data / "churn" / "telecom_churn_train.csv"),
                                       "--target", "Churn", "--out", str(registry), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    _, metadata = load_tabular(Registry(registry), "churn")
    spread = metadata["spread"]
    print(f"\ntelecom churn held-out ROC-AUC over seeds {spread['seeds']}: {spread['mean']['roc_auc']:.4f} "
          f"± {spread['std']['roc_auc']:.4f} (learners {[r['learner'] for r in spread['rows']]})")
    assert spread["seeds"] == [0, 1, 2, 3, 4] and spread["mean"]["roc_auc"] >= 0.93


_category_cells = st.one_of(st.none(), st.just(np.nan), st.just(pd.NA), st.integers(-3, 3), st.floats(0, 2),
                            st.sampled_from([" Phone ", "CHAT", "chat\t", "", "e\x1fmail", "Ärger", "\xa0fax", "İ"]),
                            st.text(max_size=3))


@given(st.lists(_category_cells, min_size=1, max_size=6), st.sampled_from([object, "string"]))
def test_categories_are_read_as_pandas_reads_them(cells, dtype):
    from carelens.models import tabular
    values = pd.Series(cells, dtype=object if dtype is object else None).astype(dtype, errors="ignore")
    by_pandas = values.astype("string").str.strip().str.lower().to_numpy(dtype=object, na_value=np.nan)
    read = tabular._as_categories(values)
    assert [None if v is np.nan or v != v else v for v in read] == \
        [None if v is np.nan or v != v else v for v in by_pandas]
