"""The Python API: loading the models once, predicting per customer, flagging with reasons and actions."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.contracts import ContractError
from carelens.inference.api import FlagCall, Scorer
from carelens.inference.reasons import described, percentile_of, pushes, ranked_share, top_reasons
from carelens.inference.selection import (
    ACTIONS, CHURN_ONLY_ACTION, FLAG_COLUMNS, per_customer, ranked_customers, selected, selected_customers,
)
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.registry import Registry, RegistryError
from carelens.models.tabular import load_tabular


def test_load_records_the_versions_and_uses_the_transcript_features(scorer):
    assert scorer.versions == {"churn": "v1", "retaliation": "v1", "transcripts": "v1"}
    # Every conversation feature but the turn counts, which are written and never read.
    assert scorer.uses_transcripts and set(FEATURE_COLUMNS) - set(scorer.features) == {"customer_turns", "agent_turns"}


def test_predict_gives_one_row_per_customer_with_the_riskiest_contact(scorer, day):
    predicted = scorer.predict(day.interactions, day.conversations)
    assert sorted(predicted["customer_id"]) == sorted(day.interactions["customer_id"].unique())
    table = scorer.contact_table(day.interactions, day.conversations)
    churn = pd.Series(scorer.churn.risk(table), index=table["contact_id"])
    for row in predicted.itertuples():
        assert row.churn_risk == pytest.approx(churn[row.contact_id])
        # The likeliest retaliation is named only where retaliation is flagged, never beside a churn-only flag.
        assert row.retaliation_type == ("" if not row.retaliation_flagged else row.retaliation_type)
        assert row.retaliation_type in ({"escalate", "switch", "vent"} if row.retaliation_flagged else {""})
    assert predicted["churn_risk"].between(0, 1).all() and predicted["retaliation_risk"].between(0, 1).all()


def test_inputs_as_frame_records_or_files_give_the_same_predictions(scorer, day, registry_with_models):
    folder = registry_with_models.day_dir
    from_frame = scorer.predict(day.interactions, day.conversations)
    from_records = scorer.predict(day.interactions.to_dict("records"), day.conversations)
    from_files = scorer.predict(folder / "interactions.parquet", folder / "transcripts.jsonl")
    pd.testing.assert_frame_equal(from_frame, from_records)
    pd.testing.assert_frame_equal(from_frame, from_files)


def test_without_transcripts_the_features_are_missing_not_invented(scorer, day):
    table = scorer.contact_table(day.interactions)
    assert table[FEATURE_COLUMNS].isna().all().all()
    assert len(scorer.predict(day.interactions)) == day.interactions["customer_id"].nunique()


def test_flag_capacity_sorted_by_risk_with_reasons_and_actions(scorer, day):
    flagged = scorer.flag_at_risk(day.interactions, day.conversations, capacity=8)
    assert list(flagged.columns) == FLAG_COLUMNS and len(flagged) == 8
    assert flagged["risk"].is_monotonic_decreasing
    assert (flagged["risk"] == flagged[["churn_risk", "retaliation_risk"]].max(axis=1)).all()
    for row in flagged.itertuples():
        assert 0 < len(row.reasons) <= 3 and all(isinstance(r, str) and r for r in row.reasons)
        assert row.action in {*ACTIONS.values(), CHURN_ONLY_ACTION}
    everyone = scorer.predict(day.interactions, day.conversations)
    top = everyone.assign(risk=everyone[["churn_risk", "retaliation_risk"]].max(axis=1)).nlargest(8, "risk")
    assert set(flagged["customer_id"]) == set(top["customer_id"])


def test_flag_by_threshold_and_by_the_models_own_thresholds(scorer, day):
    by_threshold = scorer.flag_at_risk(day.interactions, day.conversations, threshold=0.3)
    assert (by_threshold["risk"] >= 0.3).all()
    predicted = scorer.predict(day.interactions, day.conversations)
    assert len(by_threshold) == int((predicted[["churn_risk", "retaliation_risk"]].max(axis=1) >= 0.3).sum())
    default = scorer.flag_at_risk(day.interactions, day.conversations)
    expected = predicted[predicted["churn_flagged"] | predicted["retaliation_flagged"]]
    assert set(default["customer_id"]) == set(expected["customer_id"])
    retaliating = expected.set_index("customer_id")["retaliation_flagged"]
    for row in default.itertuples():
        want = ACTIONS[row.retaliation_type] if retaliating[row.customer_id] else CHURN_ONLY_ACTION
        assert (row.retaliation_type == "") == (not retaliating[row.customer_id])
        assert row.action == want


def test_bad_arguments_and_bad_records_say_what_was_wrong(scorer, day):
    with pytest.raises(ValueError, match="threshold must be a probability"):
        scorer.flag_at_risk(day.interactions, threshold=1.5)
    records = day.interactions.head(3).to_dict("records")
    records[1]["answer_time_s"] = -4
    with pytest.raises(ContractError, match=r"row 2.*answer_time_s"):
        scorer.predict(records)
    with pytest.raises(ContractError, match="missing column.*channel"):
        scorer.predict(day.interactions.drop(columns="channel"))


def _thirds(day) -> list[tuple[pd.DataFrame, list[dict]]]:
    """The day's contacts cut into three parts by customer, each with its contacts' conversations."""
    customers = sorted(day.interactions["customer_id"].unique())
    parts = [day.interactions[day.interactions["customer_id"].isin(customers[i::3])] for i in range(3)]
    return [(part, [c for c in day.conversations if c["contact_id"] in set(part["contact_id"])]) for part in parts]


def _answer(flagged) -> str:
    """A flag_at_risk answer as comparable text: its rows and its attrs (NaN equal to NaN)."""
    return json.dumps([flagged.to_dict("records"), flagged.attrs], sort_keys=True, default=str)


def test_calls_flagged_together_get_what_each_gets_alone(scorer, day):
    (first, first_talk), (second, second_talk), (third, _) = _thirds(day)
    calls = [FlagCall(first, first_talk, capacity=4), FlagCall(second, second_talk, threshold=0.2),
             FlagCall(third), FlagCall(first, first_talk),  # the same customers in two calls stay apart
             FlagCall(second.drop(columns="agent_id"), second_talk),  # a table of other columns: joined on its own
             FlagCall(second, second_talk[:3] + second_talk[:2]),  # a contact's last conversation wins in its call
             FlagCall(first, first_talk[::2])]  # contacts whose conversations another call holds have none here
    together = scorer.flag_each(calls)
    assert len(together[0]) == 4 and len(together[1]) > 0
    for call, flagged in zip(calls, together):
        alone = scorer.flag_at_risk(call.interactions, call.transcripts, call.capacity, call.threshold)
        pd.testing.assert_frame_equal(flagged, alone)
        assert _answer(flagged) == _answer(alone)


class _Poisoned:
    """A risk model that fails on any frame holding a contact with `tenure_months` 777, as a bug would."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def risk(self, table):
        if (table["tenure_months"] == 777).any():
            raise ValueError("the model broke on tenure 777")
        return self.model.risk(table)


