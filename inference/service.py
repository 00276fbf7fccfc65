"""The HTTP service: transcript scores and at-risk customers over JSON, from models loaded once at start-up."""
from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from importlib.metadata import version as package_version
from itertools import islice
from typing import Annotated, Any, Callable, Iterator, Literal, Optional, Sequence, TypeVar, Union

import anyio
import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from carelens.data.contracts import INTERACTIONS, SURROGATE, Column, Conversation, not_a_bool
from carelens.data.errors import CareLensError
from carelens.data.redaction import redacted
from carelens.inference.api import FLAG_COLUMNS, MissingConversations, Scorer
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
from carelens.models.registry import RegistryError
from carelens.models.scoring import abandonable

API_KEY_HEADER = "X-API-Key"
REQUEST_ID_HEADER = "X-Request-ID"
TABULAR_HEADLINES = ("roc_auc", "pr_auc", "ece", "macro_f1")
#: Deeper JSON than any contract needs (a turn's empathy labels sit 5 levels down); refused before it reaches pandas.
MAX_DEPTH = 32
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; no field takes that"
#: Digits of the longest whole number a float can hold (1.8e308).
LONGEST_FINITE = 309
#: The lists of a request body counted on its access-log line, and those whose turns' texts `log_text` adds.
COUNTED = ("conversations", "interactions", "transcripts", "transcript_features")
WITH_TEXT = ("conversations", "transcripts")
ACCESS_LOG = logging.getLogger("carelens.access")
ERROR_LOG = logging.getLogger("carelens.service")
T = TypeVar("T")


class ServiceSettings(BaseModel):
    """What guards the service: the API key clients must send (None: no authentication) and the request limits."""

    model_config = ConfigDict(frozen=True)

    # Kept out of repr so that logging the settings never prints the key.
    api_key: Optional[str] = Field(default=None, repr=False)
    max_body_bytes: int = Field(gt=0, description="Largest request body accepted, in bytes.")
    max_batch: int = Field(gt=0, description="Most conversations, interactions or transcripts in one request.")
    request_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False,
                                     description="Longest a request waits for and runs scoring before it gets 503.")
    body_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                  description="Longest a client may take to send a request body before it gets 408.")
    log_text: bool = Field(False, description="Add each request's transcript texts to its access-log line.")


# -- request and response bodies ------------------------------------------------------------------------------------

#: A number JSON can carry back: NaN and infinity are refused (Python's JSON reader takes NaN, Infinity and 1e400), and
#: so are true and false, which pydantic would read as 1 and 0.
Finite = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(not_a_bool)]
#: A whole number, true and false refused.
Whole = Annotated[int, BeforeValidator(not_a_bool)]


def _lowered(value: Any) -> Any:
    """Text trimmed and lower-cased, as the contract reads categories; anything else as given."""
    return value.strip().lower() if isinstance(value, str) else value


