"""What each runtime costs in accuracy: a fine-tuned transcript model's sentiment accuracy and empathy macro-F1 on
its own validation and test splits (re-carved from ../shared/data with the seed and fractions its metadata records),
through torch fp32 (the reference), torch int8, torch bf16, ONNX fp32 and ONNX int8. The default runtime may lose at most 0.5
points of sentiment accuracy and 1 point of empathy macro-F1 against fp32 on validation.

$CARELENS_BENCH_MODEL: the saved model directory (e.g. registry/transcripts/v1 after `make train-real`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carelens.data.contracts import MECHANISMS
from carelens.models.scoring import ScoringOptions, load_scoring_pipeline
from carelens.models.transcript import TranscriptModel, publish
from carelens.training.calibration import split_metrics
from carelens.training.splits import load_data
from carelens.training.transcript_options import Options
from conftest import SHARED, requires_shared
from harness import record

SOURCE = os.environ.get("CARELENS_BENCH_MODEL")
RUNTIMES = [("torch", "fp32"), ("torch", "int8"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8")]
SENTIMENT_POINTS, EMPATHY_POINTS = 0.5, 1.0


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not SOURCE, reason="set CARELENS_BENCH_MODEL to a fine-tuned transcript model directory")
def test_the_default_runtime_holds_accuracy_against_fp32(tmp_path):
    metadata = json.loads((Path(SOURCE) / "metadata.json").read_text())
    recorded = metadata["options"]
    options = Options(seed=recorded["seed"], validation_fraction=recorded["validation_fraction"],
                      test_fraction=recorded["test_fraction"], show_progress_bar=False)
    data = load_data([SHARED / "data" / "sentiment" / "airline_tweets_train.csv",
                      *sorted((SHARED / "data" / "empathy").glob("epitome_*.csv"))], options)
    assert data.sizes() == {task: {split: metadata["rows"][task][split] for split in ("train", "validation", "test")}
                            for task in ("sentiment", "empathy")}, "not the split the model was trained with"
    publish(TranscriptModel.from_pretrained(SOURCE), tmp_path, {"source": SOURCE})
    figures = {}
    for runtime, precision in RUNTIMES:
        pipeline, _ = load_scoring_pipeline(tmp_path, options=ScoringOptions(runtime=runtime, precision=precision,
                                                                             cache_entries=0))
        for split in ("validation", "test"):
            metrics = split_metrics(pipeline, data, split)
            figures[(runtime, precision, split)] = {
                "sentiment accuracy": 100 * metrics["sentiment"]["accuracy"],
                "sentiment macro-F1": 100 * metrics["sentiment"]["macro_f1"],
                **{f"{m} macro-F1": 100 * metrics[m]["macro_f1"] for m in MECHANISMS}}
    rows = []
    for (runtime, precision, split), values in figures.items():
        reference = figures[("torch", "fp32", split)]
        rows.append({"runtime": f"{runtime} {precision}", "split": split,
                     **{name: round(value, 2) for name, value in values.items()},
                     "worst empathy Δ": round(min(values[k] - reference[k] for k in values if k.split()[0] in MECHANISMS), 2),
                     "sentiment accuracy Δ": round(values["sentiment accuracy"] - reference["sentiment accuracy"], 2)})
    record("runtime_accuracy", {"model": SOURCE, "split_seed": options.seed, "rows": data.sizes(),
                                "text": "airline tweets and EPITOME pairs, the model's own validation/test splits"},
           rows, model_version=metadata.get("version"))
    default = ScoringOptions().chosen
    for row in rows:
        if row["runtime"] == " ".join(default) and row["split"] == "validation":
            assert row["sentiment accuracy Δ"] >= -SENTIMENT_POINTS and row["worst empathy Δ"] >= -EMPATHY_POINTS


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not SOURCE, reason="set CARELENS_BENCH_MODEL to a fine-tuned transcript model directory")
def test_how_much_a_turn_s_score_depends_on_the_turns_batched_with_it(tmp_path):
    """The same 300 distinct airline tweets scored in batches of 4,096 and of 256 padded tokens, and the first 60
    one at a time: the largest change of any sentiment probability, per runtime."""
    tweets = pd.read_csv(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates()
    texts = tweets.iloc[np.random.default_rng(1).permutation(len(tweets))[:300]].tolist()
    publish(TranscriptModel.from_pretrained(SOURCE), tmp_path, {"source": SOURCE})
    rows = []
    for runtime, precision in RUNTIMES:
        pipeline, _ = load_scoring_pipeline(tmp_path, options=ScoringOptions(runtime=runtime, precision=precision,
                                                                             cache_entries=0))
        pipeline.token_budget = 4096
        large = pipeline.predict_sentiment(texts)
        pipeline.token_budget = 256
        small = pipeline.predict_sentiment(texts)
        alone = np.vstack([pipeline.predict_sentiment([text]) for text in texts[:60]])
        rows.append({"runtime": f"{runtime} {precision}",
                     "max |Δp| 4,096 vs 256 tokens": float(np.abs(large - small).max()),
                     "max |Δp| batched vs alone": float(np.abs(large[:60] - alone).max())})
    record("batch_invariance", {"model": SOURCE, "tweets": len(texts), "text": "airline tweets"}, rows)
    fp32 = [row for row in rows if row["runtime"].endswith("fp32")]
    assert all(row["max |Δp| 4,096 vs 256 tokens"] < 1e-5 and row["max |Δp| batched vs alone"] < 1e-5 for row in fp32)
