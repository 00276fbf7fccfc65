"""The nightly job at scale: `carelens nightly` (local engine, packaged MiniLM encoder, default runtime) on synthetic
days of about 10,000 and 100,000 conversations: conversations/s of both and peak memory flat (the larger day's peak
within 10% of the smaller's), in = out + dead exactly; and what the encoding cache saves on the smaller day, measured
in the same run. Synthetic turns repeat their phrasing, so the cache flatters conversations/s here; real-text figures
are in test_transcript_speed.py and test_nightly_speed.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import record

from carelens.data.synthetic import generate, write_synthetic
from carelens.inference.nightly.storage import read_parts
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.scoring import SCORING_CACHE_ENTRIES
from carelens.models.transcript import TranscriptModel

#: About 97% of contacts are answered and have a conversation: just over 10,000 and 100,000 conversations.
DAYS = {"10k": 10_350, "100k": 103_500}
SEED = 41
TIME = Path("/usr/bin/time")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Churn and retaliation trained with the features of the real encoder (heads untrained: speed and memory do not
    depend on their weights)."""
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("batch"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Per size, (folder, conversations, contacts) of a synthetic day (the same seed, so the smaller day's customers
    are drawn like the larger's)."""
    made = {}
    for name, customers in DAYS.items():
        folder = tmp_path_factory.mktemp(f"day{name}")
        data = generate(customers, seed=SEED)
        write_synthetic(data, folder)
        made[name] = (folder, len(data.conversations), len(data.interactions))
    return made


def measured(command: str, arguments: list[str]) -> tuple[float, int, dict]:
    """(wall seconds, peak resident bytes, manifest) of one carelens process, measured by /usr/bin/time -v."""
    if not TIME.is_file():
        pytest.skip("needs /usr/bin/time (Debian package time) to measure peak memory")
    finished = subprocess.run([str(TIME), "-v", str(Path(sys.executable).parent / "carelens"), command,
                               "--no-progress", *arguments], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", finished.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", finished.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    out = Path(arguments[arguments.index("--out") + 1])
    return seconds, peak_kb * 1024, json.loads((out / "_manifest.json").read_text())


@pytest.mark.slow
def test_nightly_peak_memory_is_flat_from_10k_to_100k_conversations(registry, days, tmp_path):
    rows = []
    for name, (folder, conversations, contacts) in days.items():
        seconds, peak, manifest = measured("nightly", [
            "--transcripts", str(folder / "transcripts.jsonl"), "--interactions", str(folder / "interactions.parquet"),
            "--registry", str(registry), "--out", str(tmp_path / name), "--capacity", "500"])
        assert manifest["balanced"] and not manifest["failures"]
        rows.append({"day": name, "conversations": conversations, "contacts": contacts, "seconds": seconds,
                     "conversations/s": conversations / seconds, "peak MiB": peak / 2 ** 20,
                     "features stage s": manifest["timings_s"]["features"]})
    record("nightly_scale", {"days": DAYS, "seed": SEED, "encoder": "packaged MiniLM, max_length 128",
                             "text": "synthetic (templated turns: the encoding cache answers repeats)"}, rows,
           model_version="v1", peak_mib=max(row["peak MiB"] for row in rows))
    small, large = rows
    assert large["peak MiB"] <= 1.10 * small["peak MiB"]


@pytest.mark.slow
def test_the_encoding_cache_speeds_scoring_without_changing_scores(registry, days, tmp_path):
    folder = days["10k"][0]
    common = ["--transcripts", str(folder / "transcripts.jsonl"), "--registry", str(registry)]
    cold, cold_peak, _ = measured("score", [*common, "--out", str(tmp_path / "cold"), "--cache-entries", "0"])
    warm, warm_peak, _ = measured("score", [*common, "--out", str(tmp_path / "warm")])
    record("encoding_cache", {"conversations": days["10k"][1], "text": "synthetic"},
           [{"cache": "off", "seconds": cold, "peak MiB": cold_peak / 2 ** 20},
            {"cache": f"{SCORING_CACHE_ENTRIES:,} entries", "seconds": warm, "peak MiB": warm_peak / 2 ** 20}],
           model_version="v1",
           peak_mib=max(cold_peak, warm_peak) / 2 ** 20)
    without, with_cache = read_parts(tmp_path / "cold"), read_parts(tmp_path / "warm")
    np.testing.assert_allclose(with_cache[FEATURE_COLUMNS].to_numpy(float), without[FEATURE_COLUMNS].to_numpy(float),
                               atol=1e-5)
    assert warm < cold
