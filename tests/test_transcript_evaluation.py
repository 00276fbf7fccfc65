"""Evaluating the transcript model like a user: per-class figures, bootstrap intervals, its surest mistakes, the CLI."""
import json
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from carelens.data.adapters import read_labelled_text
from carelens.data.readers import write_transcripts
from carelens.models.transcript import TranscriptModel, publish
from carelens.training.bootstrap import bootstrap_intervals, confusion, macro_f1_difference
from carelens.training.cli import evaluate_app
from carelens.training.transcript_report import HIDDEN_TEXT, transcript_report
from carelens.training.transcript_metrics import confidently_wrong, head_metrics
from tiny_encoder import tiny_encoder

LABELS = ["negative", "neutral", "positive"]
#: Nine labelled rows and one unannotated (-100), predicted as PREDICTED with the probability in CONFIDENCE.
TRUTH = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -100])
PREDICTED = np.array([0, 0, 1, 1, 2, 2, 2, 0, 0, 1])
CONFIDENCE = np.array([0.9, 0.8, 0.6, 0.7, 0.9, 0.8, 0.5, 0.6, 0.95, 0.99])
TEXTS = [f"text {i}" for i in range(len(TRUTH))]
PRIVATE = "zebra quartz"  # words of a customer's turn that must never be printed


