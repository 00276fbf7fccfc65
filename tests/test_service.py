"""The HTTP service: answers equal to the Scorer's, limits, error messages, authentication, timeouts, access logs,
and a real uvicorn run that stops gracefully."""
import dataclasses
import json
import logging
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carelens.data.redaction import redacted_conversation
from carelens.data.synthetic import generate
from carelens.inference.api import Scorer
from carelens.inference.cli import app as cli
from carelens.inference.serve import scoring_with_share
from carelens.inference.service.workers import STARTUP_FAILURE, supervise
from carelens.inference.service import ServiceSettings, create_app
from carelens.inference.service.dependencies import API_KEY_HEADER
from conftest import SERVICE_KEY, SERVICE_LIMITS
from carelens.inference.service.routes import SCORED_COLUMNS, headline_metrics
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.registry import Registry, RegistryError
from carelens.models.scoring import ScoringAbandoned, ScoringOptions, abandonable, as_conversations
import supervised
from live_server import serving, stopped, worker_pids

KEY, LIMITS = SERVICE_KEY, SERVICE_LIMITS


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
    expected = scorer.score_transcripts(conversations)[SCORED_COLUMNS]
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
    assert response.json()["joins"] == expected.attrs["joins"]
    assert (expected.attrs["joins"]["matched"] == len(day.conversations)) if with_transcripts else \
        expected.attrs["joins"] is None


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


def test_concurrent_flag_requests_share_the_models_and_each_gets_its_own_answer(scorer, day):
    slow = Faulty(scorer, "flag_each", seconds=0.5)  # the first batch holds the turn while the others queue
    customers = sorted(day.interactions["customer_id"].unique())
    parts = [day.interactions[day.interactions["customer_id"].isin(customers[i::4])] for i in range(4)]
    bodies = [*({"interactions": records(part), "capacity": 3} for part in parts),
              {"interactions": records(parts[0]), "strict": True}]  # no conversations: refused, alone
    with TestClient(create_app(slow, ServiceSettings(**LIMITS))) as client, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: client.post("/v1/flag", json=body), bodies))
    for part, answer in zip(parts, answers):
        assert answer.status_code == 200
        assert answer.json()["customers"] == expected_rows(scorer.flag_at_risk(part, capacity=3))
    assert answers[-1].status_code == 422 and "no conversation features" in answers[-1].json()["detail"]
    assert slow.calls < len(bodies)


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
    assert schema["properties"]["csat"]["description"] == "a finite number between 1 and 5"
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


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"}, {"content-type": "multipart/form-data"}])
def test_a_body_not_sent_as_json_is_415_saying_what_to_send(client, headers):
    response = client.post("/v1/score", content=b'{"conversations": []}', headers=headers)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("body: expected JSON with Content-Type: application/json, got ")


def test_capacity_and_threshold_together_are_refused(client, day):
    body = {"interactions": records(day.interactions), "capacity": 3, "threshold": 0.5}
    response = client.post("/v1/flag", json=body)
    assert response.status_code == 422
    assert "give capacity or threshold, not both" in response.json()["detail"]


# -- authentication ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, detail", [
    ({}, "missing X-API-Key header: this service requires an API key"),
    ({API_KEY_HEADER: "guess"}, "wrong API key in the X-API-Key header"),
    ({API_KEY_HEADER: KEY[:-1] + "X"}, "wrong API key in the X-API-Key header"),  # same length, last character wrong
    ({API_KEY_HEADER: KEY + "-and-more"}, "wrong API key in the X-API-Key header"),  # the key is a prefix
])
def test_without_the_right_key_requests_are_401(guarded_client, day, headers, detail):
    for response in (guarded_client.post("/v1/score", json={"conversations": day.conversations[:2]}, headers=headers),
                     guarded_client.get("/v1/models", headers=headers)):
        assert response.status_code == 401 and response.json()["detail"] == detail
        assert KEY not in response.text and (not headers or headers[API_KEY_HEADER] not in response.text)


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


