"""The endpoints: /v1/health, and behind the API key /v1/models, /v1/score and /v1/flag."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException

from carelens.data.contracts import json_records
from carelens.data.errors import raised
from carelens.inference.api import FlagCall, Scorer
from carelens.inference.service.dependencies import ServiceDep, require_key, scored
from carelens.inference.service.json_body import CheckedJSONRoute
from carelens.inference.service.schemas import FlagRequest, FlagResponse, Health, Models, ScoreRequest, ScoreResponse
from carelens.inference.service.settings import ServiceSettings
from carelens.models.conversation_features import AGENT, DRIVER, EVIDENCE, FEATURE_COLUMNS, KEYS
from carelens.models.scoring import MicroBatcher

TABULAR_HEADLINES = ("roc_auc", "pr_auc", "ece", "macro_f1")


def _check_batch(items: Sequence, name: str, settings: ServiceSettings) -> None:
    """413 when a request carries more items than the service takes at once."""
    if len(items) > settings.max_batch:
        raise HTTPException(413, f"{name}: got {len(items):,} items, at most {settings.max_batch:,} are taken per "
                                 f"request; split the batch")


#: What /v1/score answers per conversation and /v1/flag takes back as `transcript_features`.
SCORED_COLUMNS = [*KEYS, AGENT, *FEATURE_COLUMNS, EVIDENCE, DRIVER]


def headline_metrics(metadata: dict) -> dict[str, Optional[float]]:
    """Test-split figures: ROC-AUC, PR-AUC, ECE (and macro-F1 when multi-class) of a tabular model; each transcript
    head's macro-F1."""
    metrics = metadata.get("metrics", {})
    if metadata.get("kind") == "transcript":
        return {f"{head}_macro_f1": scores["macro_f1"] for head, scores in metrics.get("test", {}).items()
                if scores.get("n")}
    return {name: metrics[name] for name in TABULAR_HEADLINES if name in metrics}


def _features_answer(scorer: Scorer, request: ScoreRequest) -> dict:
    """The /v1/score answer: each conversation's ids and transcript features."""
    features = scorer.score_transcripts(request.conversations)
    return {"conversations": json_records(features[SCORED_COLUMNS])}


def _flag_answer(scorer: Scorer, request: FlagRequest, flagging: MicroBatcher) -> dict:
    """The /v1/flag answer: the flagged customers, the warnings, how the transcripts met the contacts, the expected
    performance of each model's flags, the agents' scorecards and the call drivers. Transcripts are scored beside
    other requests (the encoder micro-batches them), and so is the flagging that follows (`Scorer.flag_each`)."""
    records = [record.model_dump(mode="json") for record in request.interactions]
    # Python objects, as the interactions' records: the contract types every column, so pandas need not infer any
    # (and every request's features share one layout, checked with the other requests' as one table).
    scored_features = (pd.DataFrame([row.model_dump() for row in request.transcript_features],
                                    columns=SCORED_COLUMNS, dtype=object) if request.transcript_features else None)
    transcripts = request.transcripts or None
    if scored_features is None and transcripts and scorer.transcripts is not None:
        scored_features, transcripts = scorer.score_transcripts(transcripts)[SCORED_COLUMNS], None
    call = FlagCall(records, transcripts, request.capacity, request.threshold, scored_features, request.strict)
    flagged = raised(flagging([call], scorer.flag_each)[0])
    return {"customers": json_records(flagged), "warnings": flagged.attrs["warnings"],
            "joins": flagged.attrs["joins"], "expected_performance": flagged.attrs["expected_performance"],
            "agents": flagged.attrs["agents"], "drivers": flagged.attrs["drivers"]}


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
    """Whether the service is up, which model versions it serves, how the transcript model runs, and for how long."""
    return {"status": "ok", "models": service.scorer.versions, "runtime": service.scorer.runtime_choice,
            "uptime_s": time.monotonic() - service.started}


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
    _check_batch(request.conversations, "conversations", service.settings)
    return await scored(service, lambda: _features_answer(service.scorer, request))


@guarded.post("/flag", response_model=FlagResponse)
async def flag(request: FlagRequest, service: ServiceDep) -> dict:
    """Customers at risk, riskiest first: the `capacity` riskiest, those with risk >= threshold, or (neither given)
    those either model's own threshold flags; each with reasons and an action, as `carelens nightly` flags them."""
    _check_batch(request.interactions, "interactions", service.settings)
    _check_batch(request.transcripts, "transcripts", service.settings)
    _check_batch(request.transcript_features, "transcript_features", service.settings)
    return await scored(service, lambda: _flag_answer(service.scorer, request, service.flagging))
