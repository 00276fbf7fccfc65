"""Reasons in a supervisor's words: an abandoned call is one reason, no phrase says something untrue, and a reason is
only ever a value worse than typical, on the side its feature declares risky, of something the centre can act on."""
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelens.data.synthetic import generate, sample_dir
from carelens.inference.reasons import (MIN_PUSH, NO_SINGLE_CAUSE, PHRASES, RISK_SIDES, described, pushes,
                                        reason_features, reason_pushes, reason_typicals, top_reasons)
from carelens.inference.selection import ranked_customers
from carelens.models.conversation_features import FEATURE_COLUMNS

EXAMPLES = int(os.environ.get("CARELENS_FUZZ_EXAMPLES", 20))
fuzz = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Typical values as a training profile holds them (medians; yes/no features as 0/1).
TYPICAL = {"answer_time_s": 23.0, "abandoned": 0.0, "hold_time_s": 0.0, "handle_time_s": 428.0, "transfers": 0.0,
           "product_problem": 0.0, "resolved": 1.0, "repeat_contacts_30d": 0.0, "tenure_months": 22.0,
           "monthly_value": 45.0, "csat": 3.0, "channel": "phone", "customer_sentiment_start": 0.1,
           "customer_sentiment_end": 0.2, "customer_sentiment_shift": 0.05, "customer_sentiment_worst": -0.1,
           "agent_empathy_mean": 0.55, "customer_turns": 3.0, "agent_turns": 4.0}
PROFILE = {"typical": TYPICAL, "percentiles": {}}
#: Features that describe the customer or the length of the conversation: never a reason, whatever they push.
CONTEXT = {"customer_turns", "agent_turns", "tenure_months", "monthly_value", "channel", "customer_sentiment_start"}
#: Words only a protective value or a context feature would be phrased with.
NEVER_A_REASON = ("customer turn", "agent turn", "customer for", "pays", "contacted us", "customer opened",
                  "rated the contact 4/5", "rated the contact 5/5", "was not transferred", "issue marked resolved",
                  "was not put on hold", "was answered", "routine request", "no repeat contacts", "positive", "neutral",
                  "lifted", "rose", "did not lift", "held steady", "in the top")


def _abandoned_row(**values) -> pd.DataFrame:
    row = {"abandoned": True, "answer_time_s": 95.0, "handle_time_s": 0.0, "hold_time_s": 0.0, "transfers": 0,
           "resolved": False, "agent_empathy_mean": np.nan, "repeat_contacts_30d": 2, "tenure_months": 3.0}
    return pd.DataFrame([{**row, **values}])


def test_an_abandoned_call_is_one_reason_with_the_wait_and_its_consequences_folded_in():
    frame = _abandoned_row()
    contributions = pd.DataFrame({"abandoned": [0.02], "answer_time_s": [0.05], "handle_time_s": [0.3],
                                  "hold_time_s": [0.04], "transfers": [0.03], "resolved": [0.2],
                                  "agent_empathy_mean": [0.1], "repeat_contacts_30d": [0.01]})
    assert top_reasons(frame, contributions, PROFILE) == [["abandoned the call after waiting 95 s",
                                                           "2 repeat contacts in 30 days"]]


def test_an_abandoned_call_without_a_recorded_wait_still_reads_as_abandoned():
    frame = _abandoned_row(answer_time_s=np.nan)
    contributions = pd.DataFrame({"resolved": [0.2], "answer_time_s": [0.0], "repeat_contacts_30d": [0.3]})
    assert top_reasons(frame, contributions, PROFILE) == [["2 repeat contacts in 30 days", "abandoned the call"]]


def test_an_answered_contact_keeps_its_handling_reasons():
    frame = _abandoned_row(abandoned=False, handle_time_s=1260.0, hold_time_s=300.0, transfers=2)
    contributions = pd.DataFrame({"handle_time_s": [0.3], "hold_time_s": [0.2], "transfers": [0.1],
                                  "answer_time_s": [0.05]})
    assert top_reasons(frame, contributions, PROFILE) == [["contact took 21.0 min", "was on hold for 5.0 min",
                                                           "transferred 2 times"]]


def _answered(**values) -> pd.DataFrame:
    """One answered, unresolved contact, typical otherwise, with `values` on top."""
    return pd.DataFrame([{**{f: v for f, v in TYPICAL.items() if f != "channel"}, "channel": "chat",
                          "abandoned": False, "product_problem": False, "resolved": False, **values}])


def test_a_customer_who_rated_the_contact_5_of_5_never_gets_the_rating_as_a_reason():
    frame = _answered(csat=5.0)
    contributions = pd.DataFrame({"csat": [0.4], "resolved": [0.1]})
    assert top_reasons(frame, contributions, PROFILE) == [["issue left unresolved"]]


