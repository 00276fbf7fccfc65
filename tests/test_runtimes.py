"""Runtimes and the scoring pipeline on a tiny model: int8 and ONNX stay near fp32, token-budget batches, the ONNX
export in the registry under checksums, the fallback and the refusals."""
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from carelens.data.errors import UsageError
from carelens.models.registry import Registry, RegistryError
from carelens.models.runtime_choice import (
    BATCH_TOLERANCE, NO_NATIVE_BF16, chosen_by_measuring, eligible, runs_bf16_natively,
)
from carelens.models.runtimes import float_matmuls, onnx_file
from carelens.models.scoring import ScoringOptions, TranscriptPipeline, load_scoring_pipeline, token_budget_batches
from carelens.models.transcript import MODEL_NAME, TranscriptModel, publish
from tiny_encoder import tiny_encoder

TEXTS = ["my flight was late", "thank you so much", "lost bag " * 20, "ok", "sorry to hear that, how can we help",
         "awful delayed cancelled " * 4, "great help today"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return TranscriptModel.from_encoder(tiny_encoder(tmp_path_factory.mktemp("encoder")), max_length=32)


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    publish(model, root, {"note": "test"})
    return root


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("runtime, precision", [("onnx", "fp32"), ("onnx", "int8"), ("torch", "int8"),
                                                ("torch", "bf16")])
def test_every_runtime_stays_near_fp32(registry, runtime, precision):
    reference, _ = load_scoring_pipeline(registry, options=ScoringOptions(runtime="torch", precision="fp32"))
    other, _ = load_scoring_pipeline(registry, options=ScoringOptions(runtime=runtime, precision=precision))
    assert other.description == f"{runtime} {precision}"
    expected, got = reference.encode(TEXTS), other.encode(TEXTS)
    if precision == "fp32":
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        assert cosines(got, expected).min() > 0.99
    np.testing.assert_allclose(other.predict_sentiment(TEXTS), reference.predict_sentiment(TEXTS), atol=0.02)


def test_the_default_is_measured_and_the_exports_are_under_the_checksums(registry, tmp_path):
    pipeline, metadata = load_scoring_pipeline(registry)
    choice = metadata["runtime_choice"]
    assert pipeline.description == f"{choice['runtime']} {choice['precision']}" and "runtime_warning" not in metadata
    # Published without held-out figures, the model may score only at fp32; both fp32 runtimes were measured.
    assert set(choice["measured"]) == {"onnx fp32", "torch fp32"}
    assert choice["measured"][pipeline.description]["batch_invariant"] and choice["why"].startswith(
        f"fastest batch-invariant runtime on this CPU: {pipeline.description}")
    registry = shutil.copytree(registry, tmp_path / "registry")
    artifact = registry / MODEL_NAME / "v1"
    listed = (artifact / "SHA256SUMS").read_text()
    assert "onnx/encoder.fp32.onnx" in listed and "onnx/encoder.int8.onnx" in listed
    with open(onnx_file(artifact, "int8"), "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(RegistryError, match="checksum mismatch for 'onnx/encoder.int8.onnx'"):
        load_scoring_pipeline(registry)


def test_a_model_without_an_export_falls_back_by_default_and_is_refused_when_onnx_is_asked_for(model, tmp_path):
    Registry(tmp_path).publish(MODEL_NAME, model.save_pretrained, {})
    pipeline, metadata = load_scoring_pipeline(tmp_path)
    assert pipeline.description == "torch fp32" and set(metadata["runtime_choice"]["measured"]) == {"torch fp32"}
    assert "has no ONNX export" in metadata["runtime_warning"] and "torch" in metadata["runtime_warning"]
    with pytest.raises(RegistryError, match=r"no ONNX export at fp32 .*--runtime torch"):
        load_scoring_pipeline(tmp_path, options=ScoringOptions(runtime="onnx", precision="fp32"))


def test_auto_chooses_on_a_cpu_unless_told_and_a_precision_only_torch_runs_chooses_torch():
    assert ScoringOptions().automatic and ScoringOptions(runtime="auto").automatic
    assert not ScoringOptions(precision="int8").automatic and not ScoringOptions(device="cuda").automatic
    assert ScoringOptions(precision="bf16").chosen == ("torch", "bf16")
    assert ScoringOptions(device="cuda").chosen == ScoringOptions(device="cuda", runtime="auto").chosen == \
        ("torch", "fp16")
    assert ScoringOptions(precision="int8").chosen == ("onnx", "int8")


def test_a_batch_run_records_its_runtime_and_why_and_says_when_it_fell_back(model, tmp_path):
    from carelens.inference.nightly.run import score_batch
    Registry(tmp_path / "registry").publish(MODEL_NAME, model.save_pretrained, {})
    (tmp_path / "t.jsonl").write_text('{"conversation_id": "a", "customer_id": "c", "turns": '
                                      '[{"speaker": "customer", "text": "my bag was lost"}]}\n')
    manifest = score_batch([tmp_path / "t.jsonl"], tmp_path / "out", tmp_path / "registry", show_progress_bar=False)
    assert manifest["runtime"] == "torch fp32" and manifest["counts"] == {"in": 1, "out": 1, "dead": 0}
    assert manifest["runtime_choice"]["runtime"] == "torch" and "torch fp32" in manifest["runtime_choice"]["why"]
    assert len(manifest["warnings"]) == 1 and "has no ONNX export" in manifest["warnings"][0]


@pytest.mark.parametrize("options, message", [
    ({"runtime": "tensorrt"}, "--runtime 'tensorrt': expected one of auto, torch, onnx"),
    ({"runtime": "auto", "precision": "int8"}, "--runtime auto chooses the precision too"),
    ({"runtime": "onnx", "precision": "fp16"}, "--precision 'fp16' with --runtime onnx: expected one of fp32, int8"),
    ({"runtime": "torch", "precision": "fp16"}, "--precision fp16 needs --device cuda"),
    ({"device": "cuda", "precision": "int8"}, "int8 dynamic quantisation runs on CPUs only"),
    ({"device": "tpu"}, "--device 'tpu': expected cpu or cuda"),
    ({"token_budget": 8}, "--token-budget 8: give at least 16 tokens"),
])
def test_choices_that_do_not_go_together_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ScoringOptions(**options)


def test_the_cli_refuses_a_precision_the_runtime_lacks(registry, tmp_path):
    from carelens.inference.cli import app
    (tmp_path / "t.jsonl").write_text('{"conversation_id": "a", "customer_id": "c", "turns": []}\n')
    result = CliRunner().invoke(app, ["score", "--transcripts", str(tmp_path / "t.jsonl"), "--out",
                                      str(tmp_path / "out"), "--registry", str(registry), "--runtime", "onnx",
                                      "--precision", "bf16", "--no-progress"])
    assert result.exit_code == 2 and "expected one of fp32, int8" in result.output


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=200), st.integers(16, 5000))
def test_token_budget_batches_cover_every_window_once_longest_first_within_the_budget(lengths, budget):
    lengths = np.array(lengths)
    batches = token_budget_batches(lengths, budget)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget
        assert lengths[batch[0]] == lengths[batch].max()
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_scores_do_not_depend_on_the_token_budget_in_fp32(model):
    small, large = TranscriptPipeline(model, token_budget=32), TranscriptPipeline(model, token_budget=4096)
    np.testing.assert_allclose(small.encode(TEXTS), large.encode(TEXTS), atol=1e-5)


