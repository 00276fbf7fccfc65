"""The HTTP service: answers equal to the Scorer's, limits, error messages, authentication, and a real uvicorn run."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carelens.data.synthetic import generate
from carelens.inference.cli import app as cli
from carelens.inference.service import API_KEY_HEADER, ServiceSettings, create_app, headline_metrics
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS

KEY = "s3cret-key"
LIMITS = {"max_body_bytes": 400_000, "max_batch": 80}


@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(create_app(scorer, ServiceSettings(**LIMITS))) as client:
        yield client


@pytest.fixture(scope="module")
def guarded_client(scorer):
    with TestClient(create_app(scorer, ServiceSettings(api_key=KEY, **LIMITS))) as client:
        yield client


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: timestamps as text, missing values as None."""
    table = frame.astype({"started_at": str}).astype(object)
    return table.where(table.notna(), None).to_dict("records")


def expected_rows(frame: pd.DataFrame) -> list[dict]:
    """What the service should answer for these rows: the same values, NaN as null."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
            for row in frame.to_dict("records")]


def untimed(conversation: dict) -> dict:
    """The conversation without turn timestamps, so its timing features cannot be measured."""
    turns = [{"speaker": t["speaker"], "text": t["text"]} for t in conversation["turns"]]
    return {**conversation, "conversation_id": "untimed", "turns": turns}


# -- answers ----------------------------------------------------------------------------------------------------------

def test_score_returns_the_scorers_features_exactly_with_nan_as_null(client, scorer, day):
    conversations = [*day.conversations[:20], untimed(day.conversations[0])]
    response = client.post("/v1/score", json={"conversations": conversations})
    assert response.status_code == 200
    expected = scorer.score_transcripts(conversations)[[*KEYS, *FEATURE_COLUMNS]]
    assert response.json()["conversations"] == expected_rows(expected)
    assert response.json()["conversations"][-1]["non_talk_s"] is None


@pytest.mark.parametrize("selection, with_transcripts", [({"capacity": 10}, True), ({"threshold": 0.3}, True),
                                                         ({}, True), ({"capacity": 5}, False)])
def test_flag_returns_the_scorers_customers_exactly(client, scorer, day, selection, with_transcripts):
    transcripts = day.conversations if with_transcripts else None
    body = {"interactions": records(day.interactions), "transcripts": transcripts or [], **selection}
    response = client.post("/v1/flag", json=body)
    assert response.status_code == 200
    expected = scorer.flag_at_risk(day.interactions, transcripts, **selection)
    assert len(expected) > 0
    assert response.json()["customers"] == expected_rows(expected)


def test_flag_with_features_scored_earlier_equals_flag_with_the_transcripts(client, day):
    scored = client.post("/v1/score", json={"conversations": day.conversations}).json()["conversations"]
    base = {"interactions": records(day.interactions), "capacity": 10}
    from_features = client.post("/v1/flag", json={**base, "transcript_features": scored})
    from_transcripts = client.post("/v1/flag", json={**base, "transcripts": day.conversations})
    assert from_features.status_code == 200
    assert from_features.json() == from_transcripts.json()
    both = client.post("/v1/flag", json={**base, "transcripts": day.conversations, "transcript_features": scored})
    assert both.status_code == 422 and "transcripts or transcript_features, not both" in both.json()["detail"]


def test_concurrent_requests_all_get_the_single_request_answer(client, day):
    body = {"conversations": day.conversations[:10]}
    alone = client.post("/v1/score", json=body).json()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/score", json=body), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert all(a.json() == alone for a in answers)


def test_health_names_the_loaded_models(client, scorer):
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["models"] == {"churn": "v1", "retaliation": "v1", "transcripts": "v1"}
    assert 0 <= body["uptime_s"] < 600


def test_models_lists_versions_and_headline_test_metrics(client, scorer):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {name: m["version"] for name, m in models.items()} == scorer.versions
    churn = scorer.metadata["churn"]["metrics"]
    assert models["churn"]["metrics"] == {"roc_auc": churn["roc_auc"], "pr_auc": churn["pr_auc"], "ece": churn["ece"]}
    assert models["retaliation"]["metrics"]["macro_f1"] == scorer.metadata["retaliation"]["metrics"]["macro_f1"]
    assert models["churn"]["created_at"] == scorer.metadata["churn"]["created_at"]
    # The tiny test encoder was published without evaluation.
    assert models["transcripts"]["metrics"] == {}


def test_transcript_headlines_are_each_evaluated_heads_test_macro_f1():
    metadata = {"kind": "transcript", "metrics": {"validation": {"sentiment": {"n": 9, "macro_f1": 0.1}},
                                                  "test": {"sentiment": {"n": 9, "macro_f1": 0.81},
                                                           "explorations": {"n": 5, "macro_f1": 0.67},
                                                           "interpretations": {"n": 0}}}}
    assert headline_metrics(metadata) == {"sentiment_macro_f1": 0.81, "explorations_macro_f1": 0.67}


def test_the_openapi_schema_documents_the_interactions_contract(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["InteractionRecord"]
    assert schema["properties"]["answer_time_s"]["minimum"] == 0
    assert schema["properties"]["channel"]["enum"] == ["phone", "chat", "email", "social"]
    assert schema["properties"]["csat"]["description"] == "a number between 1 and 5"
    assert "csat" not in schema["required"] and "customer_id" in schema["required"]


# -- limits -----------------------------------------------------------------------------------------------------------

def oversized(day) -> bytes:
    body = json.dumps({"conversations": day.conversations[:10] * 40}).encode()
    assert len(body) > LIMITS["max_body_bytes"]
    return body


def test_a_body_over_the_limit_is_refused_by_its_content_length(client, day):
    body = oversized(day)
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"] == (f"request body of {len(body):,} bytes (Content-Length) is over the limit "
                                         f"of 400,000 bytes")


@pytest.mark.parametrize("declared", [None, "100"])
def test_a_body_over_the_limit_is_refused_when_content_length_is_missing_or_false(client, day, declared):
    body = oversized(day)
    headers = {"content-type": "application/json", **({"content-length": declared} if declared else {})}
    content = body if declared else iter([body[:1000], body[1000:]])
    response = client.post("/v1/score", content=content, headers=headers)
    assert response.request.headers.get("content-length") == declared
    assert response.status_code == 413
    assert "is over the limit of 400,000 bytes" in response.json()["detail"]
    assert "counted as it arrived" in response.json()["detail"]


def test_more_items_than_the_batch_limit_are_refused(client, day):
    conversations = (day.conversations * 2)[:81]
    response = client.post("/v1/score", json={"conversations": conversations})
    assert response.status_code == 413
    assert response.json()["detail"] == ("conversations: got 81 items, at most 80 are taken per request; "
                                         "split the batch")
    interactions = records(generate(81, seed=21, transcripts=False).interactions)
    response = client.post("/v1/flag", json={"interactions": interactions})
    assert response.status_code == 413 and response.json()["detail"].startswith("interactions: got 81 items")


# -- malformed input ------------------------------------------------------------------------------------------------

def test_a_bad_interaction_field_is_named_by_item_and_field(client, day):
    interactions = records(day.interactions)
    interactions[2]["answer_time_s"] = -4
    response = client.post("/v1/flag", json={"interactions": interactions})
    assert response.status_code == 422
    assert response.json()["detail"] == ("interactions[2].answer_time_s: Input should be greater than or equal to 0, "
                                         "got -4")
    assert response.json()["errors"][0]["loc"] == ["body", "interactions", 2, "answer_time_s"]


def test_a_bad_speaker_is_named_by_conversation_turn_and_field(client, day):
    conversations = json.loads(json.dumps(day.conversations[:3]))
    conversations[1]["turns"][0]["speaker"] = 42
    response = client.post("/v1/score", json={"conversations": conversations})
    assert response.status_code == 422
    assert response.json()["detail"] == ("conversations[1].turns[0].speaker: Input should be 'agent' or 'customer', "
                                         "got 42")


def test_a_contract_fault_in_the_table_is_a_422_naming_row_and_column(client, day):
    interactions = records(day.interactions)
    interactions[1]["contact_id"] = interactions[0]["contact_id"]
    response = client.post("/v1/flag", json={"interactions": interactions})
    assert response.status_code == 422
    assert response.json()["detail"] == (f"interactions: row 2, column 'contact_id': duplicate value "
                                         f"'{interactions[0]['contact_id']}', expected each contact_id once")


@pytest.mark.parametrize("content, detail", [
    (b"{not json", "body: not valid JSON at character 1: Expecting property name enclosed in double quotes"),
    (json.dumps({"interactions": [], "capacity": 3}).encode(),
     "interactions: List should have at least 1 item after validation, not 0, got []"),
])
def test_unreadable_or_empty_bodies_are_422_saying_what_was_expected(client, content, detail):
    response = client.post("/v1/flag", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"] == detail


def test_capacity_and_threshold_together_are_refused(client, day):
    body = {"interactions": records(day.interactions), "capacity": 3, "threshold": 0.5}
    response = client.post("/v1/flag", json=body)
    assert response.status_code == 422
    assert "give capacity or threshold, not both" in response.json()["detail"]


# -- authentication ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, detail", [
    ({}, "missing X-API-Key header: this service requires an API key"),
    ({API_KEY_HEADER: "guess"}, "wrong API key in the X-API-Key header"),
])
def test_without_the_right_key_requests_are_401(guarded_client, day, headers, detail):
    for response in (guarded_client.post("/v1/score", json={"conversations": day.conversations[:2]}, headers=headers),
                     guarded_client.get("/v1/models", headers=headers)):
        assert response.status_code == 401 and response.json()["detail"] == detail


def test_with_the_key_requests_are_answered_and_health_is_open(guarded_client, day):
    response = guarded_client.post("/v1/score", json={"conversations": day.conversations[:2]},
                                   headers={API_KEY_HEADER: KEY})
    assert response.status_code == 200 and len(response.json()["conversations"]) == 2
    assert guarded_client.get("/v1/health").status_code == 200


def test_settings_never_show_the_key():
    assert KEY not in repr(ServiceSettings(api_key=KEY, **LIMITS))


def test_serve_refuses_an_unset_key_variable(registry_with_models, monkeypatch):
    monkeypatch.delenv("CARELENS_TEST_NO_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--registry", str(registry_with_models.root),
                                      "--api-key-env", "CARELENS_TEST_NO_KEY"])
    assert result.exit_code == 2
    assert "--api-key-env CARELENS_TEST_NO_KEY: that environment variable is unset or empty" in result.output


# -- a real server ----------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited before answering"
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url}/v1/health within {seconds} s")


def test_carelens_serve_answers_over_http_and_stops_cleanly(registry_with_models, scorer, day, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [str(Path(sys.executable).with_name("carelens")), "serve", "--registry", str(registry_with_models.root),
               "--port", str(port), "--api-key-env", "CARELENS_TEST_KEY"]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "CARELENS_TEST_KEY": KEY})
    try:
        wait_until_healthy(url, server)
        body = {"interactions": records(day.interactions), "transcripts": day.conversations, "capacity": 5}
        response = httpx.post(f"{url}/v1/flag", json=body, headers={API_KEY_HEADER: KEY}, timeout=60)
        assert response.status_code == 200
        assert response.json()["customers"] == expected_rows(scorer.flag_at_risk(day.interactions, day.conversations,
                                                                                  capacity=5))
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()
    assert "Finished server process" in log.read_text()
