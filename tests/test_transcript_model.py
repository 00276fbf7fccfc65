"""The transcript model on a tiny random encoder: windowing, batching order, save/load, scoring edge cases, training."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from carelens.data.contracts import ContractError
from carelens.models.conversation_features import EMPATHY_PRESENT_COLUMNS, FEATURE_COLUMNS
from carelens.models.registry import RegistryError
from carelens.models.scoring import TranscriptPipeline, cache_key, score_turns, transcript_features
from carelens.models.transcript import (
    MAX_TURN_WINDOWS, TranscriptModel, default_encoder_dir, load_transcript_model, publish, training_text_warning,
    utf8_safe,
)
from carelens.training.cli import evaluate_app, train_app
from conftest import SHARED, requires_shared
from tiny_encoder import tiny_encoder

LONG_TURN = "my flight was late and my bag was lost " * 2600  # just over 100,000 characters


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def model(encoder_dir):
    return TranscriptModel.from_encoder(encoder_dir, max_length=32)


@pytest.fixture(scope="module")
def pipeline(model):
    return TranscriptPipeline(model)


def _conversation(identifier, turns, **extra):
    return {"conversation_id": identifier, "customer_id": f"C{identifier}", "contact_id": f"K{identifier}",
            "turns": [{"speaker": s, "text": t} for s, t in turns], **extra}


def test_long_text_is_split_into_overlapping_windows_that_cover_every_token(model):
    text = " ".join(["thanks for the help today"] * 40)
    windows = model.preprocess([text])
    pieces = [ids[1:-1] for ids in windows["input_ids"]]  # drop [CLS] and [SEP]
    assert len(pieces) > 1 and all(len(ids) <= model.max_length for ids in windows["input_ids"])
    rebuilt = pieces[0] + [t for piece in pieces[1:] for t in piece[model.overlap:]]
    assert rebuilt == model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_pair_keeps_the_end_of_a_long_customer_turn_and_windows_the_whole_reply(model):
    context = "my bag was lost " * 30 + "please help"
    reply = "sorry to hear that " * 20
    windows = model.preprocess([reply], [context])
    first = model.tokenizer.convert_ids_to_tokens(windows["input_ids"][0])
    separator = first.index("[SEP]")
    assert separator - 1 <= model.context_budget and first[separator - 2:separator] == ["please", "help"]
    reply_tokens = [t for ids in windows["input_ids"] for t in ids]
    assert len(reply_tokens) > len(model.tokenizer(reply)["input_ids"])  # several windows, nothing dropped


def test_encodings_come_back_in_input_order_whatever_the_batching(model, pipeline):
    texts = ["thanks", "my flight was late " * 12, "bad", "great help thank you", "lost bag " * 30, "ok"]
    one_by_one = np.vstack([pipeline.encode([t]) for t in texts])
    np.testing.assert_allclose(TranscriptPipeline(model, token_budget=64).encode(texts), one_by_one, atol=1e-5)


def test_probabilities_are_distributions(pipeline):
    sentiment = pipeline.predict_sentiment(["thanks", "awful"])
    empathy = pipeline.predict_empathy(["sorry to hear that", "ok"], ["my bag was lost", ""])
    np.testing.assert_allclose(sentiment.sum(1), 1, atol=1e-6)
    assert empathy.shape == (2, 3, 3)
    np.testing.assert_allclose(empathy.sum(2), 1, atol=1e-6)


def test_save_and_load_round_trip_uses_safetensors_and_gives_the_same_scores(model, tmp_path):
    model.temperatures["sentiment"] = 1.7
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "heads.safetensors", "heads.json", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in files)
    back = TranscriptModel.from_pretrained(tmp_path / "m")
    texts = ["my flight was late", "thank you"]
    np.testing.assert_allclose(TranscriptPipeline(back).predict_sentiment(texts),
                               TranscriptPipeline(model).predict_sentiment(texts), atol=1e-6)
    assert json.loads((tmp_path / "m" / "heads.json").read_text())["temperatures"]["sentiment"] == 1.7
    model.temperatures["sentiment"] = 1.0


def test_registry_refuses_a_tampered_head(model, tmp_path):
    artifact = publish(model, tmp_path, {"note": "test"})
    loaded, metadata = load_transcript_model(tmp_path)
    assert loaded.max_length == model.max_length and metadata["version"] == "v1"
    with open(artifact.path / "heads.safetensors", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(RegistryError, match="checksum mismatch for 'heads.safetensors'"):
        load_transcript_model(tmp_path)


def test_turn_scores_and_features_for_the_edge_cases(pipeline):
    conversations = [
        _conversation("normal", [("customer", "my bag was lost"), ("agent", "sorry to hear that"),
                                 ("customer", "thanks")]),
        _conversation("empty", []),
        _conversation("no-agent", [("customer", "awful")]),
        _conversation("no-customer", [("agent", "how can we help")]),
        _conversation("blank", [("customer", "   "), ("agent", ""), ("customer", "\n\t")]),
        _conversation("long", [("customer", LONG_TURN), ("agent", LONG_TURN)]),
    ]
    turns = score_turns(pipeline, conversations)
    long_rows = turns[turns["conversation_id"] == "long"]
    assert (long_rows["windows"] == MAX_TURN_WINDOWS).all() and long_rows[["sentiment"]].iloc[0].notna().all()
    assert turns.loc[turns["conversation_id"] == "blank", ["sentiment", "empathy"]].isna().all().all()
    assert (turns.loc[turns["conversation_id"] == "blank", "windows"] == 0).all()
    agent = turns[(turns["speaker"] == "agent") & turns["empathy"].notna()]
    # A turn is empathic when some mechanism is present; customer and blank turns decide nothing.
    assert (agent[EMPATHY_PRESENT_COLUMNS].any(axis=1) == agent["empathic"]).all()
    assert turns.drop(agent.index)[EMPATHY_PRESENT_COLUMNS].isna().all().all()
    features = transcript_features(pipeline, conversations).set_index("conversation_id")
    assert list(features.index) == ["normal", "empty", "no-agent", "no-customer", "blank", "long"]
    assert features.loc["empty", FEATURE_COLUMNS].drop(["customer_turns", "agent_turns"]).isna().all()
    assert np.isnan(features.loc["no-agent", "agent_empathy_mean"]) and features.loc["no-agent", "customer_turns"] == 1
    assert np.isnan(features.loc["no-customer", "customer_sentiment_start"])
    assert features.loc["blank", ["customer_turns", "agent_turns"]].tolist() == [0, 0]
    assert features.loc["normal", ["customer_turns", "agent_turns"]].tolist() == [2, 1]
    assert -1 <= features.loc["normal", "customer_sentiment_shift"] <= 1 + 1e-9
    assert 0 <= features.loc["normal", "agent_empathy_mean"] <= 1


def test_timestamps_give_non_talk_time_and_interruptions(pipeline):
    conversation = _conversation("timed", [])
    conversation["turns"] = [{"speaker": "agent", "text": "how can we help", "start_s": 0, "end_s": 3},
                             {"speaker": "customer", "text": "my flight was late", "start_s": 2, "end_s": 6},
                             {"speaker": "agent", "text": "sorry", "start_s": 8, "end_s": 9}]
    row = transcript_features(pipeline, [conversation]).iloc[0]
    assert row["interruptions"] == 1 and row["non_talk_s"] == pytest.approx(2.0)


def test_non_utf8_bytes_in_a_turn_are_a_contract_error(pipeline):
    record = _conversation("bytes", [("customer", "ok")])
    record["turns"][0]["text"] = b"caf\xe9 \xff"
    with pytest.raises(ContractError, match=r"turns\.0\.text"):
        score_turns(pipeline, [record])


def test_undecodable_bytes_read_with_surrogateescape_are_replaced_not_fatal(pipeline):
    text = b"caf\xe9 late".decode("utf-8", errors="surrogateescape")
    assert utf8_safe(text) == "caf\ufffd late"
    turns = score_turns(pipeline, [_conversation("s", [("customer", text)])])
    assert turns["sentiment"].notna().all()


def _labelled_files(tmp_path):
    rng = np.random.default_rng(0)
    words = {"negative": "awful late lost bad", "neutral": "the order today my", "positive": "thanks great good thank"}
    tweets = [{"text": " ".join(rng.choice(words[label].split(), 5)), "label": label}
              for label in words for _ in range(40)]
    pd.DataFrame(tweets).to_csv(tmp_path / "tweets.csv", index=False)
    (tmp_path / "epitome").mkdir()
    for mechanism in ("emotional_reactions", "interpretations", "explorations"):
        pairs = [{"sp_id": f"s{i}", "rp_id": f"r{i}", "seeker_post": "my bag was lost",
                  "response_post": ["ok", "sorry to hear that", "i understand how you are feeling"][i % 3],
                  "level": i % 3, "rationales": ""} for i in range(60)]
        pd.DataFrame(pairs).to_csv(tmp_path / "epitome" / f"epitome_{mechanism}_train.csv", index=False)
    return tmp_path / "tweets.csv", tmp_path / "epitome"


@pytest.mark.parametrize("mode", ["heads", "finetune"])
def test_train_command_publishes_a_model_with_metrics_beside_the_floor(encoder_dir, tmp_path, mode):
    tweets, epitome = _labelled_files(tmp_path)
    registry = tmp_path / "registry"
    result = CliRunner().invoke(train_app, [
        "transcripts", "--mode", mode, "--encoder", str(encoder_dir), "--sentiment-data", str(tweets),
        "--empathy-data", str(epitome), "--epochs", "1", "--max-length", "32", "--batch-size", "16",
        "--out", str(registry), "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    metadata = json.loads((registry / "transcripts" / "v1" / "metadata.json").read_text())
    assert set(metadata["metrics"]["test"]) == {"sentiment", "emotional_reactions", "interpretations", "explorations"}
    assert set(metadata["floor"]["test"]) == set(metadata["metrics"]["test"])
    assert metadata["options"]["mode"] == mode and metadata["seed"] == 13
    assert metadata["training_text"] == "real"
    report = (registry / "transcripts" / "v1" / "report.html").read_text()
    assert report.count("<img") == 2 and "95% CI" in report and "Most confidently wrong test examples" in report
    assert metadata["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}
    rows = metadata["rows"]["sentiment"]
    assert rows["train"] + rows["validation"] + rows["test"] == 120
    # Each CPU runtime's test figures beside torch fp32's, which are the metrics training reports.
    runtimes = metadata["runtimes"]
    assert set(runtimes) == {"torch fp32", "onnx fp32", "onnx int8", "torch bf16"}
    assert runtimes["torch fp32"]["sentiment_accuracy"] == round(100 * metadata["metrics"]["test"]["sentiment"][
        "accuracy"], 2)
    assert runtimes["onnx fp32"]["sentiment_accuracy_change"] == 0 and runtimes["onnx fp32"]["within_bounds"]
    for name in ("onnx int8", "torch bf16"):
        record = runtimes[name]
        assert record["within_bounds"] == (record["sentiment_accuracy_change"] <= 0.5
                                           and record["worst_empathy_macro_f1_change"] <= 1.0)

    evaluated = CliRunner().invoke(evaluate_app, ["transcripts", "--registry", str(registry), "--sentiment-data",
                                                  str(tweets), "--empathy-data", str(epitome), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.stdout)
    assert "warning" not in evaluated.stderr
    assert figures["sentiment"]["n"] == 120 and set(figures["sentiment"]["per_class_f1"]) == {
        "negative", "neutral", "positive"}
    assert set(figures["sentiment"]["intervals"]) == {"accuracy", "macro_f1", "f1"}


@pytest.mark.parametrize("chosen", [False, True])
def test_decision_weights_are_fitted_and_ablated_only_when_asked_for(encoder_dir, tmp_path, chosen):
    tweets, epitome = _labelled_files(tmp_path)
    registry = tmp_path / "registry"
    result = CliRunner().invoke(train_app, [
        "transcripts", "--mode", "heads", "--encoder", str(encoder_dir), "--sentiment-data", str(tweets),
        "--empathy-data", str(epitome), "--max-length", "32", "--out", str(registry), "--runs", str(tmp_path / "runs"),
        "--no-progress", *(["--decision-weights"] if chosen else [])])
    assert result.exit_code == 0, result.output
    metadata = json.loads((registry / "transcripts" / "v1" / "metadata.json").read_text())
    saved = json.loads((registry / "transcripts" / "v1" / "heads.json").read_text())["decision_weights"]
    assert ("test_plain_argmax" in metadata["metrics"]) is chosen
    assert ("plain argmax" in (registry / "transcripts" / "v1" / "report.html").read_text()) is chosen
    assert saved == metadata["decision_weights"]
    if not chosen:
        assert all(weights == [1.0, 1.0, 1.0] for weights in saved.values())


@pytest.fixture(scope="module")
def synthetic_trained(encoder_dir, tmp_path_factory):
    """A transcript model trained on the generator's labelled conversations only, published, and their file."""
    from carelens.data.readers import write_transcripts
    from carelens.data.synthetic import generate
    from carelens.training.transcript_options import Options
    from carelens.training.transcripts import publish_trained, train_transcripts
    root = tmp_path_factory.mktemp("synthetic_text")
    conversations = write_transcripts(generate(300, seed=3).conversations, root / "transcripts.jsonl")
    trained = train_transcripts([conversations], Options(mode="heads", max_length=32, show_progress_bar=False,
                                                         stack_floor=False),
                                encoder_dir, log=lambda _: None)
    publish_trained(trained, root / "registry")
    return root, conversations


