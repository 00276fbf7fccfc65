"""Conversation features from turn scores: the customer's sentiment trajectory, agent empathy overall and per mechanism,
non-talk time and interruptions, and the groups they are reported by."""
import json

import numpy as np
import pandas as pd
import pytest

from carelens.data.contracts import MECHANISMS
from carelens.models.conversation_features import (
    COUNT_FEATURES, FEATURE_EVIDENCE, EMPATHY_LEVEL_COLUMNS, EMPATHY_PRESENT_COLUMNS, FEATURE_COLUMNS, FEATURE_GROUPS, conversation_features,
    covered_seconds, interrupting_turns, quoted,
)

NAN = np.nan
COLUMNS = ["conversation_id", "turn_index", "speaker", "sentiment", "empathy", "empathic", "start_s", "end_s"]


def _turns(rows, ids=None, levels=None):
    """Turn scores; each conversation's position is its place in `ids` (default: order of first appearance).
    `levels` gives each turn's expected level per mechanism (default: 2 × empathy for every mechanism of an agent
    turn); a mechanism is present where its level is at least 0.5."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["text"] = [f"{speaker} says {index}" for speaker, index in zip(frame["speaker"], frame["turn_index"])]
    order = list(ids) if ids else list(dict.fromkeys(frame["conversation_id"]))
    frame["position"] = frame["conversation_id"].map(order.index)
    frame["empathic"] = frame["empathic"].astype("boolean")
    levels = np.repeat(2 * frame[["empathy"]].to_numpy(float), len(MECHANISMS), axis=1) if levels is None else \
        np.asarray(levels, float)
    frame[EMPATHY_LEVEL_COLUMNS] = levels
    frame[EMPATHY_PRESENT_COLUMNS] = pd.DataFrame(np.where(np.isnan(levels), pd.NA, levels >= 0.5), dtype="boolean")
    return frame


def _index(*ids):
    return pd.DataFrame({"conversation_id": list(ids), "customer_id": [f"C{i}" for i in ids],
                         "contact_id": [f"K{i}" for i in ids], "agent_id": [f"A{i}" for i in ids],
                         "position": range(len(ids))})


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
    assert list(out.columns) == ["conversation_id", "customer_id", "contact_id", "agent_id", *FEATURE_COLUMNS, "evidence", "driver"]
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


def test_sentiment_trajectory_slope_and_worst_turn():
    # Customer sentiments -0.2, -0.8, 0.4 at customer turns 0, 1, 2: slope = sum(dx * dy) / sum(dx²) over x = 0, 1, 2
    # with mean y -0.2: ((-1)(0) + 0(-0.6) + 1(0.6)) / 2 = 0.3. The agent turn between them does not count as a step.
    turns = _turns([
        ("a", 0, "customer", -0.2, NAN, pd.NA, NAN, NAN),
        ("a", 1, "agent", NAN, 0.5, True, NAN, NAN),
        ("a", 2, "customer", -0.8, NAN, pd.NA, NAN, NAN),
        ("a", 4, "customer", 0.4, NAN, pd.NA, NAN, NAN),
        ("b", 0, "customer", 0.6, NAN, pd.NA, NAN, NAN),
        ("c", 0, "customer", 0.9, NAN, pd.NA, NAN, NAN),
        ("c", 1, "customer", NAN, NAN, pd.NA, NAN, NAN),   # blank: not scored, not a step
        ("c", 2, "customer", 0.1, NAN, pd.NA, NAN, NAN),
    ])
    out = conversation_features(turns, _index("a", "b", "c", "d")).set_index("conversation_id")
    assert out["customer_sentiment_slope"].tolist()[:3] == pytest.approx([0.3, 0.0, -0.8])
    assert out["customer_sentiment_worst"].tolist()[:3] == pytest.approx([-0.8, 0.6, 0.1])
    assert np.isnan(out.loc["d", "customer_sentiment_slope"]) and np.isnan(out.loc["d", "customer_sentiment_worst"])


def test_slope_follows_turn_order_not_row_order():
    rows = [("a", 2, "customer", 1.0, NAN, pd.NA, NAN, NAN), ("a", 0, "customer", 0.0, NAN, pd.NA, NAN, NAN)]
    assert conversation_features(_turns(rows), _index("a")).loc[0, "customer_sentiment_slope"] == pytest.approx(1.0)


def test_each_mechanism_gets_its_mean_level_and_share_of_turns_present():
    # Levels per turn (emotional reactions, interpretations, explorations); present means decided above none.
    levels = [[NAN] * 3, [1.5, 0.1, 0.0], [NAN] * 3, [0.5, 1.0, 0.1], [0.1, 1.9, 0.3]]
    turns = _turns([
        ("a", 0, "customer", -0.5, NAN, pd.NA, NAN, NAN),
        ("a", 1, "agent", NAN, 0.3, True, NAN, NAN),
        ("a", 2, "customer", 0.0, NAN, pd.NA, NAN, NAN),
        ("a", 3, "agent", NAN, 0.3, True, NAN, NAN),
        ("a", 4, "agent", NAN, 0.4, True, NAN, NAN),
    ], levels=levels)
    row = conversation_features(turns, _index("a")).iloc[0]
    assert row["agent_emotional_reactions_mean"] == pytest.approx(0.7)
    assert row["agent_interpretations_mean"] == pytest.approx(1.0)
    assert row["agent_explorations_mean"] == pytest.approx(0.4 / 3)
    assert row["agent_emotional_reactions_share"] == pytest.approx(2 / 3)
    assert row["agent_interpretations_share"] == pytest.approx(2 / 3)
    assert row["agent_explorations_share"] == pytest.approx(0.0)


def test_mechanism_features_are_missing_without_agent_turns():
    turns = _turns([("a", 0, "customer", 0.2, NAN, pd.NA, NAN, NAN)])
    row = conversation_features(turns, _index("a")).iloc[0]
    assert row[[f for f in FEATURE_COLUMNS if f.startswith("agent_") and f != "agent_turns"]].isna().all()


def test_every_feature_but_the_turn_counts_is_in_exactly_one_group():
    grouped = [feature for features in FEATURE_GROUPS.values() for feature in features]
    assert sorted([*grouped, *COUNT_FEATURES]) == sorted(FEATURE_COLUMNS) and len(set(grouped)) == len(grouped)
    assert {"customer sentiment", "agent emotional reactions", "agent interpretations", "agent explorations",
            "agent empathy (combined)", "timing"} == set(FEATURE_GROUPS)
    assert {"customer_sentiment_slope", "customer_sentiment_worst"} <= set(FEATURE_GROUPS["customer sentiment"])


def test_evidence_names_the_turns_the_features_stand_on():
    turns = _turns([
        ("a", 0, "agent", NAN, 0.9, True, NAN, NAN),
        ("a", 1, "customer", -0.2, NAN, pd.NA, NAN, NAN),
        ("a", 2, "agent", NAN, 0.1, False, NAN, NAN),
        ("a", 3, "customer", -0.9, NAN, pd.NA, NAN, NAN),
        ("a", 4, "agent", NAN, 0.1, False, NAN, NAN),
        ("a", 5, "customer", 0.4, NAN, pd.NA, NAN, NAN),
    ], levels=[[2, 2, 2], [NAN] * 3, [0.2, 1.0, 0.0], [NAN] * 3, [0.2, 0.0, 0.0], [NAN] * 3])
    out = conversation_features(turns, _index("a")).iloc[0]
    evidence = json.loads(out["evidence"])
    assert out["agent_id"] == "Aa"
    assert {name: entry["turn"] for name, entry in evidence.items()} == {
        "opening": 1, "ending": 5, "worst_mood": 3, "least_empathic": 2, "least_emotional_reactions": 2,
        "least_interpretations": 4, "least_explorations": 2}
    assert evidence["worst_mood"] == {"turn": 3, "speaker": "customer", "quote": "customer says 3", "score": -0.9}
    assert set(FEATURE_EVIDENCE.values()) <= set(evidence)


def test_a_conversation_without_scored_turns_has_no_evidence():
    turns = _turns([("blank", 0, "customer", NAN, NAN, pd.NA, NAN, NAN)])
    assert pd.isna(conversation_features(turns, _index("blank")).loc[0, "evidence"])


@pytest.mark.parametrize("text, limit, expected", [
    ("short  and\nspread", 120, "short and spread"),
    ("one two three four", 10, "one two…"),
    ("abcdefghijklmnop", 6, "abcde…"),
])
def test_quotes_are_one_line_and_cut_at_a_word(text, limit, expected):
    assert quoted(text, limit) == expected
    assert len(quoted(text, limit)) <= limit
