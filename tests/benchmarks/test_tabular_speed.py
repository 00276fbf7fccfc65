"""Speed of the churn and retaliation models on a million synthetic contacts: training under 120 s, scoring ≥ 200k rows/s."""
import time

import pytest

from carelens.training.tabular import TASKS, LabelledData, train_tabular
from harness import record

synthetic = pytest.importorskip("carelens.data.synthetic", reason="needs the synthetic generator (data/synthetic.py)")
from carelens.data.contracts import CATEGORICAL_FEATURES, INTERACTION_FEATURES  # noqa: E402

CONTACTS = 1_000_000
TRAIN_SECONDS = 120
ROWS_PER_SECOND = 200_000


@pytest.fixture(scope="module")
def contacts():
    """A million labelled synthetic contacts (one per customer); generating them is not part of the benchmark."""
    data = synthetic.generate(CONTACTS, seed=0, transcripts=False)
    frame = data.interactions.merge(data.labels, on="contact_id")
    return frame.merge(data.truth[["contact_id", "seed_group"]], on="contact_id", how="left")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["churn", "retaliation"])
def test_a_million_contacts_train_and_score_in_budget(contacts, task):
    data = LabelledData(contacts, TASKS[task].target, list(INTERACTION_FEATURES), list(CATEGORICAL_FEATURES),
                        "synthetic", groups=contacts["seed_group"])
    started = time.perf_counter()
    trained = train_tabular(data, TASKS[task], spread_seeds=1)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trained.model.risk(contacts)
    rows_per_second = len(contacts) / (time.perf_counter() - started)
    metrics = trained.metadata["metrics"]
    record("tabular_speed", {"task": task, "contacts": len(contacts), "text": "synthetic contacts, seed 0"},
           [{"task": task, "learner": trained.model.learner_, "training s": train_seconds,
             "scoring rows/s": rows_per_second, "held-out ROC-AUC": metrics["roc_auc"], "ECE": metrics["ece"],
             "selection s": sum(c["seconds"] for c in trained.metadata["selection"])}])
    assert train_seconds < TRAIN_SECONDS
    assert rows_per_second >= ROWS_PER_SECOND
