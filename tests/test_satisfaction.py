"""Inferred satisfaction: the expected score, its figures by hand, training on the surveyed contacts only, lineage,
and `inferred_csat` reaching the predictions, the flagged list, the scorecards, the API and the HTTP answer."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from carelens.inference.api import Scorer
from carelens.models.registry import Registry
from carelens.models.satisfaction import INFERRED_CSAT, SATISFACTION_NAME, expected_score, satisfaction_for
from carelens.training.satisfaction import (
    publish_satisfaction, satisfaction_figures, surveyed, train_satisfaction,
)
from carelens.training.tabular import TASKS, load_labelled


def test_figures_by_hand():
    predicted = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1.5, 2.5, 3.5, 4.5, 4.0])
    observed = np.array([1, 2, 3, 4, 5, 2, 2, 4, 4, 5])
    figures = satisfaction_figures(predicted, observed)
    assert figures["rows"] == 10 and figures["mae"] == pytest.approx(0.3)
    assert [row["rows"] for row in figures["calibration"]] == [2] * 5
    # Bins by rank: (1, 1.5) → observed (1, 2); (2, 2.5) → (2, 2); (3, 3.5) → (3, 4); (4, 4) → (4, 5); (4.5, 5) → (4, 5).
    assert [row["observed"] for row in figures["calibration"]] == [1.5, 2.0, 3.5, 4.5, 4.5]
    assert figures["calibration_error"] == pytest.approx((0.25 + 0.25 + 0.25 + 0.5 + 0.25) / 5)
    assert -1 <= figures["spearman"] <= 1


@pytest.fixture(scope="module")
def with_satisfaction(registry_with_models, tmp_path_factory):
    """A copy of the test registry with a satisfaction model trained on the registry's own synthetic history."""
    root = tmp_path_factory.mktemp("satisfaction") / "registry"
    shutil.copytree(registry_with_models.root, root)
    history = registry_with_models.root.parent / "history"
    data = load_labelled(history, TASKS["churn"],
                         features_from=[registry_with_models.root.parent / "history_features.parquet"])
    model, metadata = train_satisfaction(data, learner="logistic")
    return root, model, metadata, publish_satisfaction(model, metadata, Registry(root)), data


def test_it_trains_on_the_surveyed_contacts_with_every_feature_but_the_survey(with_satisfaction):
    _, model, metadata, artifact, data = with_satisfaction
    rows, y = surveyed(data)
    assert len(rows) == data.frame["csat"].notna().sum() and set(y) <= {"1", "2", "3", "4", "5"}
    assert "csat" not in model.feature_names_in_ and "agent_empathy_mean" in model.feature_names_in_
    assert not set(metadata["baseline"]["features"]) & {"agent_empathy_mean", "customer_sentiment_end"}
    assert metadata["transcript_model"] == data.transcript_model and artifact.path.parent.name == SATISFACTION_NAME
    scores = expected_score(model, rows)
    assert ((scores >= 1) & (scores <= 5)).all()
    assert np.allclose(scores, model.predict_proba(rows) @ np.arange(1, 6))


def test_a_model_trained_on_another_transcript_models_features_is_left_out_with_a_warning(with_satisfaction):
    root, *_ = with_satisfaction
    model, why = satisfaction_for(Registry(root), "v999")
    assert model is None and "retrain" in why
    assert satisfaction_for(Registry(root / "missing"), "v1") == (None, None)


def test_every_surface_carries_the_inferred_satisfaction(with_satisfaction, day):
    from fastapi.testclient import TestClient

    from carelens.inference.service import ServiceSettings, create_app
    root, model, *_ = with_satisfaction
    scorer = Scorer.load(root)
    table = scorer.contact_table(day.interactions, day.conversations)
    predicted = scorer.contact_predictions(table)
    assert np.allclose(predicted[INFERRED_CSAT], expected_score(model, table))
    flagged = scorer.flag_at_risk(day.interactions, day.conversations, threshold=0.2)
    by_contact = predicted.set_index("contact_id")[INFERRED_CSAT]
    assert np.allclose(flagged[INFERRED_CSAT], by_contact.loc[flagged["contact_id"]].to_numpy())
    agents = pd.DataFrame(flagged.attrs["agents"]).set_index("agent_id")
    expected = predicted.groupby("agent_id")[INFERRED_CSAT].mean()
    assert np.allclose(agents[INFERRED_CSAT], expected.loc[agents.index])
    with TestClient(create_app(scorer, ServiceSettings(max_body_bytes=2_000_000, max_batch=1000))) as http:
        body = {"interactions": json.loads(day.interactions.to_json(orient="records", date_format="iso")),
                "transcripts": day.conversations, "threshold": 0.2}
        answer = http.post("/v1/flag", json=body).json()
    assert [c[INFERRED_CSAT] for c in answer["customers"]] == pytest.approx(flagged[INFERRED_CSAT].tolist())


def test_without_a_satisfaction_model_the_column_is_missing_not_invented(scorer, day):
    predicted = scorer.contact_predictions(scorer.contact_table(day.interactions))
    assert predicted[INFERRED_CSAT].isna().all()
