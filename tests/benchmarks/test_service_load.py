"""`carelens serve` under load: 8 concurrent clients for $CARELENS_LOAD_SECONDS (default 60) sending a mix of valid
POST /v1/flag (with transcript features scored earlier, or with a few transcripts), valid POST /v1/score, invalid
(422) and oversized (413) requests. Asserts no valid request fails and the server's memory grows under 10%; prints
requests/s and latency percentiles per kind, and appends one JSON line to results/service_load.jsonl.

The registry is the one test_service_speed.py uses (churn and retaliation on the features of the packaged MiniLM
encoder, at max_length 128). The bodies are a fixed set, each sent once before timing, so the encoder's cache is warm
and memory can be compared: the timed phase measures the service (parsing, validation, the scoring lock, the tabular
models, reasons) more than the encoder, whose cost test_service_speed.py reports."""
import asyncio
import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from carelens.data.synthetic import generate
from carelens.inference.api import Scorer
from carelens.models.transcript import TranscriptModel
from live_server import serving

SECONDS = float(os.environ.get("CARELENS_LOAD_SECONDS", "60"))
CLIENTS = 8
MAX_BODY_BYTES = 400_000
#: How often each kind of request is sent (weights), and the status it must get.
MIX = {"flag_features": (35, 200), "flag_transcripts": (15, 200), "score": (25, 200), "invalid": (15, 422),
       "oversized": (10, 413)}
