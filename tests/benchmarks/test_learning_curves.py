"""How fast a starter adapts to a centre's own labels: accuracy on held-out tweets and macro-F1 on held-out EPITOME
pairs after `--from` training on N labels drawn only from the training part, picked by `carelens label suggest`'s rule
(least certain, spread by k-means) or at random.

$CARELENS_BENCH_REGISTRY: the registry holding the starter (default ./registry); $CARELENS_BENCH_MODE: finetune
(default: encoder and heads, $CARELENS_BENCH_EPOCHS 8 epochs at $CARELENS_BENCH_LR 5e-5, as docs/REFERENCE.md advises)
or heads (the encoder kept, each head refitted from the one it had)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from carelens.data.adapters import empathy_pairs, read_airline_tweets, read_epitome
from carelens.data.contracts import MECHANISMS, SENTIMENTS
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import load_transcript_model
from carelens.training.label import diverse_uncertain, normalised_entropy
from carelens.training.splits import empathy_strata, split_data
from carelens.training.transcript_metrics import head_metrics
from carelens.training.transcript_options import Options
from carelens.training.transcripts import trained_on
from conftest import SHARED, requires_shared
from harness import record

REGISTRY = os.environ.get("CARELENS_BENCH_REGISTRY", "registry")
MODE = os.environ.get("CARELENS_BENCH_MODE", "finetune")
SEED, HELD_OUT = 13, 0.2
EPOCHS, LR = int(os.environ.get("CARELENS_BENCH_EPOCHS", 8)), float(os.environ.get("CARELENS_BENCH_LR", 5e-5))
ALL_EPOCHS = 2
SENTIMENT_SIZES, EMPATHY_SIZES = (100, 300, 1000, None), (100, 300, None)


def held_out(frame: pd.DataFrame, strata: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    pool, test = train_test_split(frame, test_size=HELD_OUT, random_state=SEED, stratify=strata)
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def picked(pipeline: TranscriptPipeline, pool: pd.DataFrame, task: str, n: int, how: str, seed: int = SEED
           ) -> pd.DataFrame:
    """`n` rows of the pool: the suggested ones (least certain, spread) or a seeded random draw."""
    if n >= len(pool):
        return pool
    if how == "random":
        return pool.sample(n, random_state=seed)
    model = pipeline.model
    if task == "sentiment":
        pooled = pipeline.encode(pool["text"].tolist())
        uncertainty = normalised_entropy(model.postprocess_sentiment(model.head_logits(pooled)[0], pool["text"].tolist()))
    else:
        pooled = pipeline.encode(pool["response"].tolist(), pool["context"].tolist())
        probabilities = model.postprocess_empathy(model.head_logits(pooled)[1], pool["response"].tolist())
        uncertainty = normalised_entropy(probabilities).mean(axis=1)
    return pool.iloc[diverse_uncertain(pooled, uncertainty, n, seed)]


def adapted_figures(task: str, labelled: pd.DataFrame, test: pd.DataFrame, epochs: int) -> dict:
    """The starter adapted `--from` on the labelled rows (split train/validation as training does), scored on test."""
    model, _ = load_transcript_model(REGISTRY)
    options = Options(mode=MODE, max_length=model.max_length, seed=SEED, show_progress_bar=False,
                      strip_handles=bool(model.extra.get("strip_handles")), epochs=epochs, lr=LR)
    empty = {"sentiment": pd.DataFrame(columns=["text", "label"]),
             "empathy": pd.DataFrame(columns=["context", "response", *MECHANISMS])}
    parts = split_data(labelled if task == "sentiment" else empty["sentiment"],
                       labelled if task == "empathy" else empty["empathy"], options)
    if len(labelled):
        trained_on(parts, options, log=lambda _: None, start=model)
    return scored(TranscriptPipeline(model), task, test)


def scored(pipeline: TranscriptPipeline, task: str, test: pd.DataFrame) -> dict:
    if task == "sentiment":
        truth = test["label"].map(SENTIMENTS.index).to_numpy()
        figures = head_metrics(truth, pipeline.predict_sentiment(test["text"].tolist()), SENTIMENTS)
        return {"accuracy": figures["accuracy"], "macro-F1": figures["macro_f1"]}
    probabilities = pipeline.predict_empathy(test["response"].tolist(), test["context"].tolist())
    scores = {}
    for k, mechanism in enumerate(MECHANISMS):
        truth = test[mechanism].astype("Int64").fillna(-100).to_numpy(int)
        scores[mechanism] = head_metrics(truth, probabilities[:, k], ("none", "weak", "strong"))["macro_f1"]
    return {**{f"{m} macro-F1": v for m, v in scores.items()}, "mean macro-F1": float(np.mean(list(scores.values())))}


def curve(task: str, pool: pd.DataFrame, test: pd.DataFrame, sizes) -> list[dict]:
    starter, _ = load_transcript_model(REGISTRY)
    pipeline = TranscriptPipeline(starter, cache_entries=50_000)  # the pool is encoded once for every size
    rows = [{"task": task, "labels": 0, "picked by": "—", **scored(pipeline, task, test)}]
    for n in sizes:
        for how in ("suggested", "random") if n is not None else ("all",):
            labelled = pool if n is None else picked(pipeline, pool, task, n, how)
            # All the labels: ALL_EPOCHS passes, as a full training run takes; a few hundred need more passes.
            rows.append({"task": task, "labels": len(labelled), "picked by": how,
                         **adapted_figures(task, labelled, test, EPOCHS if n is not None else ALL_EPOCHS)})
    return rows


@pytest.mark.slow
@requires_shared
def test_sentiment_learning_curve_from_the_starter():
    tweets = read_airline_tweets(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")
    pool, test = held_out(tweets, tweets["label"])
    rows = curve("sentiment", pool, test, SENTIMENT_SIZES)
    record("learning_curve_sentiment", {"registry": REGISTRY, "mode": MODE, "seed": SEED, "held_out": HELD_OUT,
                                        "text": "airline tweets (labels drawn from the training part only)"}, rows)
    assert rows[0]["labels"] == 0


@pytest.mark.slow
@requires_shared
def test_empathy_learning_curve_from_the_starter():
    pairs = empathy_pairs(pd.concat([read_epitome(p) for p in sorted((SHARED / "data" / "empathy").glob("epitome_*.csv"))],
                                    ignore_index=True))
    strata = empathy_strata(pairs)
    counts = strata.map(strata.value_counts())
    empathy_pool, empathy_test = held_out(pairs, strata.where(counts >= 10, "rare"))
    rows = curve("empathy", empathy_pool, empathy_test, EMPATHY_SIZES)
    record("learning_curve_empathy", {"registry": REGISTRY, "mode": MODE, "seed": SEED, "held_out": HELD_OUT,
                                      "text": "EPITOME pairs (labels drawn from the training part only)"}, rows)
    assert rows[0]["labels"] == 0


@pytest.mark.slow
@requires_shared
def test_suggested_against_random_over_seeds():
    """300 tweets picked by `label suggest`'s rule and at random, each with three seeds: how much the pick matters
    beside the luck of the draw."""
    tweets = read_airline_tweets(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")
    pool, test = held_out(tweets, tweets["label"])
    pipeline = TranscriptPipeline(load_transcript_model(REGISTRY)[0], cache_entries=50_000)
    rows = []
    for seed in (SEED, 1, 2):
        for how in ("suggested", "random"):
            labelled = picked(pipeline, pool, "sentiment", 300, how, seed)
            rows.append({"labels": 300, "picked by": how, "seed": seed,
                         **adapted_figures("sentiment", labelled, test, EPOCHS)})
    record("suggested_over_seeds", {"registry": REGISTRY, "mode": MODE, "held_out": HELD_OUT,
                                    "text": "airline tweets (labels drawn from the training part only)"}, rows)
    assert len(rows) == 6


@pytest.mark.slow
@requires_shared
def test_suggested_choosing_checkpoints_on_a_small_validation_split(monkeypatch):
    """The ablation of keeping the last state: the same 300 suggested tweets per seed, the checkpoint chosen on the
    30 validation rows they leave."""
    import carelens.training.finetune as finetune
    monkeypatch.setattr(finetune, "MIN_SELECTION_ROWS", 0)
    tweets = read_airline_tweets(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")
    pool, test = held_out(tweets, tweets["label"])
    pipeline = TranscriptPipeline(load_transcript_model(REGISTRY)[0], cache_entries=50_000)
    rows = [{"labels": 300, "picked by": "suggested", "seed": seed, "checkpoint": "best on 30 validation rows",
             **adapted_figures("sentiment", picked(pipeline, pool, "sentiment", 300, "suggested", seed), test, EPOCHS)}
            for seed in (SEED, 1, 2)]
    record("suggested_choosing_checkpoints", {"registry": REGISTRY, "mode": MODE, "held_out": HELD_OUT,
                                              "text": "airline tweets (labels drawn from the training part only)"}, rows)
    assert len(rows) == 3