def _text_id(value: Any) -> Any:
    """A whole-number identifier as text, as the contract accepts it; anything else as given."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def contract_field(column: Column) -> tuple[Any, Any]:
    """The pydantic type and field of one contract column: required unless nullable, bounded as the contract is."""
    kinds = {"id": Annotated[str, BeforeValidator(_text_id)], "int": Whole, "float": Finite, "bool": bool,
             "datetime": datetime, "category": Annotated[str, BeforeValidator(_lowered)]}
    kind = Annotated[Literal[column.allowed], BeforeValidator(_lowered)] if column.allowed else kinds[column.kind]
    if column.nullable:
        kind = Optional[kind]
    return kind, Field(None if column.nullable else ..., ge=column.minimum, le=column.maximum,
                       description=column.expectation())


# Built from the contract so the OpenAPI schema documents every column; the Scorer still checks the whole table
# (unique contact_id, declared extra features), and extra keys pass through as the contract allows.
InteractionRecord = create_model("InteractionRecord", __config__=ConfigDict(extra="allow"),
                                 __doc__="One contact, in the interactions contract.",
                                 **{column.name: contract_field(column) for column in INTERACTIONS.columns})

TranscriptFeatures = create_model("TranscriptFeatures",
                                  __doc__="One conversation's ids and transcript features (null: not measurable).",
                                  conversation_id=(str, ...), customer_id=(str, ...), contact_id=(Optional[str], None),
                                  **{name: (Optional[Finite], None) for name in FEATURE_COLUMNS})


class ScoreRequest(BaseModel):
    """Conversations to score, in the transcripts contract."""

    conversations: list[Conversation] = Field(min_length=1)


class ScoreResponse(BaseModel):
    """The transcript features of each conversation, in request order."""

    conversations: list[TranscriptFeatures]


class FlagRequest(BaseModel):
    """A batch of contacts, optionally their transcripts, and which customers to return."""

    interactions: list[InteractionRecord] = Field(min_length=1)
    transcripts: list[Conversation] = Field(default_factory=list, description="Joined to contacts on contact_id.")
    transcript_features: list[TranscriptFeatures] = Field(
        default_factory=list, description="Features already scored (by /v1/score or `carelens score`), instead of "
                                          "transcripts: flagging then needs no encoder pass.")
    capacity: Optional[Whole] = Field(None, ge=0, description="Return the `capacity` riskiest customers (the calls the "
                                                            "centre can make).")
    threshold: Optional[Finite] = Field(None, ge=0, le=1, description="Return customers whose risk >= threshold.")
    strict: bool = Field(False, description="Answer 422 instead of warning when answered contacts have no "
                                            "conversation features.")

    @model_validator(mode="after")
    def _one_selection(self) -> "FlagRequest":
        if self.capacity is not None and self.threshold is not None:
            raise ValueError("give capacity or threshold, not both (neither: each model's own decision threshold)")
        if self.transcripts and self.transcript_features:
            raise ValueError("give transcripts or transcript_features, not both")
        return self


class FlaggedCustomer(BaseModel):
    """A customer at risk, with their riskiest contact, why, and what the centre should do."""

    customer_id: str
    churn_risk: float = Field(description="Calibrated probability of churn.")
    retaliation_risk: float = Field(description="Probability of retaliating: 1 - P(none).")
    retaliation_type: str = Field(description="The likeliest retaliation (escalate, switch or vent) when retaliation is "
                                              "flagged; empty otherwise.")
    reasons: list[str] = Field(description="The features that raised the risk most, in words.")
    action: str
    risk: float = Field(description="The larger of churn_risk and retaliation_risk; customers are sorted by it.")
    contact_id: str


class FlagResponse(BaseModel):
    """Customers at risk, riskiest first, and what the caller should know about how they were scored."""

    customers: list[FlaggedCustomer]
    warnings: list[str] = Field(description="E.g. how many answered contacts had no conversation features.")


class Health(BaseModel):
    """The service is up; which model versions it serves, and for how long."""

    status: Literal["ok"]
    models: dict[str, str] = Field(description="Each loaded model's version.")
    uptime_s: float


class ModelSummary(BaseModel):
    """One loaded model: its version, when it was made, and its headline test-split metrics."""

    name: str
    version: str
    created_at: Optional[str] = None
    metrics: dict[str, Optional[float]] = Field(description="Headline figures on the held-out test split.")


class Models(BaseModel):
    """Every loaded model."""

    models: list[ModelSummary]


# -- the shared state and its guards --------------------------------------------------------------------------------

@dataclass
class Service:
    """What every request shares: the loaded models, the settings, the scoring lock and the start time."""

    scorer: Scorer
    settings: ServiceSettings
    # One scoring call at a time: the fast tokenizer keeps its truncation settings as shared state, so two threads
    # tokenizing at once break each other's calls (seen as 500s); and each call already spreads over every core.
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)


def service_of(request: Request) -> Service:
    """The state create_app attached to the application serving this request."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                           description="The API key, when the service was started with --api-key-env.")


def key_refusal(expected: Optional[str], given: Optional[str]) -> Optional[str]:
    """Why a request's API key is refused (missing or wrong), or None when authentication is off or the key matches."""
    if expected is None:
        return None
    if not given:
        return f"missing {API_KEY_HEADER} header: this service requires an API key"
    # A constant-time comparison, so response timing does not reveal how much of a guess was right. Of bytes as they
    # came (header values are read as Latin-1, which gives them back unchanged) against the key as clients send it,
    # UTF-8: a key with letters beyond ASCII then matches.
    if not secrets.compare_digest(given.encode("latin-1"), expected.encode("utf-8")):
        return f"wrong API key in the {API_KEY_HEADER} header"
    return None


