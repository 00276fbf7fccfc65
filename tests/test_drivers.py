"""Call drivers: their names by class-based TF-IDF, the driver model's round trip and lineage, assignment from the
encoding scoring already computes, the nightly report and its growth test, and the same report through the API, the
HTTP service, `carelens drivers` and summary.html."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from carelens.data.synthetic import generate
from carelens.inference.cli import app
from carelens.data.contracts import json_records
from carelens.inference.drivers import GROWTH_RATIO, driver_report, grew
from carelens.inference.nightly.layout import SUMMARY
from carelens.models.drivers import DRIVERS_NAME, DriverModel, drivers_for, unit_rows
from carelens.models.registry import Registry
from carelens.models.scoring import as_conversations, load_scoring_pipeline, score_turns
from carelens.training.drivers import class_tfidf_terms, fit_drivers, opening_turns, publish_drivers, unique_names


def test_class_tfidf_names_each_cluster_by_what_sets_it_apart():
    texts = ["my bag was lost", "lost bag again", "bag lost at the airport",
             "flight delayed two hours", "delayed flight again", "my flight is delayed @united http://t.co/x"]
    terms = class_tfidf_terms(texts, np.array([0, 0, 0, 1, 1, 1]), 2, top=2)
    assert set(terms[0]) == {"bag", "lost"} and set(terms[1]) == {"delayed", "flight"}
    assert unique_names([["a", "b"], ["a", "b"], []]) == ["a · b (1)", "a · b (2)", "driver 3"]


def test_unit_rows_and_nearest_centre():
    model = DriverModel(unit_rows(np.array([[1.0, 0.0], [0.0, 1.0]])), ["x", "y"], [["x"], ["y"]], [0.5, 0.5], "v1")
    assert model.named(np.array([[3.0, 1.0], [0.1, 2.0], [0.0, 0.0]])) == ["x", "y", "x"]
    assert model.assign(np.zeros((0, 2))).tolist() == []
    assert np.allclose(np.linalg.norm(unit_rows(np.array([[3.0, 4.0]])), axis=1), 1)


@pytest.mark.parametrize("share, trained, conversations, expected", [
    (0.30, 0.10, 1000, True),    # tripled, far beyond chance
    (0.14, 0.10, 1000, False),   # below 1.5 times
    (0.20, 0.10, 20, False),     # doubled, but 4 of 20 is chance at a 10% rate
    (0.01, 0.0, 100, True),      # unseen at training
    (0.0, 0.0, 100, False),
])
def test_growth_needs_the_ratio_and_more_than_chance(share, trained, conversations, expected):
    assert grew(share, trained, conversations) is expected


def test_the_report_counts_contacts_flags_risk_and_growth():
    contacts = pd.DataFrame({"customer_id": ["a", "b", "c", "d", "e"], "driver": ["bags", "bags", "bags", "delay", None],
                             "churn_risk": [0.9, 0.1, 0.2, 0.4, 0.5], "retaliation_risk": [0.1, 0.3, 0.2, 0.1, 0.9],
                             "customer_sentiment_mean": [-1.0, 0.0, -0.5, 0.5, np.nan]})
    model = DriverModel(np.eye(2), ["bags", "delay"], [["bags"], ["delay"]], [0.1, 0.9], "v1")
    report = driver_report(contacts, ["a", "d"], model).set_index("driver")
    assert report["contacts"].tolist() == [3, 1]
    assert report.loc["bags", "share"] == pytest.approx(0.75) and report.loc["bags", "flagged_share"] == pytest.approx(1 / 3)
    assert report.loc["bags", "mean_risk"] == pytest.approx((0.9 + 0.3 + 0.2) / 3)
    assert report.loc["bags", "sentiment"] == pytest.approx(-0.5)
    assert report["training_share"].tolist() == [0.1, 0.9] and report["grew"].tolist() == [True, False]
    assert driver_report(contacts.drop(columns="driver")).empty
    assert all(value is None or value == value for row in json_records(report.reset_index()) for value in row.values())


@pytest.fixture(scope="module")
def with_drivers(registry_with_models, tmp_path_factory):
    """A copy of the test registry with call drivers fitted on a generated history's openings, and its pipeline."""
    root = tmp_path_factory.mktemp("drivers") / "registry"
    shutil.copytree(registry_with_models.root, root)
    pipeline, metadata = load_scoring_pipeline(root)
    history = as_conversations(generate(300, seed=13).conversations)
    model, found = fit_drivers(pipeline, history, metadata["version"], counts=[4, 5, 6])
    artifact = publish_drivers(model, found, Registry(root), "generated history")
    return root, model, artifact


