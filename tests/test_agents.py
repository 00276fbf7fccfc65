"""Agent scorecards: empirical-Bayes shrinkage, the scorecard's figures and coaching hints on small fixtures, and the
same scorecard through the CLI, the API, the HTTP service and summary.html."""
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from carelens.inference.agents import Z90, agent_scorecard, run_contacts, scorecard_records, shrunk_means
from carelens.inference.cli import app
from carelens.inference.nightly.layout import SUMMARY


def test_shrinkage_by_hand():
    # Means 3 and 7; within-agent variance (1 + 1 + 1 + 1) / (4 - 2) = 2, so each mean's noise is 2 / 2 = 1; the
    # means' variance is 8, so the between-agent variance is 8 - 1 = 7 and each mean keeps 7 / 8 of its distance.
    table = shrunk_means(pd.Series([2.0, 4.0, 6.0, 8.0]), pd.Series(["a", "a", "b", "b"]))
    assert table["shrunk"].tolist() == pytest.approx([3.25, 6.75])
    assert (table["high"] - table["shrunk"]).tolist() == pytest.approx([Z90 * np.sqrt(7 / 8)] * 2)
    assert table["n"].tolist() == [2, 2] and table["raw"].tolist() == [3.0, 7.0]


def test_agents_who_differ_no_more_than_noise_are_all_placed_at_the_centre():
    values = pd.Series([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    table = shrunk_means(values, pd.Series(["a", "a", "b", "b", "c", "c"]))
    assert table["shrunk"].tolist() == pytest.approx([0.5] * 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 2)), min_size=2, max_size=60))
def test_each_shrunk_mean_lies_between_the_agents_own_and_the_centres(rows):
    agents, values = pd.Series([a for a, _ in rows]), pd.Series([v for _, v in rows])
    table = shrunk_means(values, agents)
    centre = values.mean()
    low, high = np.minimum(table["raw"], centre), np.maximum(table["raw"], centre)
    assert ((table["shrunk"] >= low - 1e-9) & (table["shrunk"] <= high + 1e-9)).all()
    assert (table["low"] <= table["shrunk"] + 1e-12).all() and (table["shrunk"] <= table["high"] + 1e-12).all()


def test_few_contacts_are_pulled_further_toward_the_centre_than_many():
    rng = np.random.default_rng(0)
    agents = ["steady"] * 40 + ["new"] * 2 + [f"other{i}" for i in range(8) for _ in range(20)]
    values = np.concatenate([rng.normal(0.8, 0.1, 40), [0.8, 0.8], rng.normal(0.5, 0.1, 160)])
    table = shrunk_means(pd.Series(values), pd.Series(agents))
    centre = values.mean()
    assert abs(table.at["new", "shrunk"] - centre) < abs(table.at["steady", "shrunk"] - centre)
    assert table.at["new", "high"] - table.at["new", "low"] > table.at["steady", "high"] - table.at["steady", "low"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["c1", "c2", "c3"]),
                          st.one_of(st.none(), st.floats(-1, 1)), st.booleans()), min_size=1, max_size=40))
def test_the_scorecard_counts_and_averages_as_a_groupby_of_its_contacts(rows):
    contacts = pd.DataFrame({"agent_id": [a for a, *_ in rows], "customer_id": [c for _, c, *_ in rows],
                             "contact_id": [f"k{i}" for i in range(len(rows))],
                             "customer_sentiment_shift": [np.nan if v is None else v for *_, v, _ in rows],
                             "agent_empathy_mean": [np.nan if v is None else (v + 1) / 2 for *_, v, _ in rows]})
    flagged = sorted({c for _, c, _, chosen in rows if chosen})
    card = agent_scorecard(contacts, flagged)
    named = contacts.dropna(subset=["agent_id"])
    if named.empty:
        assert card.empty
        return
    groups = named.groupby("agent_id")
    card = card.set_index("agent_id").reindex(groups.size().index)
    assert card["contacts"].tolist() == groups.size().tolist()
    assert card["customers"].tolist() == groups["customer_id"].nunique().tolist()
    shares = named["customer_id"].isin(flagged).groupby(named["agent_id"]).mean()
    np.testing.assert_allclose(card["flagged_share"], shares, rtol=1e-12)
    if "sentiment_shift" in card.columns:
        np.testing.assert_allclose(card["sentiment_shift"], groups["customer_sentiment_shift"].mean(), rtol=1e-12)
    else:
        assert named["customer_sentiment_shift"].isna().all()
    if "empathy" in card.columns:
        shrunk = shrunk_means(named["agent_empathy_mean"], named["agent_id"])["shrunk"]
        np.testing.assert_allclose(card["empathy"], shrunk.reindex(card.index), rtol=1e-12)
        assert card["empathy_rank"].notna().sum() == shrunk.notna().sum()


def _evidence(level: float, quote: str) -> str:
    return json.dumps({f"least_{m}": {"turn": 2, "speaker": "agent", "quote": quote, "score": level}
                       for m in ("emotional_reactions", "interpretations", "explorations")})