VALID = [kind for kind, (_, status) in MIX.items() if status == 200]
RESULTS = Path(__file__).parent / "results" / "service_load.jsonl"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("load"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


def json_rows(frame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def request_bodies(registry: Path) -> dict[str, list[bytes]]:
    """A few distinct bodies of each kind (a fixed set, so that the encoder's cache is warm after the warm-up and
    memory can be compared from then on)."""
    scorer = Scorer.load(registry)
    bodies = {kind: [] for kind in MIX}
    for seed in range(4):
        day = generate(40, seed=300 + seed)
        interactions = json_rows(day.interactions)
        features = json_rows(scorer.score_transcripts(day.conversations))
        few = {c["contact_id"] for c in day.conversations[:5]}
        broken = [dict(record) for record in interactions]
        broken[seed]["answer_time_s"] = -1
        bodies["flag_features"].append({"interactions": interactions, "transcript_features": features,
                                        "capacity": 10})
        bodies["flag_transcripts"].append({"interactions": [r for r in interactions if r["contact_id"] in few],
                                           "transcripts": day.conversations[:5], "capacity": 3})
        bodies["score"].append({"conversations": day.conversations[:8]})
        bodies["invalid"].append({"interactions": broken, "transcript_features": features})
        bodies["oversized"].append({"conversations": day.conversations * 8})
    encoded = {kind: [json.dumps(body).encode() for body in found] for kind, found in bodies.items()}
    assert all(len(body) > MAX_BODY_BYTES for body in encoded["oversized"])
    assert all(len(body) <= MAX_BODY_BYTES for kind in VALID for body in encoded[kind])
    return encoded


PATHS = {"flag_features": "/v1/flag", "flag_transcripts": "/v1/flag", "score": "/v1/score", "invalid": "/v1/flag",
         "oversized": "/v1/score"}


@dataclass
class Outcome:
    kind: str
    status: int  # 0: no answer (a transport error or a client timeout)
    seconds: float


async def client_loop(client: httpx.AsyncClient, bodies: dict, until: float, seed: int) -> list[Outcome]:
    """One client's requests, one at a time, in a seeded random mix, until `until` (monotonic seconds)."""
    chosen = random.Random(seed)
    kinds, weights = list(MIX), [weight for weight, _ in MIX.values()]
    outcomes = []
    while time.monotonic() < until:
        kind = chosen.choices(kinds, weights)[0]
        body = chosen.choice(bodies[kind])
        started = time.perf_counter()
        try:
            response = await client.post(PATHS[kind], content=body, headers={"content-type": "application/json"})
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        outcomes.append(Outcome(kind, status, time.perf_counter() - started))
    return outcomes


async def load(url: str, bodies: dict, seconds: float, seed: int) -> list[Outcome]:
    """CLIENTS clients, each with its own connection, for `seconds`."""
    until = time.monotonic() + seconds
    clients = [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(CLIENTS)]
    try:
        runs = await asyncio.gather(*(client_loop(client, bodies, until, seed * 100 + i)
                                      for i, client in enumerate(clients)))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return [outcome for run in runs for outcome in run]


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def per_kind(outcomes: list[Outcome], seconds: float) -> dict:
    """Per kind: how many, per second, the statuses, and latency percentiles in ms."""
    figures = {}
    for kind in MIX:
        mine = [o for o in outcomes if o.kind == kind]
        latencies = np.array([o.seconds for o in mine]) * 1000
        statuses = {str(s): sum(o.status == s for o in mine) for s in sorted({o.status for o in mine})}
        figures[kind] = {"requests": len(mine), "per_s": round(len(mine) / seconds, 2), "statuses": statuses,
                         **({f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) for q in (50, 95, 99)}
                            if mine else {})}
    return figures


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def table(record: dict) -> str:
    lines = [f"{'kind':<18}{'requests':>9}{'per s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses"]
    for kind, figures in record["kinds"].items():
        lines.append(f"{kind:<18}{figures['requests']:>9}{figures['per_s']:>8}{figures.get('p50_ms', '-'):>9}"
                     f"{figures.get('p95_ms', '-'):>9}{figures.get('p99_ms', '-'):>9}  {figures['statuses']}")
    lines.append(f"all: {record['requests']} requests in {record['seconds']} s, {record['requests_per_s']}/s; valid "
                 f"error rate {record['valid_error_rate']}; server RSS {record['rss_start_mib']} -> "
                 f"{record['rss_end_mib']} MiB ({record['rss_growth']:+.1%})")
    return "\n".join(lines)


@pytest.mark.slow
def test_service_under_load_answers_every_valid_request_without_growing(registry, tmp_path):
    bodies = request_bodies(registry)
    log = tmp_path / "serve.log"
    with serving(registry, log, "--max-body-bytes", str(MAX_BODY_BYTES), "--max-batch", "200") as (url, server):
        for kind, found in bodies.items():  # every body once, so the encoder's cache holds all there is to hold
            for body in found:
                httpx.post(f"{url}{PATHS[kind]}", content=body, headers={"content-type": "application/json"},
                           timeout=120)
        asyncio.run(load(url, bodies, min(10.0, max(3.0, SECONDS / 6)), seed=1))  # worker threads, arenas, caches
        rss_start = rss_bytes(server.pid)
        started = time.monotonic()
        outcomes = asyncio.run(load(url, bodies, SECONDS, seed=2))
        elapsed = time.monotonic() - started
        rss_end = rss_bytes(server.pid)
    valid = [o for o in outcomes if o.kind in VALID]
    failed_valid = [o for o in valid if o.status != 200]
    record = {"name": "service_load", "at": datetime.now().isoformat(timespec="seconds"), "commit": commit(),
              "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "encoder": "all-MiniLM-L6-v2, max_length 128", "clients": CLIENTS, "seconds": round(elapsed, 1),
              "requests": len(outcomes), "requests_per_s": round(len(outcomes) / elapsed, 2),
              "valid_requests": len(valid), "valid_error_rate": len(failed_valid) / max(len(valid), 1),
              "kinds": per_kind(outcomes, elapsed), "rss_start_mib": round(rss_start / 2 ** 20, 1),
              "rss_end_mib": round(rss_end / 2 ** 20, 1), "rss_growth": round(rss_end / rss_start - 1, 4)}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps(record) + "\n")
    print("\n" + table(record))
    assert len(valid) > 0 and not failed_valid, f"{len(failed_valid)} valid requests failed: {failed_valid[:5]}"
    for kind in ("invalid", "oversized"):
        assert all(o.status == MIX[kind][1] for o in outcomes if o.kind == kind), record["kinds"][kind]
    assert record["rss_growth"] < 0.10, record
