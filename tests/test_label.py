"""Picking turns to label (uncertain and diverse), adapting a model to them, and reading social text."""
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.synthetic import generate
from carelens.models.scoring import TranscriptPipeline, as_conversations
from carelens.models.transcript import TranscriptModel, without_handles
from carelens.training.label import LABEL_COLUMNS, diverse_uncertain, normalised_entropy, shares, suggested_turns
from carelens.training.heads import soft_rows
from carelens.training.splits import split_data
from carelens.training.transcript_options import Options
from carelens.training.transcripts import trained_on
from tiny_encoder import tiny_encoder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("encoder"))


def test_entropy_is_zero_when_certain_and_one_when_uniform():
    values = normalised_entropy(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))
    np.testing.assert_allclose(values, [0.0, 1.0, np.log(2) / np.log(3)], atol=1e-9)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_shares_split_n_in_proportion_never_past_a_group_or_the_total(counts, n):
    given_out = shares(counts, n)
    assert sum(given_out) == min(n, sum(counts))
    assert all(0 <= g <= c for g, c in zip(given_out, counts))


def _group(axis: int) -> np.ndarray:
    """Eight turns around one axis, symmetric so that its k-means centre is the axis itself: two on it, four near it,
    two odd ones out far from it."""
    centre, near, far = np.eye(6)[axis], np.eye(6)[4] * 0.05, np.eye(6)[5] * 0.3
    return np.vstack([centre, centre, centre + near, centre - near, centre + 2 * near, centre - 2 * near,
                      centre + far, centre - far])


def test_diverse_uncertain_takes_from_each_cluster_the_least_certain_of_its_typical_turns():
    # The odd ones out are the least certain of each group, yet only the two turns on the centre are its typical
    # quarter: the less certain of those two is picked, one per group.
    embeddings = np.vstack([_group(0), _group(1)])
    uncertainty = np.array([0.3, 0.5, 0.6, 0.6, 0.7, 0.7, 0.99, 0.98] * 2) - np.repeat([0.0, 0.01], 8)
    assert sorted(diverse_uncertain(embeddings, uncertainty, 2, seed=0).tolist()) == [1, 9]
    assert diverse_uncertain(embeddings, uncertainty, 0, seed=0).tolist() == []


def test_suggested_turns_cover_both_speakers_once_each_with_blank_label_columns(encoder_dir):
    model = TranscriptModel.from_encoder(encoder_dir, max_length=32)
    conversations = as_conversations(generate(60, seed=4).conversations)
    chosen = suggested_turns(TranscriptPipeline(model), conversations, 20, seed=0)
    assert len(chosen) == 20
    assert set(chosen["speaker"]) == {"customer", "agent"}
    assert not chosen.duplicated(["speaker", "text"]).any()
    assert (chosen[LABEL_COLUMNS] == "").all().all()
    assert chosen["uncertainty"].is_monotonic_decreasing


def test_soft_rows_repeat_each_row_per_class_it_has_a_share_of():
    features = np.array([[1.0], [2.0]])
    rows, labels, weights = soft_rows(features, np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]), class_weights=False)
    assert rows[:, 0].tolist() == [1.0, 1.0, 2.0]
    assert labels.tolist() == [0, 1, 2]
    assert weights.tolist() == [0.5, 0.5, 1.0]


@pytest.mark.parametrize("text, expected", [
    ("@united my flight is late http://t.co/x &amp; more", "my flight is late & more"),
    ("mail me at ana@example.com", "mail me at ana@example.com"),
    ("@united", "@united"),
])
def test_handles_and_links_are_dropped_but_never_the_whole_text(text, expected):
    assert without_handles(text) == expected


