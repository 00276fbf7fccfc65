"""The starter transcript model: permissive sources named in its metadata, rules as empathy floors, no weights in git."""
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carelens.data.public_text import VADER, SourceError, checked_licence, fetched, rated_sentences
from carelens.models.empathy_rules import RuleLevels, rule_levels
from carelens.models.transcript import load_transcript_model, training_text_warning
from carelens.training import sentiment_prototypes
from carelens.training.weak_labels import keyword_levels
from tiny_encoder import tiny_encoder

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vader_archive():
    """VADER's pinned source distribution (`make test` fetches it once into the sources cache)."""
    try:
        return fetched(VADER)
    except SourceError as exc:  # no package index and nothing cached: nothing to build a starter from
        pytest.skip(f"VADER's source distribution is not available here: {exc}")


@pytest.fixture(scope="module")
def starter(vader_archive, tmp_path_factory):
    """A starter built on a tiny encoder from 400 rated sentences, published; (registry, trained)."""
    from carelens.training.starter import build_starter, starter_options
    from carelens.training.transcripts import publish_trained
    root = tmp_path_factory.mktemp("starter")
    options = starter_options(mode="heads", max_length=32, show_progress_bar=False)
    trained = build_starter(options, vader_archive.parent, tiny_encoder(root / "encoder"), lambda _: None, rows=400)
    publish_trained(trained, root / "registry")
    return root / "registry", trained


def test_rated_sentences_carry_each_raters_share_and_the_mean_rating(vader_archive):
    rated = rated_sentences(vader_archive)
    assert len(rated) == 23_702
    assert rated.groupby("kind").size().to_dict() == {"amazonReviewSnippets": 3707, "movieReviewSnippets": 10605,
                                                      "nytEditorialSnippets": 5190, "tweets": 4200}
    shares = rated[["p_negative", "p_neutral", "p_positive"]].to_numpy()
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    first = rated.iloc[0]
    assert first["text"].startswith("Somehow I was blessed with some really amazing friends")
    assert first["rating"] == pytest.approx(2.726315789)
    assert first["p_positive"] == pytest.approx(94 / 95)  # one of the 95 people rated it -4


def test_a_source_whose_archive_does_not_match_its_pin_is_refused(tmp_path):
    (tmp_path / VADER.filename).write_bytes(b"not the archive")
    with pytest.raises(SourceError, match="SHA-256 .* expected 5d7c06e0"):
        fetched(VADER, tmp_path)


def test_an_archive_without_the_licence_it_is_pinned_with_is_refused(tmp_path):
    archive = tmp_path / "fake.tar.gz"
    licence = tmp_path / "LICENSE.txt"
    licence.write_text("All rights reserved.")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(licence, arcname=VADER.licence_file)
    with tarfile.open(archive) as tar, pytest.raises(SourceError, match="does not state 'The MIT License'"):
        checked_licence(VADER, tar, archive)


def test_the_starter_metadata_names_its_sources_hashes_and_licences(starter):
    registry, _ = starter
    model, metadata = load_transcript_model(registry)
    assert metadata["training_text"] == "public-permissive"
    assert training_text_warning(metadata) is None
    vader, own = metadata["sources"]
    assert (vader["package"], vader["version"], vader["licence"]) == ("vaderSentiment", "3.3.2", "MIT")
    assert vader["sha256"] == VADER.sha256 and vader["file"] == "vaderSentiment-3.3.2.tar.gz"
    assert own["licence"] == "the project's own" and "no EPITOME text or label" in own["what"]
    assert metadata["options"]["empathy_floor"] == "rules"
    assert vader["sentences"] == 400 and own["generator"]["seed"] == 29
    assert own["customer_turns"] == len(sentiment_prototypes.PROTOTYPES) and "sentiment_prototypes.py" in own["what"]


def test_the_written_customer_turns_train_the_starter_and_are_never_held_out(vader_archive):
    from carelens.training.starter import SENTIMENT_PROTOTYPE_WEIGHT, starter_data, starter_options
    data, _ = starter_data(vader_archive.parent, starter_options(), rows=400)
    written = {text for text, _ in sentiment_prototypes.PROTOTYPES}
    counts = data.sentiment["train"]["text"].value_counts()
    assert {counts[text] for text in written} == {SENTIMENT_PROTOTYPE_WEIGHT}
    assert not written & set(pd.concat([data.sentiment["validation"], data.sentiment["test"]])["text"])
    row = data.sentiment["train"].set_index("text").loc["Thanks for nothing."].iloc[0]
    assert (row["label"], row["p_negative"], row["p_positive"]) == ("negative", 1.0, 0.0)