def test_a_call_that_fails_fails_alone_even_in_a_model_call_it_shared(scorer, day):
    (first, first_talk), (second, second_talk), _ = _thirds(day)
    broken = first.head(2).assign(answer_time_s=-4.0)
    calls = [FlagCall(first, first_talk, capacity=3), FlagCall(broken), FlagCall(second, strict=True),
             FlagCall(second, capacity=-1), FlagCall(second, second_talk)]
    answers = scorer.flag_each(calls)
    assert [type(a).__name__ for a in answers] == ["DataFrame", "ContractError", "MissingConversations",
                                                   "UsageError", "DataFrame"]
    assert "answer_time_s" in str(answers[1]) and "capacity must be a whole number" in str(answers[3])
    poisoned = dataclasses.replace(scorer, churn=_Poisoned(scorer.churn))
    answers = poisoned.flag_each([calls[0], FlagCall(second.assign(tenure_months=777.0)), calls[4]])
    assert isinstance(answers[1], ValueError) and "tenure 777" in str(answers[1])
    for call, flagged in zip(calls[::4], answers[::2]):
        assert _answer(flagged) == _answer(scorer.flag_at_risk(call.interactions, call.transcripts, call.capacity))


def test_load_refuses_tabular_models_that_need_a_missing_transcript_model(registry_with_models, tmp_path):
    source = Registry(registry_with_models.root)
    target = Registry(tmp_path / "registry")
    for name in ("churn", "retaliation"):
        model, metadata = load_tabular(source, name)
        from carelens.models.tabular import save_model
        target.publish(name, lambda d, m=model: save_model(m, d), {k: v for k, v in metadata.items()
                                                                 if k not in ("name", "version")})
    with pytest.raises(RegistryError, match="no transcript model is published"):
        Scorer.load(target.root)


