"""`--runtime auto`: the fastest exact runtime for this CPU and model, measured on first load and remembered per CPU."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Callable, Optional

import numpy as np

#: Largest change of any probability a runtime may show between a turn scored alone and in batches of other sizes.
BATCH_TOLERANCE = 1e-4
#: How far from fp32, in points on held-out labels, a faster runtime may be and still be chosen (sentiment accuracy;
#: each empathy mechanism's macro-F1). Training measures it (`runtimes` in the model's metadata).
ACCURACY_BOUNDS = {"sentiment_accuracy": 0.5, "empathy_macro_f1": 1.0}
#: The CPU runtimes `auto` chooses from: fp32 always (the scores the model was validated with), the others when the
#: model's metadata says they stayed within the bounds above.
CANDIDATES = (("onnx", "int8"), ("onnx", "fp32"), ("torch", "bf16"), ("torch", "fp32"))
EXACT = {("onnx", "fp32"), ("torch", "fp32")}
#: The CPU flags of bf16 arithmetic in hardware; without one torch emulates bf16 (on an AVX2-only AMD EPYC 5–7× slower
#: than fp32), and measuring it would only lengthen the first load by most of a minute.
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
NO_NATIVE_BF16 = "not measured: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), so torch emulates it"
#: Distinct generated turns the speed and batch-invariance probe scores (synthetic: the probe ranks runtimes against
#: each other; it measures no figure that is reported).
PROBE_TURNS = 160
ALONE_TURNS = 8


@functools.lru_cache(maxsize=4)
def probe_texts(count: int = PROBE_TURNS) -> tuple[str, ...]:
    """`count` distinct turns of a small seeded generated day, in a fixed order."""
    from carelens.data.synthetic import generate
    conversations = generate(max(20, count // 3), seed=0).conversations
    texts = dict.fromkeys(turn["text"] for c in conversations for turn in c["turns"] if turn["text"].strip())
    return tuple(texts)[:count]


def cpuinfo_field(name: str, cpuinfo: Optional[str] = None) -> Optional[str]:
    """The value of the first `name` line of /proc/cpuinfo (or of the text given); None when absent or unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if ":" in line and line.split(":", 1)[0].strip() == name), None)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (e.g. 'AMD EPYC 9R14'), else what Python knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def runs_bf16_natively(cpuinfo: Optional[str] = None) -> Optional[bool]:
    """Whether the CPU has bf16 arithmetic in hardware, from the flags of /proc/cpuinfo (or the text given); None when
    the flags cannot be read (another system), where bf16 is measured like any candidate."""
    flags = cpuinfo_field("flags", cpuinfo)
    return None if flags is None else bool(NATIVE_BF16_FLAGS & set(flags.split()))