def test_every_written_customer_turn_is_distinct_and_names_a_sentiment():
    table = sentiment_prototypes.prototype_table()
    assert table["text"].is_unique and set(table["label"]) == {"negative", "neutral", "positive"}
    np.testing.assert_allclose(table[["p_negative", "p_neutral", "p_positive"]].sum(axis=1), 1.0)


def test_the_published_starter_pools_each_empathy_head_with_the_mechanism_rules(starter):
    registry, _ = starter
    model, _ = load_transcript_model(registry)
    assert all(isinstance(model.floor[m], RuleLevels) for m in ("emotional_reactions", "interpretations",
                                                                "explorations"))
    assert set(model.floor_shares) >= {"emotional_reactions", "interpretations", "explorations"}
    reply = "I'm so sorry, that sounds awful. How are you feeling now?"
    levels = model.floor["explorations"].predict([reply, "Your refund is on its way."])
    assert levels.tolist() == [2, 0]


def test_rules_name_levels_from_the_mechanism_definitions():
    replies = ["I'm so sorry to hear that.", "Sorry for the wait.", "I've been there too, it's hard.",
               "I understand.", "How are you feeling about it?", "What?", "Your order ships today."]
    levels = rule_levels(replies)
    assert levels["emotional_reactions"].tolist() == [2, 1, 0, 0, 0, 0, 0]
    assert levels["interpretations"].tolist() == [0, 0, 2, 1, 0, 0, 0]
    assert levels["explorations"].tolist() == [0, 0, 0, 0, 2, 1, 0]


def test_the_keyword_baseline_gives_each_mechanism_one_level_on_a_keyword():
    levels = keyword_levels(["so sorry", "I understand", "why?", "fine"])
    assert {m: v.tolist() for m, v in levels.items()} == {
        "emotional_reactions": [1, 0, 0, 0], "interpretations": [0, 2, 0, 0], "explorations": [0, 0, 2, 0]}


def test_no_weight_or_artifact_file_is_tracked_in_git():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout
    # .data: ONNX weights kept beside a graph (what ONNX Runtime's tools write for large models, in the working folder).
    weights = [p for p in tracked.splitlines() if p.endswith((".safetensors", ".bin", ".onnx", ".data", ".pt", ".pth",
                                                              ".skops", ".ckpt", ".joblib", ".pkl"))]
    assert weights == []


def test_suggested_labels_read_back_as_sentiment_and_empathy_rows(tmp_path):
    from carelens.data.adapters import read_labelled_text
    path = tmp_path / "to_label.csv"
    pd.DataFrame({"conversation_id": ["c1", "c1", "c2"], "turn_index": [0, 1, 0],
                  "speaker": ["customer", "agent", "customer"], "context": ["", "my bag is lost", ""],
                  "text": ["my bag is lost", "I'm sorry, how can I help?", "ok"], "model_guess": ["", "", ""],
                  "uncertainty": [0.9, 0.8, 0.7], "sentiment": ["negative", "", ""],
                  "emotional_reactions": ["", "2", ""], "interpretations": ["", "", ""],
                  "explorations": ["", "1", ""]}).to_csv(path, index=False)
    labelled = read_labelled_text([path])
    assert labelled.sentiment.to_dict("records") == [{"text": "my bag is lost", "label": "negative"}]
    empathy = labelled.empathy.iloc[0]
    assert (empathy["response"], empathy["context"]) == ("I'm sorry, how can I help?", "my bag is lost")
    assert (empathy["emotional_reactions"], empathy["explorations"]) == (2, 1)
    assert pd.isna(empathy["interpretations"])
    assert labelled.text == "real" and not labelled.public


def test_a_sentiment_on_an_agent_turn_is_refused_with_its_row_and_column(tmp_path):
    from carelens.data.adapters import read_suggested
    from carelens.data.contracts import ContractError
    path = tmp_path / "to_label.csv"
    pd.DataFrame({"speaker": ["customer", "agent"], "context": ["", "x"], "text": ["a", "b"],
                  "sentiment": ["neutral", "positive"], "emotional_reactions": ["", ""], "interpretations": ["", ""],
                  "explorations": ["", ""]}).to_csv(path, index=False)
    with pytest.raises(ContractError, match=r"row 3, column 'sentiment': got 'positive', expected one of negative, "
                                            r"neutral, positive on a customer turn, or blank"):
        read_suggested(path)
