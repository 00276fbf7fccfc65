"""The HTTP service: transcript scores and at-risk customers over JSON, from models loaded once at start-up."""
from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from typing import Annotated, Any, Literal, Optional, Sequence

import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from carelens.data.contracts import INTERACTIONS, Column, Conversation
from carelens.data.errors import CareLensError
from carelens.inference.api import FLAG_COLUMNS, Scorer
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
from carelens.models.registry import RegistryError

API_KEY_HEADER = "X-API-Key"
TABULAR_HEADLINES = ("roc_auc", "pr_auc", "ece", "macro_f1")


class ServiceSettings(BaseModel):
    """What guards the service: the API key clients must send (None: no authentication) and the request limits."""

    model_config = ConfigDict(frozen=True)

    # Kept out of repr so that logging the settings never prints the key.
    api_key: Optional[str] = Field(default=None, repr=False)
    max_body_bytes: int = Field(gt=0, description="Largest request body accepted, in bytes.")
    max_batch: int = Field(gt=0, description="Most conversations, interactions or transcripts in one request.")


# -- request and response bodies ------------------------------------------------------------------------------------

def _lowered(value: Any) -> Any:
    """Text trimmed and lower-cased, as the contract reads categories; anything else as given."""
    return value.strip().lower() if isinstance(value, str) else value


def _text_id(value: Any) -> Any:
    """A whole-number identifier as text, as the contract accepts it; anything else as given."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def contract_field(column: Column) -> tuple[Any, Any]:
    """The pydantic type and field of one contract column: required unless nullable, bounded as the contract is."""
    kinds = {"id": Annotated[str, BeforeValidator(_text_id)], "int": int, "float": float, "bool": bool,
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
                                  **{name: (Optional[float], None) for name in FEATURE_COLUMNS})


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
    capacity: Optional[int] = Field(None, ge=0, description="Return the `capacity` riskiest customers (the calls the "
                                                            "centre can make).")
    threshold: Optional[float] = Field(None, ge=0, le=1, description="Return customers whose risk >= threshold.")
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


def require_key(service: ServiceDep, given: Annotated[Optional[str], Depends(_key_header)]) -> None:
    """Nothing when authentication is off or the key matches; 401 saying what was wrong otherwise."""
    expected = service.settings.api_key
    if expected is None:
        return
    if not given:
        raise HTTPException(401, f"missing {API_KEY_HEADER} header: this service requires an API key",
                            headers={"WWW-Authenticate": API_KEY_HEADER})
    # A constant-time comparison, so response timing does not reveal how much of a guess was right.
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, f"wrong API key in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": API_KEY_HEADER})


def check_batch(items: Sequence, name: str, settings: ServiceSettings) -> None:
    """413 when a request carries more items than the service takes at once."""
    if len(items) > settings.max_batch:
        raise HTTPException(413, f"{name}: got {len(items):,} items, at most {settings.max_batch:,} are taken per "
                                 f"request; split the batch")


def json_records(frame: pd.DataFrame) -> list[dict]:
    """The rows as dicts of plain Python values, missing numbers as None (JSON null)."""
    return [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
            for row in frame.to_dict("records")]


def headline_metrics(metadata: dict) -> dict[str, Optional[float]]:
    """Test-split figures: ROC-AUC, PR-AUC, ECE (and macro-F1 when multi-class) of a tabular model; each transcript
    head's macro-F1."""
    metrics = metadata.get("metrics", {})
    if metadata.get("kind") == "transcript":
        return {f"{head}_macro_f1": scores["macro_f1"] for head, scores in metrics.get("test", {}).items()
                if scores.get("n")}
    return {name: metrics[name] for name in TABULAR_HEADLINES if name in metrics}


# -- endpoints ------------------------------------------------------------------------------------------------------

public = APIRouter(prefix="/v1")
guarded = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


# `async` so that health answers from the event loop even while every worker thread waits to score.
@public.get("/health", response_model=Health)
async def health(service: ServiceDep) -> dict:
    """Whether the service is up, which model versions it serves, and for how long."""
    return {"status": "ok", "models": service.scorer.versions, "uptime_s": time.monotonic() - service.started}


