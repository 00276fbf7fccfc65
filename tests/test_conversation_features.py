"""Conversation features from turn scores: sentiment start/end/shift, agent empathy, non-talk time and interruptions."""
import numpy as np
import pandas as pd
import pytest

from carelens.models.conversation_features import (
    FEATURE_COLUMNS, conversation_features, covered_seconds, interrupting_turns,
)

NAN = np.nan


def _turns(rows, ids=None):
    """Turn scores; each conversation's position is its place in `ids` (default: order of first appearance)."""
    columns = ["conversation_id", "turn_index", "speaker", "sentiment", "empathy", "empathic", "start_s", "end_s"]
    frame = pd.DataFrame(rows, columns=columns)
    order = list(ids) if ids else list(dict.fromkeys(frame["conversation_id"]))
    frame["position"] = frame["conversation_id"].map(order.index)
    frame["empathic"] = frame["empathic"].astype("boolean")
    return frame


def _index(*ids):
    return pd.DataFrame({"conversation_id": list(ids), "customer_id": [f"C{i}" for i in ids],
                         "contact_id": [f"K{i}" for i in ids], "position": range(len(ids))})


def test_sentiment_start_end_shift_and_empathy_roll_up():
    turns = _turns([
        ("a", 0, "customer", -0.8, NAN, pd.NA, NAN, NAN),
        ("a", 1, "agent", NAN, 0.6, True, NAN, NAN),
        ("a", 2, "customer", 0.1, NAN, pd.NA, NAN, NAN),
        ("a", 3, "agent", NAN, 0.2, False, NAN, NAN),
        ("a", 4, "customer", 0.7, NAN, pd.NA, NAN, NAN),
    ])
    row = conversation_features(turns, _index("a")).iloc[0]
    assert row["customer_sentiment_start"] == pytest.approx(-0.8)
    assert row["customer_sentiment_end"] == pytest.approx(0.7)
    assert row["customer_sentiment_shift"] == pytest.approx(1.5)
    assert row["customer_sentiment_mean"] == pytest.approx(0.0)
    assert row["agent_empathy_mean"] == pytest.approx(0.4)
    assert row["agent_empathy_min"] == pytest.approx(0.2)
    assert row["agent_empathic_share"] == pytest.approx(0.5)
    assert (row["customer_turns"], row["agent_turns"]) == (3, 2)
    assert np.isnan(row["non_talk_s"]) and np.isnan(row["interruptions"])


def test_every_conversation_gets_a_row_in_order_with_missing_features_as_nan():
    turns = _turns([("agent-only", 0, "agent", NAN, 0.5, True, NAN, NAN),
                    ("customer-only", 0, "customer", 0.3, NAN, pd.NA, NAN, NAN),
                    ("blank", 0, "customer", NAN, NAN, pd.NA, NAN, NAN)],
                   ids=["empty", "agent-only", "customer-only", "blank"])
    out = conversation_features(turns, _index("empty", "agent-only", "customer-only", "blank"))
    assert list(out["conversation_id"]) == ["empty", "agent-only", "customer-only", "blank"]
    assert list(out.columns) == ["conversation_id", "customer_id", "contact_id", *FEATURE_COLUMNS]
    assert out.loc[0, FEATURE_COLUMNS[:-2]].isna().all() and out.loc[0, "customer_turns"] == 0
    assert np.isnan(out.loc[1, "customer_sentiment_start"]) and out.loc[1, "agent_empathy_mean"] == 0.5
    assert np.isnan(out.loc[2, "agent_empathy_mean"]) and out.loc[2, "customer_sentiment_shift"] == 0.0
    assert out.loc[3, ["customer_turns", "agent_turns"]].tolist() == [0, 0]


def test_non_talk_time_and_interruptions_from_timestamps():
    turns = _turns([
        ("t", 0, "agent", NAN, 0.5, True, 0.0, 4.0),
        ("t", 1, "customer", 0.0, NAN, pd.NA, 3.0, 10.0),   # starts before the agent finished: an interruption
        ("t", 2, "agent", NAN, 0.5, True, 12.0, 15.0),      # 2 s of silence before it
        ("t", 3, "agent", NAN, 0.5, True, 14.0, 16.0),      # overlaps only the agent's own turn: not an interruption
        ("t", 4, "customer", 0.0, NAN, pd.NA, 20.0, 22.0),  # 4 s of silence before it
    ])
    row = conversation_features(turns, _index("t")).iloc[0]
    assert row["non_talk_s"] == pytest.approx(6.0)
    assert row["non_talk_share"] == pytest.approx(6.0 / 22.0)
    assert row["interruptions"] == 1 and row["agent_interruptions"] == 0


def test_agent_interruption_is_counted_for_the_agent():
    flags = interrupting_turns(np.array([0.0, 1.0]), np.array([5.0, 2.0]), np.array(["customer", "agent"]))
    assert flags.tolist() == [False, True]


def test_covered_seconds_is_the_union_of_intervals():
    assert covered_seconds(np.array([0.0, 2.0, 10.0]), np.array([5.0, 3.0, 11.0])) == pytest.approx(6.0)


def test_two_conversations_sharing_an_id_keep_their_own_features():
    turns = _turns([("dup", 0, "customer", -0.9, NAN, pd.NA, NAN, NAN), ("dup", 0, "customer", 0.6, NAN, pd.NA, NAN, NAN)])
    turns["position"] = [0, 1]
    out = conversation_features(turns, _index("dup", "dup"))
    assert out["customer_sentiment_start"].tolist() == pytest.approx([-0.9, 0.6])
    assert out["customer_turns"].tolist() == [1, 1]
