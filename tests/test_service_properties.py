"""Property tests of the HTTP service: whatever JSON (or not-quite JSON) a client sends, the answer is 200 or a 4xx
whose JSON `detail` names where the body was wrong, never a 5xx; and a 200 answer keeps the response contract.

Examples per test: $CARELENS_FUZZ_EXAMPLES (default 25, so `make test` stays quick; `make fuzz` raises it).
"""
import json
import math
import os
import re
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from carelens.data.synthetic import generate
from carelens.inference.service import ServiceSettings, create_app
from carelens.inference.service.schemas import FlagResponse, ScoreResponse

EXAMPLES = int(os.environ.get("CARELENS_FUZZ_EXAMPLES", "25"))
LIMITS = ServiceSettings(max_body_bytes=2_000_000, max_batch=40)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: How a 422 detail starts: the place of the fault (the body, or a field such as interactions[2].csat), then ": ".
PLACE = re.compile(r'(body|[A-Za-z_]\w*)(\[(\d+|"([^"\\]|\\.)*")\]|\.[A-Za-z_]\w*)*: \S')
INTERACTION_FIELDS = ("customer_id", "contact_id", "started_at", "channel", "answer_time_s", "abandoned", "hold_time_s",
                      "handle_time_s", "transfers", "product_problem", "resolved", "repeat_contacts_30d",
                      "tenure_months", "monthly_value", "csat")
LONG_TEXT = "I waited an hour and nobody called back. " * 25_000  # about 1 MB, under the 2 MB body limit

# -- strategies -------------------------------------------------------------------------------------------------------

lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
awkward_text = st.one_of(
    st.text(),  # any Unicode: emoji, right-to-left scripts, control characters, NUL
    st.text(max_size=5).flatmap(lambda t: lone_surrogates.map(lambda s: t + s + t)),
    st.sampled_from(["", " ", "\x00", "\u202eevil\u202c", "שלום עולם", "مرحبا", "😡😡 refund NOW 💸", "\ufeff",
                     "a\r\nb\tc", "\\u0000", "🏳️‍🌈", "ｆｕｌｌ", "\U0010ffff"]),
)
awkward_numbers = st.one_of(
    st.floats(),  # NaN and both infinities included
    st.sampled_from([0, -0.0, -1, -1e-300, 1e308, -1e308, 1.7976931348623157e308, 2 ** 53, 2 ** 53 + 1, 2 ** 63,
                     10 ** 30, -(10 ** 30), 5e-324]),
    st.integers(),
)
scalars = st.one_of(st.none(), st.booleans(), awkward_numbers, awkward_text)
any_json = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(awkward_text, inner, max_size=4)),
                        max_leaves=12)
speakers = st.one_of(st.sampled_from(["agent", "customer", " Agent ", "CUSTOMER", "bot", "supervisor", ""]), any_json)
ids = st.one_of(st.sampled_from(["C1", "C1", "K1", " C1 "]), awkward_text, st.integers(), any_json)
deep = st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)


# -- fixtures ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(create_app(scorer, LIMITS)) as client:
        yield client


@pytest.fixture(scope="module")
def small_day():
    """A few contacts and their conversations, as JSON-ready dicts, for requests that mostly reach the models."""
    day = generate(6, seed=41)
    interactions = json.loads(day.interactions.to_json(orient="records", date_format="iso"))
    return interactions, json.loads(json.dumps(day.conversations))


# -- the invariant ----------------------------------------------------------------------------------------------------

def raw(body: Any) -> bytes:
    """The body as JSON text the way a careless client writes it: NaN and Infinity literals, surrogates as \\u
    escapes (json.dumps' ensure_ascii writes lone surrogates that way)."""
    return json.dumps(body, allow_nan=True).encode()


def post(client: TestClient, path: str, content: bytes):
    return client.post(path, content=content, headers={"content-type": "application/json"})