def test_fitting_publishes_a_driver_model_that_round_trips_with_its_lineage(with_drivers, tmp_path):
    root, model, artifact = with_drivers
    assert artifact.metadata["drivers"] in (4, 5, 6) and set(map(int, artifact.metadata["silhouette"])) == {4, 5, 6}
    loaded = drivers_for(Registry(root), model.transcript_model)
    assert loaded.names == model.names and np.allclose(loaded.centres, model.centres)
    assert drivers_for(Registry(root), "v999") is None
    assert drivers_for(Registry(tmp_path / "empty"), "v1") is None
    assert artifact.path.parent.name == DRIVERS_NAME


def test_scoring_assigns_the_opening_turns_driver_from_its_own_encoding(with_drivers):
    root, model, _ = with_drivers
    pipeline, _ = load_scoring_pipeline(root)
    conversations = as_conversations(generate(40, seed=14).conversations)
    turns = score_turns(pipeline, conversations)
    named = turns[turns["driver"].notna()]
    assert named.groupby("position").size().eq(1).all() and (named["speaker"] == "customer").all()
    openings = opening_turns(conversations)
    assert named["text"].tolist() == [text for _, text in openings]
    assert named["driver"].tolist() == model.named(pipeline.encode([text for _, text in openings]))


def test_the_api_http_cli_and_summary_give_the_same_drivers(with_drivers, day, registry_with_models, tmp_path):
    from fastapi.testclient import TestClient

    from carelens.inference.api import Scorer
    from carelens.inference.nightly import run_nightly
    from carelens.inference.service import ServiceSettings, create_app
    root, model, _ = with_drivers
    scorer = Scorer.load(root)
    api = scorer.flag_at_risk(day.interactions, day.conversations, threshold=0.2).attrs["drivers"]
    assert sum(row["contacts"] for row in api) == len(day.conversations) and api[0]["training_share"] is not None
    with TestClient(create_app(scorer, ServiceSettings(max_body_bytes=2_000_000, max_batch=1000))) as client:
        body = {"interactions": json.loads(day.interactions.to_json(orient="records", date_format="iso")),
                "transcripts": day.conversations, "threshold": 0.2}
        http = client.post("/v1/flag", json=body).json()["drivers"]
    assert [r["driver"] for r in http] == [r["driver"] for r in api]
    assert [r["mean_risk"] for r in http] == pytest.approx([r["mean_risk"] for r in api])
    day_dir = registry_with_models.day_dir
    run_nightly([day_dir / "transcripts.jsonl"], [day_dir / "interactions.parquet"], tmp_path / "run", root,
                threshold=0.2, show_progress_bar=False)
    result = CliRunner().invoke(app, ["drivers", str(tmp_path / "run"), "--registry", str(root), "--out",
                                      str(tmp_path / "drivers.csv")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "drivers.csv", keep_default_na=False)
    assert written["driver"].tolist() == [r["driver"] for r in api]
    assert written["contacts"].tolist() == [r["contacts"] for r in api]
    page = (tmp_path / "run" / SUMMARY).read_text()
    assert "Call drivers" in page and all(r["driver"] in page for r in api)
    assert f"{GROWTH_RATIO:g}×" in page or "No driver grew" in page


def test_a_run_without_drivers_says_how_to_get_them(registry_with_models, tmp_path):
    from carelens.inference.nightly import run_nightly
    day_dir = registry_with_models.day_dir
    run_nightly([day_dir / "transcripts.jsonl"], [day_dir / "interactions.parquet"], tmp_path / "run",
                registry_with_models.root, threshold=0.2, show_progress_bar=False)
    result = CliRunner().invoke(app, ["drivers", str(tmp_path / "run"), "--registry", str(registry_with_models.root)])
    assert result.exit_code == 1 and "carelens train drivers" in result.output
    assert "carelens train drivers" in (tmp_path / "run" / SUMMARY).read_text()