def test_adapting_on_sentiment_labels_keeps_the_empathy_heads_and_temperatures(encoder_dir):
    model = TranscriptModel.from_encoder(encoder_dir, max_length=32)
    model.heads.empathy.weight.data.normal_()
    model.temperatures["explorations"] = 2.5
    before = model.heads.empathy.weight.detach().clone()
    labelled = pd.DataFrame({"text": ["thank you so much", "my bag was lost", "where is gate 4"] * 20,
                             "label": ["positive", "negative", "neutral"] * 20})
    options = Options(mode="heads", max_length=32, show_progress_bar=False)
    empty = pd.DataFrame(columns=["context", "response", "emotional_reactions", "interpretations", "explorations"])
    trained_on(split_data(labelled, empty, options), options, log=lambda _: None, start=model)
    assert np.array_equal(model.heads.empathy.weight.detach().numpy(), before.numpy())
    assert model.temperatures["explorations"] == 2.5


def test_an_adapted_head_folds_its_prior_back_into_one_linear_layer():
    from carelens.training.heads import linear_head
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 5))
    prior = (np.array([[2.0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [-2.0, 0, 0, 0, 0]]), np.zeros(3))
    truth = np.argmax(features @ prior[0].T + rng.gumbel(size=(300, 3)) * 0.3, axis=1)
    options = Options(show_progress_bar=False, class_weights=False)
    weight, bias, _ = linear_head(features[:200], truth[:200], features[200:], truth[200:], options, prior=prior)
    assert weight.shape == (3, 5) and bias.shape == (3,)
    adapted = np.argmax(features[200:] @ weight.T + bias, axis=1)
    assert (adapted == np.argmax(features[200:] @ prior[0].T + prior[1], axis=1)).mean() > 0.9


def test_a_label_file_written_with_guarded_cells_reads_back_the_turns_as_said(tmp_path):
    from carelens.data.adapters import read_suggested
    from carelens.data.spreadsheet import write_csv
    chosen = pd.DataFrame({"conversation_id": ["c1", "c1"], "turn_index": [0, 1], "speaker": ["customer", "agent"],
                           "context": ["", "=SUM(A1) is wrong"], "text": ["=SUM(A1) is wrong", "-sorry, checking"],
                           "model_guess": ["", ""], "uncertainty": [0.5, 0.4], "sentiment": ["negative", ""],
                           "emotional_reactions": ["", "1"], "interpretations": ["", ""], "explorations": ["", ""]})
    path = write_csv(chosen, tmp_path / "to_label.csv")
    assert "'=SUM(A1)" in path.read_text()
    sentiment, empathy = read_suggested(path)
    assert sentiment["text"].tolist() == ["=SUM(A1) is wrong"]
    assert (empathy["response"].tolist(), empathy["context"].tolist()) == (["-sorry, checking"], ["=SUM(A1) is wrong"])


def _declining_validation(states):
    """A stand-in for `validation_record` whose selection score falls at every evaluation; it keeps a copy of the
    model's state at each."""
    def record(model, data, options, epoch, step, seconds):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"epoch": epoch, "step": step, "seconds": seconds, "selection_score": 1.0 - 0.1 * len(states)}
    return record


@pytest.mark.parametrize("rows, kept_last", [(60, True), (2_400, False)])
def test_a_validation_split_too_small_to_choose_a_checkpoint_keeps_the_last_state(encoder_dir, monkeypatch, rows,
                                                                                    kept_last):
    import carelens.training.finetune as finetune
    states = []
    monkeypatch.setattr(finetune, "validation_record", _declining_validation(states))
    model = TranscriptModel.from_encoder(encoder_dir, max_length=16)
    labelled = pd.DataFrame({"text": ["thank you", "bag lost", "gate 4"] * (rows // 3),
                             "label": ["positive", "negative", "neutral"] * (rows // 3)})
    options = Options(mode="finetune", max_length=16, epochs=3, batch_size=400, show_progress_bar=False)
    empty = pd.DataFrame(columns=["context", "response", "emotional_reactions", "interpretations", "explorations"])
    details = finetune.train_finetune(model, split_data(labelled, empty, options), options, log=lambda _: None)
    assert details["kept"].startswith("the last state" if kept_last else "the best validated state")
    # Kept last: the whole schedule ran despite falling scores; kept best: early stop, back to the first checkpoint.
    assert (details["stopped"] == "all epochs") == kept_last
    assert len(states) == 3  # one evaluation per epoch of one batch; three before the early stop
    kept = states[-1] if kept_last else states[0]
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(states[0][k], v) for k, v in states[-1].items())