def test_padded_batches_are_exact(model):
    batch = model.padded([[2, 7, 3], [2, 3]], [[0, 0, 0], [0, 0]])
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["input_ids"].dtype == np.int64


def probabilities(pipeline: TranscriptPipeline, texts: list[str], budget: int) -> np.ndarray:
    pipeline.token_budget = budget
    return pipeline.predict_sentiment(texts)


def test_the_static_int8_export_scores_a_turn_the_same_whatever_is_batched_beside_it(registry):
    pipeline, _ = load_scoring_pipeline(registry, options=ScoringOptions(runtime="onnx", precision="int8"))
    batched, small = probabilities(pipeline, TEXTS, 4096), probabilities(pipeline, TEXTS, 16)
    alone = np.concatenate([probabilities(pipeline, [text], 4096) for text in TEXTS])
    assert np.abs(batched - small).max() <= BATCH_TOLERANCE and np.abs(batched - alone).max() <= BATCH_TOLERANCE


def test_static_quantisation_keeps_attention_and_the_gelu_output_in_float(registry):
    import onnx
    names = float_matmuls(onnx.load(str(onnx_file(registry / MODEL_NAME / "v1", "fp32"))))
    # The tiny encoder's two layers: scores and weighted sum of attention, and the feed-forward output, each.
    assert sorted(names) == sorted(f"/encoder/encoder/layer.{layer}/{node}" for layer in (0, 1) for node in
                                   ("attention/self/MatMul", "attention/self/MatMul_1", "output/dense/MatMul"))
    quantised = onnx.load(str(onnx_file(registry / MODEL_NAME / "v1", "int8")))
    weights = {node.input[0] for node in quantised.graph.node if node.op_type == "DequantizeLinear"}
    assert sum(1 for tensor in quantised.graph.initializer if tensor.name in weights
               and tensor.data_type == onnx.TensorProto.INT8) == 2 * 4 + 2  # per layer Q, K, V, attention output,
    # feed-forward input: 5 weight MatMuls a layer are quantised


