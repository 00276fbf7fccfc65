"""Does the agent scorecard recover who the good agents are? A generated day (about 40 contacts per agent, each agent's
skill recorded by the generator) scored by `carelens nightly` with a trained transcript model (the registry `carelens demo`
builds: CARELENS_REGISTRY), then Spearman between the scorecard's empathy and the agents' true skill, shrunk and raw,
and per mechanism."""
import os
import sys
import subprocess
from pathlib import Path

import pytest
from harness import record
from scipy.stats import spearmanr

from carelens.data.synthetic import generate, write_synthetic
from carelens.inference.agents import agent_scorecard, run_contacts, shrunk_means
from carelens.models.conversation_features import AGENT

CUSTOMERS, SEED = 4_000, 21  # not a training seed; about 100 agents


@pytest.mark.slow
def test_the_scorecard_ranks_agents_as_the_generator_made_them(tmp_path):
    registry = os.environ.get("CARELENS_REGISTRY")
    if not registry:
        pytest.skip("set CARELENS_REGISTRY to a registry with a trained transcript model (`make demo` builds one)")
    data = generate(CUSTOMERS, seed=SEED)
    write_synthetic(data, tmp_path / "day")
    carelens = str(Path(sys.executable).parent / "carelens")
    finished = subprocess.run([carelens, "nightly", "--transcripts", str(tmp_path / "day" / "transcripts.jsonl"),
                               "--interactions", str(tmp_path / "day" / "interactions.parquet"),
                               "--registry", registry, "--out", str(tmp_path / "run"),
                               "--top", "0"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    contacts, flagged = run_contacts([tmp_path / "run"])
    card = agent_scorecard(contacts, flagged).set_index(AGENT)
    skill = data.truth.dropna(subset=[AGENT]).groupby(AGENT)["agent_skill"].first().reindex(card.index)
    raw = shrunk_means(contacts["agent_empathy_mean"], contacts[AGENT])["raw"].reindex(card.index)
    rows = [{"measure": name, "spearman_vs_skill": round(float(spearmanr(values, skill).statistic), 3)}
            for name, values in [("empathy (shrunk)", card["empathy"]), ("empathy (raw mean)", raw),
                                 *((m, card[m]) for m in ("emotional_reactions", "interpretations", "explorations")),
                                 ("customers' sentiment shift", card["sentiment_shift"]),
                                 ("share of customers flagged (negated)", -card["flagged_share"])]]
    record("agent_scorecard", {"customers": CUSTOMERS, "seed": SEED, "agents": len(card),
                               "contacts_per_agent_min": int(card["contacts"].min()),
                               "contacts_per_agent_mean": round(float(card["contacts"].mean()), 1),
                               "registry": registry}, rows)
    assert rows[0]["spearman_vs_skill"] >= 0.8
