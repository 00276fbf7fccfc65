"""`carelens nightly` end to end against the path it replaces (`carelens score`, then `Scorer.flag_at_risk` on the
scored features), on a synthetic day of about 20,000 conversations, in one run on this machine."""
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from carelens.data.synthetic import generate, write_synthetic
from carelens.models.transcript import TranscriptModel

CUSTOMERS = 20_700  # about 97% of contacts are answered and have a conversation: just over 20,000
SEED = 43  # not a training seed
TIME = Path("/usr/bin/time")
RESULTS = Path(__file__).parent / "results" / "nightly.jsonl"
FLAG_AFTER_SCORE = """
import sys, pandas as pd
from carelens.inference.api import Scorer
from carelens.inference.batch import read_parts
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
scorer = Scorer.load(sys.argv[1])
flagged = scorer.flag_at_risk(sys.argv[2], transcript_features=read_parts(sys.argv[3], columns=[*KEYS, *FEATURE_COLUMNS]))
flagged.to_parquet(sys.argv[4])
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Churn and retaliation trained with the features of the packaged MiniLM encoder (heads untrained: speed does not
    depend on their weights)."""
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("nightly"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


def measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak resident bytes) of one process, by /usr/bin/time -v."""
    finished = subprocess.run([str(TIME), "-v", *command], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", finished.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", finished.stderr)
    return int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3)), peak_kb * 1024


@pytest.mark.slow
def test_nightly_against_score_then_flag_on_20k_conversations(registry, tmp_path):
    if not TIME.is_file():
        pytest.skip("needs /usr/bin/time (Debian package time) to measure peak memory")
    day = generate(CUSTOMERS, seed=SEED)
    write_synthetic(day, tmp_path / "day")
    transcripts, interactions = tmp_path / "day" / "transcripts.jsonl", tmp_path / "day" / "interactions.parquet"
    carelens = str(Path(sys.executable).parent / "carelens")
    common = ["--transcripts", str(transcripts), "--interactions", str(interactions), "--registry", str(registry),
              "--no-progress"]
    nightly_s, nightly_peak = measured([carelens, "nightly", *common, "--out", str(tmp_path / "nightly")])
    score_s, score_peak = measured([carelens, "score", *common, "--out", str(tmp_path / "score")])
    flag_s, flag_peak = measured([sys.executable, "-c", FLAG_AFTER_SCORE, str(registry), str(interactions),
                                  str(tmp_path / "score"), str(tmp_path / "flagged.parquet")])
    manifest = json.loads((tmp_path / "nightly" / "_manifest.json").read_text())
    ours = pd.read_parquet(tmp_path / "nightly" / "flagged.parquet")
    theirs = pd.read_parquet(tmp_path / "flagged.parquet")
    assert ours["customer_id"].tolist() == theirs["customer_id"].tolist()
    assert manifest["balanced"] and manifest["stages"]["features"]["out"] >= 20_000
    record = {"name": "nightly_vs_score_then_flag", "machine": f"{platform.node()} ({platform.processor() or 'cpu'})",
              "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "conversations": manifest["stages"]["features"]["in"],
              "contacts": manifest["stages"]["predictions"]["in"], "flagged": len(ours),
              "nightly_s": nightly_s, "nightly_peak_mib": nightly_peak / 2 ** 20, "nightly_stages_s": manifest["timings_s"],
              "score_s": score_s, "flag_after_score_s": flag_s, "score_then_flag_s": score_s + flag_s,
              "score_then_flag_peak_mib": max(score_peak, flag_peak) / 2 ** 20,
              "ratio": (score_s + flag_s) / nightly_s, "models": manifest["models"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
