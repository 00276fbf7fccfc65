"""What a starter transcript model reads in real text it never saw: all airline tweets (accuracy, macro-F1, expected
calibration error), each EPITOME mechanism on a seeded validation split beside the keyword baseline, and how much each
mechanism moves when a reply is scored with another seeker's post (the context-swap check).

$CARELENS_BENCH_REGISTRY: the registry holding the starter (default ./registry); $CARELENS_BENCH_VERSION (latest)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from carelens.data.adapters import read_airline_tweets
from carelens.data.contracts import MECHANISMS, SENTIMENTS
from carelens.models.scoring import ScoringOptions, load_scoring_pipeline
from carelens.training.transcript_metrics import head_metrics
from carelens.training.weak_labels import keyword_levels
from conftest import SHARED, requires_shared
from harness import record

REGISTRY = os.environ.get("CARELENS_BENCH_REGISTRY", "registry")
VERSION = os.environ.get("CARELENS_BENCH_VERSION", "latest")
#: The EPITOME validation split: this share of each mechanism's file, stratified by level, with this seed.
VALIDATION_SHARE, SPLIT_SEED = 0.2, 13


def epitome_validation(mechanism: str) -> pd.DataFrame:
    """The seeded validation part of one mechanism's EPITOME file (the starter never saw any of EPITOME)."""
    frame = pd.read_csv(SHARED / "data" / "empathy" / f"epitome_{mechanism}_train.csv")
    _, validation = train_test_split(frame, test_size=VALIDATION_SHARE, random_state=SPLIT_SEED,
                                     stratify=frame["level"])
    return validation.reset_index(drop=True)


def one_hot(levels: np.ndarray) -> np.ndarray:
    return np.eye(3)[levels]


@pytest.mark.slow
@requires_shared
def test_the_starter_on_real_text_it_never_saw():
    pipeline, metadata = load_scoring_pipeline(REGISTRY, VERSION, ScoringOptions(runtime="torch", cache_entries=0))
    tweets = read_airline_tweets(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")
    truth = tweets["label"].map(SENTIMENTS.index).to_numpy()
    sentiment = head_metrics(truth, pipeline.predict_sentiment(tweets["text"].tolist()), SENTIMENTS)
    rows = [{"head": "sentiment (all airline tweets)", "rows": sentiment["n"], "accuracy": sentiment["accuracy"],
             "macro-F1": sentiment["macro_f1"], "ECE": sentiment["ece"],
             "macro-F1 95% CI": "{:.3f}–{:.3f}".format(*sentiment["intervals"]["macro_f1"])}]
    swaps = {}
    for k, mechanism in enumerate(MECHANISMS):
        validation = epitome_validation(mechanism)
        levels = validation["level"].to_numpy(int)
        replies, posts = validation["response_post"].tolist(), validation["seeker_post"].tolist()
        probabilities = pipeline.predict_empathy(replies, posts)
        own = head_metrics(levels, probabilities[:, k], ("none", "weak", "strong"))
        keyword = head_metrics(levels, one_hot(keyword_levels(replies)[mechanism]), ("none", "weak", "strong"))
        rotated = posts[1:] + posts[:1]  # each reply beside another seeker's post
        moved = np.abs(pipeline.predict_empathy(replies, rotated)[:, k] - probabilities[:, k]).max(axis=1)
        swaps[mechanism] = {"mean": float(moved.mean()), "p95": float(np.percentile(moved, 95)),
                            "max": float(moved.max())}
        rows.append({"head": f"{mechanism} (EPITOME validation)", "rows": own["n"], "accuracy": own["accuracy"],
                     "macro-F1": own["macro_f1"], "ECE": own["ece"],
                     "macro-F1 95% CI": "{:.3f}–{:.3f}".format(*own["intervals"]["macro_f1"]),
                     "keyword macro-F1": keyword["macro_f1"], "context swap: mean |Δp|": swaps[mechanism]["mean"]})
    record("starter_quality", {"registry": REGISTRY, "training_text": metadata.get("training_text"),
                               "epitome_split": {"share": VALIDATION_SHARE, "seed": SPLIT_SEED},
                               "text": "all 11,711 airline tweets; EPITOME validation pairs (real text)"},
           rows, metadata.get("version"), context_swap=swaps)
    assert metadata.get("training_text") == "public-permissive"
    for row in rows[1:]:
        assert row["macro-F1"] > row["keyword macro-F1"], row["head"]
