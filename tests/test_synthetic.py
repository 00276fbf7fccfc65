"""The synthetic generator: deterministic, valid per the contracts, faithful to the evidence, and its bundled sample."""
import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from typer.testing import CliRunner

from carelens.data import synthetic_phrases as phrases
from carelens.data.cli import generate_command
from carelens.data.contracts import INTERACTIONS, LABELS, MECHANISMS, Conversation, validated
from carelens.data.readers import read_interactions, read_labels, read_table, read_transcripts
from carelens.data.synthetic import (
    SEED_GROUPS, GeneratorParams, exact_categories, exact_share, generate, marginals, sample_dir, write_synthetic,
)

TRUTH_COLUMNS = ["customer_id", "contact_id", "product_problem", "care_effective", "care_quality", "seed_group",
                 "poor_experience", "satisfaction", "agent_id", "agent_skill"]


@pytest.fixture(scope="module")
def large():
    """20,000 customers without transcripts: enough for the marginals to settle."""
    return generate(20_000, seed=11, transcripts=False)


@pytest.fixture(scope="module")
def with_transcripts():
    return generate(3_000, seed=3)


def test_the_same_seed_gives_identical_frames_and_conversations():
    first, second = generate(400, seed=5), generate(400, seed=5)
    for name in ("interactions", "labels", "truth"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.conversations == second.conversations


def test_another_seed_gives_other_data_and_skipping_transcripts_keeps_the_tables():
    base, other, tables_only = generate(400, seed=5), generate(400, seed=6), generate(400, seed=5, transcripts=False)
    assert not base.interactions.equals(other.interactions)
    assert tables_only.conversations is None
    for name in ("interactions", "labels", "truth"):
        pd.testing.assert_frame_equal(getattr(base, name), getattr(tables_only, name))


@settings(max_examples=25, deadline=None)
@example(customers=1, seed=60289)  # its only customer abandoned: a day with no conversation
@given(customers=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_any_size_and_seed_gives_valid_contracts(customers, seed):
    data = generate(customers, seed=seed)
    interactions = validated(data.interactions, INTERACTIONS, "generated interactions")
    validated(data.labels, LABELS, "generated labels")
    assert len(interactions) == customers
    assert interactions["customer_id"].is_unique
    assert list(data.labels["contact_id"]) == list(interactions["contact_id"])
    assert list(data.truth.columns) == TRUTH_COLUMNS
    assert set(data.truth["seed_group"]) <= set(SEED_GROUPS)
    answered = interactions.loc[~interactions["abandoned"].astype(bool), "contact_id"]
    assert [c["contact_id"] for c in data.conversations] == list(answered)
    for record in data.conversations:
        Conversation.model_validate(record)


def test_agents_answer_every_answered_contact_and_their_skill_shows_in_the_care():
    data = generate(4000, seed=2, transcripts=False)
    answered = ~data.interactions["abandoned"]
    assert data.interactions.loc[answered, "agent_id"].notna().all()
    assert data.interactions.loc[~answered, "agent_id"].isna().all()
    per_agent = data.truth[answered].groupby("agent_id").agg(care=("care_quality", "mean"),
                                                             skill=("agent_skill", "first"), contacts=("care_quality", "size"))
    assert len(per_agent) == -(-answered.sum() // GeneratorParams().contacts_per_agent)
    assert per_agent["contacts"].min() >= 20
    assert spearmanr(per_agent["care"], per_agent["skill"]).statistic > 0.9
    without = generate(4000, seed=2, transcripts=False, params=GeneratorParams(agent_care_share=0.0))
    pd.testing.assert_frame_equal(data.labels, without.labels)
    pd.testing.assert_frame_equal(data.interactions.drop(columns="agent_id"), without.interactions.drop(columns="agent_id"))


def test_every_answered_customer_has_a_true_satisfaction_and_the_surveyed_gave_it():
    data = generate(2000, seed=4, transcripts=False)
    answered = ~data.interactions["abandoned"].to_numpy()
    truth = data.truth["satisfaction"].to_numpy()
    assert np.isfinite(truth[answered]).all() and np.isnan(truth[~answered]).all()
    surveyed = data.interactions["csat"].notna().to_numpy()
    assert (data.interactions["csat"].to_numpy()[surveyed] == truth[surveyed]).all()
    assert set(np.unique(truth[answered])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_identifiers_are_zero_padded_and_contacts_numbered_in_time_order():
    data = generate(50, seed=1, transcripts=False)
    assert data.interactions["contact_id"].iloc[0] == "K1-000001"
    assert sorted(data.interactions["customer_id"])[0] == "C000001"
    assert data.interactions["started_at"].is_monotonic_increasing


def test_another_seed_gives_other_contacts():
    first, other = generate(50, seed=1, transcripts=False), generate(50, seed=12, transcripts=False)
    assert not set(first.interactions["contact_id"]) & set(other.interactions["contact_id"])
    assert other.interactions["contact_id"].iloc[0] == "K12-000001"


def test_every_generated_conversation_says_its_text_is_synthetic(with_transcripts, tmp_path):
    assert {c["text_source"] for c in with_transcripts.conversations} == {"synthetic"}
    written = write_synthetic(with_transcripts, tmp_path)
    assert {c.text_source for c in read_transcripts(written["transcripts"])} == {"synthetic"}


@settings(max_examples=60, deadline=None)
@given(score=st.lists(st.floats(-5, 5), max_size=60), target=st.floats(0, 1), seed=st.integers(0, 1000))
def test_exact_share_chooses_the_target_count_rounded_up_or_down(score, target, seed):
    chosen = exact_share(np.random.default_rng(seed), np.asarray(score, dtype=float), target)
    assert np.floor(len(score) * target) <= chosen.sum() <= np.ceil(len(score) * target)


def test_exact_share_favours_high_scores_and_exact_categories_hit_their_counts():
    rng = np.random.default_rng(0)
    score = np.repeat([-2.0, 2.0], 5_000)
    chosen = exact_share(rng, score, 0.3)
    assert chosen[5_000:].mean() > 2 * chosen[:5_000].mean()
    assert np.bincount(exact_categories(rng, 1_000, [0.7, 0.2, 0.1])).tolist() == [700, 200, 100]


def test_marginals_reproduce_the_evidence(large):
    table = marginals(large)
    shares = table[table["measure"] != "mean answer time (s)"]
    assert (shares["observed"] - shares["target"]).abs().max() < 0.03, table
    answer = table.set_index("measure").loc["mean answer time (s)"]
    assert abs(answer["observed"] - 30.0) < 0.5


def test_care_quality_shows_in_the_table_only_partly(large):
    contacts, truth = large.interactions, large.truth
    problems = truth["product_problem"]
    resolved = contacts.loc[problems, "resolved"].groupby(truth.loc[problems, "care_effective"]).mean()
    assert resolved[True] > resolved[False] + 0.3
    assert 0.1 < resolved[False] and resolved[True] < 0.95
    assert "care_quality" not in contacts.columns and "care_effective" not in contacts.columns


def test_only_churners_switch(large):
    switched = large.labels["retaliation"] == "switch"
    assert large.labels.loc[switched, "churned"].all()


def _agent_turns(data, effective: bool) -> list[dict]:
    chosen = set(data.truth.loc[data.truth["care_effective"] == effective, "contact_id"])
    return [t for c in data.conversations if c["contact_id"] in chosen for t in c["turns"] if t["speaker"] == "agent"]


def test_effective_care_is_worded_with_more_empathy(with_transcripts):
    strong = phrases.EMOTIONAL_REACTIONS[2] + phrases.EXPLORATIONS[2]
    deflecting = phrases.DEFLECTING_ACTIONS

    def share(turns, bank):
        return np.mean([any(p in t["text"] for p in bank) for t in turns])

    effective, ineffective = _agent_turns(with_transcripts, True), _agent_turns(with_transcripts, False)
    assert share(effective, strong) > share(ineffective, strong) + 0.15
    assert share(ineffective, deflecting) > share(effective, deflecting) + 0.15
    # Noise: effective agents are curt sometimes, so wording is informative but not a giveaway.
    assert share(effective, deflecting) > 0.01
    assert np.mean([sum(t["empathy"].values()) for t in effective]) > \
        np.mean([sum(t["empathy"].values()) for t in ineffective])


def test_customers_start_negative_with_a_problem_and_end_worse_under_poor_care(with_transcripts):
    by_contact = {c["contact_id"]: c for c in with_transcripts.conversations}
    truth = with_transcripts.truth.set_index("contact_id")
    customer = {k: [t for t in c["turns"] if t["speaker"] == "customer"] for k, c in by_contact.items()}
    problems = [k for k in by_contact if truth.loc[k, "product_problem"]]
    assert all(customer[k][0]["sentiment"] == "negative" for k in problems)
    ending = pd.Series({k: customer[k][-1]["sentiment"] for k in by_contact})
    group = truth.loc[ending.index, "seed_group"]
    negative = (ending == "negative").groupby(group.to_numpy()).mean()
    assert negative["problem_ineffective"] > negative["problem_effective"] + 0.3


def test_turns_alternate_are_timed_in_order_and_interrupt_more_under_poor_care(with_transcripts):
    interruptions = {True: [], False: []}
    effective = with_transcripts.truth.set_index("contact_id")["care_effective"]
    for conversation in with_transcripts.conversations:
        turns = conversation["turns"]
        assert 4 <= len(turns) <= 10
        assert [t["speaker"] for t in turns[:2]] == ["agent", "customer"]
        starts = [t["start_s"] for t in turns]
        assert starts == sorted(starts) and all(t["end_s"] > t["start_s"] for t in turns)
        if conversation["channel"] == "phone":
            overlaps = sum(b["start_s"] < a["end_s"] for a, b in zip(turns, turns[1:]))
            interruptions[bool(effective[conversation["contact_id"]])].append(overlaps)
    assert np.mean(interruptions[False]) > np.mean(interruptions[True])


def test_written_files_read_back_through_the_contract_readers(tmp_path):
    data = generate(120, seed=2)
    written = write_synthetic(data, tmp_path)
    assert sorted(p.name for p in written.values()) == ["interactions.parquet", "labels.parquet",
                                                        "transcripts.jsonl", "truth.parquet"]
    assert read_interactions(written["interactions"])["contact_id"].tolist() == data.interactions["contact_id"].tolist()
    assert read_labels(written["labels"])["churned"].tolist() == data.labels["churned"].tolist()
    assert len(read_transcripts(written["transcripts"])) == len(data.conversations)


def test_the_bundled_sample_loads_validates_and_regenerates_from_its_seed():
    folder = sample_dir()
    interactions = read_interactions(folder / "interactions.parquet")
    labels = read_labels(folder / "labels.parquet")
    truth = read_table(folder / "truth.parquet")
    conversations = read_transcripts(folder / "transcripts.jsonl")
    assert len(interactions) == len(labels) == len(truth) == 500
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2 * 1024 * 1024
    regenerated = generate(500, seed=7)
    pd.testing.assert_frame_equal(truth, regenerated.truth)
    assert [c.model_dump(exclude_none=True) for c in conversations] == regenerated.conversations


def test_generate_command_writes_the_files_and_prints_the_marginals(tmp_path):
    app = typer.Typer()
    app.command()(generate_command)
    result = CliRunner().invoke(app, ["--customers", "200", "--seed", "4", "--out", str(tmp_path),
                                      "--no-transcripts"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "re-purchase | no problem" in result.output and "interactions.parquet" in result.output
    assert (tmp_path / "labels.parquet").is_file() and not (tmp_path / "transcripts.jsonl").exists()


def test_generate_into_a_file_is_refused_before_generating(tmp_path):
    app = typer.Typer()
    app.command()(generate_command)
    (tmp_path / "data").write_text("mine")
    result = CliRunner().invoke(app, ["--customers", "20", "--out", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert f"--out {tmp_path / 'data'}: is a file; expected a folder" in " ".join(result.output.split())
    assert (tmp_path / "data").read_text() == "mine"


def test_no_customers_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        generate(0)


def labelled_turn_scores(conversations: list) -> pd.DataFrame:
    """Turn scores as a perfect transcript model would give them: the generator's own turn labels."""
    from carelens.models.conversation_features import EMPATHY_LEVEL_COLUMNS, EMPATHY_PRESENT_COLUMNS
    from carelens.models.scoring import as_conversations, turn_table
    conversations = as_conversations(conversations)
    turns = turn_table(conversations)
    moods = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    labels = [turn for conversation in conversations for turn in conversation.turns]
    turns["sentiment"] = [moods[t.sentiment] if t.speaker == "customer" else np.nan for t in labels]
    turns["empathy"] = [np.mean(list(t.empathy.values())) / 2 if t.speaker == "agent" else np.nan for t in labels]
    turns["empathic"] = [max(t.empathy.values()) > 0 if t.speaker == "agent" else pd.NA for t in labels]
    for mechanism, level, present in zip(MECHANISMS, EMPATHY_LEVEL_COLUMNS, EMPATHY_PRESENT_COLUMNS):
        turns[level] = [float(t.empathy[mechanism]) if t.speaker == "agent" else np.nan for t in labels]
        turns[present] = pd.array([t.empathy[mechanism] > 0 if t.speaker == "agent" else pd.NA for t in labels],
                                  dtype="boolean")
    return turns


@pytest.mark.slow
def test_the_true_turn_labels_carry_most_of_the_care_gap(tmp_path):
    """What the generator's words reveal about care: churn with features from the true turn labels recovers at
    least 80% of the problem+effective vs problem+ineffective gap (tabular features alone: about 40%)."""
    from carelens.models.conversation_features import conversation_features
    from carelens.models.scoring import as_conversations, conversation_index
    from carelens.training.tabular import TASKS, load_labelled, train_tabular
    data = generate(20_000, seed=3)
    write_synthetic(data, tmp_path)
    features = conversation_features(labelled_turn_scores(data.conversations),
                                     conversation_index(as_conversations(data.conversations)))
    features.to_parquet(tmp_path / "features.parquet")
    trained = train_tabular(load_labelled(tmp_path, TASKS["churn"], features_from=[tmp_path / "features.parquet"]),
                            TASKS["churn"], learner="boosting", spread_seeds=1)
    assert trained.metadata["seed_groups"]["gap_recovered"] >= 0.8
    assert trained.metadata["without_added_features"]["seed_groups"]["gap_recovered"] < 0.5