def test_auto_remembers_its_choice_per_cpu_and_model_and_measures_again_when_the_cache_is_unreadable(
        registry, tmp_path, monkeypatch):
    import carelens.models.runtime_choice as runtime_choice
    monkeypatch.setenv("CARELENS_CACHE_DIR", str(tmp_path / "cache"))
    first = load_scoring_pipeline(registry)[1]["runtime_choice"]
    again = load_scoring_pipeline(registry)[1]["runtime_choice"]
    assert not first["cached"] and again == {**first, "cached": True}
    monkeypatch.setattr(runtime_choice, "cpu_model", lambda: "Another CPU 9000")
    elsewhere = load_scoring_pipeline(registry)[1]["runtime_choice"]
    assert not elsewhere["cached"] and elsewhere["cpu"] == "Another CPU 9000"
    assert len(json.loads((tmp_path / "cache" / "runtime-choices.json").read_text())) == 2
    (tmp_path / "cache" / "runtime-choices.json").write_text("{not json")
    assert not load_scoring_pipeline(registry)[1]["runtime_choice"]["cached"]


def test_the_fastest_batch_invariant_candidate_wins():
    measured = {("onnx", "int8"): (900.0, 0.2), ("onnx", "fp32"): (500.0, 3e-7), ("torch", "fp32"): (300.0, 0.0)}
    choice = chosen_by_measuring(list(measured), lambda *name: measured[name])
    assert (choice.runtime, choice.precision) == ("onnx", "fp32") and not choice.measured["onnx int8"]["batch_invariant"]
    assert choice.measured["torch fp32"] == {"turns_per_s": 300.0, "largest_batch_change": 0.0,
                                             "batch_invariant": True}
    assert choice.why == ("fastest batch-invariant runtime on this CPU: onnx fp32 500 turns/s against onnx int8 900/s "
                   "(batch-dependent), torch fp32 300/s (probe of generated turns)")