def _probabilities(predicted: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Rows whose argmax is `predicted` at probability `confidence`, the rest split evenly."""
    probabilities = np.repeat(((1 - confidence) / 2)[:, None], 3, axis=1)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_per_class_figures_and_confusion_of_a_hand_made_set():
    # Confusion (rows truth): negative [2, 1, 0], neutral [0, 1, 1], positive [2, 0, 2]; the unannotated row is out.
    metrics = head_metrics(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS)
    assert metrics["n"] == 9 and metrics["confusion"] == [[2, 1, 0], [0, 1, 1], [2, 0, 2]]
    expected = {"negative": (2 / 4, 2 / 3, 4 / 7, 3), "neutral": (1 / 2, 1 / 2, 2 / 4, 2),
                "positive": (2 / 3, 2 / 4, 4 / 7, 4)}
    for label, (precision, recall, f1, support) in expected.items():
        assert metrics["per_class"][label] == pytest.approx(
            {"precision": precision, "recall": recall, "f1": f1, "support": support})
        assert metrics["per_class_f1"][label] == metrics["per_class"][label]["f1"]
    assert metrics["accuracy"] == pytest.approx(5 / 9) and metrics["macro_f1"] == pytest.approx(23 / 42)
    intervals = metrics["intervals"]
    assert set(intervals) == {"accuracy", "macro_f1", "f1"} and set(intervals["f1"]) == set(LABELS)
    assert all(0 <= low <= high <= 1 for low, high in [intervals["accuracy"], intervals["macro_f1"],
                                                       *intervals["f1"].values()])


def test_a_class_never_predicted_nor_seen_scores_zero_not_nan():
    metrics = head_metrics(np.array([0, 0, 1]), _probabilities(np.array([0, 1, 1]), np.full(3, 0.9)), LABELS)
    assert metrics["per_class"]["positive"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_the_most_confidently_wrong_rows_come_surest_first_without_unannotated_rows():
    wrong = confidently_wrong(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS, TEXTS, n=3)
    assert [w["row"] for w in wrong] == [8, 4, 2]  # row 9 (0.99) is unannotated; rows 2 and 7 tie at 0.6
    assert wrong[0] == {"row": 8, "truth": "positive", "predicted": "negative", "confidence": 0.95, "text": "text 8"}
    everything = confidently_wrong(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS)
    assert [w["row"] for w in everything] == [8, 4, 2, 7] and all("text" not in w for w in everything)


def test_the_decision_weights_choose_the_predicted_class_and_its_confidence():
    probabilities = np.array([[0.5, 0.3, 0.2]])
    wrong = confidently_wrong(np.array([0]), probabilities, LABELS, weights=[1.0, 2.0, 1.0])
    assert wrong == [{"row": 0, "truth": "negative", "predicted": "neutral", "confidence": 0.3}]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=300))
def test_the_accuracy_interval_holds_the_accuracy(pairs):
    truth, predicted = map(np.array, zip(*pairs))
    metrics = head_metrics(truth, _probabilities(predicted, np.full(len(truth), 0.8)), LABELS)
    low, high = metrics["intervals"]["accuracy"]
    assert low <= metrics["accuracy"] <= high


def test_intervals_narrow_as_rows_grow():
    counts = np.array([[30, 8, 2], [6, 20, 9], [3, 5, 40]])
    few, many = bootstrap_intervals(counts, LABELS), bootstrap_intervals(counts * 10, LABELS)
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(many["accuracy"]) < width(few["accuracy"]) / 2
    assert width(many["macro_f1"]) < width(few["macro_f1"]) / 2
    assert all(width(many["f1"][label]) < width(few["f1"][label]) / 2 for label in LABELS)


def test_intervals_are_the_same_for_a_seed_and_fast():
    rng = np.random.default_rng(4)
    truth, predicted = rng.integers(0, 3, 1200), rng.integers(0, 3, 1200)
    counts = confusion(truth, predicted, 3)
    started = time.perf_counter()
    first = bootstrap_intervals(counts, LABELS)
    assert time.perf_counter() - started < 1.0
    assert bootstrap_intervals(counts, LABELS) == first
    assert bootstrap_intervals(counts, LABELS, seed=1) != first


def test_a_difference_inside_the_spread_is_no_difference():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 300)
    guess = np.where(rng.random(300) < 0.5, truth, rng.integers(0, 3, 300))
    nudged = np.where(np.arange(300) < 3, (guess + 1) % 3, guess)  # three rows changed
    same = macro_f1_difference(truth, guess, guess, 3)
    assert same == {"difference": 0.0, "interval": [0.0, 0.0], "differs": False}
    assert not macro_f1_difference(truth, guess, nudged, 3)["differs"]
    better = macro_f1_difference(truth, truth, guess, 3)
    plain = head_metrics(truth, _probabilities(guess, np.full(300, 0.9)), LABELS)["macro_f1"]
    assert better["differs"] and better["interval"][0] > 0
    assert better["difference"] == pytest.approx(1 - plain)
    unlabelled = macro_f1_difference(np.r_[truth, -100], np.r_[truth, 0], np.r_[guess, 1], 3)
    assert unlabelled == better


def test_only_the_public_csvs_count_as_public_text(tmp_path):
    tweets, _ = _public_files(tmp_path)
    transcripts = _labelled_transcripts(tmp_path)
    assert read_labelled_text([tweets]).public
    assert not read_labelled_text([transcripts]).public
    assert not read_labelled_text([tweets, transcripts]).public


def test_the_report_shows_intervals_per_class_figures_and_mistakes_with_text_only_when_public():
    metrics = {"sentiment": head_metrics(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS)}
    shown = {"sentiment": confidently_wrong(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS, TEXTS)}
    hidden = {"sentiment": confidently_wrong(TRUTH, _probabilities(PREDICTED, CONFIDENCE), LABELS)}
    page = transcript_report(metrics, {}, {}, shown)
    low, high = metrics["sentiment"]["intervals"]["macro_f1"]
    assert f"{low:.3f}–{high:.3f}" in page and "<th>precision</th>" in page and "<th>support</th>" in page
    assert "Most confidently wrong test examples" in page and "text 8" in page
    private = transcript_report(metrics, {}, {}, hidden)
    assert "text 8" not in private and HIDDEN_TEXT.replace("'", "&#x27;") in private


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry holding an untrained tiny transcript model: its random heads make mistakes to show."""
    encoder = tiny_encoder(tmp_path_factory.mktemp("encoder"))
    root = tmp_path_factory.mktemp("registry")
    publish(TranscriptModel.from_encoder(encoder, max_length=32), root, {"training_text": "real"})
    return root


def _public_files(tmp_path):
    texts = {"negative": "awful late bag", "neutral": "the order today", "positive": "thanks great help"}
    pd.DataFrame([{"text": texts[label], "label": other} for label in texts for other in texts]).to_csv(
        tmp_path / "tweets.csv", index=False)
    pd.DataFrame([{"sp_id": f"s{i}", "rp_id": f"r{i}", "seeker_post": "my bag was lost",
                   "response_post": ["ok", "sorry to hear that"][i % 2], "level": i % 3} for i in range(12)]).to_csv(
        tmp_path / "epitome_explorations_test.csv", index=False)
    return tmp_path / "tweets.csv", tmp_path / "epitome_explorations_test.csv"


def _labelled_transcripts(tmp_path):
    turns = [{"speaker": "customer", "text": PRIVATE, "sentiment": label} for label in LABELS]
    return write_transcripts([{"conversation_id": "c1", "customer_id": "k1", "turns": turns}],
                             tmp_path / "labelled.jsonl")


def _evaluate(registry, *arguments):
    """What `carelens evaluate transcripts` prints (on a console wide enough that no cell is cut short)."""
    result = CliRunner().invoke(evaluate_app, ["transcripts", "--registry", str(registry), *arguments],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _words(printed: str) -> str:
    """Printed tables with runs of white space as one space, so that a title wrapped over lines reads as one line."""
    return " ".join(printed.split())


def test_evaluate_prints_figures_with_intervals_confusion_and_public_mistakes(registry, tmp_path):
    tweets, epitome = _public_files(tmp_path)
    figures = json.loads(_evaluate(registry, "--sentiment-data", str(tweets), "--empathy-data", str(epitome), "--json"))
    sentiment = figures["sentiment"]
    assert sentiment["n"] == 9 and sum(map(sum, sentiment["confusion"])) == 9
    assert set(sentiment["per_class"]["neutral"]) == {"precision", "recall", "f1", "support"}
    assert set(sentiment["intervals"]["f1"]) == set(LABELS)
    wrong = sentiment["confidently_wrong"]
    assert len(wrong) == 9 - round(sentiment["accuracy"] * 9) and wrong[0]["text"] in {
        "awful late bag", "the order today", "thanks great help"}
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    explorations = figures["explorations"]["confidently_wrong"]
    assert explorations and explorations[0]["context"] == "my bag was lost"
    assert figures["emotional_reactions"] == {"n": 0, "confidently_wrong": []}

    printed = _words(_evaluate(registry, "--sentiment-data", str(tweets), "--empathy-data", str(epitome)))
    low, high = sentiment["intervals"]["accuracy"]
    for expected in ("sentiment: per class", "precision", "support", "sentiment: confusion matrix",
                     "true \\ predicted", "sentiment: most confidently wrong", "explorations: per class",
                     f"{low:.3f}–{high:.3f}", wrong[0]["text"]):
        assert expected in printed


def test_evaluate_shows_no_text_of_contract_transcripts(registry, tmp_path):
    tweets, _ = _public_files(tmp_path)
    transcripts = _labelled_transcripts(tmp_path)
    figures = json.loads(_evaluate(registry, "--sentiment-data", str(tweets), "--sentiment-data", str(transcripts),
                                   "--json"))
    wrong = figures["sentiment"]["confidently_wrong"]
    assert wrong and all(set(w) == {"row", "truth", "predicted", "confidence"} for w in wrong)
    printed = _words(_evaluate(registry, "--sentiment-data", str(transcripts)))
    assert PRIVATE.split()[0] not in printed and HIDDEN_TEXT in printed
