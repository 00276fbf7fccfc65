"""`carelens serve` with concurrent clients: POST /v1/flag for 10 customers a request, with transcript features scored
earlier and with raw transcripts of real text, from 1 and from $CARELENS_CONCURRENCY_CLIENTS (default 8) clients for
$CARELENS_LOAD_SECONDS (default 60) each, then from as many clients to `serve --workers $CARELENS_SERVE_WORKERS` (default:
a process per core): requests/s, p50 and p99, errors; and, in process, where one request's time
goes. The requests' bodies are distinct: with transcripts, every turn is a distinct airline tweet (customer) or EPITOME
reply (agent), and the server runs without its encoding cache, so every turn is encoded each time it comes.

$CARELENS_REGISTRY: a registry of all three models (default: the packaged MiniLM with untrained heads and tabular
models trained on its features, as test_service_load.py uses); the runtime is the registry's `auto` choice."""
import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from carelens.data.synthetic import generate
from carelens.inference.api import Scorer
from carelens.inference.service.routes import SCORED_COLUMNS
from carelens.models.transcript import TranscriptModel
from conftest import SHARED, requires_shared
from harness import record
from live_server import serving

SECONDS = float(os.environ.get("CARELENS_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("CARELENS_CONCURRENCY_CLIENTS", "8"))
#: `serve --workers` of the second server: a process per core this process may use.
WORKERS = int(os.environ.get("CARELENS_SERVE_WORKERS", len(os.sched_getaffinity(0))))
CUSTOMERS_PER_REQUEST = 10
BODIES = 40


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if os.environ.get("CARELENS_REGISTRY"):
        return Path(os.environ["CARELENS_REGISTRY"])
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("concurrency"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


def real_turns() -> tuple[list[str], list[str]]:
    """(distinct airline tweets, distinct EPITOME replies), shuffled with seed 0."""
    tweets = pd.read_csv(SHARED / "data" / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates()
    replies = pd.concat([pd.read_csv(path)["response_post"] for path in
                         sorted((SHARED / "data" / "empathy").glob("epitome_*.csv"))]).drop_duplicates()
    rng = np.random.default_rng(0)
    return (tweets.iloc[rng.permutation(len(tweets))].tolist(), replies.iloc[rng.permutation(len(replies))].tolist())


def with_real_text(conversations: list[dict], tweets: list[str], replies: list[str]) -> list[dict]:
    """The conversations with each customer turn a tweet and each agent turn a reply not used before (taken from
    the lists)."""
    real = json.loads(json.dumps(conversations))
    for conversation in real:
        for turn in conversation["turns"]:
            turn["text"] = (tweets if turn["speaker"] == "customer" else replies).pop()
    return real


@pytest.fixture(scope="module")
def bodies(registry) -> dict[str, list[bytes]]:
    """BODIES distinct requests of each kind: 10 customers' contacts with their features, or with real-text
    transcripts."""
    scorer, (tweets, replies) = Scorer.load(registry), real_turns()
    day = generate(BODIES * CUSTOMERS_PER_REQUEST * 2, seed=500)
    interactions = json.loads(day.interactions.to_json(orient="records", date_format="iso"))
    by_contact = {c["contact_id"]: c for c in day.conversations}
    answered = [r for r in interactions if r["contact_id"] in by_contact]
    found = {"features": [], "transcripts": []}
    for start in range(0, BODIES * CUSTOMERS_PER_REQUEST, CUSTOMERS_PER_REQUEST):
        rows = answered[start:start + CUSTOMERS_PER_REQUEST]
        conversations = with_real_text([by_contact[r["contact_id"]] for r in rows], tweets, replies)
        features = json.loads(scorer.score_transcripts(conversations)[SCORED_COLUMNS].to_json(orient="records"))
        found["features"].append({"interactions": rows, "transcript_features": features, "capacity": 3})
        found["transcripts"].append({"interactions": rows, "transcripts": conversations, "capacity": 3})
    return {kind: [json.dumps(body).encode() for body in listed] for kind, listed in found.items()}


async def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """Each client posts the bodies in turn (client i starting at body i) until the time is up."""
    latencies, errors = [], 0

    async def client_loop(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            until, sent = time.monotonic() + seconds, index
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    status = (await client.post("/v1/flag", content=bodies[sent % len(bodies)],
                                                headers={"content-type": "application/json"})).status_code
                except httpx.HTTPError:
                    status = 0
                latencies.append(time.perf_counter() - started)
                errors += status != 200
                sent += clients

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    seconds_each = np.array(latencies)
    return {"clients": clients, "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(seconds_each, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(seconds_each, 99)) * 1000, 1), "errors": errors}


def time_split(registry: Path, body: bytes) -> dict:
    """Where one request's time goes, in process (median of 5): encoder and transcript features, the rest of
    flagging (contract checks, the tabular models, reasons, scorecards)."""
    scorer, request = Scorer.load(registry), json.loads(body)
    conversations, interactions = request["transcripts"], request["interactions"]
    encoder, flag = [], []
    for round_ in range(6):
        fresh = [{**c, "turns": [{**t, "text": f"{t['text']} ({round_})"} for t in c["turns"]]} for c in conversations]
        started = time.perf_counter()
        features = scorer.score_transcripts(fresh)
        middle = time.perf_counter()
        scorer.flag_at_risk(interactions, transcript_features=features[SCORED_COLUMNS], capacity=3)
        encoder.append(middle - started)
        flag.append(time.perf_counter() - middle)
    return {"transcript_features_ms": round(float(np.median(encoder[1:])) * 1000, 1),
            "flagging_from_features_ms": round(float(np.median(flag[1:])) * 1000, 1)}


@pytest.mark.slow
@requires_shared
def test_flag_requests_from_concurrent_clients(registry, bodies, tmp_path):
    rows, runtime = [], None
    for workers in sorted({1, WORKERS}):
        # No encoding cache: the bodies come round again within the run, and remembered turns would flatter the figure.
        with serving(registry, tmp_path / f"serve{workers}.log", "--cache-entries", "0", "--workers", str(workers)) \
                as (url, _):
            runtime = httpx.get(f"{url}/v1/health").json()["runtime"]
            for kind in ("features", "transcripts"):
                for clients in (1, CLIENTS) if workers == 1 else (CLIENTS,):
                    asyncio.run(load(url, bodies[kind][:clients], clients, 2))  # warm-up: threads, tokenizers
                    rows.append({"workers": workers, "with": kind,
                                 **asyncio.run(load(url, bodies[kind], clients, SECONDS))})
                    print(rows[-1])
    split = time_split(registry, bodies["transcripts"][0])
    print("one request with transcripts, in process:", split)
    record("service_concurrency", {"seconds": SECONDS, "customers_per_request": CUSTOMERS_PER_REQUEST,
                                   "bodies": BODIES, "text": "real: airline tweets and EPITOME replies, each once"},
           rows, runtime=runtime, one_request=split)
    assert all(row["errors"] == 0 for row in rows)