@pytest.mark.parametrize("version", ["churn=v1,retaliation=v1,transcripts=v1", "v1", "latest"])
def test_serve_takes_the_model_versions_as_score_and_nightly_do(registry_with_models, monkeypatch, version):
    monkeypatch.setattr("carelens.inference.serve.serve_until_stopped", lambda *_: None)
    result = CliRunner().invoke(cli, ["serve", "--registry", str(registry_with_models.root), "--version", version])
    assert result.exit_code == 0, result.output
    assert "serving churn v1, retaliation v1, transcripts v1" in result.output


@pytest.fixture
def pandas_text_default():
    """pandas' default text storage during the test, whatever the test sets restored after it."""
    with pd.option_context("mode.string_storage", "auto"):
        yield


def test_a_serving_process_keeps_a_requests_text_in_python_objects_with_the_same_answers(registry_with_models, scorer,
                                                                                         day, monkeypatch,
                                                                                         pandas_text_default):
    interactions = day.interactions.head(40)
    arrow_flags = scorer.flag_at_risk(interactions, day.conversations[:20])
    monkeypatch.setattr("carelens.inference.serve.serve_until_stopped", lambda *_: None)
    assert CliRunner().invoke(cli, ["serve", "--registry", str(registry_with_models.root)]).exit_code == 0
    table = scorer.contact_table(interactions, day.conversations[:20])
    assert table["customer_id"].dtype.storage == "python"
    python_flags = scorer.flag_at_risk(interactions, day.conversations[:20])
    assert python_flags.to_json() == arrow_flags.to_json() and python_flags.attrs == arrow_flags.attrs


@pytest.mark.parametrize("version", ["latest", "v1", "churn=v1,retaliation=v1,transcripts=v1"])
def test_serve_names_a_registry_that_is_not_there_not_a_model_without_a_version(tmp_path, version):
    missing = tmp_path / "no-registry"
    result = CliRunner().invoke(cli, ["serve", "--registry", str(missing), "--version", version])
    assert result.exit_code == 2
    assert " ".join(result.output.split()).startswith(f"error: no registry at {missing}: it does not exist. Pass "
                                                      f"--registry (or set $CARELENS_REGISTRY) to the folder")
    assert "no promoted version" not in result.output and "no version" not in result.output


def test_serve_refuses_a_model_pinned_twice(registry_with_models):
    result = CliRunner().invoke(cli, ["serve", "--registry", str(registry_with_models.root),
                                      "--version", "churn=v1,churn=v2"])
    assert result.exit_code == 2 and "churn is pinned twice" in result.output


# -- failures, timeouts and logs ---------------------------------------------------------------------------------------

class Faulty:
    """The scorer with one method replaced: `fault` is raised, or the call first sleeps `seconds`; calls counted."""

    def __init__(self, scorer, method: str, fault: Exception = None, seconds: float = 0):
        self.scorer, self.method, self.fault, self.seconds, self.calls = scorer, method, fault, seconds, 0

    def __getattr__(self, name):
        if name != self.method:
            return getattr(self.scorer, name)

        def replaced(*args, **kwargs):
            self.calls += 1
            time.sleep(self.seconds)
            if self.fault:
                raise self.fault
            return getattr(self.scorer, name)(*args, **kwargs)
        return replaced