# -- reasons ----------------------------------------------------------------------------------------------------

def test_pushes_measure_each_feature_against_its_typical_value():
    frame = pd.DataFrame({"a": [5.0, 1.0], "b": [0.0, 3.0], "c": ["x", "y"]})
    risk = lambda f: f["a"].to_numpy() * 0.1 + f["b"].to_numpy() * 0.01 + (f["c"] == "y").to_numpy() * 0.2
    contributions = pushes(risk, frame, {"a": 1.0, "b": 0.0, "c": "x"})
    assert contributions.loc[0].tolist() == pytest.approx([0.4, 0.0, 0.0])
    assert contributions.loc[1].tolist() == pytest.approx([0.0, 0.03, 0.2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c2", "c10", "c1", "c3"]), st.sampled_from([0.1, 0.5, 0.9]),
                          st.sampled_from([0.2, 0.5, 0.7])), max_size=25))
def test_customers_are_ranked_as_a_groupby_and_a_stable_sort_rank_them(rows):
    # Few distinct risks, so that ties (within a customer and between customers) are common.
    predictions = pd.DataFrame({"customer_id": [c for c, _, _ in rows],
                                "contact_id": [f"k{i}" for i in range(len(rows))],
                                "churn_risk": [churn for _, churn, _ in rows],
                                "retaliation_risk": [other for *_, other in rows]}, index=range(100, 100 + len(rows)))
    larger = np.maximum(predictions["churn_risk"], predictions["retaliation_risk"])
    riskiest = predictions.loc[larger.groupby(predictions["customer_id"], sort=False).idxmax().to_numpy()]
    expected = riskiest.assign(risk=np.maximum(riskiest["churn_risk"], riskiest["retaliation_risk"])).sort_values(
        ["risk", "customer_id"], ascending=[False, True], kind="stable")
    pd.testing.assert_frame_equal(per_customer(predictions), riskiest)
    pd.testing.assert_frame_equal(ranked_customers(predictions), expected)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c2", "c10", "c1", "c3"]), st.sampled_from([0.1, 0.5, 0.9]),
                          st.sampled_from([0.2, 0.5, 0.7]), st.booleans(), st.booleans()), max_size=25),
       st.one_of(st.tuples(st.integers(0, 6), st.none()), st.tuples(st.none(), st.sampled_from([0.0, 0.5, 0.7, 1.0])),
                 st.just((None, None))))
def test_the_selected_customers_are_those_the_ranked_list_selects(rows, selection):
    predictions = pd.DataFrame({"customer_id": [r[0] for r in rows], "contact_id": [f"k{i}" for i in range(len(rows))],
                                "churn_risk": [r[1] for r in rows], "retaliation_risk": [r[2] for r in rows],
                                "churn_flagged": [r[3] for r in rows], "retaliation_flagged": [r[4] for r in rows]},
                               index=range(100, 100 + len(rows)))
    ranked = ranked_customers(predictions)
    capacity, threshold = selection
    expected = ranked.head(capacity) if capacity is not None else ranked[ranked["risk"] >= threshold] \
        if threshold is not None else ranked[ranked["churn_flagged"] | ranked["retaliation_flagged"]]
    pd.testing.assert_frame_equal(selected_customers(predictions, capacity, threshold), expected)
    pd.testing.assert_frame_equal(selected(ranked, capacity, threshold), expected)
    if capacity is not None or threshold is not None:  # the models' flags are read only when neither is given
        unflagged = ranked.drop(columns=["churn_flagged", "retaliation_flagged"])
        pd.testing.assert_frame_equal(selected(unflagged, capacity, threshold), expected[unflagged.columns])


def test_top_reasons_pick_the_biggest_pushes_in_words():
    frame = pd.DataFrame({"answer_time_s": [95.0], "agent_empathy_mean": [0.04], "transfers": [2.0],
                          "csat": [5.0]})
    contributions = pd.DataFrame({"answer_time_s": [0.2], "agent_empathy_mean": [0.3], "transfers": [0.01],
                                  "csat": [-0.1]})
    profile = {"typical": {"answer_time_s": 23.0, "agent_empathy_mean": 0.55, "transfers": 0.0, "csat": 3.0},
               "percentiles": {"agent_empathy_mean": np.linspace(0, 1, 101).tolist()}}
    assert top_reasons(frame, contributions, profile) == [
        ["agent empathy in the bottom 5%", "waited 95 s to be answered", "transferred 2 times"]]