def require_key(service: ServiceDep, given: Annotated[Optional[str], Depends(_key_header)]) -> None:
    """Nothing when authentication is off or the key matches; 401 saying what was wrong otherwise. It declares the key
    in the OpenAPI schema; `Authentication` has already checked it before the body was read."""
    refusal = key_refusal(service.settings.api_key, given)
    if refusal:
        raise HTTPException(401, refusal, headers={"WWW-Authenticate": API_KEY_HEADER})


def check_batch(items: Sequence, name: str, settings: ServiceSettings) -> None:
    """413 when a request carries more items than the service takes at once."""
    if len(items) > settings.max_batch:
        raise HTTPException(413, f"{name}: got {len(items):,} items, at most {settings.max_batch:,} are taken per "
                                 f"request; split the batch")


def json_records(frame: pd.DataFrame) -> list[dict]:
    """The rows as dicts of plain Python values, missing (and infinite) numbers as None (JSON null)."""
    return [{key: None if isinstance(value, float) and not math.isfinite(value) else value
             for key, value in row.items()} for row in frame.to_dict("records")]


def headline_metrics(metadata: dict) -> dict[str, Optional[float]]:
    """Test-split figures: ROC-AUC, PR-AUC, ECE (and macro-F1 when multi-class) of a tabular model; each transcript
    head's macro-F1."""
    metrics = metadata.get("metrics", {})
    if metadata.get("kind") == "transcript":
        return {f"{head}_macro_f1": scores["macro_f1"] for head, scores in metrics.get("test", {}).items()
                if scores.get("n")}
    return {name: metrics[name] for name in TABULAR_HEADLINES if name in metrics}


# -- scoring under the lock, within the request timeout -------------------------------------------------------------

_GAVE_UP = object()


def locked(lock: threading.Lock, work: Callable[[], T], deadline: float, abandoned: threading.Event) -> Any:
    """work() under the lock; _GAVE_UP instead when the lock did not come before the deadline or the request was
    abandoned while this thread waited for it, so that a request nobody waits for any more never holds up the next."""
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        return _GAVE_UP
    try:
        if abandoned.is_set():
            return _GAVE_UP
        with abandonable(abandoned):
            return work()
    finally:
        lock.release()


async def scored(service: Service, work: Callable[[], T]) -> T:
    """work() in a worker thread, one call at a time; 503 when waiting for the lock and running take longer than
    the request timeout.

    A thread cannot be stopped from outside: work that is already running when the time is up stops at its next
    encoder batch (`abandonable`), releasing the lock, and its result is dropped; what runs between two batches
    (tokenizing, the tabular models) runs on to its end. Requests queued behind it wait at most their own timeout,
    and one that times out while still queued never runs its work."""
    limit = service.settings.request_timeout_s
    abandoned = threading.Event()
    result: Any = _GAVE_UP
    with anyio.move_on_after(limit):
        result = await anyio.to_thread.run_sync(locked, service.lock, work, time.monotonic() + limit, abandoned,
                                                abandon_on_cancel=True)
    if result is _GAVE_UP:
        abandoned.set()
        raise HTTPException(503, f"scoring timed out after {limit:g} s (the service is busy or the batch is large); "
                                 f"retry later or split the batch", headers={"Retry-After": "1"})
    return result


def features_answer(scorer: Scorer, request: ScoreRequest) -> dict:
    """The /v1/score answer: each conversation's ids and transcript features."""
    features = scorer.score_transcripts(request.conversations)
    return {"conversations": json_records(features[[*KEYS, *FEATURE_COLUMNS]])}


def flag_answer(scorer: Scorer, request: FlagRequest) -> dict:
    """The /v1/flag answer: the flagged customers and the warnings."""
    records = [record.model_dump(mode="json") for record in request.interactions]
    scored_features = (pd.DataFrame([row.model_dump() for row in request.transcript_features],
                                    columns=[*KEYS, *FEATURE_COLUMNS]) if request.transcript_features else None)
    flagged = scorer.flag_at_risk(records, request.transcripts or None, request.capacity, request.threshold,
                                  transcript_features=scored_features, strict=request.strict)
    return {"customers": json_records(flagged[FLAG_COLUMNS]), "warnings": flagged.attrs["warnings"]}


# -- the JSON body, checked once before pydantic reads it -----------------------------------------------------------

def body_error(place: tuple, kind: str, message: str, **ctx: Any) -> dict:
    """One error about the raw body, shaped as pydantic's are (loc from "body", type, msg, ctx)."""
    return {"type": kind, "loc": ("body", *place), "msg": message, **({"ctx": ctx} if ctx else {})}


