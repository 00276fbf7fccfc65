"""Inferred satisfaction against the truth the survey never asked: a satisfaction model trained on a generated
history's surveyed contacts (15%), scored on an unseen day, and compared with the score every unsurveyed customer of
that day would have given (the generator's hidden truth): Spearman, mean absolute error and calibration per bin of
the prediction, beside the same learner on the operational features alone. Needs a registry with a trained
transcript model (CARELENS_REGISTRY; `make demo` builds one)."""
import os
import shutil

import numpy as np
import pytest
from harness import record

from carelens.data.synthetic import generate, write_synthetic
from carelens.inference.api import Scorer
from carelens.models.conversation_features import write_features
from carelens.models.registry import Registry
from carelens.models.satisfaction import INFERRED_CSAT, expected_score
from carelens.models.transcript import MODEL_NAME
from carelens.training.satisfaction import fitted, publish_satisfaction, satisfaction_figures, surveyed, \
    train_satisfaction
from carelens.training.tabular import TASKS, load_labelled

HISTORY, HISTORY_SEED, DAY, DAY_SEED = 8_000, 35, 3_000, 36  # not training seeds of the demo
LEARNER = "logistic"


@pytest.mark.slow
def test_inferred_satisfaction_ranks_the_unsurveyed_customers(tmp_path):
    given = os.environ.get("CARELENS_REGISTRY")
    if not given:
        pytest.skip("set CARELENS_REGISTRY to a registry with a trained transcript model (`make demo` builds one)")
    registry = tmp_path / "registry"
    shutil.copytree(given, registry)
    scorer = Scorer.load(registry)
    history = generate(HISTORY, seed=HISTORY_SEED)
    write_synthetic(history, tmp_path / "history")
    features = write_features(scorer.score_transcripts(history.conversations), tmp_path / "features.parquet",
                              scorer.versions[MODEL_NAME])
    data = load_labelled(tmp_path / "history", TASKS["churn"], features_from=[features])
    model, metadata = train_satisfaction(data, learner=LEARNER)
    publish_satisfaction(model, metadata, Registry(registry))
    rows, y = surveyed(data)
    baseline = fitted(metadata["baseline"]["features"], None, rows, y, LEARNER, 0)

    day = generate(DAY, seed=DAY_SEED)
    scored = Scorer.load(registry)
    table = scored.contact_table(day.interactions, day.conversations)
    predicted = scored.contact_predictions(table)
    unsurveyed = (day.interactions["csat"].isna() & ~day.interactions["abandoned"]).to_numpy()
    truth = day.truth["satisfaction"].to_numpy()[unsurveyed]
    results = [{"model": name, **{k: round(v, 3) for k, v in satisfaction_figures(values[unsurveyed], truth).items()
                                  if k in ("rows", "spearman", "mae", "calibration_error")}}
               for name, values in (("conversation + operational features", predicted[INFERRED_CSAT].to_numpy()),
                                    ("operational features alone", expected_score(baseline, table)))]
    record("inferred_satisfaction", {"history": HISTORY, "history_seed": HISTORY_SEED, "day": DAY,
                                     "day_seed": DAY_SEED, "surveyed_training_rows": int(len(y)), "learner": LEARNER,
                                     "transcript_model": scorer.versions[MODEL_NAME]}, results,
           calibration=satisfaction_figures(predicted[INFERRED_CSAT].to_numpy()[unsurveyed], truth)["calibration"])
    assert np.isfinite(predicted[INFERRED_CSAT]).all()
    assert results[0]["spearman"] > results[1]["spearman"]