def test_a_bug_is_a_500_with_a_request_id_and_nothing_else_logged_without_the_body(scorer, day, caplog):
    app = create_app(Faulty(scorer, "flag_each", KeyError("/srv/carelens/registry/churn/v1/model.skops")),
                     ServiceSettings(**LIMITS))
    body = {"interactions": records(day.interactions), "transcripts": marked(day.conversations[:3], "ZEBRA-QUOKKA")}
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        response = client.post("/v1/flag", json=body, headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error", "request_id": "trace-42"}
    assert response.headers["x-request-id"] == "trace-42"
    failure, = [r for r in caplog.records if r.name == "carelens.service"]
    assert "trace-42" in failure.getMessage() and "Traceback" in failure.getMessage()
    assert "flag_each" in failure.getMessage()
    assert "ZEBRA-QUOKKA" not in caplog.text and day.conversations[0]["turns"][0]["text"] not in caplog.text


@pytest.mark.parametrize("fault, detail", [
    (RegistryError("no transcript model is loaded; publish one with `carelens train transcripts`"),
     "model unavailable: no transcript model is loaded; publish one with `carelens train transcripts`"),
    (RegistryError("/srv/carelens/registry/transcripts/v2: checksum mismatch for 'model.safetensors' in "
                   "/srv/carelens/registry/transcripts/v2/model.safetensors"),
     "model unavailable: transcripts/v2: checksum mismatch for 'model.safetensors' in <path>"),
    (RegistryError(Registry("/srv/carelens/registry")._missing_root()),
     "model unavailable: no registry at <path>: it does not exist. Pass --registry (or set $CARELENS_REGISTRY) to the "
     "folder your models were published to, or make one with `carelens demo` or `carelens train`"),
])
def test_a_missing_model_is_a_503_naming_it_without_the_servers_paths(scorer, day, fault, detail):
    with TestClient(create_app(Faulty(scorer, "score_transcripts", fault), ServiceSettings(**LIMITS))) as client:
        response = client.post("/v1/score", json={"conversations": day.conversations[:2]})
    assert response.status_code == 503 and response.json() == {"detail": detail}


def test_a_scorer_without_a_transcript_model_answers_503(scorer, day):
    settings = ServiceSettings(**LIMITS)
    with TestClient(create_app(dataclasses.replace(scorer, transcripts=None), settings)) as client:
        response = client.post("/v1/score", json={"conversations": day.conversations[:2]})
    assert response.status_code == 503
    assert response.json()["detail"] == ("model unavailable: no transcript model is loaded; publish one with "
                                         "`carelens train transcripts`")


def test_requests_run_concurrently_and_those_over_the_timeout_get_503(scorer, day):
    slow = Faulty(scorer, "score_transcripts", seconds=3)
    app = create_app(slow, ServiceSettings(request_timeout_s=0.4, **LIMITS))
    body = {"conversations": day.conversations[:2]}
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        first, second = pool.submit(client.post, "/v1/score", json=body), pool.submit(client.post, "/v1/score",
                                                                                        json=body)
        assert client.get("/v1/health").status_code == 200  # answered while both run
        for response in (first.result(), second.result()):
            assert response.status_code == 503
            assert response.json()["detail"].startswith("scoring timed out after 0.4 s")
        assert time.monotonic() - started < 2.5, "the timeout answered only when the work ended"
        assert slow.calls == 2, "the second request waited for the first instead of running beside it"
        slow.seconds = 1
        app.state.service.settings = ServiceSettings(request_timeout_s=30, **LIMITS)
        started = time.monotonic()
        both = [pool.submit(client.post, "/v1/score", json=body) for _ in range(2)]
        assert [f.result().status_code for f in both] == [200, 200]
        assert time.monotonic() - started < 1.9, "two 1-second requests took turns"


def marked(conversations: list, mark: str) -> list:
    """The conversations with `mark` in the text of their first turn."""
    copies = json.loads(json.dumps(conversations))
    copies[0]["turns"][0]["text"] += f" {mark}"
    return copies


@pytest.mark.parametrize("log_text", [False, True])
def test_each_request_is_one_json_access_line_with_texts_only_when_asked(scorer, day, caplog, log_text):
    conversations = marked(day.conversations[:3], "ZEBRA-QUOKKA")
    score_body = json.dumps({"conversations": conversations}).encode()
    with TestClient(create_app(scorer, ServiceSettings(api_key=KEY, log_text=log_text, **LIMITS))) as client, \
            caplog.at_level(logging.INFO):
        scored = client.post("/v1/score", content=score_body, headers={API_KEY_HEADER: KEY, "X-Request-ID": "abc-1",
                                                                       "content-type": "application/json"})
        client.post("/v1/flag", json={"interactions": records(day.interactions)[:4], "transcripts": conversations,
                                      "capacity": 1}, headers={API_KEY_HEADER: KEY})
        client.post("/v1/flag", content=b"{not json", headers={API_KEY_HEADER: KEY, "content-type": "application/json"})
        client.get("/v1/health")
    assert scored.status_code == 200 and scored.headers["x-request-id"] == "abc-1"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "carelens.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/score", 200), ("POST", "/v1/flag", 200), ("POST", "/v1/flag", 422), ("GET", "/v1/health", 200)]
    score_line, flag_line, bad_line, health_line = lines
    assert score_line["request_id"] == "abc-1" and re.fullmatch(r"[0-9a-f]{32}", flag_line["request_id"])
    assert score_line["body_bytes"] == len(score_body) and score_line["conversations"] == 3
    assert flag_line["interactions"] == 4 and flag_line["transcripts"] == 3
    assert all(line["duration_ms"] >= 0 and line["client"] for line in lines)
    assert "interactions" not in bad_line and health_line["body_bytes"] == 0
    assert ("ZEBRA-QUOKKA" in caplog.text) is log_text
    assert KEY not in caplog.text
    if log_text:
        assert score_line["texts"] == [t["text"] for c in conversations for t in c["turns"]]