def cache_root() -> Path:
    """What CareLens keeps per machine (runtime choices, compiled trees): $CARELENS_CACHE_DIR, else
    $XDG_CACHE_HOME/carelens, else ~/.cache/carelens."""
    return Path(os.environ.get("CARELENS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                             "carelens"))


def cache_path() -> Path:
    """Where choices are remembered: runtime-choices.json in the `cache_root`."""
    return cache_root() / "runtime-choices.json"


def eligible(metadata: dict, has_export: bool, native_bf16: bool = True) -> list[tuple[str, str]]:
    """The candidates a model may score with: fp32, and those its training found within `ACCURACY_BOUNDS`; the ONNX
    runtimes only when the model was published with its exports; bf16 only on a CPU with bf16 arithmetic."""
    measured = metadata.get("runtimes", {})
    return [(runtime, precision) for runtime, precision in CANDIDATES
            if (has_export or runtime != "onnx") and (native_bf16 or precision != "bf16")
            and ((runtime, precision) in EXACT or measured.get(f"{runtime} {precision}", {}).get("within_bounds"))]


def choice_key(directory: Path, threads: int, token_budget: int) -> str:
    """What a remembered choice holds for: the CPU, the model's content (its checksum list), the libraries, the
    threads and the token budget."""
    sums = (Path(directory) / "SHA256SUMS")
    content = hashlib.sha256(sums.read_bytes()).hexdigest()[:16] if sums.is_file() else str(directory)
    libraries = ",".join(f"{name} {package_version(name)}" for name in ("carelens", "onnxruntime", "torch"))
    return f"{cpu_model()} | model {content} | {libraries} | {threads} threads | budget {token_budget}"


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime `auto` chose, why, and what it measured: per candidate, turns/s on the probe and the largest
    change of a probability between batch sizes."""

    runtime: str
    precision: str
    why: str
    cpu: str
    measured: dict = field(default_factory=dict)
    measured_at: str = ""
    cached: bool = False

    def record(self) -> dict:
        """The choice as the manifest and /v1/health report it."""
        return asdict(self)


def remembered(key: str) -> Optional[RuntimeChoice]:
    """The choice remembered under `key`, or None (none yet, or an unreadable cache, which is measured again)."""
    try:
        entry = json.loads(cache_path().read_text(encoding="utf-8")).get(key)
        return RuntimeChoice(**{**entry, "cached": True}) if entry else None
    except (OSError, ValueError, TypeError):
        return None


def write_remembered(key: str, choice: RuntimeChoice) -> None:
    """Add the choice to the cache file (written whole to a temporary file, then renamed: readers never see half)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        entries[key] = {k: v for k, v in choice.record().items() if k != "cached"}
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home still scores: the choice is measured again next time


def largest_batch_change(score: Callable[[list[str], int], np.ndarray], texts: list[str], budget: int) -> float:
    """The largest change of any probability between the texts scored in `budget`-token batches, in batches a quarter
    that size, and the first few scored one at a time."""
    batched = score(texts, budget)
    smaller = score(texts, max(16, budget // 4))
    alone = np.concatenate([score([text], budget) for text in texts[:ALONE_TURNS]])
    return float(max(np.abs(batched - smaller).max(), np.abs(batched[:ALONE_TURNS] - alone).max()))


def turns_per_second(encode: Callable[[list[str]], object], texts: list[str], rounds: int = 2) -> float:
    """The best of `rounds` timed passes (after one untimed one) of encoding the texts."""
    encode(texts)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def chosen_by_measuring(candidates: list[tuple[str, str]], measure: Callable[[str, str], tuple[float, float]],
                        unmeasured: Optional[dict[str, str]] = None) -> RuntimeChoice:
    """The fastest candidate whose probabilities stay within BATCH_TOLERANCE, with per candidate its turns/s and
    largest change and why it won; `measure(runtime, precision)` gives (turns/s, largest change). `unmeasured` names
    the runtimes left out, each with the reason, which the record keeps beside the measured ones."""
    unmeasured, measured = unmeasured or {}, {}
    for runtime, precision in candidates:
        rate, change = measure(runtime, precision)
        measured[f"{runtime} {precision}"] = {"turns_per_s": round(rate, 1), "largest_batch_change": change,
                                              "batch_invariant": change <= BATCH_TOLERANCE}
    exact = {name: m for name, m in measured.items() if m["batch_invariant"]}
    if not exact:  # cannot happen for fp32 on a sane machine; say so rather than fail to score
        exact = {name: measured[name] for name in measured if tuple(name.split()) in EXACT}
    winner = max(exact, key=lambda name: exact[name]["turns_per_s"])
    others = ", ".join(f"{name} {m['turns_per_s']:.0f}/s" + ("" if m["batch_invariant"] else " (batch-dependent)")
                       for name, m in measured.items() if name != winner)
    why = (f"fastest batch-invariant runtime on this CPU: {winner} {measured[winner]['turns_per_s']:.0f} turns/s"
           + (f" against {others}" if others else "") + " (probe of generated turns)"
           + "".join(f"; {name} {reason}" for name, reason in unmeasured.items()))
    runtime, precision = winner.split()
    measured.update({name: {"not_measured": reason} for name, reason in unmeasured.items()})
    return RuntimeChoice(runtime, precision, why, cpu_model(), measured,
                         datetime.now(timezone.utc).isoformat(timespec="seconds"))
