"""What each runtime costs in accuracy: a fine-tuned transcript model's sentiment accuracy and empathy macro-F1 on
its own validation and test splits (re-carved from ../shared/data with the seed and fractions its metadata records),
through torch fp32 (the reference), ONNX fp32, ONNX int8 (static, calibrated on the validation split's text, as
publishing does) and torch bf16 — what training records as the model's `runtimes` and `--runtime auto` chooses from;
and how much a turn's score depends on the turns batched with it, per runtime (torch int8, dynamic, too).

$CARELENS_BENCH_MODEL: the saved model directory (e.g. registry/transcripts/v1 after `make train-real`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carelens.models.runtime_choice import ACCURACY_BOUNDS, BATCH_TOLERANCE
from carelens.models.scoring import TranscriptPipeline, runtime_for
from carelens.models.transcript import TranscriptModel, write_exports
from carelens.training.runtime_accuracy import held_out_texts, runtime_accuracy
from carelens.training.splits import load_data
from carelens.training.transcript_options import Options
from conftest import SHARED, requires_shared
from harness import record

SOURCE = os.environ.get("CARELENS_BENCH_MODEL")
RUNTIMES = [("torch", "fp32"), ("torch", "int8"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8")]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(the model, its data split as trained, a folder with its ONNX exports calibrated on the validation text)."""
    metadata = json.loads((Path(SOURCE) / "metadata.json").read_text())
    recorded = metadata["options"]
    options = Options(seed=recorded["seed"], validation_fraction=recorded["validation_fraction"],
                      test_fraction=recorded["test_fraction"], show_progress_bar=False)
    data = load_data([SHARED / "data" / "sentiment" / "airline_tweets_train.csv",
                      *sorted((SHARED / "data" / "empathy").glob("epitome_*.csv"))], options)
    assert data.sizes() == {task: {split: metadata["rows"][task][split] for split in ("train", "validation", "test")}
                            for task in ("sentiment", "empathy")}, "not the split the model was trained with"
    model, exports = TranscriptModel.from_pretrained(SOURCE), tmp_path_factory.mktemp("exports")
    write_exports(model, exports, held_out_texts(data))
    return model, data, exports, metadata


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not SOURCE, reason="set CARELENS_BENCH_MODEL to a fine-tuned transcript model directory")
def test_each_runtime_against_fp32_on_held_out_labels(published):
    model, data, exports, metadata = published
    rows = []
    for split in ("validation", "test"):
        for name, figures in runtime_accuracy(model, data, exports, split).items():
            rows.append({"runtime": name, "split": split, "sentiment accuracy": figures["sentiment_accuracy"],
                         **{f"{m} macro-F1": v for m, v in figures["empathy_macro_f1"].items()},
                         "sentiment accuracy |Δ|": figures.get("sentiment_accuracy_change", 0.0),
                         "worst empathy |Δ|": figures.get("worst_empathy_macro_f1_change", 0.0),
                         "within bounds": figures.get("within_bounds", True)})
    record("runtime_accuracy", {"model": SOURCE, "rows": data.sizes(), "bounds_points": ACCURACY_BOUNDS,
                                "text": "airline tweets and EPITOME pairs, the model's own validation/test splits; int8 "
                                        "calibrated on the validation split's text"},
           rows, model_version=metadata.get("version"))
    for row in rows:
        print(row)
    assert all(row["within bounds"] for row in rows if row["runtime"].endswith("fp32"))


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not SOURCE, reason="set CARELENS_BENCH_MODEL to a fine-tuned transcript model directory")
def test_how_much_a_turn_s_score_depends_on_the_turns_batched_with_it(published):
    """The same 300 distinct airline tweets scored in batches of 4,096 and of 256 padded tokens, and the first 60
    one at a time: the largest change of any sentiment probability, per runtime."""
    model, _, exports, _ = published
    tweets = pd.read_csv(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates()
    texts = tweets.iloc[np.random.default_rng(1).permutation(len(tweets))[:300]].tolist()
    rows = []
    for runtime, precision in RUNTIMES:
        pipeline = TranscriptPipeline(model, runtime_for(model, exports, runtime, precision))
        pipeline.token_budget = 4096
        large = pipeline.predict_sentiment(texts)
        pipeline.token_budget = 256
        small = pipeline.predict_sentiment(texts)
        alone = np.vstack([pipeline.predict_sentiment([text]) for text in texts[:60]])
        rows.append({"runtime": f"{runtime} {precision}",
                     "max |Δp| 4,096 vs 256 tokens": float(np.abs(large - small).max()),
                     "max |Δp| batched vs alone": float(np.abs(large[:60] - alone).max())})
        print(rows[-1])
    record("batch_invariance", {"model": SOURCE, "tweets": len(texts), "text": "airline tweets"}, rows)
    exact = [row for row in rows if row["runtime"] in ("torch fp32", "onnx fp32", "onnx int8")]
    assert all(row["max |Δp| 4,096 vs 256 tokens"] <= BATCH_TOLERANCE and row["max |Δp| batched vs alone"] <=
               BATCH_TOLERANCE for row in exact)