def test_a_client_request_id_is_kept_only_when_short_and_plain(client):
    assert client.get("/v1/health", headers={"X-Request-ID": "a" * 64}).headers["x-request-id"] == "a" * 64
    for unsafe in ("a" * 65, "two words", "x\"y"):
        answered = client.get("/v1/health", headers={"X-Request-ID": unsafe}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", answered)


# -- a real server ----------------------------------------------------------------------------------------------------

def test_carelens_serve_answers_over_http_and_stops_cleanly(registry_with_models, scorer, day, tmp_path):
    log = tmp_path / "serve.log"
    with serving(registry_with_models.root, log, "--api-key-env", "CARELENS_TEST_KEY",
                 env={"CARELENS_TEST_KEY": KEY}) as (url, server):
        body = {"interactions": records(day.interactions), "transcripts": day.conversations, "capacity": 5}
        response = httpx.post(f"{url}/v1/flag", json=body, headers={API_KEY_HEADER: KEY}, timeout=60)
        assert response.status_code == 200
        assert response.json()["customers"] == expected_rows(scorer.flag_at_risk(day.interactions, day.conversations,
                                                                                  capacity=5))
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        assert stopped(server, signal.SIGINT) == 0, log.read_text()
    assert "Finished server process" in log.read_text()
    access = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [(line["method"], line["path"], line["status"]) for line in access][-2:] == [
        ("POST", "/v1/flag", 200), ("GET", "/v1/models", 401)]
    assert '"POST /v1/flag HTTP/1.1"' not in log.read_text(), "uvicorn's own access log should be off"


def test_on_sigterm_a_request_in_flight_is_answered_then_the_server_exits_0(registry_with_models, scorer, day,
                                                                            tmp_path):
    body = json.dumps({"interactions": records(day.interactions), "transcripts": day.conversations,
                       "capacity": 5}).encode()
    halfway, resume = threading.Event(), threading.Event()

    def slowly_sent():
        """The body in two parts, the second only once the server has been told to stop."""
        yield body[:len(body) // 2]
        halfway.set()
        assert resume.wait(30)
        yield body[len(body) // 2:]

    log = tmp_path / "serve.log"
    with serving(registry_with_models.root, log, "--shutdown-timeout", "20") as (url, server):
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"{url}/v1/flag", content=slowly_sent(), timeout=60,
                                 headers={"content-type": "application/json"})
            assert halfway.wait(30)
            time.sleep(0.3)  # the server has read the headers: the request is in flight
            server.send_signal(signal.SIGTERM)
            refusing_new_connections(url)
            resume.set()
            response = answer.result(timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["customers"] == expected_rows(scorer.flag_at_risk(day.interactions, day.conversations,
                                                                                  capacity=5))
        assert server.wait(timeout=30) == 0, log.read_text()
    assert "Finished server process" in log.read_text()


def test_worker_processes_answer_as_one_process_does_and_sigterm_stops_them_all(registry_with_models, day, tmp_path):
    log = tmp_path / "serve.log"
    body = {"interactions": records(day.interactions), "transcripts": day.conversations, "capacity": 5}
    with serving(registry_with_models.root, log, "--workers", "2") as (url, server):
        workers = worker_pids(server)
        assert len(workers) == 2, log.read_text()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/flag", json=body, timeout=60), range(8)))
        # One process loaded as each worker is (its share of the cores): `--runtime auto` remembers its choice per
        # thread count, and another runtime's features differ in the 7th digit, which can move a row across a split.
        alike = Scorer.load(registry_with_models.root, scoring=ScoringOptions(**scoring_with_share({}, 2)))
        expected = expected_rows(alike.flag_at_risk(day.interactions, day.conversations, capacity=5))
        assert [answer.status_code for answer in answers] == [200] * 8
        assert all(answer.json()["customers"] == expected for answer in answers)
        assert stopped(server, signal.SIGTERM) == 0, log.read_text()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived the server"
    assert log.read_text().count("Finished server process") == 2
    assert "transcripts v1; API key not required; 2 worker processes" in " ".join(log.read_text().split())


def test_a_worker_that_dies_is_replaced_and_one_that_cannot_start_stops_the_service(tmp_path):
    starts = tmp_path / "starts"
    assert supervised.STARTUP_FAILURE == STARTUP_FAILURE
    assert supervise(supervised.dying_worker, (str(starts),), workers=1) == 1
    assert len(set(starts.read_text().split())) == 3


def test_serve_with_workers_refuses_a_port_another_program_holds(registry_with_models):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--registry", str(registry_with_models.root), "--workers", "2",
                                          "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" in " ".join(
        result.output.split())


@pytest.mark.parametrize("given, workers, cores, expected", [
    ({}, 1, 8, {}), ({}, 2, 8, {"threads": 4}), ({}, 3, 8, {"threads": 2}), ({}, 4, 2, {"threads": 1}),
    ({"threads": 3, "runtime": "onnx"}, 2, 8, {"threads": 3, "runtime": "onnx"}),
    ({"runtime": "torch"}, 2, 2, {"runtime": "torch", "threads": 1})])
def test_each_worker_process_gets_its_share_of_the_cores_unless_threads_are_given(given, workers, cores, expected,
                                                                                   monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert scoring_with_share(given, workers) == expected


def refusing_new_connections(url: str, seconds: float = 10) -> None:
    """Returns once the server refuses new connections (it is shutting down)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/health", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} still accepts connections {seconds} s after SIGTERM")


def test_a_redacting_service_logs_and_scores_the_masked_text(scorer, day, caplog):
    conversations = marked(day.conversations[:2], "call me on (977) 625-2661 or mail jo@example.com")
    masked = dataclasses.replace(scorer, redact=True)
    with TestClient(create_app(masked, ServiceSettings(api_key=KEY, log_text=True, **LIMITS))) as client, \
            caplog.at_level(logging.INFO):
        answer = client.post("/v1/score", json={"conversations": conversations}, headers={API_KEY_HEADER: KEY})
    assert answer.status_code == 200
    assert "625-2661" not in caplog.text and "jo@example.com" not in caplog.text
    assert "call me on [PHONE] or mail [EMAIL]" in caplog.text
    expected = scorer.score_transcripts([redacted_conversation(c) for c in as_conversations(conversations)])
    np.testing.assert_allclose(pd.DataFrame(answer.json()["conversations"])[FEATURE_COLUMNS].to_numpy(float),
                               expected[FEATURE_COLUMNS].to_numpy(float), atol=1e-6)


# -- hostile clients: authentication first, stalled bodies and heads, work bounded by the timeout -----------------------

@pytest.fixture(scope="module")
def strict_server(registry_with_models, tmp_path_factory):
    """A real `carelens serve` with an API key, a 1 s body timeout and a 1 s idle timeout."""
    log = tmp_path_factory.mktemp("strict") / "serve.log"
    with serving(registry_with_models.root, log, "--api-key-env", "CARELENS_TEST_KEY", "--body-timeout", "1",
                 "--idle-timeout", "1", env={"CARELENS_TEST_KEY": KEY}) as (url, server):
        yield url


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    return connection


def answer_within(connection: socket.socket, seconds: float) -> tuple[bytes, float]:
    """(everything the server sent until it closed the connection, how long that took)."""
    started, received = time.monotonic(), b""
    connection.settimeout(seconds)
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return received, time.monotonic() - started


def test_a_request_without_the_key_is_refused_before_its_body_is_read(strict_server):
    connection = raw_connection(strict_server)
    started = time.monotonic()
    connection.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 5000000\r\n\r\n{\"conversations\": [")
    first = connection.recv(65536)
    assert first.startswith(b"HTTP/1.1 401"), first
    assert time.monotonic() - started < 0.9, "the 401 waited for the body (or its timeout), not the headers alone"
    received, took = answer_within(connection, 5)
    assert b"missing X-API-Key header" in first + received and took < 3, "the connection outlived the idle timeout"


def test_a_body_that_stalls_gets_408_and_the_connection_closes(strict_server):
    connection = raw_connection(strict_server)
    connection.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: " +
                       KEY.encode() + b"\r\nContent-Length: 5000\r\n\r\n{\"conversations\": [")
    received, took = answer_within(connection, 8)
    assert received.startswith(b"HTTP/1.1 408") and b"not received whole within 1 s" in received, received
    assert took < 4, "the stalled body was waited for past the body timeout"


@pytest.mark.parametrize("sent", [b"", b"POST /v1/score HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_sends_no_whole_request_head_is_closed(strict_server, sent):
    connection = raw_connection(strict_server)
    connection.sendall(sent)
    started = time.monotonic()
    for _ in range(10):  # a header byte every 0.3 s: each byte would stop uvicorn's own idle clock
        time.sleep(0.3)
        try:
            connection.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            break
    received, _ = answer_within(connection, 5)
    assert time.monotonic() - started < 5 and not received.startswith(b"HTTP/1.1 2"), received


@pytest.mark.parametrize("field", ["answer_time_s", "transfers", "capacity", "threshold", "start_s"])
def test_true_where_a_number_is_expected_is_a_422_not_read_as_1(client, day, field):
    body = {"interactions": records(day.interactions.head(3)), "transcripts": day.conversations[:1]}
    if field in ("capacity", "threshold"):
        body[field], where = True, field
    elif field == "start_s":
        body["transcripts"] = [{**day.conversations[0], "turns": [{"speaker": "agent", "text": "hi", "start_s": True}]}]
        where = "transcripts[0].turns[0].start_s"
    else:
        body["interactions"][1][field], where = True, f"interactions[1].{field}"
    response = client.post("/v1/flag", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{where}: Value error, expected a number, not true or false"), \
        response.json()["detail"]


def test_a_huge_whole_number_is_a_422_not_a_500(client, day):
    body = json.dumps({"interactions": records(day.interactions)})[:-1] + ', "capacity": ' + "9" * 5000 + "}"
    response = client.post("/v1/flag", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"].startswith("capacity: Input should be a finite")


class CountedRuntime:
    """A runtime that counts the encoder batches it runs, each taking at least `delay_s`."""

    def __init__(self, runtime, delay_s: float = 0.0):
        self.runtime, self.batches, self.delay_s = runtime, 0, delay_s

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def pooled(self, batch):
        self.batches += 1
        time.sleep(self.delay_s)
        return self.runtime.pooled(batch)


def test_a_900_kb_turn_is_read_in_a_bounded_number_of_windows(scorer, day, monkeypatch):
    huge = json.loads(json.dumps(day.conversations[0]))
    huge["turns"] = [{"speaker": "customer", "text": f"{time.time()} my order never came " * 31_000}]  # 900 KB
    counted = CountedRuntime(scorer.transcripts.runtime)
    monkeypatch.setattr(scorer.transcripts, "runtime", counted)
    app = create_app(scorer, ServiceSettings(request_timeout_s=60, **{**LIMITS, "max_body_bytes": 2_000_000}))
    with TestClient(app) as client:
        assert client.post("/v1/score", json={"conversations": [huge]}).status_code == 200
    # MAX_TURN_WINDOWS windows of the tiny model's 32 tokens fill one batch of the default 2,048-token budget.
    assert counted.batches == 1


def test_a_request_that_timed_out_stops_using_the_scorer(scorer, day, monkeypatch):
    long_turns = json.loads(json.dumps(day.conversations[0]))
    long_turns["turns"] = [{"speaker": "customer", "text": f"{time.time()} {i} my order never came " * 2_000}
                           for i in range(10)]  # 10 turns of 32 windows: 5 encoder batches
    counted = CountedRuntime(scorer.transcripts.runtime, delay_s=0.5)
    monkeypatch.setattr(scorer.transcripts, "runtime", counted)
    app = create_app(scorer, ServiceSettings(request_timeout_s=0.2, **{**LIMITS, "max_body_bytes": 2_000_000}))
    with TestClient(app) as client:
        assert client.post("/v1/score", json={"conversations": [long_turns]}).status_code == 503
        time.sleep(1.5)  # the batch running when the request timed out ends within its 0.5 s delay
        # At most the batch that was running when the request timed out; none of the 4 after it.
        assert counted.batches <= 1
    counted.delay_s = 0.0
    # The scorer serves the next request; under a timeout a busy machine cannot be held to, not the test's 0.2 s.
    with TestClient(create_app(scorer, ServiceSettings(**LIMITS))) as client:
        assert client.post("/v1/score", json={"conversations": day.conversations[:2]}).status_code == 200


def test_scoring_given_up_stops_at_the_next_batch(scorer, day):
    fresh = marked(day.conversations[:2], f"never seen before {time.time()}")  # the encoding cache cannot answer it
    given_up = threading.Event()
    given_up.set()
    with abandonable(given_up), pytest.raises(ScoringAbandoned, match="the caller gave up"):
        scorer.score_transcripts(fresh)


@pytest.mark.parametrize("body, where", [
    ('{"interactions": [], "interactions": %s}', "body"),
    ('{"interactions": [%s], "capacity": 1, "capacity": 2}', "body"),
])
def test_a_key_given_twice_in_one_object_is_a_422_not_the_last_one_silently(client, day, body, where):
    # A proxy or a validator in front of the service may read the first value where Python reads the last: the two
    # would disagree on what was asked, so a duplicate key is refused, naming it.
    rows = records(day.interactions.head(3))
    filled = body % (json.dumps(rows) if "[]" in body else json.dumps(rows[0]))
    response = client.post("/v1/flag", content=filled, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    key = "interactions" if "[]" in body else "capacity"
    assert response.json()["detail"] == f"{where}: key '{key}' given more than once in one object"


@pytest.mark.parametrize("path", ["/v1/health", "/v1/models"])
def test_head_on_a_readable_path_is_answered_like_get_without_a_body(client, path):
    # Load balancers and uptime checks probe with HEAD; RFC 9110 asks that every GET resource answer it.
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("field", ["customer_id", "contact_id"])
def test_a_huge_whole_number_as_an_id_is_a_422_saying_to_send_it_as_text(client, day, field):
    # An id is text: "should be a finite number ... 1.8e308" alone would send the client the wrong way.
    rows = records(day.interactions.head(2))
    rows[1][field] = "@@"
    body = json.dumps({"interactions": rows}).replace('"@@"', "9" * 5000)
    response = client.post("/v1/flag", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (f"interactions[1].{field}: Input should be a finite number, got a whole "
                                         f"number of 5,000 digits, which no number field takes (send an id as text)")


def test_a_key_with_letters_beyond_ascii_matches_when_sent_as_utf8(scorer):
    # HTTP header values arrive as bytes, read as Latin-1; the key the operator set is text, sent by clients as UTF-8.
    key = "clé-ключ"
    with TestClient(create_app(scorer, ServiceSettings(api_key=key, **LIMITS))) as guarded:
        assert guarded.get("/v1/models", headers=[(b"x-api-key", key.encode())]).status_code == 200
        assert guarded.get("/v1/models", headers=[(b"x-api-key", key.encode("utf-8")[:-1])]).status_code == 401
        assert guarded.get("/v1/models", headers=[(b"x-api-key", b"\xff\xfe")]).status_code == 401


@pytest.mark.parametrize("encoding", ["gzip", "br, gzip", "deflate"])
def test_a_compressed_body_is_415_saying_to_send_it_plain_not_invalid_json(client, day, encoding):
    import gzip
    body = gzip.compress(json.dumps({"interactions": records(day.interactions.head(2))}).encode())
    response = client.post("/v1/flag", content=body, headers={"content-type": "application/json",
                                                              "content-encoding": encoding})
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == (f"body: sent with Content-Encoding: {encoding}, which this service does not "
                                         f"decode; send the JSON uncompressed")
