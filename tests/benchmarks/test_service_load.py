"""`carelens serve` under load: 8 concurrent clients for $CARELENS_LOAD_SECONDS (default 60) sending a mix of valid
POST /v1/flag (with transcript features scored earlier, or with a few transcripts), valid POST /v1/score, invalid
(422) and oversized (413) requests; then the same 8 clients again beside $CARELENS_LOAD_STALLED (default 40) hostile
ones that connect and send nothing, send their headers a byte at a time, send a large body without the API key, or
send a body with the key a little at a time. Asserts no valid request fails in either phase, the valid requests' p99
beside the hostile clients is within 2x of the p99 without them, and the server's memory grows under 10% while they
run; prints requests/s and latency percentiles per kind, and appends one JSON line to results/service_load.jsonl.

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
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from carelens.data.synthetic import generate
from carelens.inference.api import Scorer
from carelens.inference.service.dependencies import API_KEY_HEADER
from carelens.models.transcript import TranscriptModel
from live_server import serving

SECONDS = float(os.environ.get("CARELENS_LOAD_SECONDS", "60"))
CLIENTS = 8
STALLED = int(os.environ.get("CARELENS_LOAD_STALLED", "40"))
KEY = "load-test-key"
#: What each hostile client does on every connection, in turn: nothing; its headers a byte a second; a body of
#: 300,000 bytes without the key (its first 2 KiB only); a body with the key, 1 KiB every half second.
STALLS = ("silent", "slow_head", "no_key", "slow_body")
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


def stalled_request(kind: str) -> tuple[bytes, bytes]:
    """(what a hostile client sends at once, what it then sends a piece at a time) for one connection."""
    head = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if kind == "silent":
        return b"", b""
    if kind == "slow_head":
        return head, b"X-Padding: " + b"a" * 10_000
    if kind == "no_key":
        return head + b"Content-Length: 300000\r\n\r\n" + b"[" * 2048, b""
    return head + API_KEY_HEADER.encode() + b": " + KEY.encode() + b"\r\nContent-Length: 300000\r\n\r\n", b"[" * 300_000


async def stalled_connection(host: str, port: int, kind: str, until: float) -> str:
    """One hostile connection until the server closes it (or `until`): its status line, 'closed' when the server
    closed it without an answer, 'reset' when the server reset it while the client was still sending, or 'open' when
    it was still open at the end."""
    reader, writer = await asyncio.open_connection(host, port)
    first, dribbled = stalled_request(kind)
    step, pause = (1, 1.0) if kind == "slow_head" else (1024, 0.5)
    try:
        writer.write(first)
        received = asyncio.ensure_future(reader.read())  # everything until the server closes the connection
        for start in range(0, len(dribbled), step):
            if received.done() or time.monotonic() >= until:
                break
            writer.write(dribbled[start:start + step])
            await asyncio.sleep(pause)
        answer = await asyncio.wait_for(received, max(0.1, until - time.monotonic()))
        return answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "closed"
    except asyncio.TimeoutError:
        return "open"
    except ConnectionError:
        return "reset"
    finally:
        writer.close()


async def stalled_client(url: str, kind: str, until: float) -> list[str]:
    """One hostile client: a new connection of its kind each time the server closes the last one, until `until`."""
    host, port = url.removeprefix("http://").split(":")
    outcomes = []
    while time.monotonic() < until:
        outcomes.append(await stalled_connection(host, int(port), kind, until))
    return outcomes


async def load(url: str, bodies: dict, seconds: float, seed: int, stalled: int = 0
               ) -> tuple[list[Outcome], dict[str, dict[str, int]]]:
    """(the valid clients' outcomes, per kind of hostile client how its connections ended): CLIENTS clients, each
    with its own connection, beside `stalled` hostile ones, for `seconds`."""
    until = time.monotonic() + seconds
    clients = [httpx.AsyncClient(base_url=url, timeout=120, headers={API_KEY_HEADER: KEY}) for _ in range(CLIENTS)]
    kinds = [STALLS[i % len(STALLS)] for i in range(stalled)]
    try:
        runs, hostile = await asyncio.gather(
            asyncio.gather(*(client_loop(client, bodies, until, seed * 100 + i) for i, client in enumerate(clients))),
            asyncio.gather(*(stalled_client(url, kind, until) for kind in kinds)))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    ended = {kind: {} for kind in sorted(set(kinds))}
    for kind, outcomes in zip(kinds, hostile):
        for outcome in outcomes:
            ended[kind][outcome] = ended[kind].get(outcome, 0) + 1
    return [outcome for run in runs for outcome in run], ended


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


def table(phase: dict) -> str:
    lines = [f"{phase['stalled_clients']} hostile clients beside {CLIENTS} valid ones",
             f"{'kind':<18}{'requests':>9}{'per s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses"]
    for kind, figures in phase["kinds"].items():
        lines.append(f"{kind:<18}{figures['requests']:>9}{figures['per_s']:>8}{figures.get('p50_ms', '-'):>9}"
                     f"{figures.get('p95_ms', '-'):>9}{figures.get('p99_ms', '-'):>9}  {figures['statuses']}")
    lines.append(f"all: {phase['requests']} requests in {phase['seconds']} s, {phase['requests_per_s']}/s; valid "
                 f"errors {phase['valid_errors']} of {phase['valid_requests']}; valid p99 {phase['valid_p99_ms']} ms; "
                 f"server RSS {phase['rss_start_mib']} -> {phase['rss_end_mib']} MiB ({phase['rss_growth']:+.1%}), "
                 f"peak {phase['rss_peak_mib']} MiB")
    lines += [f"hostile {kind}: {ended}" for kind, ended in phase["hostile"].items()]
    return "\n".join(lines)


class PeakRSS:
    """The largest resident memory of a process, sampled every 0.2 s while in the `with` block."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, rss_bytes(pid), threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def measured_phase(url: str, bodies: dict, server, seed: int, stalled: int) -> tuple[dict, list[Outcome]]:
    """(the figures of one timed phase, the valid requests that failed)."""
    rss_start, started = rss_bytes(server.pid), time.monotonic()
    with PeakRSS(server.pid) as peak:
        outcomes, hostile = asyncio.run(load(url, bodies, SECONDS, seed=seed, stalled=stalled))
    elapsed, rss_end = time.monotonic() - started, rss_bytes(server.pid)
    valid = [o for o in outcomes if o.kind in VALID]
    failed = [o for o in valid if o.status != 200]
    for kind in ("invalid", "oversized"):
        assert all(o.status == MIX[kind][1] for o in outcomes if o.kind == kind), per_kind(outcomes, elapsed)[kind]
    return {"stalled_clients": stalled, "seconds": round(elapsed, 1), "requests": len(outcomes),
            "requests_per_s": round(len(outcomes) / elapsed, 2), "valid_requests": len(valid),
            "valid_errors": len(failed), "valid_error_rate": len(failed) / max(len(valid), 1),
            "valid_p99_ms": round(float(np.percentile([o.seconds for o in valid], 99)) * 1000, 1),
            "kinds": per_kind(outcomes, elapsed), "hostile": hostile, "rss_start_mib": round(rss_start / 2 ** 20, 1),
            "rss_end_mib": round(rss_end / 2 ** 20, 1), "rss_peak_mib": round(peak.peak / 2 ** 20, 1),
            "rss_growth": round(rss_end / rss_start - 1, 4), "rss_peak_growth": round(peak.peak / rss_start - 1, 4)
            }, failed


@pytest.mark.slow
def test_service_under_load_answers_every_valid_request_without_growing(registry, tmp_path):
    bodies = request_bodies(registry)
    log = tmp_path / "serve.log"
    with serving(registry, log, "--max-body-bytes", str(MAX_BODY_BYTES), "--max-batch", "200", "--api-key-env",
                 "CARELENS_LOAD_KEY", env={"CARELENS_LOAD_KEY": KEY}) as (url, server):
        for kind, found in bodies.items():  # every body once, so the encoder's cache holds all there is to hold
            for body in found:
                httpx.post(f"{url}{PATHS[kind]}", content=body, timeout=120,
                           headers={"content-type": "application/json", API_KEY_HEADER: KEY})
        asyncio.run(load(url, bodies, min(10.0, max(3.0, SECONDS / 6)), seed=1, stalled=STALLED))  # threads, arenas
        alone, failed_alone = measured_phase(url, bodies, server, seed=2, stalled=0)
        beside, failed_beside = measured_phase(url, bodies, server, seed=3, stalled=STALLED)
    record = {"name": "service_load", "at": datetime.now().isoformat(timespec="seconds"), "commit": commit(),
              "machine": {"node": platform.node(), "cpus": os.cpu_count(), "cpu": cpu_model(),
                          "python": platform.python_version()},
              "encoder": "all-MiniLM-L6-v2, max_length 128", "clients": CLIENTS, "phases": [alone, beside],
              "p99_ratio": round(beside["valid_p99_ms"] / alone["valid_p99_ms"], 3)}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps(record) + "\n")
    print("\n" + table(alone) + "\n\n" + table(beside) + f"\np99 beside / alone: {record['p99_ratio']}")
    for failed in (failed_alone, failed_beside):
        assert not failed, f"{len(failed)} valid requests failed: {failed[:5]}"
    assert record["p99_ratio"] <= 2, record
    assert beside["rss_growth"] < 0.10 and beside["rss_peak_growth"] < 0.10, beside


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