@pytest.mark.parametrize("csat, typical, reasons", [
    (5.0, 3.0, [NO_SINGLE_CAUSE]), (3.0, 3.0, [NO_SINGLE_CAUSE]), (2.0, 3.0, ["rated the contact 2/5"]),
    # Below a typical 5, but CSAT counts a 4 as a satisfied customer.
    (4.0, 5.0, [NO_SINGLE_CAUSE]),
])
def test_a_rating_is_a_reason_only_below_typical_and_below_satisfied(csat, typical, reasons):
    profile = {"typical": {**TYPICAL, "csat": typical}}
    assert top_reasons(_answered(csat=csat, resolved=True), pd.DataFrame({"csat": [0.2]}), profile) == [reasons]


def test_a_customer_with_13_turns_never_gets_a_turn_count_as_a_reason():
    frame = _answered(customer_turns=13.0, agent_turns=14.0, tenure_months=4.0, monthly_value=50.0)
    contributions = pd.DataFrame({"customer_turns": [0.5], "agent_turns": [0.4], "tenure_months": [0.3],
                                  "monthly_value": [0.2], "channel": [0.1], "resolved": [0.02]})
    assert top_reasons(frame, contributions, PROFILE) == [["issue left unresolved"]]


@pytest.mark.parametrize("feature, value", [
    ("answer_time_s", 5.0), ("hold_time_s", 0.0), ("handle_time_s", 120.0), ("transfers", 0), ("resolved", True),
    ("product_problem", False), ("repeat_contacts_30d", 0), ("abandoned", False),
    ("customer_sentiment_end", 0.8), ("customer_sentiment_shift", 0.4), ("agent_empathy_mean", 0.9),
    # Below typical but not bad in itself: a neutral end, a mood that did not move.
    ("customer_sentiment_end", -0.1), ("customer_sentiment_shift", 0.0),
])
def test_a_protective_value_is_never_a_reason_however_hard_the_model_pushes(feature, value):
    frame = _answered(**{"resolved": True, feature: value})
    assert top_reasons(frame, pd.DataFrame({feature: [0.5]}), PROFILE) == [[NO_SINGLE_CAUSE]]


def test_a_push_too_small_or_negative_is_no_reason_even_from_a_risky_value():
    frame = _answered(transfers=3, answer_time_s=600.0)
    contributions = pd.DataFrame({"transfers": [MIN_PUSH / 2], "answer_time_s": [-0.1], "resolved": [0.0]})
    assert top_reasons(frame, contributions, PROFILE) == [[NO_SINGLE_CAUSE]]


def _linear_risk(frame: pd.DataFrame) -> np.ndarray:
    """A risk every feature of the rows below pushes: waits, transfers and repeats up, resolution and empathy down."""
    number = lambda name: frame[name].to_numpy(dtype=float, na_value=np.nan)
    return np.nan_to_num(0.002 * number("answer_time_s") + 0.05 * number("transfers") + 0.04 * number("abandoned")
                         + 0.03 * number("repeat_contacts_30d") - 0.1 * number("resolved")
                         - 0.2 * np.nan_to_num(number("agent_empathy_mean")))


@fuzz
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 300), st.integers(0, 3), st.booleans(), st.integers(0, 3),
                          st.one_of(st.none(), st.floats(0, 1))), min_size=1, max_size=12))
def test_measuring_only_the_pushes_that_can_be_reasons_changes_no_reason(rows):
    frame = pd.DataFrame([{"abandoned": a, "answer_time_s": wait, "transfers": moves, "resolved": done,
                           "repeat_contacts_30d": repeats, "agent_empathy_mean": np.nan if empathy is None else empathy}
                          for a, wait, moves, done, repeats, empathy in rows])
    typical = reason_typicals(TYPICAL)
    every, candidates = (pushes(_linear_risk, frame, typical, candidates_only=only) for only in (False, True))
    measured = candidates.notna()
    assert candidates.to_numpy()[measured.to_numpy()].tolist() == every.to_numpy()[measured.to_numpy()].tolist()
    # An answered contact's protective or missing values are not measured; an abandoned one's hang-up always is.
    answered = ~frame["abandoned"].to_numpy()
    assert not measured.loc[answered & (frame["transfers"] == 0).to_numpy(), "transfers"].any()
    assert not measured.loc[answered & frame["agent_empathy_mean"].isna().to_numpy(), "agent_empathy_mean"].any()
    assert measured.loc[~answered, ["abandoned", "answer_time_s", "transfers", "resolved"]].all().all()
    assert reason_features(frame, candidates, PROFILE) == reason_features(frame, every, PROFILE)


