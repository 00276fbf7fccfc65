"""ASGI middleware: request ids and the access log, the catch-all for errors, the API key check, the body limit."""
from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from typing import Any, Optional, Union

import anyio
from fastapi.responses import JSONResponse

from carelens.inference.service.dependencies import API_KEY_HEADER, key_refusal
from carelens.inference.service.errors import printable

REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOG = logging.getLogger("carelens.access")
ERROR_LOG = logging.getLogger("carelens.service")
#: What BodyLimit holds when the body did not arrive whole in time.
_GAVE_UP = object()
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id_of(scope: dict) -> str:
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
        started, request_id = time.perf_counter(), _request_id_of(scope)
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
            ACCESS_LOG.info(json.dumps(_access_line(scope, seen, started)))


def _access_line(scope: dict, seen: dict, started: float) -> dict:
    """The access-log record of a finished request."""
    client = scope.get("client")
    return {"method": scope["method"], "path": printable(scope["path"]), "status": seen["status"],
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "request_id": scope["state"]["request_id"], "client": f"{client[0]}:{client[1]}" if client else None,
            "body_bytes": seen["body_bytes"], **scope["state"].get("body_facts", {})}


def _traceback_text(exc: BaseException, longest_line: int = 500) -> str:
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
                            _traceback_text(exc))
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
        return None if outcome is None else await self.app(scope, _replayed(outcome, receive), send)

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


def _replayed(body: bytes, receive):
    """An ASGI receive that gives the already-read body once, then defers to the server (for disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again():
        return pending.pop() if pending else await receive()
    return receive_again
