"""What the routes depend on: the shared state, the API key check, and scoring in a worker thread within the timeout."""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, TypeVar

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from carelens.inference.api import Scorer
from carelens.inference.service.settings import ServiceSettings
from carelens.models.scoring import MicroBatcher, abandonable

API_KEY_HEADER = "X-API-Key"
T = TypeVar("T")


# -- the shared state and its guards --------------------------------------------------------------------------------

@dataclass
class Service:
    """What every request shares: the loaded models, the settings, the flagging batcher and the start time. Requests
    score transcripts concurrently: each worker thread tokenizes with its own tokenizer (`TranscriptModel.tokenizer`),
    and concurrent requests' turns go through the encoder together (`TranscriptPipeline`'s micro-batching)."""

    scorer: Scorer
    settings: ServiceSettings
    # Flagging (contract checks, the tabular models, reasons, scorecards) is pandas and Python that hold the GIL:
    # eight requests through it at once answered 3.7 requests/s where one at a time answered 6.3. So it runs one batch
    # at a time, each batch every request that came meanwhile (`Scorer.flag_each`: the models run once for them all).
    flagging: MicroBatcher = field(default_factory=MicroBatcher)
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


# -- scoring in a worker thread, within the request timeout ---------------------------------------------------------

_GAVE_UP = object()


def _unless_abandoned(work: Callable[[], T], abandoned: threading.Event) -> Any:
    """work(), stopping at its next encoder batch once the request is abandoned; _GAVE_UP when it was abandoned
    before it started."""
    if abandoned.is_set():
        return _GAVE_UP
    with abandonable(abandoned):
        return work()


async def scored(service: Service, work: Callable[[], T]) -> T:
    """work() in a worker thread, beside other requests' (the encoder, ONNX Runtime and the tabular models release the
    GIL while they compute); 503 when it takes longer than the request timeout.

    A thread cannot be stopped from outside: work that is already running when the time is up stops at its next
    encoder batch (`abandonable`) and its result is dropped; what runs between two batches (tokenizing, the tabular
    models) runs on to its end. Work still waiting for a worker thread when its request times out never runs."""
    limit = service.settings.request_timeout_s
    abandoned = threading.Event()
    result: Any = _GAVE_UP
    with anyio.move_on_after(limit):
        result = await anyio.to_thread.run_sync(_unless_abandoned, work, abandoned, abandon_on_cancel=True)
    if result is _GAVE_UP:
        abandoned.set()
        raise HTTPException(503, f"scoring timed out after {limit:g} s (the service is busy or the batch is large); "
                                 f"retry later or split the batch", headers={"Retry-After": "1"})
    return result