def printable(text: str) -> str:
    """Text safe to answer and log: lone surrogates written as \\udxxx escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def body_faults(body: Any) -> Iterator[dict]:
    """An error for each place of a parsed body that JSON allows but no contract can take: NaN or an infinity (Python
    reads NaN, Infinity and 1e400 as floats), text or a key with a lone UTF-16 surrogate (not a Unicode character:
    it can be neither answered nor logged), nesting deeper than MAX_DEPTH."""
    pending = [((), body)]
    while pending:
        place, value = pending.pop()
        if isinstance(value, (dict, list)) and len(place) >= MAX_DEPTH:
            yield body_error(place[:4], "too_deep", TOO_DEEP)
        elif isinstance(value, dict):
            for key in value:
                if SURROGATE.search(key):
                    yield body_error(place, "key_surrogate", f"key {printable(key)!r} holds a lone UTF-16 surrogate, "
                                                             f"which is not a Unicode character")
            pending.extend(((*place, key), inner) for key, inner in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend(((*place, index), inner) for index, inner in reversed(list(enumerate(value))))
        elif isinstance(value, Overlong):
            yield body_error(place, "finite_number", f"Input should be a finite number, got a whole number of "
                                                     f"{value.digits:,} digits, which no number field takes (send an "
                                                     f"id as text)")
        elif isinstance(value, float) and not math.isfinite(value):
            yield body_error(place, "finite_number", "Input should be a finite number, got " + (
                "NaN" if math.isnan(value) else f"{'-' * (value < 0)}Infinity (numbers beyond 1.8e308 read as that)"))
        elif isinstance(value, str) and SURROGATE.search(value):
            at = SURROGATE.search(value).start()
            yield body_error(place, "string_surrogate", f"lone UTF-16 surrogate {printable(value[at])} at character "
                                                        f"{at}, which is not a Unicode character; expected text")


@dataclass(frozen=True)
class Overlong:
    """A JSON whole number with more digits than any finite number (`digits` of them): body_faults refuses it."""

    digits: int


def json_integer(digits: str) -> Union[int, Overlong]:
    """A JSON whole number as an int, or as Overlong when it has more digits than any finite number: such a number
    then meets body_faults' check, where Python would refuse it (over 4,300 digits) with an error of its own, and
    pydantic and pandas would meet integers that no field can hold (or, in an id, text no client meant)."""
    length = len(digits.lstrip("-"))
    return int(digits) if length <= LONGEST_FINITE else Overlong(length)


class DuplicateKey(ValueError):
    """A JSON object that names one key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict; DuplicateKey when a key comes twice. JSON leaves a repeated key's meaning open:
    Python keeps the last value, a proxy or validator in front of the service may keep the first, and the two would
    then disagree on what was asked."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def parsed_body(body: bytes) -> Any:
    """The JSON body, parsed; RequestValidationError saying where it is not JSON or holds what body_faults refuses."""
    try:
        value = json.loads(body, parse_int=json_integer, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise RequestValidationError([body_error((), "duplicate_key", f"key {printable(exc.args[0])!r} given more "
                                                                      f"than once in one object")])
    except json.JSONDecodeError as exc:
        raise RequestValidationError([body_error((exc.pos,), "json_invalid", "JSON decode error", error=exc.msg)])
    except UnicodeDecodeError as exc:
        raise RequestValidationError([body_error((exc.start,), "json_invalid", "JSON decode error",
                                                 error=f"not UTF-8 text ({exc.reason})")])
    except RecursionError:
        raise RequestValidationError([body_error((), "too_deep", TOO_DEEP)])
    faults = list(islice(body_faults(value), 10))
    if faults:
        raise RequestValidationError(faults)
    return value


def takes_json(request: Request) -> bool:
    """Whether FastAPI reads this request's body as JSON: it has a JSON content type (FastAPI's strict default reads
    a body without one as bytes)."""
    given = request.headers.get("content-type")
    if not given:
        return False
    message = Message()
    message["content-type"] = given
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def encoded(request: Request) -> Optional[str]:
    """The content coding the body was sent in (gzip, br, ...) when it is not the body itself: the service reads no
    compressed body, and would otherwise answer that its bytes are not UTF-8 JSON."""
    given = request.headers.get("content-encoding", "").strip()
    return given if given and given.lower() != "identity" else None


def body_facts(body: Any, log_text: bool, redact: bool = False) -> dict:
    """What the access log says of a parsed body: the length of each list in COUNTED and, with `log_text`, the
    texts of the turns of the conversations or transcripts (masked, as they are scored, when the service redacts)."""
    if not isinstance(body, dict):
        return {}
    facts = {name: len(body[name]) for name in COUNTED if isinstance(body.get(name), list)}
    if log_text:
        conversations = [c for name in WITH_TEXT if isinstance(body.get(name), list) for c in body[name]]
        turns = [t for c in conversations if isinstance(c, dict) and isinstance(c.get("turns"), list)
                 for t in c["turns"]]
        texts = [t["text"] for t in turns if isinstance(t, dict) and isinstance(t.get("text"), str)]
        facts["texts"] = [redacted(text) for text in texts] if redact else texts
    return facts


class CheckedJSONRequest(Request):
    """A request whose JSON body is parsed by parsed_body, so that FastAPI validates only what passed its checks."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parsed_body(await self.body())
        return self._json


class CheckedJSONRoute(APIRoute):
    """A route that parses and checks the JSON body before FastAPI does: FastAPI turns any error raised while it reads
    the body into a bare 400, where these checks answer 422 naming the place."""

    def get_route_handler(self) -> Callable:
        handle = super().get_route_handler()

        async def checked(request: Request):
            request = CheckedJSONRequest(request.scope, request.receive)
            if request.method == "POST" and await request.body():
                if encoded(request):
                    raise HTTPException(415, f"body: sent with Content-Encoding: {encoded(request)}, which this "
                                             f"service does not decode; send the JSON uncompressed")
                if not takes_json(request):
                    given = request.headers.get("content-type")
                    raise HTTPException(415, f"body: expected JSON with Content-Type: application/json, got "
                                             f"{repr(given) if given else 'none'}")
                body = await request.json()
                service = service_of(request)
                request.state.body_facts = body_facts(body, service.settings.log_text, service.scorer.redact)
            return await handle(request)
        return checked


# -- endpoints ------------------------------------------------------------------------------------------------------

public = APIRouter(prefix="/v1", route_class=CheckedJSONRoute)
guarded = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], route_class=CheckedJSONRoute)


# Each readable path answers HEAD as well as GET (load balancers and uptime checks probe with HEAD, and RFC 9110 asks
# every GET resource to answer it; the server sends the GET answer's head without its body). Kept out of the schema,
# where it would document the same operation twice.
# `async` so that health answers from the event loop even while every worker thread waits to score.
@public.head("/health", include_in_schema=False)
@public.get("/health", response_model=Health)
async def health(service: ServiceDep) -> dict:
    """Whether the service is up, which model versions it serves, and for how long."""
    return {"status": "ok", "models": service.scorer.versions, "uptime_s": time.monotonic() - service.started}


@guarded.head("/models", include_in_schema=False)
@guarded.get("/models", response_model=Models)
async def models(service: ServiceDep) -> dict:
    """The loaded models: version, when each was made, and its headline test-split metrics."""
    metadata = service.scorer.metadata
    return {"models": [{"name": name, "version": version, "created_at": metadata[name].get("created_at"),
                        "metrics": headline_metrics(metadata[name])}
                       for name, version in service.scorer.versions.items()]}


# CPU-bound work runs in a worker thread (`scored`), off the event loop, within the request timeout.
@guarded.post("/score", response_model=ScoreResponse)
async def score(request: ScoreRequest, service: ServiceDep) -> dict:
    """The transcript features of each conversation, in request order."""
    check_batch(request.conversations, "conversations", service.settings)
    return await scored(service, lambda: features_answer(service.scorer, request))


@guarded.post("/flag", response_model=FlagResponse)
async def flag(request: FlagRequest, service: ServiceDep) -> dict:
    """Customers at risk, riskiest first: the `capacity` riskiest, those with risk >= threshold, or (neither given)
    those either model's own threshold flags; each with reasons and an action, as `carelens nightly` flags them."""
    check_batch(request.interactions, "interactions", service.settings)
    check_batch(request.transcripts, "transcripts", service.settings)
    check_batch(request.transcript_features, "transcript_features", service.settings)
    return await scored(service, lambda: flag_answer(service.scorer, request))


# -- error answers --------------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def error_place(location: Sequence) -> str:
    """A pydantic error location as a path into the body, e.g. interactions[2].answer_time_s (a key that is not a
    plain name in brackets and quotes: interactions[2]["hold time"])."""
    parts = location[1:] if location and location[0] == "body" else location
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" if _NAME.fullmatch(str(part))
                   else f"[{json.dumps(printable(str(part)), ensure_ascii=False)}]" for part in parts)
    return path[1:] if path.startswith(".") else "body" + path


