"""The expected precision and recall of tonight's flags from calibrated risks: exact on small cases, true to labels
drawn from the risks, a warning when tonight's risks move, and the same figures in the manifest, the API and the
service."""
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.synthetic import generate, write_synthetic
from carelens.inference.nightly.flags import performance_warnings
from carelens.inference.nightly.layout import SUMMARY
from carelens.inference.nightly.run import run_nightly
from carelens.inference.service import ServiceSettings, create_app
from carelens.models.drift import MIN_DRIFT_ROWS
from carelens.models.performance_estimate import (
    expected_performance, performance_estimate, performance_estimates, training_spread,
)

#: Held-out figures as training records them: 1,000 rows, 30% flagged at 66% precision, 28% positive.
METRICS = {"rows": 1000, "positive_rate": 0.28, "flagged_rate": 0.3, "precision": 0.66, "recall": 0.7,
           "expected_precision": 0.64, "expected_recall": 0.68}


def test_precision_is_the_mean_risk_of_the_flagged_and_recall_their_share_of_all_risk():
    assert expected_performance([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == pytest.approx(
        {"flagged": 2, "expected_positives": 2.0, "expected_precision": 0.85, "expected_recall": 1.7 / 2.0})


def test_no_flag_has_no_precision_and_no_risk_no_recall():
    assert expected_performance([0.3, 0.1], [False, False])["expected_precision"] is None
    assert expected_performance([0.0, 0.0], [True, False])["expected_recall"] is None


def risks_and_flags():
    """Risks in [0, 1] with a threshold that flags at least one of them."""
    return st.lists(st.floats(0, 1), min_size=1, max_size=60).flatmap(
        lambda risks: st.tuples(st.just(risks), st.sampled_from(risks)))


@settings(max_examples=50, deadline=None)
@given(risks_and_flags(), st.integers(0, 2 ** 32 - 1))
def test_labels_drawn_from_the_risks_realise_the_expected_precision(case, seed):
    risks, threshold = np.asarray(case[0]), case[1]
    flagged = risks >= threshold
    expected = expected_performance(risks, flagged)
    labels = np.random.default_rng(seed).random((4000, risks.size)) < risks
    realised = labels[:, flagged].mean(axis=1)
    # The mean of 4,000 realised precisions, within five of its standard errors (at most 0.5 / √4000 each).
    assert realised.mean() == pytest.approx(expected["expected_precision"], abs=5 * 0.5 / np.sqrt(4000))
    assert 0 <= expected["expected_precision"] <= 1
    assert expected["expected_recall"] is None or 0 <= expected["expected_recall"] <= 1 + 1e-12


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60).filter(lambda risks: sum(risks) > 0))
def test_recall_is_one_when_everything_is_flagged(risks):
    assert expected_performance(risks, [True] * len(risks))["expected_recall"] == pytest.approx(1.0)


def test_the_spread_is_two_standard_errors_of_two_proportions_and_all_of_it_on_nothing():
    rate = (0.5 * 100 + 1) / 102
    error = 2 * np.sqrt(rate * (1 - rate) * (1 / 50 + 1 / 100))
    assert training_spread(0.5, 100, 50) == pytest.approx((0.5 - error, 0.5 + error))
    assert training_spread(1.0, 20, 30)[0] < 1.0
    assert training_spread(0.5, 0, 30) == training_spread(0.5, 100, 0) == (0.0, 1.0)


def test_a_model_without_the_held_out_figures_gets_no_estimate_and_a_small_night_none_at_all():
    assert performance_estimate({"rows": 1000, "precision": 0.6}, [0.5], [True]) is None
    night = pd.DataFrame({"churn_risk": [0.5] * 500, "churn_flagged": [True] * 500,
                          "retaliation_risk": [0.5] * 500, "retaliation_flagged": [True] * 500})
    old = {"churn": {"metrics": {"rows": 1000}}, "retaliation": {}}
    assert performance_estimates(old, night) == []
    both = {"churn": {"metrics": METRICS}, "retaliation": {"metrics": METRICS}}
    assert [e["model"] for e in performance_estimates(both, night)] == ["churn", "retaliation"]
    assert performance_estimates(both, night.head(MIN_DRIFT_ROWS - 1)) == []


def night_like_training(shift: float = 0.0, contacts: int = 1000) -> pd.DataFrame:
    """Tonight's contacts whose flagged 30% carry a mean risk of 0.64 and the rest a mean of 0.129 (so the estimate is
    METRICS' held-out estimate), every risk raised by `shift`."""
    flagged = np.arange(contacts) < 0.3 * contacts
    risk = np.clip(np.where(flagged, 0.64, 0.1297) + shift, 0, 1)
    return pd.DataFrame({f"{name}_{column}": values for name in ("churn", "retaliation")
                         for column, values in (("risk", risk), ("flagged", flagged))})


def test_the_warning_fires_when_tonights_risks_are_shifted_and_not_otherwise():
    metadata = {"churn": {"metrics": METRICS}, "retaliation": {}}
    calm = performance_estimates(metadata, night_like_training())
    assert calm[0]["within_spread"] and performance_warnings(calm) == []
    shifted = performance_estimates(metadata, night_like_training(shift=0.2))
    [line] = performance_warnings(shifted)
    assert not shifted[0]["within_spread"]
    assert line.startswith("expected performance: the churn model's 300 flagged contacts: expected precision 84% "
                           "against 64% at training (spread ")
    assert "retaliation" not in line and "consider retraining" in line


# -- every surface carries the same figures ---------------------------------------------------------------------------

def close(estimate: dict) -> dict:
    """The estimate with its numbers compared to rounding (the nightly job sums tonight's risks in another order)."""
    return {key: pytest.approx(value) if isinstance(value, (float, list)) else value for key, value in estimate.items()}


@pytest.fixture(scope="module")
def busy_day(tmp_path_factory):
    """A synthetic day with enough contacts for an estimate (seed 41, unseen by the models)."""
    folder = tmp_path_factory.mktemp("busy")
    day = generate(MIN_DRIFT_ROWS + 50, seed=41)
    write_synthetic(day, folder)
    return day, folder


def test_the_manifest_the_summary_the_api_and_the_service_carry_the_same_estimate(busy_day, registry_with_models,
                                                                                   scorer, tmp_path):
    day, folder = busy_day
    manifest = run_nightly([folder / "transcripts.jsonl"], [folder / "interactions.parquet"], tmp_path / "run",
                           registry_with_models.root, show_progress_bar=False)
    estimates = manifest["expected_performance"]
    assert [e["model"] for e in estimates] == ["churn", "retaliation"]
    assert json.loads((tmp_path / "run" / "_manifest.json").read_text())["expected_performance"] == estimates
    summary = (tmp_path / "run" / SUMMARY).read_text()
    assert "flags as good as at training?" in summary and "held-out expected precision (spread)" in summary
    from_api = scorer.flag_at_risk(day.interactions, day.conversations).attrs["expected_performance"]
    assert from_api == [close(e) for e in estimates]
    client = TestClient(create_app(scorer, ServiceSettings(max_body_bytes=10_000_000, max_batch=1_000)))
    body = {"interactions": json.loads(day.interactions.to_json(orient="records", date_format="iso")),
            "transcripts": day.conversations}
    answer = client.post("/v1/flag", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["expected_performance"] == from_api