def _contacts() -> pd.DataFrame:
    """Six contacts of three agents: A warm, B cold (one turn quoting a phone number), C without a transcript."""
    return pd.DataFrame({
        "customer_id": ["c1", "c2", "c3", "c4", "c5", "c6"],
        "contact_id": ["k1", "k2", "k3", "k4", "k5", "k6"],
        "agent_id": ["A", "A", "B", "B", "C", None],
        "agent_empathy_mean": [0.8, 0.7, 0.1, 0.2, np.nan, 0.5],
        **{f"agent_{m}_mean": [1.6, 1.4, 0.2, 0.4, np.nan, 1.0]
           for m in ("emotional_reactions", "interpretations", "explorations")},
        "customer_sentiment_shift": [1.0, 0.5, -0.5, -1.0, np.nan, 0.0],
        "evidence": [_evidence(1.0, "So sorry, let me fix that."), _evidence(1.2, "I understand."),
                     _evidence(0.0, "Call 0161 496 0000 yourself."), _evidence(0.1, "It is what it is."), None,
                     None],
    })


def test_the_scorecard_ranks_agents_and_says_who_their_customers_are():
    labels = pd.DataFrame({"contact_id": ["k1", "k2", "k3", "k4"], "churned": [0, 0, 1, 1],
                           "retaliation": ["none", "none", "vent", "none"]})
    card = agent_scorecard(_contacts(), flagged_customers=["c3", "c4", "c5"], labels=labels).set_index("agent_id")
    assert list(card.index) == ["A", "B", "C"]
    assert card["contacts"].tolist() == [2, 2, 1]
    assert card["flagged_share"].tolist() == [0.0, 1.0, 1.0]
    assert card.loc["B", "churn_rate"] == 1.0 and card.loc["B", "retaliation_rate"] == 0.5
    assert card.loc["A", "sentiment_shift"] == pytest.approx(0.75)
    assert card["empathy_rank"].tolist()[:2] == [1, 2] and pd.isna(card.loc["C", "empathy"])
    assert card.loc["A", "coaching"] == ""
    assert card.loc["B", "coaching"].count("of 2 against the centre's") == 2
    assert "“It is what it is.” (k4, turn 2)" in card.loc["B", "coaching"]


def test_coaching_quotes_are_masked_when_redacting():
    card = agent_scorecard(_contacts(), redact=True).set_index("agent_id")
    assert "0161 496 0000" not in card.loc["B", "coaching"]
    assert "0161 496 0000" in agent_scorecard(_contacts()).set_index("agent_id").loc["B", "coaching"]


def test_records_carry_the_hints_and_no_nan():
    records = scorecard_records(agent_scorecard(_contacts()))
    cold = next(r for r in records if r["agent_id"] == "B")
    assert [h["examples"][0]["contact_id"] for h in cold["hints"]] == ["k3", "k3"]
    assert all(value is None or value == value for r in records for value in r.values() if not isinstance(value, list))


def test_no_named_agent_gives_an_empty_scorecard():
    assert agent_scorecard(_contacts().drop(columns="agent_id")).empty
    assert agent_scorecard(_contacts().assign(agent_id=None)).empty


@pytest.fixture(scope="module")
def night(registry_with_models, tmp_path_factory):
    """A nightly run over the test day, whose contacts name their agents."""
    from carelens.inference.nightly import run_nightly
    day = registry_with_models.day_dir
    out = tmp_path_factory.mktemp("agents") / "run"
    run_nightly(interactions=[day / "interactions.parquet"], transcripts=[day / "transcripts.jsonl"], out=out,
                registry=registry_with_models.root, threshold=0.2, show_progress_bar=False)
    return out


def test_the_cli_api_http_and_summary_give_the_same_scorecard(night, scorer, client, day, tmp_path):
    contacts, flagged = run_contacts([night])
    expected = agent_scorecard(contacts, flagged)
    assert len(expected) == day.interactions["agent_id"].nunique() > 0
    result = CliRunner().invoke(app, ["agents", str(night), "--out", str(tmp_path / "agents.csv")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "agents.csv", keep_default_na=False)
    assert written["agent_id"].tolist() == expected["agent_id"].tolist()
    assert written["empathy"].astype(float).tolist() == pytest.approx(expected["empathy"].tolist())
    api = scorer.flag_at_risk(day.interactions, day.conversations, threshold=0.2).attrs["agents"]
    http = client.post("/v1/flag", json={"interactions": json.loads(day.interactions.to_json(orient="records",
                                                                                             date_format="iso")),
                                         "transcripts": day.conversations, "threshold": 0.2}).json()["agents"]
    assert [r["agent_id"] for r in api] == [r["agent_id"] for r in http] == expected["agent_id"].tolist()
    assert [r["empathy"] for r in http] == pytest.approx([r["empathy"] for r in api])
    assert [r["empathy"] for r in api] == pytest.approx(expected["empathy"].tolist())
    page = (night / SUMMARY).read_text()
    assert "<h2>Agents</h2>" in page and all(agent in page for agent in expected["agent_id"])


def test_flagged_reasons_cite_their_turns_everywhere(night, scorer, day):
    flagged = pd.read_parquet(night / "flagged.parquet")
    cited = [c for row in flagged["evidence"] for c in row]
    assert cited, "no reason from a conversation was cited"
    turns = {c["contact_id"]: c["turns"] for c in day.conversations}
    for row in flagged.itertuples():
        for citation in row.evidence:
            assert citation["reason"] in list(row.reasons)
            turn = turns[row.contact_id][citation["turn"]]
            assert turn["speaker"] == citation["speaker"]
            assert citation["quote"].rstrip("…") in " ".join(turn["text"].split())
    text = pd.read_csv(night / "flagged.csv", keep_default_na=False)["evidence"]
    assert any("turn " in cell for cell in text)
    api = scorer.flag_at_risk(day.interactions, day.conversations, threshold=0.2)
    assert [list(e) for e in api["evidence"]] == [list(e) for e in flagged["evidence"]]