SYNTHETIC_WARNING = ("transcript model v1 was trained on synthetic conversations only: its sentiment and empathy "
                     "scores on real conversations mean little; train it on labelled text with `make train-real` or "
                     "`carelens train transcripts --sentiment-data FILE --empathy-data FILE` (airline-tweet and "
                     "EPITOME CSVs) or `--transcripts FILE` (your own labelled transcripts)")


def test_a_model_trained_on_generated_conversations_records_synthetic_text_and_warns(synthetic_trained):
    root, conversations = synthetic_trained
    _, metadata = load_transcript_model(root / "registry")
    assert metadata["training_text"] == "synthetic"
    assert training_text_warning(metadata) == SYNTHETIC_WARNING
    report = (root / "registry" / "transcripts" / "v1" / "report.html").read_text()
    assert "sentiment: most confidently wrong (text hidden" in report and "<th>text</th>" not in report
    evaluated = CliRunner().invoke(evaluate_app, ["transcripts", "--registry", str(root / "registry"),
                                                  "--sentiment-data", str(conversations), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stderr.strip() == f"warning: {SYNTHETIC_WARNING}"
    assert json.loads(evaluated.stdout)["sentiment"]["n"] > 0


def test_featurize_warns_about_a_model_trained_on_synthetic_text(synthetic_trained, tmp_path):
    from carelens.data.readers import write_transcripts
    from carelens.inference.featurize import featurize_command
    import typer

    root, _ = synthetic_trained
    write_transcripts([_conversation("a", [("customer", "late"), ("agent", "sorry")])], tmp_path / "day.jsonl")
    app = typer.Typer()
    app.command()(featurize_command)
    result = CliRunner().invoke(app, ["--registry", str(root / "registry"), "--transcripts", str(tmp_path / "day.jsonl"),
                                      "--out", str(tmp_path / "f.parquet"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"warning: {SYNTHETIC_WARNING}"


def test_labelled_generated_and_real_text_together_are_mixed(encoder_dir, synthetic_trained, tmp_path):
    from carelens.training.splits import load_data
    from carelens.training.transcript_options import Options
    _, conversations = synthetic_trained
    tweets, epitome = _labelled_files(tmp_path)
    options = Options(mode="heads", max_length=32, show_progress_bar=False)
    assert load_data([conversations, tweets], options).training_text == "mixed"
    assert load_data([tweets, epitome], options).training_text == "real"


@pytest.mark.parametrize("training_text", ["real", "mixed", None])
def test_no_warning_for_a_model_trained_on_real_or_unrecorded_text(training_text):
    assert training_text_warning({"version": "v2", "training_text": training_text}) is None


def test_train_command_without_data_says_what_it_needs(encoder_dir, tmp_path):
    result = CliRunner().invoke(train_app, ["transcripts", "--encoder", str(encoder_dir), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--sentiment-data" in result.output


def test_featurize_command_writes_one_row_per_conversation(model, tmp_path):
    from carelens.data.readers import write_transcripts
    from carelens.inference.featurize import featurize_command
    import typer

    publish(model, tmp_path / "registry", {})
    write_transcripts([_conversation("a", [("customer", "late"), ("agent", "sorry")]), _conversation("b", [])],
                      tmp_path / "day.jsonl")
    app = typer.Typer()
    app.command()(featurize_command)
    result = CliRunner().invoke(app, ["--registry", str(tmp_path / "registry"), "--transcripts",
                                      str(tmp_path / "day.jsonl"), "--out", str(tmp_path / "f.parquet"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    features = pd.read_parquet(tmp_path / "f.parquet")
    assert list(features["contact_id"]) == ["Ka", "Kb"] and set(FEATURE_COLUMNS) <= set(features.columns)
    from carelens.models.conversation_features import features_lineage
    assert features_lineage(tmp_path / "f.parquet") == "v1"  # models trained on it will record transcripts v1


@pytest.mark.slow
@requires_shared
def test_minilm_scores_the_abcd_sample_offline():
    from carelens.data.adapters import read_abcd
    model = TranscriptModel.from_encoder(max_length=128)
    assert (default_encoder_dir() / "model.safetensors").is_file()
    features = transcript_features(TranscriptPipeline(model), read_abcd(SHARED / "data" / "transcripts" / "abcd_sample.json"))
    assert len(features) == 3 and features["customer_turns"].gt(0).all() and features["agent_turns"].gt(0).all()


def test_the_encoding_cache_encodes_each_input_once_and_changes_no_score(tmp_path):
    model = TranscriptModel.from_encoder(tiny_encoder(tmp_path / "encoder"), max_length=32)
    texts = ["my flight was late", "thank you", "sorry to hear that", "thank you"]
    plain = TranscriptPipeline(model).encode(texts)
    cached = TranscriptPipeline(model, cache_entries=2)
    calls = []
    model.encoder.register_forward_hook(lambda module, args, output: calls.append(args))
    first = cached.encode(texts)
    again = cached.encode(texts[2:])
    np.testing.assert_allclose(first, plain, atol=1e-6)
    np.testing.assert_allclose(again, plain[2:], atol=1e-6)
    assert len(calls) == 1, "the second call should be answered from the cache"
    assert list(cached.encodings.entries) == [cache_key("sorry to hear that", None), cache_key("thank you", None)]
    assert cache_key("a\x00b", None) != cache_key("a", "b") and len(cache_key("x" * 100_000, "y" * 100_000)) == 16


def test_decision_weights_name_a_rare_level_when_that_raises_validation_macro_f1():
    from carelens.training.calibration import fitted_decision_weights
    from carelens.training.transcript_metrics import head_metrics
    # The weak level (1) is never the argmax, though it is likelier on the rows that are weak.
    probabilities = np.array([[0.7, 0.2, 0.1]] * 6 + [[0.6, 0.35, 0.05]] * 3 + [[0.2, 0.1, 0.7]] * 3)
    truth = np.array([0] * 6 + [1] * 3 + [2] * 3)
    weights = fitted_decision_weights(probabilities, truth)
    plain = head_metrics(truth, probabilities, ["none", "weak", "strong"])
    decided = head_metrics(truth, probabilities, ["none", "weak", "strong"], weights)
    assert plain["per_class_f1"]["weak"] == 0 and decided["macro_f1"] == 1.0
    assert weights[0] == 1.0 and weights[1] > 1.0


def test_decision_weights_stay_at_one_when_the_argmax_is_already_best():
    from carelens.training.calibration import fitted_decision_weights
    probabilities = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    assert fitted_decision_weights(probabilities, np.array([0, 1, 2, 0, 1, 2])) == [1.0, 1.0, 1.0]
    assert fitted_decision_weights(probabilities, np.full(6, -100)) == [1.0, 1.0, 1.0]


def test_decision_weights_survive_save_and_load_and_decide_the_empathic_flag(tmp_path):
    model = TranscriptModel.from_encoder(tiny_encoder(tmp_path / "encoder"), max_length=32)
    model.decision_weights["explorations"] = [1.0, 0.5, 3.0]
    loaded = TranscriptModel.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.decision_weights == model.decision_weights
    probabilities = np.array([[[0.6, 0.1, 0.3], [1, 0, 0], [0.5, 0.3, 0.2]]])
    assert loaded.decided_levels(probabilities).tolist() == [[0, 0, 2]]


class RecordingTokenizer:
    """The model's tokenizer, recording how many characters each call was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.characters = tokenizer, []

    def __call__(self, *texts, **options):
        self.characters += [len(t) for batch in texts for t in batch]
        return self.tokenizer(*texts, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_turn_is_read_in_a_bounded_number_of_windows_from_its_opening_and_its_ending(model, monkeypatch):
    opening, ending = "my flight was cancelled ", " please refund my order today"
    huge = opening + "my bag was lost " * 56_000 + ending  # 900 KB in one turn
    recording = RecordingTokenizer(model.tokenizer)
    monkeypatch.setattr(model, "shared_tokenizer", recording)
    for contexts in (None, [huge]):
        windows = model.preprocess([huge], contexts)
        assert len(windows["input_ids"]) == MAX_TURN_WINDOWS and set(windows["owner"]) == {0}
        assert max(recording.characters) <= model.turn_characters + 1
        recording.characters.clear()
    windows, ids = model.preprocess([huge]), model.tokenizer([opening, ending], add_special_tokens=False)["input_ids"]
    assert windows["input_ids"][0][1:1 + len(ids[0])] == ids[0]
    assert windows["input_ids"][-1][-1 - len(ids[1]):-1] == ids[1]


def test_a_turn_within_the_window_cap_is_windowed_as_the_tokenizer_cuts_it(model, pipeline):
    step = model.max_length - 2 - model.overlap  # new tokens per window after the first
    text = " ".join(["thanks"] * (step * (MAX_TURN_WINDOWS - 1) + model.max_length - 2))
    windows = model.preprocess([text])
    cut = model.tokenizer([text], max_length=model.max_length, stride=model.overlap, truncation=True,
                          return_overflowing_tokens=True)
    assert len(windows["input_ids"]) == MAX_TURN_WINDOWS and windows["input_ids"] == cut["input_ids"]
    assert pipeline.encode_with_windows([text])[1].tolist() == [MAX_TURN_WINDOWS]