def test_phrases_for_missing_and_ranked_values():
    assert described("csat", float("nan")) == "no csat recorded"
    assert described("resolved", False) == "issue left unresolved"
    assert described("agent_empathy_mean", 0.12, np.linspace(0, 1, 101).tolist()) == "agent empathy in the bottom 15%"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30), st.floats(-2e3, 2e3))
def test_percentiles_stay_in_range_and_follow_the_value(values, value):
    points = np.percentile(values, np.arange(101)).tolist()
    percentile = percentile_of(value, points)
    assert 0 <= percentile <= 100
    assert percentile_of(value + 1e4, points) == 100 and percentile_of(value - 1e4, points) == 0
    assert ranked_share(percentile).startswith(("the bottom", "the top"))


def test_missing_values_are_not_given_as_reasons():
    frame = pd.DataFrame({"agent_empathy_mean": [np.nan], "repeat_contacts_30d": [1], "abandoned": [True]})
    contributions = pd.DataFrame({"agent_empathy_mean": [0.4], "repeat_contacts_30d": [0.1], "abandoned": [0.2]})
    profile = {"typical": {"agent_empathy_mean": 0.55, "repeat_contacts_30d": 0.0, "abandoned": 0.0}}
    assert top_reasons(frame, contributions, profile) == [["abandoned the call", "1 repeat contact in 30 days"]]


@pytest.mark.parametrize("text, expected", [
    ("latest", "latest"), (" v2 ", "v2"),
    ("churn=v1, retaliation=v2", {"churn": "v1", "retaliation": "v2"}),
])
def test_versions_are_one_for_all_or_pinned_per_model(text, expected):
    from carelens.inference.api import parse_versions
    assert parse_versions(text) == expected


@pytest.mark.parametrize("text, message", [
    ("churn=v1,retaliation", r"'retaliation' is not model=version"),
    ("churn=v1,=v2", r"'=v2' is not model=version"),
    ("churn=v1,churn=v2", r"churn is pinned twice"),
    ("churn=v1,ranking=v2", r"unknown model\(s\) ranking"),
])
def test_a_malformed_version_pin_is_a_usage_error_naming_the_part(text, message):
    from carelens.data.errors import UsageError
    from carelens.inference.api import parse_versions
    with pytest.raises(UsageError, match=message):
        parse_versions(text)


def test_score_transcripts_reads_an_abcd_file_as_the_batch_scorer_does(scorer, tmp_path):

    from carelens.data.adapters import read_abcd
    chats = [{"convo_id": 7, "original": [["customer", "my order is late"], ["action", "pull-up order"],
                                          ["agent", "sorry to hear that, let me help"]]},
             {"convo_id": 8, "original": [["customer", "great thanks for your help"]]}]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(chats), encoding="utf-8")
    from_file = scorer.score_transcripts(path)
    assert from_file["conversation_id"].tolist() == ["7", "8"]
    pd.testing.assert_frame_equal(from_file, scorer.score_transcripts(read_abcd(path)))


def test_score_turns_gives_each_turn_its_text_beside_its_scores(scorer, tmp_path):
    chats = [{"convo_id": 7, "original": [["customer", "my order is late"], ["action", "pull-up order"],
                                          ["agent", "sorry to hear that, let me help"], ["customer", " "]]}]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(chats), encoding="utf-8")
    turns = scorer.score_turns(path)
    assert turns[["contact_id", "turn_index", "speaker", "text"]].values.tolist() == [
        ["7", 0, "customer", "my order is late"], ["7", 1, "agent", "sorry to hear that, let me help"],
        ["7", 2, "customer", " "]]
    assert turns["sentiment"].notna().tolist() == [True, False, False]  # a blank turn is kept, not scored
    assert turns["empathy"].notna().tolist() == [False, True, False]
    assert turns["p_negative"].iloc[0] + turns["p_neutral"].iloc[0] + turns["p_positive"].iloc[0] == pytest.approx(1)