def answered_well(response, path: str, body: Any = None) -> dict:
    """The invariant: 200 or 4xx, a JSON body, a 422 detail naming a place, a 200 answer in the response contract."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, \
        f"{response.status_code}: {response.text[:2000]}"
    answer = response.json()
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics: how many reached the models
    if response.status_code != 200:
        assert isinstance(answer["detail"], str) and answer["detail"], answer
        if response.status_code == 422:
            assert PLACE.match(answer["detail"]), answer["detail"]
        return answer
    if path == "/v1/score":
        ScoreResponse.model_validate(answer)
        assert len(answer["conversations"]) == len(body["conversations"])
        sent = [str(c["conversation_id"]) for c in body["conversations"]]
        assert [c["conversation_id"] for c in answer["conversations"]] == sent
    else:
        FlagResponse.model_validate(answer)
        customers = answer["customers"]
        risks = [c["risk"] for c in customers]
        assert all(0 <= r <= 1 and math.isfinite(r) for r in risks) and risks == sorted(risks, reverse=True)
        assert {c["customer_id"] for c in customers} <= {str(i["customer_id"]).strip() for i in body["interactions"]}
        if isinstance(body.get("capacity"), int):
            assert len(customers) <= body["capacity"]
    return answer


# -- properties -------------------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
@example(data=None)
def test_property_score_takes_any_conversation(client, small_day, data):
    _, conversations = small_day
    body = {"conversations": json.loads(json.dumps(conversations))}
    if data is None:  # a 1 MB text
        body["conversations"][0]["turns"][1]["text"] = LONG_TEXT
    else:
        for conversation in data.draw(st.lists(st.sampled_from(body["conversations"]), min_size=1, max_size=3)):
            mutate_conversation(conversation, data)
        body["conversations"] = data.draw(st.sampled_from([body["conversations"], body["conversations"] * 2,
                                                           body["conversations"][:1]]))
    answered_well(post(client, "/v1/score", raw(body)), "/v1/score", body)


def mutate_conversation(conversation: dict, data) -> None:
    """One conversation changed where a client could get it wrong: ids, speakers, texts, times, extras, turns."""
    turns = conversation.get("turns")
    turns = [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []
    turn = data.draw(st.sampled_from(turns)) if turns else {}
    change = data.draw(st.sampled_from(["text", "speaker", "times", "id", "extra", "drop", "turns", "channel"]))
    if change == "text":
        turn["text"] = data.draw(awkward_text)
    elif change == "speaker":
        turn["speaker"] = data.draw(speakers)
    elif change == "times":
        turn["start_s"], turn["end_s"] = data.draw(awkward_numbers), data.draw(awkward_numbers)
    elif change == "id":
        conversation[data.draw(st.sampled_from(["conversation_id", "customer_id", "contact_id"]))] = data.draw(ids)
    elif change == "extra":
        (conversation if data.draw(st.booleans()) else turn)[data.draw(awkward_text)] = data.draw(any_json)
    elif change == "drop":
        conversation.pop(data.draw(st.sampled_from(["conversation_id", "customer_id", "turns", "contact_id"])), None)
    elif change == "turns":
        conversation["turns"] = data.draw(st.one_of(st.just([]), any_json))
    else:
        conversation["channel"] = data.draw(st.one_of(st.sampled_from(["Phone", "fax", ""]), any_json))


@FUZZ
@given(data=st.data())
def test_property_flag_takes_any_interaction_values(client, small_day, data):
    interactions, conversations = small_day
    body = {"interactions": json.loads(json.dumps(interactions))}
    for record in data.draw(st.lists(st.sampled_from(body["interactions"]), max_size=3)):
        change = data.draw(st.sampled_from(["value", "drop", "extra", "type"]))
        name = data.draw(st.sampled_from(INTERACTION_FIELDS))
        if change == "value":
            record[name] = data.draw(st.one_of(awkward_numbers, st.sampled_from(
                ["2026-13-01", "9999-12-31T00:00:00", "0001-01-01", "1e3", "yes", "TRUE", "phone "]), ids))
        elif change == "drop":
            record.pop(name, None)
        elif change == "extra":
            record[data.draw(awkward_text)] = data.draw(any_json)
        else:
            record[name] = data.draw(any_json)
    extra = data.draw(st.sampled_from(["none", "transcripts", "features", "both"]))
    if extra in ("transcripts", "both"):
        body["transcripts"] = json.loads(json.dumps(conversations))
        for conversation in data.draw(st.lists(st.sampled_from(body["transcripts"]), max_size=2)):
            mutate_conversation(conversation, data)
    if extra in ("features", "both"):
        body["transcript_features"] = [
            {"conversation_id": c["conversation_id"], "customer_id": c["customer_id"], "contact_id": c["contact_id"],
             **data.draw(st.dictionaries(st.sampled_from(["customer_sentiment_start", "agent_empathy_mean",
                                                          "non_talk_s", "interruptions"]), awkward_numbers))}
            for c in conversations]
    body.update(data.draw(st.fixed_dictionaries({}, optional={
        "capacity": st.one_of(st.integers(-3, 10), awkward_numbers, any_json),
        "threshold": st.one_of(st.floats(0, 1), awkward_numbers, any_json),
        "strict": st.one_of(st.booleans(), any_json)})))
    answered_well(post(client, "/v1/flag", raw(body)), "/v1/flag", body)


# -- valid requests, however unusual, are answered -----------------------------------------------------------------

# Any Unicode but control characters (no identifier holds one) and lone surrogates.
identifiers = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30).filter(str.strip)
durations = st.one_of(st.floats(0, 1e308), st.integers(0, 2 ** 53), st.sampled_from([0, 5e-324, 1e308]))
counts = st.integers(0, 2 ** 53 - 1)


def in_order(turn: dict) -> dict:
    """The turn with its times swapped when it would end before it starts (the contract refuses that)."""
    if "start_s" in turn and "end_s" in turn and turn["end_s"] < turn["start_s"]:
        turn["start_s"], turn["end_s"] = turn["end_s"], turn["start_s"]
    return turn


valid_turns = st.lists(st.fixed_dictionaries(
    {"speaker": st.sampled_from(["agent", "customer", " Agent", "CUSTOMER "]), "text": st.text(max_size=300)},
    optional={"start_s": durations, "end_s": durations}).map(in_order), max_size=6)


@st.composite
def valid_contacts(draw) -> tuple[list[dict], list[dict]]:
    """Interactions within the contract, however extreme, and a transcript for some of them."""
    interactions, transcripts = [], []
    for index in range(draw(st.integers(1, 6))):
        contact_id = f"{draw(identifiers)}-{index}"
        record = {"customer_id": draw(st.one_of(identifiers, st.integers(0, 10 ** 6))), "contact_id": contact_id,
                  "started_at": draw(st.datetimes(datetime(1900, 1, 2), datetime(2100, 12, 30))).isoformat(),
                  "channel": draw(st.sampled_from(["phone", "chat", "email", "social", " Phone "])),
                  "answer_time_s": draw(durations), "abandoned": draw(st.booleans()), "hold_time_s": draw(durations),
                  "handle_time_s": draw(durations), "transfers": draw(counts), "product_problem": draw(st.booleans()),
                  "resolved": draw(st.booleans()), "repeat_contacts_30d": draw(counts),
                  "tenure_months": draw(durations), "monthly_value": draw(durations),
                  "csat": draw(st.one_of(st.none(), st.floats(1, 5), st.integers(1, 5)))}
        interactions.append(record)
        if draw(st.booleans()):
            transcripts.append({"conversation_id": draw(identifiers), "customer_id": str(record["customer_id"]),
                                "contact_id": contact_id, "turns": draw(valid_turns)})
    return interactions, transcripts


@FUZZ
@given(contacts=valid_contacts(), selection=st.fixed_dictionaries({}, optional={
    "capacity": st.integers(0, 2 ** 63), "threshold": st.floats(0, 1)}).filter(lambda chosen: len(chosen) < 2))
def test_property_flag_answers_every_valid_request(client, contacts, selection):
    interactions, transcripts = contacts
    body = {"interactions": interactions, "transcripts": transcripts, **selection}
    response = post(client, "/v1/flag", raw(body))
    assert response.status_code == 200, response.text[:2000]
    answered_well(response, "/v1/flag", body)


@FUZZ
@given(contacts=valid_contacts())
def test_property_score_answers_every_valid_conversation(client, contacts):
    _, transcripts = contacts
    body = {"conversations": transcripts or [{"conversation_id": "c", "customer_id": "k", "turns": []}]}
    response = post(client, "/v1/score", raw(body))
    assert response.status_code == 200, response.text[:2000]
    answered_well(response, "/v1/score", body)


# -- anything else --------------------------------------------------------------------------------------------------

@FUZZ
@given(body=any_json, path=st.sampled_from(["/v1/score", "/v1/flag"]))
def test_property_any_json_body_is_answered_without_a_server_error(client, body, path):
    answered_well(post(client, path, raw(body)), path, body)


@FUZZ
@given(data=st.data(), path=st.sampled_from(["/v1/score", "/v1/flag"]))
def test_property_repeated_keys_deep_nesting_and_broken_bytes_are_client_errors(client, small_day, data, path):
    interactions, conversations = small_day
    valid = {"/v1/score": {"conversations": conversations}, "/v1/flag": {"interactions": interactions}}[path]
    text = raw(valid)
    kind = data.draw(st.sampled_from(["repeated key", "deep", "bytes", "cut"]))
    if kind == "repeated key":
        key = next(iter(valid))
        text = text[:-1] + b', "' + key.encode() + b'": ' + raw(data.draw(any_json)) + b"}"
    elif kind == "deep":
        text = text[:-1] + b', "nested": ' + data.draw(deep).encode() + b"}"
    elif kind == "bytes":
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.binary(min_size=1, max_size=4)) + text[at:]
    else:
        text = text[:data.draw(st.integers(0, len(text) - 1))]
    try:
        sent = json.loads(text)  # what the service reads when it answers 200 (the last of repeated keys)
    except (ValueError, RecursionError):
        sent = None
    answered_well(post(client, path, text), path, sent)


@pytest.mark.parametrize("path, body, place", [
    ("/v1/score", '{"conversations": [{"conversation_id": "\\ud800", "customer_id": "c", "turns": []}]}',
     "conversations[0].conversation_id: lone UTF-16 surrogate \\ud800"),
    ("/v1/score", '{"conversations": [{"conversation_id": "a", "customer_id": "c", "turns": '
                  '[{"speaker": "agent", "text": "hi \\udfff"}]}]}', "conversations[0].turns[0].text: lone UTF-16"),
    ("/v1/flag", '{"interactions": [{"csat": NaN}]}', "interactions[0].csat: Input should be a finite number, got NaN"),
    ("/v1/flag", '{"interactions": [{"csat": 1e400}]}', "interactions[0].csat: Input should be a finite number, got "
                                                        "Infinity"),
    ("/v1/flag", '{"interactions": [], "threshold": -Infinity}', "threshold: Input should be a finite number"),
    ("/v1/flag", '{"interactions": [{"\\ud800x": 1}]}', "interactions[0]: key '\\\\ud800x' holds a lone UTF-16"),
    ("/v1/flag", '{"interactions": [{"a": ' + "[" * 40 + "]" * 40 + "}]}",
     "interactions[0].a[0]: nested deeper than 32 levels"),
    ("/v1/flag", "[" * 100_000 + "]" * 100_000, "body: nested deeper than 32 levels"),
])
def test_json_the_contracts_cannot_take_is_a_422_naming_the_field(client, path, body, place):
    response = post(client, path, body.encode())
    assert response.status_code == 422 and response.json()["detail"].startswith(place), response.json()["detail"]


def test_a_body_that_is_not_utf8_is_a_422_saying_so(client):
    response = post(client, "/v1/flag", b'{"interactions": [{"customer_id": "\xff"}]}')
    assert response.status_code == 422
    assert re.fullmatch(r"body: not valid JSON at character \d+: not UTF-8 text \(.*\)", response.json()["detail"])
