"""Transcript scoring on real text against the obvious way, in one interleaved run: Hugging Face's
`pipeline("text-classification")` (defaults, and batch_size=32) on the same encoder and the same unique airline
tweets (one customer turn per conversation), `Scorer.score_transcripts` and the bare encoder loop in every runtime,
EPITOME (post, response) pairs as agent turns; the machine's fp32 matrix-multiply ceiling and where the time goes.

$CARELENS_BENCH_MODEL: a saved transcript model directory (e.g. registry/transcripts/v1 after `make train-real`);
default the packaged MiniLM with untrained heads (speed does not depend on head weights). $CARELENS_BENCH_TURNS
(default 3,000 tweets), $CARELENS_BENCH_ROUNDS (default 2), $CARELENS_BENCH_DEVICE (cpu; cuda runs torch fp16 and
the peer on the GPU)."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from carelens.inference.api import Scorer
from carelens.models.scoring import ScoringOptions
from carelens.models.transcript import TranscriptModel
from conftest import SHARED, requires_shared
from harness import record

TURNS = int(os.environ.get("CARELENS_BENCH_TURNS", "3000"))
ROUNDS = int(os.environ.get("CARELENS_BENCH_ROUNDS", "2"))
DEVICE = os.environ.get("CARELENS_BENCH_DEVICE", "cpu")
#: The peer with its defaults scores one text at a time: a slice of the turns keeps the run short.
PEER_DEFAULT_TURNS = 600
PAIRS = 1000
RUNTIMES = ([("onnx", "fp32"), ("onnx", "int8"), ("torch", "bf16"), ("torch", "int8"), ("torch", "fp32")] if DEVICE == "cpu"
            else [("torch", "fp16"), ("torch", "bf16"), ("torch", "fp32")])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(registry root, transcript model directory): the model published with its ONNX export, beside churn and
    retaliation models trained on its features of a small synthetic history."""
    from scored_registry import scored_registry
    source = os.environ.get("CARELENS_BENCH_MODEL")
    root = scored_registry(tmp_path_factory.mktemp("speed"), customers=600, source=source,
                           model=None if source else TranscriptModel.from_encoder(max_length=128)).root
    return root, root / "transcripts" / "v1"


@pytest.fixture(scope="module")
def real_text():
    """(unique airline tweets, unique EPITOME (post, response) pairs), shuffled with seed 0."""
    tweets = pd.read_csv(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates()
    pairs = pd.concat([pd.read_csv(path)[["seeker_post", "response_post"]]
                       for path in sorted((SHARED / "data" / "empathy").glob("epitome_*.csv"))]).drop_duplicates()
    rng = np.random.default_rng(0)
    chosen_pairs = pairs.iloc[rng.permutation(len(pairs))[:PAIRS]]
    return tweets.iloc[rng.permutation(len(tweets))[:TURNS]].tolist(), list(chosen_pairs.itertuples(index=False,
                                                                                                   name=None))


def conversations_of(tweets: list[str]) -> list[dict]:
    return [{"conversation_id": f"T{i}", "customer_id": f"C{i}", "contact_id": f"K{i}",
             "turns": [{"speaker": "customer", "text": text}]} for i, text in enumerate(tweets)]


def pair_conversations(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"conversation_id": f"P{i}", "customer_id": f"C{i}", "contact_id": f"K{i}",
             "turns": [{"speaker": "customer", "text": post}, {"speaker": "agent", "text": response}]}
            for i, (post, response) in enumerate(pairs)]


