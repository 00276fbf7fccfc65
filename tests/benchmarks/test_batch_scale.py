"""The nightly batch at scale: `carelens score` (local engine, packaged MiniLM encoder) over 100,000 synthetic
conversations and their contacts: peak memory under 2 GB and in = out + dead exactly; and what the encoding cache
saves on 10,000 of them, measured in the same run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carelens.data.readers import write_transcripts
from carelens.data.synthetic import generate, write_synthetic
from carelens.inference.batch import read_parts
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.transcript import TranscriptModel

CUSTOMERS = 103_500  # about 97% of contacts are answered and have a conversation: just over 100,000
PEAK_BYTES = 2 * 1024 ** 3
SLICE = 10_000
TIME = Path("/usr/bin/time")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Churn and retaliation trained with the features of the real encoder (heads untrained: speed and memory do not
    depend on their weights)."""
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("batch"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    folder = tmp_path_factory.mktemp("day")
    data = generate(CUSTOMERS, seed=41)
    write_synthetic(data, folder)
    write_transcripts(data.conversations[:SLICE], folder / "slice.jsonl")
    return folder, len(data.conversations), len(data.interactions)


def measured(arguments: list[str]) -> tuple[float, int, dict]:
    """(wall seconds, peak resident bytes, manifest) of one `carelens score` process, measured by /usr/bin/time -v."""
    if not TIME.is_file():
        pytest.skip("needs /usr/bin/time (Debian package time) to measure peak memory")
    command = [str(TIME), "-v", str(Path(sys.executable).parent / "carelens"), "score", "--no-progress", *arguments]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", finished.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", finished.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    out = Path(arguments[arguments.index("--out") + 1])
    return seconds, peak_kb * 1024, json.loads((out / "_manifest.json").read_text())


@pytest.mark.slow
def test_100k_conversations_score_in_bounded_memory_and_add_up(registry, day, tmp_path):
    folder, conversations, contacts = day
    seconds, peak, manifest = measured(["--transcripts", str(folder / "transcripts.jsonl"), "--interactions",
                                        str(folder / "interactions.parquet"), "--registry", str(registry),
                                        "--out", str(tmp_path / "out")])
    print(f"\ncarelens score, {conversations:,} conversations + {contacts:,} contacts: {seconds:.0f} s wall "
          f"({conversations / seconds:,.0f} conversations/s), peak RSS {peak / 2 ** 20:,.0f} MiB, "
          f"counts {manifest['by_input']}")
    assert peak < PEAK_BYTES
    assert manifest["balanced"] and manifest["counts"] == {"in": conversations + contacts,
                                                           "out": conversations + contacts, "dead": 0}


@pytest.mark.slow
def test_the_encoding_cache_speeds_scoring_without_changing_scores(registry, day, tmp_path):
    folder = day[0]
    common = ["--transcripts", str(folder / "slice.jsonl"), "--registry", str(registry)]
    cold, cold_peak, _ = measured([*common, "--out", str(tmp_path / "cold"), "--cache-entries", "0"])
    warm, warm_peak, _ = measured([*common, "--out", str(tmp_path / "warm")])
    print(f"\n{SLICE:,} conversations: {cold:.0f} s without the encoding cache, {warm:.0f} s with it "
          f"({cold / warm:.1f}x); peak RSS {cold_peak / 2 ** 20:,.0f} / {warm_peak / 2 ** 20:,.0f} MiB")
    without, with_cache = read_parts(tmp_path / "cold"), read_parts(tmp_path / "warm")
    np.testing.assert_allclose(with_cache[FEATURE_COLUMNS].to_numpy(float), without[FEATURE_COLUMNS].to_numpy(float),
                               atol=1e-5)
    assert warm < cold