def test_only_runtimes_training_found_within_the_bounds_are_eligible():
    metadata = {"runtimes": {"onnx int8": {"within_bounds": True}, "torch bf16": {"within_bounds": False}}}
    assert eligible(metadata, has_export=True) == [("onnx", "int8"), ("onnx", "fp32"), ("torch", "fp32")]
    assert eligible(metadata, has_export=False) == [("torch", "fp32")]
    assert eligible({}, has_export=True) == [("onnx", "fp32"), ("torch", "fp32")]


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx avx2 fma", False)])
def test_bf16_counts_as_native_only_with_its_cpu_flags(flags, native):
    assert runs_bf16_natively(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n") is native
    assert runs_bf16_natively("model name\t: a CPU whose flags are not listed\n") is None


def test_bf16_is_left_out_where_the_cpu_would_emulate_it_and_the_choice_says_so():
    metadata = {"runtimes": {"torch bf16": {"within_bounds": True}}}
    assert eligible(metadata, has_export=True) == [("onnx", "fp32"), ("torch", "bf16"), ("torch", "fp32")]
    assert eligible(metadata, has_export=True, native_bf16=False) == [("onnx", "fp32"), ("torch", "fp32")]
    measured = {("onnx", "fp32"): (500.0, 0.0), ("torch", "fp32"): (300.0, 0.0)}
    choice = chosen_by_measuring(list(measured), lambda *name: measured[name], {"torch bf16": NO_NATIVE_BF16})
    assert choice.measured["torch bf16"] == {"not_measured": NO_NATIVE_BF16}
    assert choice.why.endswith("(probe of generated turns); torch bf16 not measured: this CPU has no bf16 arithmetic "
                               "(AVX-512 BF16 or AMX), so torch emulates it")


@pytest.mark.parametrize("native", [True, False])
def test_auto_measures_bf16_only_on_a_cpu_with_bf16_arithmetic(model, tmp_path, monkeypatch, native):
    monkeypatch.setenv("CARELENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("carelens.models.scoring.runs_bf16_natively", lambda: native)
    publish(model, tmp_path / "registry", {"runtimes": {"torch bf16": {"within_bounds": True}}})
    choice = load_scoring_pipeline(tmp_path / "registry")[1]["runtime_choice"]
    assert set(choice["measured"]) == {"onnx fp32", "torch bf16", "torch fp32"}
    assert ("turns_per_s" in choice["measured"]["torch bf16"]) is native
    assert (NO_NATIVE_BF16 in choice["why"]) is not native and (native or choice["precision"] != "bf16")


@pytest.mark.parametrize("sentiment, empathy, within", [(80.4, 50.0, True), (79.4, 50.0, False), (80.6, 51.0, False),
                                                        (80.0, 49.05, True), (80.0, 48.9, False)])
def test_a_runtime_is_within_the_bounds_when_both_heads_stay_near_fp32(sentiment, empathy, within):
    from carelens.training.runtime_accuracy import changes
    reference = {"sentiment_accuracy": 80.0, "empathy_macro_f1": {"explorations": 50.0}}
    got = changes({"sentiment_accuracy": sentiment, "empathy_macro_f1": {"explorations": empathy}}, reference)
    assert got["within_bounds"] is within
    assert got["sentiment_accuracy_change"] == round(abs(sentiment - 80.0), 2)


def test_concurrent_callers_share_runs_and_each_gets_its_own_rows():
    from carelens.models.scoring import MicroBatcher
    batcher, runs, started = MicroBatcher(), [], threading.Event()

    def run(items):
        runs.append(list(items))
        started.set()
        time.sleep(0.2)  # the first run holds the turn while the others queue
        return np.array(items) * 10

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher, [0], run)
        started.wait(5)
        rest = [pool.submit(batcher, [i, i + 100], run) for i in range(1, 6)]
        assert first.result().tolist() == [0]
        assert [f.result().tolist() for f in rest] == [[i * 10, (i + 100) * 10] for i in range(1, 6)]
    assert len(runs) == 2 and sorted(runs[1]) == sorted(x for i in range(1, 6) for x in (i, i + 100))


def test_an_error_in_a_shared_run_reaches_every_caller_in_it_and_the_next_call_runs():
    from carelens.models.scoring import MicroBatcher
    batcher = MicroBatcher()
    with pytest.raises(ValueError, match="broken"):
        batcher([1], lambda items: (_ for _ in ()).throw(ValueError("broken")))
    assert batcher([2], lambda items: np.array(items)).tolist() == [2]


def test_a_caller_that_gave_up_while_it_waited_is_answered_without_being_run():
    from carelens.models.scoring import MicroBatcher, ScoringAbandoned, abandonable
    batcher, runs, started, release, gave_up = MicroBatcher(), [], threading.Event(), threading.Event(), \
        threading.Event()

    def run(items):
        runs.append(list(items))
        started.set()
        release.wait(5)  # the first run holds the turn while the others queue
        return list(items)

    def impatient(items):
        with abandonable(gave_up):
            return batcher(items, run)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher, [0], run)
        started.wait(5)
        quitter, stayer = pool.submit(impatient, [1]), pool.submit(batcher, [2], run)
        deadline = time.monotonic() + 10
        while len(batcher.queued) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        gave_up.set()
        release.set()
        assert first.result() == [0] and stayer.result() == [2]
        with pytest.raises(ScoringAbandoned, match="gave up"):
            quitter.result()
    assert runs == [[0], [2]]


def test_threads_scoring_at_once_get_what_each_would_alone(registry):
    pipeline, _ = load_scoring_pipeline(registry, options=ScoringOptions(runtime="onnx", precision="fp32"))
    groups = [TEXTS[i:] + [f"turn {i} " * (i * 7 + 1)] for i in range(len(TEXTS))]
    alone = [pipeline.predict_sentiment(group) for group in groups]
    with ThreadPoolExecutor(len(groups)) as pool:
        together = list(pool.map(pipeline.predict_sentiment, groups))
    for expected, got in zip(alone, together):
        np.testing.assert_allclose(got, expected, atol=1e-6)