def peer(directory: Path):
    """The same encoder as a Hugging Face sequence classifier (3 labels) in `pipeline("text-classification")`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    classifier = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=3, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return pipeline("text-classification", model=classifier, tokenizer=tokenizer,
                    device=0 if DEVICE.startswith("cuda") else -1)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def encoder_macs(model: TranscriptModel, texts: list[str]) -> float:
    """Multiply-adds the encoder spends on the texts' real tokens (no padding): per token and layer 4·d² (attention
    projections) + 2·d·f (feed-forward) + 2·n·d (scores and weighted sum over a window of n tokens)."""
    config = model.encoder.config
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.array([len(ids) for ids in model.preprocess(texts)["input_ids"]], dtype=float)
    return float(layers * (lengths.sum() * (4 * d * d + 2 * d * f) + (lengths ** 2).sum() * 2 * d))


def sustained_gflops(multiply, shape: tuple[int, int, int], seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of `multiply` on [m, k] @ [k, n], sustained over `seconds`."""
    m, k, n = shape
    a, b = np.random.default_rng(0).standard_normal((2, max(m, k), max(k, n)), dtype=np.float32)
    a, b = np.ascontiguousarray(a[:m, :k]), np.ascontiguousarray(b[:k, :n])
    run = multiply(a, b)
    for _ in range(3):
        run()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - started) / 1e9


def torch_matmul(a: np.ndarray, b: np.ndarray):
    left, right = torch.from_numpy(a), torch.from_numpy(b)
    return lambda: left @ right


