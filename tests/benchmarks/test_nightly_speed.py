"""`carelens nightly` end to end against the path it replaces (`carelens score`, then `Scorer.flag_at_risk` on the
scored features), in the same run on this machine: a synthetic day of about 20,000 conversations, and a day of
about 5,800 conversations of real text (airline tweets and EPITOME replies), alternated twice."""
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import requires_shared

from carelens.data.readers import write_transcripts
from carelens.data.synthetic import generate, write_synthetic
from carelens.models.transcript import TranscriptModel

CUSTOMERS = 20_700  # about 97% of contacts are answered and have a conversation: just over 20,000
SEED = 43  # not a training seed
#: A day whose ~5,800 conversations use the 11,574 distinct airline tweets two by two.
REAL_TEXT_CUSTOMERS, REAL_TEXT_SEED = 6_000, 44
TIME = Path("/usr/bin/time")
RESULTS = Path(__file__).parent / "results" / "nightly.jsonl"
FLAG_AFTER_SCORE = """
import sys, pandas as pd
from carelens.inference.api import Scorer
from carelens.inference.nightly.storage import read_parts
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


def compared(registry: Path, day: Path, out: Path, name: str, rounds: int = 1) -> dict:
    """`carelens nightly` and `carelens score` + `flag_at_risk`, alternated `rounds` times on the same day (the same
    list asserted each time); the record appended to RESULTS."""
    transcripts, interactions = day / "transcripts.jsonl", day / "interactions.parquet"
    carelens = str(Path(sys.executable).parent / "carelens")
    common = ["--transcripts", str(transcripts), "--interactions", str(interactions), "--registry", str(registry),
              "--no-progress"]
    runs = []
    for round_no in range(rounds):
        here = out / f"round{round_no}"
        nightly_s, nightly_peak = measured([carelens, "nightly", *common, "--out", str(here / "nightly")])
        score_s, score_peak = measured([carelens, "score", *common, "--out", str(here / "score")])
        flag_s, flag_peak = measured([sys.executable, "-c", FLAG_AFTER_SCORE, str(registry), str(interactions),
                                      str(here / "score"), str(here / "flagged.parquet")])
        ours, theirs = pd.read_parquet(here / "nightly" / "flagged.parquet"), pd.read_parquet(here / "flagged.parquet")
        assert ours["customer_id"].tolist() == theirs["customer_id"].tolist()
        manifest = json.loads((here / "nightly" / "_manifest.json").read_text())
        assert manifest["balanced"] and not manifest["failures"]
        runs.append({"nightly_s": nightly_s, "nightly_peak_mib": nightly_peak / 2 ** 20,
                     "nightly_stages_s": manifest["timings_s"], "score_s": score_s, "flag_after_score_s": flag_s,
                     "score_then_flag_s": score_s + flag_s, "score_then_flag_peak_mib": max(score_peak, flag_peak) / 2 ** 20,
                     "ratio": (score_s + flag_s) / nightly_s})
    record = {"name": name, "machine": f"{platform.node()} ({platform.processor() or 'cpu'})",
              "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "conversations": manifest["stages"]["features"]["in"],
              "contacts": manifest["stages"]["predictions"]["in"], "flagged": len(ours), "runs": runs,
              "models": manifest["models"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
    return record


@pytest.mark.slow
def test_nightly_against_score_then_flag_on_20k_conversations(registry, tmp_path):
    if not TIME.is_file():
        pytest.skip("needs /usr/bin/time (Debian package time) to measure peak memory")
    write_synthetic(generate(CUSTOMERS, seed=SEED), tmp_path / "day")
    record = compared(registry, tmp_path / "day", tmp_path, "nightly_vs_score_then_flag")
    assert record["conversations"] >= 20_000


def real_text_day(shared: Path, customers: int, folder: Path) -> Path:
    """A synthetic day of contacts whose conversations speak real text: two airline tweets as the customer's turns
    around an EPITOME response as the agent's (every (reply, turn it answers) pair distinct, so no cache flatters)."""
    tweets = pd.read_csv(shared / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates().tolist()
    replies = pd.concat(pd.read_csv(path)["response_post"] for path in sorted((shared / "empathy").glob("*.csv")))
    replies = replies.dropna().drop_duplicates().tolist()
    day = generate(customers, seed=REAL_TEXT_SEED, transcripts=False)
    answered = day.interactions[~day.interactions["abandoned"].astype(bool)].head(len(tweets) // 2)
    write_synthetic(day, folder)
    conversations = [{"conversation_id": f"R{i}", "customer_id": row.customer_id, "contact_id": row.contact_id,
                      "agent_id": row.agent_id,
                      "turns": [{"speaker": "customer", "text": tweets[2 * i]},
                                {"speaker": "agent", "text": replies[i % len(replies)]},
                                {"speaker": "customer", "text": tweets[2 * i + 1]}]}
                     for i, row in enumerate(answered.itertuples())]
    write_transcripts(conversations, folder / "transcripts.jsonl")
    return folder


@pytest.mark.slow
@requires_shared
def test_nightly_against_score_then_flag_on_real_text(registry, shared_data, tmp_path):
    if not TIME.is_file():
        pytest.skip("needs /usr/bin/time (Debian package time) to measure peak memory")
    day = real_text_day(shared_data, REAL_TEXT_CUSTOMERS, tmp_path / "day")
    record = compared(registry, day, tmp_path, "nightly_vs_score_then_flag_real_text", rounds=2)
    assert record["conversations"] >= 5_000
