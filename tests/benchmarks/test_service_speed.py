"""Latency of POST /v1/flag for 100 customers on the packaged MiniLM encoder: with features scored earlier (median
under 1 s) and with raw transcripts (encoder-bound, reported)."""
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from carelens.data.synthetic import generate
from carelens.inference.api import Scorer
from carelens.inference.service import ServiceSettings, create_app
from carelens.models.transcript import TranscriptModel

CUSTOMERS = 100
REQUESTS = 30
MEDIAN_SECONDS = 1.0


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """Churn and retaliation trained with the features of the real encoder (its heads are untrained: latency does not
    depend on their weights)."""
    from scored_registry import scored_registry
    registry = scored_registry(tmp_path_factory.mktemp("served"), customers=600,
                               model=TranscriptModel.from_encoder(max_length=128))
    return Scorer.load(registry.root)


@pytest.fixture(scope="module")
def day():
    return generate(CUSTOMERS, seed=31)


def timed(call, times: int) -> np.ndarray:
    """Seconds each of `times` calls took, after one untimed warm-up call."""
    call()
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def served_median(scorer, body: dict, label: str) -> float:
    """Median seconds of REQUESTS POST /v1/flag calls with `body`, printed with the p95."""
    settings = ServiceSettings(max_body_bytes=10_000_000, max_batch=1_000)
    with TestClient(create_app(scorer, settings)) as client:
        def flag():
            response = client.post("/v1/flag", json=body)
            assert response.status_code == 200 and len(response.json()["customers"]) == 10
        served = timed(flag, REQUESTS)
    print(f"\nPOST /v1/flag, {CUSTOMERS} customers {label}, {len(json.dumps(body)):,} bytes, {REQUESTS} requests: "
          f"median {np.median(served) * 1000:.0f} ms, p95 {np.percentile(served, 95) * 1000:.0f} ms")
    return float(np.median(served))


@pytest.mark.slow
def test_flag_for_100_customers_answers_within_a_second(scorer, day):
    interactions = json.loads(day.interactions.to_json(orient="records", date_format="iso"))
    turns = sum(len(c["turns"]) for c in day.conversations)
    scored = json.loads(scorer.score_transcripts(day.conversations).to_json(orient="records"))
    with_features = served_median(scorer, {"interactions": interactions, "transcript_features": scored, "capacity": 10},
                                  "with transcript features scored earlier")
    raw = {"interactions": interactions, "transcripts": day.conversations, "capacity": 10}
    served_median(scorer, raw, f"with {len(day.conversations)} raw transcripts ({turns} turns), the same body each "
                               f"time (answered from the encoding cache)")
    cache, scorer.transcripts.encodings = scorer.transcripts.encodings, None
    served_median(scorer, raw, f"with {len(day.conversations)} raw transcripts ({turns} turns), encoding cache off")
    scorer.transcripts.encodings = cache
    direct = timed(lambda: scorer.flag_at_risk(day.interactions, day.conversations, capacity=10), 5)
    print(f"Scorer.flag_at_risk with raw transcripts, called directly: median {np.median(direct) * 1000:.0f} ms")
    assert with_features < MEDIAN_SECONDS
