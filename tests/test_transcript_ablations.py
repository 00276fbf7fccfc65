"""The transcript model's ablation switches: rationale spans as token labels, class-balanced sampling, and the
TF-IDF floor pooled with the model."""
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from carelens.data.adapters import read_empathy_files
from carelens.models.registry import RegistryError
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import (
    FLOOR_FILE, TranscriptModel, load_transcript_model, pooled_with_floor, softmax,
)
from carelens.training.cli import train_app
from carelens.training.finetune import balanced_row_weights, rationale_spans, task_tokens
from carelens.training.floor import STACK_GRID, stacking_shares
from tiny_encoder import tiny_encoder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return TranscriptModel.from_encoder(tiny_encoder(tmp_path_factory.mktemp("encoder")), max_length=48)


def _epitome(directory, rows):
    """EPITOME CSVs, one per mechanism, from (context, response, {mechanism: (level, rationales)}) rows."""
    directory.mkdir(parents=True, exist_ok=True)
    for mechanism in ("emotional_reactions", "interpretations", "explorations"):
        annotated = [{"sp_id": f"s{i}", "rp_id": f"r{i}", "seeker_post": context, "response_post": response,
                      "level": labels[mechanism][0], "rationales": labels[mechanism][1]}
                     for i, (context, response, labels) in enumerate(rows) if mechanism in labels]
        if annotated:
            pd.DataFrame(annotated).to_csv(directory / f"epitome_{mechanism}_train.csv", index=False)
    return directory


def test_rationale_parts_are_found_in_the_reply_whatever_their_case():
    reply = "I understand. How are you feeling today?"
    assert rationale_spans(reply, "i understand|how are you feeling|") == [(0, 12), (14, 33)]
    assert rationale_spans(reply, "not in the reply|") == [] and rationale_spans(reply, None) == []


def test_reply_tokens_inside_a_rationale_are_labelled_per_mechanism(model, tmp_path):
    frame = read_empathy_files(sorted(_epitome(tmp_path, [
        ("my flight was late", "sorry to hear that. how are you feeling",
         {"emotional_reactions": (1, "sorry to hear that|"), "explorations": (2, "how are you feeling|")}),
    ]).glob("*.csv")))
    tokens = task_tokens(model, "empathy", frame, rationales=True)
    words = model.tokenizer.convert_ids_to_tokens(tokens.input_ids[0])
    labels = tokens.token_labels[0]
    marked = {k: [w for w, l in zip(words, labels[:, k]) if l == 1] for k in range(3)}
    assert marked == {0: ["sorry", "t", "##o", "hear", "that"], 1: [], 2: ["how", "are", "you", "feeling"]}
    # The customer's words and the special tokens are never scored, nor is a mechanism nobody annotated.
    context = [i for i, w in enumerate(words) if w in ("my", "flight", "late", "[CLS]", "[SEP]")]
    assert (labels[context] == -100).all() and (labels[:, 1] == -100).all()
    assert set(labels[words.index("."), [0, 2]]) == {0}


def test_without_the_switch_or_rationale_columns_no_token_labels_are_made(model):
    frame = pd.DataFrame({"context": ["a"], "response": ["sorry"], "emotional_reactions": [1],
                          "interpretations": [0], "explorations": [0]}).astype(
        {m: "Int64" for m in ("emotional_reactions", "interpretations", "explorations")})
    assert task_tokens(model, "empathy", frame, rationales=True).token_labels is None


def test_balanced_row_weights_draw_each_level_as_often_as_the_others():
    targets = np.array([[0, -100], [0, 0], [0, 0], [1, 0], [0, 1], [0, 0]])
    weights = balanced_row_weights(targets)
    # Column 0: none 5 rows (weight 6/10), weak 1 row (weight 3); column 1: none 4 of 5 (5/8), weak 1 (5/2).
    np.testing.assert_allclose(weights, [0.6, 0.625, 0.625, 3.0, 2.5, 0.625])


@given(st.lists(st.floats(0.01, 1), min_size=3, max_size=3), st.lists(st.floats(0.01, 1), min_size=3, max_size=3),
       st.sampled_from(list(STACK_GRID)))
def test_a_pool_is_a_distribution_and_its_ends_are_the_two_members(model_p, floor_p, share):
    model_p, floor_p = np.array([model_p]) / sum(model_p), np.array([floor_p]) / sum(floor_p)
    pooled = pooled_with_floor(model_p, floor_p, share)
    assert pooled.sum() == pytest.approx(1.0) and (pooled >= 0).all()
    np.testing.assert_allclose(pooled_with_floor(model_p, floor_p, 0.0), model_p, rtol=1e-9)
    np.testing.assert_allclose(pooled_with_floor(model_p, floor_p, 1.0), floor_p, rtol=1e-9)


def test_the_floor_gets_no_share_when_it_is_wrong_and_all_of_it_when_only_it_is_right():
    truth = np.array([0, 1, 2, 0])
    right = np.eye(3)[truth] * 0.9 + 0.1 / 3
    wrong = np.eye(3)[(truth + 1) % 3] * 0.9 + 0.1 / 3
    assert stacking_shares({"sentiment": right}, {"sentiment": wrong}, {"sentiment": truth}) == {"sentiment": 0.0}
    assert stacking_shares({"sentiment": wrong}, {"sentiment": right}, {"sentiment": truth}) == {"sentiment": 1.0}