def error_line(error: dict) -> str:
    """One pydantic error in words: where, what was expected, and (when it is short) what came."""
    if error["type"] == "json_invalid":
        return f"body: not valid JSON at character {error['loc'][-1]}: {error['ctx']['error']}"
    line = f"{error_place(error['loc'])}: {error['msg']}"
    given = repr(error.get("input"))
    if error["type"] != "missing" and "input" in error and len(given) <= 80:
        line += f", got {printable(given)}"
    return line


def shown_error(error: dict) -> dict:
    """A pydantic error as answered: the input only when it is a short scalar (a model-level error's input is the
    whole body, which the client already has), the context as text."""
    shown = {key: value for key, value in error.items() if key not in ("input", "ctx")}
    given = error.get("input")
    if "input" in error and (given is None or isinstance(given, (bool, int)) or isinstance(given, float)
                             and math.isfinite(given) or isinstance(given, str) and len(given) <= 200):
        shown["input"] = printable(given) if isinstance(given, str) else given
    if "ctx" in error:
        shown["ctx"] = {key: printable(str(value)) for key, value in error["ctx"].items()}
    if "loc" in error:
        shown["loc"] = [part if isinstance(part, int) else printable(str(part)) for part in error["loc"]]
    return shown


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad item and field; `errors` keeps pydantic's own list for programs."""
    errors = exc.errors()
    shown = "; ".join(error_line(e) for e in errors[:3])
    more = f" ({len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse({"detail": shown + more, "errors": jsonable_encoder([shown_error(e) for e in errors])},
                        status_code=422)


