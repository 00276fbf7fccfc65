"""What every benchmark records: one JSON line per run under results/ (name, machine, inputs, throughput, latency
percentiles, peak memory, model version, git commit) and a table on the terminal."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[2]


def machine() -> str:
    """This machine in words: host, CPU model, cores this process may use, memory."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "cpu") if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{platform.node()}: {model}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB"


def git_commit() -> str:
    """The commit the benchmark ran on, with '+changes' when the work tree differs from it."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 of latencies, in milliseconds."""
    values = np.asarray(seconds, dtype=float) * 1000
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)} if len(values) else {}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record(name: str, inputs: dict, rows: list[dict], model_version: Optional[str] = None,
           peak_mib: Optional[float] = None, **extra) -> dict:
    """Append one benchmark run to results/<name>.jsonl and print its rows as a table; returns the record. Each row
    names a contestant and its throughput (and latency percentiles where measured)."""
    entry = {"name": name, "machine": machine(), "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_commit": git_commit(),
             "model_version": model_version, "inputs": inputs, "rows": rows,
             "peak_mib": round(peak_mib if peak_mib is not None else peak_rss_mib(), 1), **extra}
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    table = Table(title=f"{name} ({entry['machine']}, {entry['git_commit']})")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:,.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    Console(width=160).print(table)
    return entry