@guarded.get("/models", response_model=Models)
async def models(service: ServiceDep) -> dict:
    """The loaded models: version, when each was made, and its headline test-split metrics."""
    metadata = service.scorer.metadata
    return {"models": [{"name": name, "version": version, "created_at": metadata[name].get("created_at"),
                        "metrics": headline_metrics(metadata[name])}
                       for name, version in service.scorer.versions.items()]}


# Plain `def`: FastAPI runs these CPU-bound endpoints in its thread pool, off the event loop.
@guarded.post("/score", response_model=ScoreResponse)
def score(request: ScoreRequest, service: ServiceDep) -> dict:
    """The transcript features of each conversation, in request order."""
    check_batch(request.conversations, "conversations", service.settings)
    with service.lock:
        features = service.scorer.score_transcripts(request.conversations)
    return {"conversations": json_records(features[[*KEYS, *FEATURE_COLUMNS]])}


@guarded.post("/flag", response_model=FlagResponse)
def flag(request: FlagRequest, service: ServiceDep) -> dict:
    """Customers at risk, riskiest first: the `capacity` riskiest, those with risk >= threshold, or (neither given)
    those either model's own threshold flags; each with reasons and an action, as `carelens nightly` flags them."""
    check_batch(request.interactions, "interactions", service.settings)
    check_batch(request.transcripts, "transcripts", service.settings)
    check_batch(request.transcript_features, "transcript_features", service.settings)
    records = [record.model_dump(mode="json") for record in request.interactions]
    scored = (pd.DataFrame([row.model_dump() for row in request.transcript_features], columns=[*KEYS, *FEATURE_COLUMNS])
              if request.transcript_features else None)
    with service.lock:
        flagged = service.scorer.flag_at_risk(records, request.transcripts or None, request.capacity, request.threshold,
                                              transcript_features=scored, strict=request.strict)
    return {"customers": json_records(flagged[FLAG_COLUMNS]), "warnings": flagged.attrs["warnings"]}


# -- error answers --------------------------------------------------------------------------------------------------

def error_place(location: Sequence) -> str:
    """A pydantic error location as a path into the body, e.g. interactions[2].answer_time_s."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".") or "body"


def error_line(error: dict) -> str:
    """One pydantic error in words: where, what was expected, and (when it is short) what came."""
    if error["type"] == "json_invalid":
        return f"body: not valid JSON at character {error['loc'][-1]}: {error['ctx']['error']}"
    line = f"{error_place(error['loc'])}: {error['msg']}"
    given = repr(error.get("input"))
    if error["type"] != "missing" and len(given) <= 80:
        line += f", got {given}"
    return line


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad item and field; `errors` keeps pydantic's own list for programs."""
    errors = exc.errors()
    shown = "; ".join(error_line(e) for e in errors[:3])
    more = f" ({len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse({"detail": shown + more, "errors": jsonable_encoder(errors)}, status_code=422)


async def contract_broken(request: Request, exc: CareLensError) -> JSONResponse:
    """422 with the toolkit's message: for a contract error it names the record (row, counted from 1) and the column;
    for a strict request, the contacts that had no conversation features."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def model_missing(request: Request, exc: RegistryError) -> JSONResponse:
    """503: the request needs a model this service was started without."""
    return JSONResponse({"detail": str(exc)}, status_code=503)


# -- the body limit -------------------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes`: at once when Content-Length says so, and by counting
    what arrives, because a chunked request has no Content-Length to trust."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def too_large(self, size: str) -> JSONResponse:
        return JSONResponse({"detail": f"request body of {size} is over the limit of {self.max_bytes:,} bytes"},
                            status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(f"{int(declared):,} bytes (Content-Length)")(scope, receive, send)
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                return await self.too_large(f"at least {received:,} bytes (counted as it arrived)")(
                    scope, receive, send)
            more = message.get("more_body", False)
        return await self.app(scope, replayed(b"".join(chunks), receive), send)


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
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.include_router(public)
    app.include_router(guarded)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(CareLensError, contract_broken)
    app.add_exception_handler(RegistryError, model_missing)
    return app