_PATH = re.compile(r"(?<![^\s('\"`=])(?:[A-Za-z]:)?[/\\][^\s'\"`/\\]+[/\\][^\s'\"`]*")


def without_paths(message: str) -> str:
    """The message with the server's file paths left out: the path a registry error starts with is cut to its last
    two parts (`/srv/registry/churn/v1: ...` to `churn/v1: ...`, which names the model), other absolute paths become
    <path>."""
    head, colon, rest = message.partition(": ")
    if colon and " " not in head and re.search(r"[/\\]", head):
        message = "/".join(re.split(r"[/\\]+", head.rstrip("/\\"))[-2:]) + colon + rest
    return printable(_PATH.sub("<path>", message))


async def contract_broken(request: Request, exc: CareLensError) -> JSONResponse:
    """422 with the toolkit's message: for a contract error it names the record (row, counted from 1) and the column;
    for a strict request, the contacts that had no conversation features."""
    place = "transcripts: " if isinstance(exc, MissingConversations) else ""
    return JSONResponse({"detail": place + without_paths(str(exc))}, status_code=422)


async def model_missing(request: Request, exc: RegistryError) -> JSONResponse:
    """503: the request needs a model this service was started without (named, without the registry's path)."""
    return JSONResponse({"detail": f"model unavailable: {without_paths(str(exc))}"}, status_code=503)


# -- middleware: request ids and access log, the catch-all, the body limit -------------------------------------------

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(scope: dict) -> str:
    """The client's X-Request-ID when it is short and plain (so logs join up across services), else a new one."""
    given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
    return given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex


class AccessLog:
    """ASGI middleware giving each request an id (answered in X-Request-ID) and writing one JSON line per request on
    the `carelens.access` logger: method, path, status, duration, id, client, body size and, once the body was
    parsed, how many items each list held. Never the body itself, nor headers (the API key); the transcript texts
    only when the service runs with `log_text`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, request_id = time.perf_counter(), request_id_of(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        seen = {"status": None, "body_bytes": 0}

        async def counted():
            message = await receive()
            seen["body_bytes"] += len(message.get("body", b""))
            return message

        async def identified(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]}
            await send(message)
        try:
            await self.app(scope, counted, identified)
        finally:
            ACCESS_LOG.info(json.dumps(access_line(scope, seen, started)))


def access_line(scope: dict, seen: dict, started: float) -> dict:
    """The access-log record of a finished request."""
    client = scope.get("client")
    return {"method": scope["method"], "path": printable(scope["path"]), "status": seen["status"],
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "request_id": scope["state"]["request_id"], "client": f"{client[0]}:{client[1]}" if client else None,
            "body_bytes": seen["body_bytes"], **scope["state"].get("body_facts", {})}


def traceback_text(exc: BaseException, longest_line: int = 500) -> str:
    """The traceback of exc alone (not the errors it was raised while handling: a RequestValidationError quotes the
    body), each line cut to `longest_line` characters, so that a message quoting its input brings a fragment of a
    request into the log at most."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False)).splitlines()
    return "\n".join(printable(line if len(line) <= longest_line else line[:longest_line] + " …") for line in lines)