def onnx_matmul(a: np.ndarray, b: np.ndarray):
    """One MatMul node in ONNX Runtime (its own GEMM kernels, MLAS), with the weight as an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a.shape[0], b.shape[1]])],
                              [numpy_helper.from_array(b, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a})


class Profile:
    """Seconds spent in each stage of scoring, by wrapping the functions that do the work."""

    STAGES = {"validate conversations": ("carelens.models.scoring", "as_conversations"),
              "turn table (pandas)": ("carelens.models.scoring", "turn_table"),
              "tokenizer": (TranscriptModel, "preprocess"),
              "padding": (TranscriptModel, "padded"),
              "heads": (TranscriptModel, "head_logits"),
              "TF-IDF floor": (TranscriptModel, "floor_probabilities"),
              "conversation features (pandas)": ("carelens.models.scoring", "conversation_features")}

    def __init__(self, monkeypatch, runtime):
        import importlib
        self.seconds = defaultdict(float)
        for stage, (owner, name) in self.STAGES.items():
            target = importlib.import_module(owner) if isinstance(owner, str) else owner
            monkeypatch.setattr(target, name, self.wrapped(stage, getattr(target, name)))
        monkeypatch.setattr(runtime, "pooled", self.wrapped("encoder (runtime)", runtime.pooled))

    def wrapped(self, stage, function):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
        return timed_call


@pytest.mark.slow
@requires_shared
def test_scoring_beats_the_hugging_face_pipeline_on_real_text(bench, real_text, monkeypatch):
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CARELENS_BENCH_DEVICE=cuda but no CUDA device")
    root, directory = bench
    tweets, pairs = real_text
    conversations, paired = conversations_of(tweets), pair_conversations(pairs)
    budget = ScoringOptions().token_budget if DEVICE == "cpu" else 32768
    scorers = {f"{runtime} {precision}": Scorer.load(root, scoring=ScoringOptions(
        runtime=runtime, precision=precision, device=DEVICE, token_budget=budget)) for runtime, precision in RUNTIMES}
    default = Scorer.load(root, scoring=ScoringOptions(device=DEVICE, token_budget=budget))
    chosen = default.transcripts.description
    default_label = f"default ({'auto: ' if DEVICE == 'cpu' else ''}{chosen})"
    classify = peer(directory)
    seconds = defaultdict(list)

    def fresh(scorer: Scorer) -> Scorer:
        if scorer.transcripts.encodings is not None:
            scorer.transcripts.encodings.entries.clear()  # unique texts: nothing may be answered from a past round
        return scorer

    for _ in range(ROUNDS):
        seconds["hf pipeline, defaults"].append(timed(lambda: classify(tweets[:PEER_DEFAULT_TURNS])))
        seconds["hf pipeline, batch_size=32"].append(timed(lambda: classify(tweets, batch_size=32)))
        seconds[f"Scorer.score_transcripts, {default_label}"].append(
            timed(lambda: fresh(default).score_transcripts(conversations)))
        for name, scorer in scorers.items():
            seconds[f"Scorer.score_transcripts, {name}"].append(
                timed(lambda: fresh(scorer).score_transcripts(conversations)))
            pipeline = scorer.transcripts
            seconds[f"bare encoder loop, {name}"].append(
                timed(lambda: pipeline.forward(pipeline.model.preprocess(tweets))))
        seconds[f"EPITOME (post, reply) conversations, 2 turns each, {default_label}"].append(
            timed(lambda: fresh(default).score_transcripts(paired)))  # counted per conversation

    epitome = f"EPITOME (post, reply) conversations, 2 turns each, {default_label}"
    counts = defaultdict(lambda: len(tweets), {"hf pipeline, defaults": PEER_DEFAULT_TURNS, epitome: len(pairs)})
    rates = {name: counts[name] / np.array(values) for name, values in seconds.items()}
    model = default.transcripts.model
    macs = encoder_macs(model, tweets)
    # The encoder's feed-forward shape (a batch of tokens times its weight) and a large square, in each library.
    ceilings = {f"{library} {'x'.join(map(str, shape))}": sustained_gflops(multiply, shape)
                for library, multiply in (("torch", torch_matmul), ("onnxruntime", onnx_matmul))
                for shape in ((2048, 384, 1536), (2048, 2048, 2048))}
    ceiling = max(ceilings.values())
    peer_default, peer_32 = rates["hf pipeline, defaults"], rates["hf pipeline, batch_size=32"]
    rows = [{"contestant": name, "turns/s": float(np.median(rate)),
             "× defaults": float(np.median(rate / peer_default)), "× batch_size=32": float(np.median(rate / peer_32)),
             # Useful multiply-adds of the tweets' real tokens against the best sustained fp32 GEMM rate.
             "% of fp32 GEMM": (float(np.median(rate)) * macs / len(tweets) * 2 / 1e9 / ceiling * 100
                                if name != epitome else None)}
            for name, rate in rates.items()]

    profile = Profile(monkeypatch, fresh(default).transcripts.runtime)
    total = timed(lambda: default.score_transcripts(conversations))
    stages = {stage: round(value, 3) for stage, value in sorted(profile.seconds.items(), key=lambda kv: -kv[1])}
    stages["rest (Python glue, cache)"] = round(total - sum(stages.values()), 3)
    monkeypatch.undo()
    record("transcript_speed", {"tweets": len(tweets), "epitome_pairs": len(pairs), "rounds": ROUNDS,
                                "peer_default_tweets": PEER_DEFAULT_TURNS, "device": DEVICE, "token_budget": budget,
                                "default_runtime": chosen, "runtime_choice": default.runtime_choice,
                                "text": "unique airline tweets (customer turns), unique EPITOME pairs (agent turns)"},
           rows, model_version=str(directory), ceiling_gflops=round(ceiling, 1),
           gemm_gflops={name: round(value, 1) for name, value in ceilings.items()},
           encoder_gmacs_per_tweet=round(macs / len(tweets) / 1e9, 4), profile_s=stages, profile_total_s=round(total, 3),
           per_round_s={name: [round(v, 3) for v in values] for name, values in seconds.items()})
    print("\nfp32 GEMM GFLOP/s:", ", ".join(f"{name} {value:.0f}" for name, value in ceilings.items()))
    print("where the time goes (default runtime, one pass):",
          ", ".join(f"{stage} {value / total:.0%}" for stage, value in stages.items()))
    ours = f"Scorer.score_transcripts, {default_label}"
    bare = f"bare encoder loop, {chosen}"
    print(f"default runtime: {chosen} ({default.runtime_choice['why']})")
    # Every round on its own, not only the median: the API and the bare loop at >= 6x / >= 3x the peers.
    for name in (ours, bare):
        assert (rates[name] / peer_default).min() >= 6 and (rates[name] / peer_32).min() >= 3, name
