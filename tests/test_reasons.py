"""Reasons in a supervisor's words: an abandoned call is one reason, and no phrase says something untrue."""
import numpy as np
import pandas as pd
import pytest

from carelens.inference.reasons import PHRASES, described, top_reasons
from carelens.models.conversation_features import FEATURE_COLUMNS


def _abandoned_row(**values) -> pd.DataFrame:
    row = {"abandoned": True, "answer_time_s": 95.0, "handle_time_s": 0.0, "hold_time_s": 0.0, "transfers": 0,
           "resolved": False, "agent_empathy_mean": np.nan, "tenure_months": 3.0}
    return pd.DataFrame([{**row, **values}])


def test_an_abandoned_call_is_one_reason_with_the_wait_and_its_consequences_folded_in():
    frame = _abandoned_row()
    contributions = pd.DataFrame({"abandoned": [0.02], "answer_time_s": [0.05], "handle_time_s": [0.3],
                                  "hold_time_s": [0.04], "transfers": [0.03], "resolved": [0.2],
                                  "agent_empathy_mean": [0.1], "tenure_months": [0.01]})
    assert top_reasons(frame, contributions, {}) == [["abandoned the call after waiting 95 s",
                                                      "customer for 3 months"]]


def test_an_abandoned_call_without_a_recorded_wait_still_reads_as_abandoned():
    frame = _abandoned_row(answer_time_s=np.nan)
    contributions = pd.DataFrame({"resolved": [0.2], "answer_time_s": [0.0], "tenure_months": [0.3]})
    assert top_reasons(frame, contributions, {}) == [["customer for 3 months", "abandoned the call"]]


def test_an_answered_contact_keeps_its_handling_reasons():
    frame = _abandoned_row(abandoned=False, handle_time_s=1260.0, hold_time_s=300.0, transfers=2)
    contributions = pd.DataFrame({"handle_time_s": [0.3], "hold_time_s": [0.2], "transfers": [0.1],
                                  "answer_time_s": [0.05]})
    assert top_reasons(frame, contributions, {}) == [["contact took 21.0 min", "was on hold for 5.0 min",
                                                      "transferred 2 times"]]


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
    ("tenure_months", 0.3, "customer for under a month"),
    ("tenure_months", 3.0, "customer for 3 months"),
    ("abandoned", True, "abandoned the call"),
    ("channel", "social", "contacted us on social media"),
    ("channel", "chat", "contacted us by chat"),
])
def test_phrases_never_state_a_zero_as_a_quantity(feature, value, phrase):
    assert described(feature, value) == phrase


def test_every_conversation_feature_has_a_supervisor_phrase():
    assert set(FEATURE_COLUMNS) <= set(PHRASES)


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