class InternalErrors:
    """ASGI middleware answering 500 `{"detail": "internal error", "request_id"}` to an exception no handler took (a
    bug, not the client's doing), logged with its traceback on `carelens.service`; nothing of the failure reaches the
    client. The exception is not raised on: the server would log it again, with the errors it chains."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answered = False

        async def watched(message):
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id")
            ERROR_LOG.error("request %s %s %s failed:\n%s", request_id, scope["method"], printable(scope["path"]),
                            traceback_text(exc))
            if not answered:
                await JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)(
                    scope, receive, send)


class Authentication:
    """ASGI middleware answering 401 to a request for a guarded path whose API key is missing or wrong, from its
    headers alone: the body of a client that cannot authenticate is never parsed or held in memory (what it goes on
    sending is discarded, and the server's idle timeout closes the connection)."""

    def __init__(self, app, api_key: Optional[str], guarded_paths: frozenset):
        self.app, self.api_key, self.guarded_paths = app, api_key, guarded_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.api_key is not None and scope["path"] in self.guarded_paths:
            given = dict(scope["headers"]).get(API_KEY_HEADER.lower().encode())
            refusal = key_refusal(self.api_key, given.decode("latin-1") if given is not None else None)
            if refusal:
                return await JSONResponse({"detail": refusal}, status_code=401,
                                          headers={"WWW-Authenticate": API_KEY_HEADER})(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes` (at once when Content-Length says so, and by counting
    what arrives, because a chunked request has no Content-Length to trust) and 408 to a body that has not arrived
    whole within `timeout_s`: a stalled or slow client holds its buffer no longer than that."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def too_large(self, size: str) -> JSONResponse:
        return JSONResponse({"detail": f"request body of {size} is over the limit of {self.max_bytes:,} bytes"},
                            status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(f"{int(declared):,} bytes (Content-Length)")(scope, receive, send)
        outcome: Any = _GAVE_UP
        with anyio.move_on_after(self.timeout_s):
            outcome = await self.body_or_refusal(receive)
        if outcome is _GAVE_UP:
            outcome = JSONResponse({"detail": f"request body not received whole within {self.timeout_s:g} s"},
                                   status_code=408)
        if isinstance(outcome, JSONResponse):
            return await outcome(scope, receive, send)
        return None if outcome is None else await self.app(scope, replayed(outcome, receive), send)

    async def body_or_refusal(self, receive) -> Union[bytes, JSONResponse, None]:
        """The whole body; the 413 answer once more than `max_bytes` have arrived; None when the client left."""
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                return self.too_large(f"at least {received:,} bytes (counted as it arrived)")
            more = message.get("more_body", False)
        return b"".join(chunks)


def replayed(body: bytes, receive):
    """An ASGI receive that gives the already-read body once, then defers to the server (for disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again():
        return pending.pop() if pending else await receive()
    return receive_again


def create_app(scorer: Scorer, settings: ServiceSettings) -> FastAPI:
    """The service around an already loaded Scorer: /v1/health, /v1/models, /v1/score and /v1/flag."""
    app = FastAPI(title="CareLens", version=package_version("carelens"),
                  description="Which contact-centre customers are we about to lose or anger, and why.")
    app.state.service = Service(scorer, settings)
    # The last added runs first: each request gets its id and log line, then the catch-all, then the key is checked
    # from the headers, and only then is the body read, within its size and time limits.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(Authentication, api_key=settings.api_key,
                       guarded_paths=frozenset(route.path for route in guarded.routes))
    app.add_middleware(InternalErrors)
    app.add_middleware(AccessLog)
    app.include_router(public)
    app.include_router(guarded)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(CareLensError, contract_broken)
    app.add_exception_handler(RegistryError, model_missing)
    return app