@pytest.mark.parametrize("feature, value, phrase", [
    ("handle_time_s", 0.0, "handle time recorded as 0"),
    ("handle_time_s", 45.0, "contact took 45 s"),
    ("handle_time_s", 450.0, "contact took 7.5 min"),
    ("hold_time_s", 0.0, "was not put on hold"),
    ("answer_time_s", 95.0, "waited 95 s to be answered"),
    ("answer_time_s", 10_800.0, "waited 3.0 h to be answered"),
    ("transfers", 0, "was not transferred"),
    ("transfers", 1, "transferred 1 time"),
    ("repeat_contacts_30d", 0, "no repeat contacts in 30 days"),
    ("abandoned", True, "abandoned the call"),
])
def test_phrases_never_state_a_zero_as_a_quantity(feature, value, phrase):
    assert described(feature, value) == phrase


def test_every_feature_a_reason_can_name_has_a_phrase_and_a_risk_side():
    assert set(PHRASES) == set(RISK_SIDES)
    # A new conversation feature is a reason or declared context, never forgotten.
    assert set(FEATURE_COLUMNS) - set(RISK_SIDES) == CONTEXT & set(FEATURE_COLUMNS)


@pytest.mark.parametrize("feature, value, percentiles, phrase", [
    ("customer_sentiment_slope", -0.3, None, "customer's mood sank turn by turn"),
    ("customer_sentiment_slope", 0.0, None, "customer's mood held steady"),
    ("customer_sentiment_slope", 0.2, None, "customer's mood rose turn by turn"),
    ("customer_sentiment_worst", -0.8, None, "customer's worst turn was negative"),
    ("agent_interpretations_mean", 0.05, np.linspace(0, 2, 101).tolist(),
     "agent's understanding of the customer's feelings in the bottom 5%"),
    ("agent_emotional_reactions_mean", 0.4, None, "agent's warmth at 0.4 of 2"),
    ("agent_explorations_share", 0.0, None, "0% of agent replies asked about the customer's situation"),
    ("agent_emotional_reactions_share", 0.25, None, "25% of agent replies showed warmth"),
])
def test_trajectory_and_mechanism_features_read_as_a_supervisor_would_say_them(feature, value, percentiles, phrase):
    assert described(feature, value, percentiles) == phrase


# -- reasons of scored days -------------------------------------------------------------------------------------

def _on_the_risky_side(feature: str, value: object, typical: float) -> bool:
    side = RISK_SIDES[feature]
    return all(side.worse * (float(value) - bound) > 0 for bound in (typical, side.past) if bound is not None)


def assert_reasons_name_only_risky_values(scorer, predictions: pd.DataFrame, flagged: pd.DataFrame) -> None:
    """Every flagged customer's reasons are those of features with a declared risk side, each pushing the risk up
    from a value on that side of typical (NO_SINGLE_CAUSE where none does), and none reads as context or protection."""
    profile = scorer.profile
    rows = ranked_customers(predictions).set_index("contact_id", drop=False).loc[flagged["contact_id"]]
    contributions = pushes(scorer.risk, rows, reason_typicals(profile["typical"]), base=rows["risk"])
    assert [list(r) for r in flagged["reasons"]] == top_reasons(rows, contributions, profile)
    for (contact, row), features in zip(rows.iterrows(), reason_features(rows, contributions, profile)):
        candidates = reason_pushes(contributions.loc[contact], row)
        for feature in features:
            assert feature in RISK_SIDES and feature not in CONTEXT, (contact, feature)
            assert _on_the_risky_side(feature, row[feature], profile["typical"][feature]), (contact, feature)
            assert candidates[feature] >= MIN_PUSH > 0, (contact, feature)
    said = [(customer, reason) for customer, reasons in zip(flagged["customer_id"], flagged["reasons"])
            for reason in reasons if any(words in reason for words in NEVER_A_REASON)]
    assert said == []
    assert flagged["reasons"].map(len).between(1, 3).all()


@fuzz
@given(customers=st.integers(5, 60), seed=st.integers(0, 2 ** 16))
def test_property_reasons_of_a_generated_day_name_only_risky_values_of_actionable_features(scorer, customers, seed):
    day = generate(customers, seed=seed)
    predictions = scorer.contact_predictions(scorer.contact_table(day.interactions, day.conversations))
    # Every customer, not only the flagged few: the rule holds whatever the risk.
    flagged = scorer.flagged(predictions, capacity=predictions["customer_id"].nunique())
    assert_reasons_name_only_risky_values(scorer, predictions, flagged)


def test_no_customer_flagged_on_the_bundled_day_has_a_protective_value_or_a_turn_count_as_a_reason(scorer):
    folder = sample_dir()
    predictions = scorer.contact_predictions(scorer.contact_table(folder / "interactions.parquet",
                                                                  folder / "transcripts.jsonl"))
    flagged = scorer.flagged(predictions)
    assert len(flagged) > 10
    assert_reasons_name_only_risky_values(scorer, predictions, flagged)
