"""Latency of POST /v1/flag for 100 customers with transcripts, on the packaged MiniLM encoder: median under 1 s."""
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
OVERHEAD_SECONDS = 0.2


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


@pytest.mark.slow
def test_flag_for_100_customers_answers_within_a_second(scorer, day):
    body = {"interactions": json.loads(day.interactions.to_json(orient="records", date_format="iso")),
            "transcripts": day.conversations, "top_k": 10}
    settings = ServiceSettings(max_body_bytes=10_000_000, max_batch=1_000)
    with TestClient(create_app(scorer, settings)) as client:
        def flag():
            response = client.post("/v1/flag", json=body)
            assert response.status_code == 200 and len(response.json()["customers"]) == 10
        served = timed(flag, REQUESTS)
    direct = timed(lambda: scorer.flag_at_risk(day.interactions, day.conversations, top_k=10), 5)
    turns = sum(len(c["turns"]) for c in day.conversations)
    print(f"\nPOST /v1/flag, {CUSTOMERS} customers, {len(day.conversations)} transcripts ({turns} turns), "
          f"{len(json.dumps(body)):,} bytes, {REQUESTS} requests: median {np.median(served) * 1000:.0f} ms, "
          f"p95 {np.percentile(served, 95) * 1000:.0f} ms; Scorer.flag_at_risk called directly: median "
          f"{np.median(direct) * 1000:.0f} ms")
    assert np.median(served) - np.median(direct) < OVERHEAD_SECONDS
    assert np.median(served) < MEDIAN_SECONDS