@pytest.mark.parametrize("switches", [["--rationales"], ["--balanced-sampling"]])
def test_finetuning_with_an_ablation_switch_records_it_and_the_stacked_figures(tmp_path, switches):
    replies = ["ok", "sorry to hear that", "i understand how you are feeling", "how are you feeling today"]
    rows = [(f"my flight was late {i}", replies[i % 4],
             {"emotional_reactions": (i % 3, replies[i % 4] + "|" if i % 3 else ""),
              "interpretations": ((i // 2) % 3, ""), "explorations": ((i // 3) % 3, "")}) for i in range(60)]
    epitome = _epitome(tmp_path / "epitome", rows)
    registry = tmp_path / "registry"
    result = CliRunner().invoke(train_app, [
        "transcripts", "--mode", "finetune", "--encoder", str(tiny_encoder(tmp_path / "encoder")),
        "--empathy-data", str(epitome), "--epochs", "1", "--max-length", "48", "--batch-size", "16",
        "--empathy-repeats", "1", "--out", str(registry), "--runs", str(tmp_path / "runs"), "--no-progress",
        "--pair", *switches])
    assert result.exit_code == 0, result.output
    metadata = json.loads((registry / "transcripts" / "v1" / "metadata.json").read_text())
    options = metadata["options"]
    assert (options["rationales"], options["balanced_sampling"]) == ("--rationales" in switches,
                                                                     "--balanced-sampling" in switches)
    assert set(metadata["stacking_shares"]) == {"emotional_reactions", "interpretations", "explorations"}
    assert set(metadata["metrics"]["test_stacked"]) == set(metadata["stacking_shares"])
    difference = metadata["metrics"]["stacked_minus_model"]["interpretations"]
    low, high = difference["interval"]
    assert low <= difference["difference"] <= high and difference["differs"] == (low > 0 or high < 0)
    assert "pooled with the TF-IDF floor" in (registry / "transcripts" / "v1" / "report.html").read_text()
    # The rationale head shapes training only: nothing of it is saved with the model.
    assert "rationale" not in (registry / "transcripts" / "v1" / "heads.json").read_text()


@pytest.fixture(scope="module")
def pooled_registry(tmp_path_factory):
    """A fine-tuned tiny model whose heads are pooled with their TF-IDF floors, published to a registry."""
    root = tmp_path_factory.mktemp("pooled")
    replies = ["ok", "sorry to hear that", "i understand how you are feeling", "how are you feeling today"]
    rows = [(f"my flight was late {i}", f"{replies[i % 4]} {i}",
             {m: ((i + k) % 3, "") for k, m in enumerate(("emotional_reactions", "interpretations", "explorations"))})
            for i in range(60)]
    tweets = root / "tweets.csv"
    pd.DataFrame({"text": [f"{['awful delay', 'ok flight', 'great thanks'][i % 3]} {i}" for i in range(90)],
                  "label": [["negative", "neutral", "positive"][i % 3] for i in range(90)]}
                 ).to_csv(tweets, index=False)
    result = CliRunner().invoke(train_app, [
        "transcripts", "--mode", "heads", "--encoder", str(tiny_encoder(root / "encoder")),
        "--sentiment-data", str(tweets), "--empathy-data", str(_epitome(root / "epitome", rows)),
        "--max-length", "32", "--out", str(root / "registry"), "--runs", str(root / "runs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "registry"


def test_the_floor_is_saved_with_the_model_and_pools_its_scores_after_loading(pooled_registry):
    model, metadata = load_transcript_model(pooled_registry)
    assert (pooled_registry / "transcripts" / "v1" / FLOOR_FILE).is_file()
    assert set(model.floor) == {"sentiment", "emotional_reactions", "interpretations", "explorations"}
    assert model.floor_shares == metadata["stacking_shares"]
    texts, pipeline = ["awful delay 5", "great thanks 7"], TranscriptPipeline(model)
    alone = softmax(model.head_logits(pipeline.encode(texts))[0], model.temperatures["sentiment"])
    model.extra["floor_shares"] = {"sentiment": 0.5}
    np.testing.assert_allclose(pipeline.predict_sentiment(texts),
                               pooled_with_floor(alone, model.floor_probabilities("sentiment", texts), 0.5), rtol=1e-6)
    model.extra["floor_shares"] = {}
    np.testing.assert_allclose(pipeline.predict_sentiment(texts), alone, rtol=1e-6)


def test_a_pickle_in_place_of_the_floor_is_refused(pooled_registry, tmp_path):
    import shutil
    copy = tmp_path / "v1"
    shutil.copytree(pooled_registry / "transcripts" / "v1", copy)
    (copy / FLOOR_FILE).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(RegistryError, match="floor.skops: not a readable skops file of floor pipelines"):
        TranscriptModel.from_pretrained(copy)
