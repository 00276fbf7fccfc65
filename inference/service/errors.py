"""The error answers: 422 naming each bad field or the broken contract, 503 for a model the service lacks."""
from __future__ import annotations

import json
import math
import re
from typing import Sequence

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from carelens.data.errors import CareLensError
from carelens.inference.contacts import MissingConversations
from carelens.models.registry import RegistryError


def printable(text: str) -> str:
    """Text safe to answer and log: lone surrogates written as \\udxxx escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _error_place(location: Sequence) -> str:
    """A pydantic error location as a path into the body, e.g. interactions[2].answer_time_s (a key that is not a
    plain name in brackets and quotes: interactions[2]["hold time"])."""
    parts = location[1:] if location and location[0] == "body" else location
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" if _NAME.fullmatch(str(part))
                   else f"[{json.dumps(printable(str(part)), ensure_ascii=False)}]" for part in parts)
    return path[1:] if path.startswith(".") else "body" + path


def _error_line(error: dict) -> str:
    """One pydantic error in words: where, what was expected, and (when it is short) what came."""
    if error["type"] == "json_invalid":
        return f"body: not valid JSON at character {error['loc'][-1]}: {error['ctx']['error']}"
    line = f"{_error_place(error['loc'])}: {error['msg']}"
    given = repr(error.get("input"))
    if error["type"] != "missing" and "input" in error and len(given) <= 80:
        line += f", got {printable(given)}"
    return line


def _shown_error(error: dict) -> dict:
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
    shown = "; ".join(_error_line(e) for e in errors[:3])
    more = f" ({len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse({"detail": shown + more, "errors": jsonable_encoder([_shown_error(e) for e in errors])},
                        status_code=422)


_PATH = re.compile(r"(?<![^\s('\"`=])(?:[A-Za-z]:)?[/\\][^\s'\"`/\\]+[/\\][^\s'\"`]*")


def _hidden_path(match: re.Match) -> str:
    """<path> for a path, with the punctuation that ends its clause kept ("no registry at <path>: it does not
    exist"). Cut here, not in the pattern: a lookahead there makes matching quadratic in a long run of colons."""
    path = match.group()
    return "<path>" + path[len(path.rstrip(":;,.)")):]


def _without_paths(message: str) -> str:
    """The message with the server's file paths left out: the path a registry error starts with is cut to its last
    two parts (`/srv/registry/churn/v1: ...` to `churn/v1: ...`, which names the model), other absolute paths become
    <path>."""
    head, colon, rest = message.partition(": ")
    if colon and " " not in head and re.search(r"[/\\]", head):
        message = "/".join(re.split(r"[/\\]+", head.rstrip("/\\"))[-2:]) + colon + rest
    return printable(_PATH.sub(_hidden_path, message))


async def contract_broken(request: Request, exc: CareLensError) -> JSONResponse:
    """422 with the toolkit's message: for a contract error it names the record (row, counted from 1) and the column;
    for a strict request, the contacts that had no conversation features."""
    place = "transcripts: " if isinstance(exc, MissingConversations) else ""
    return JSONResponse({"detail": place + _without_paths(str(exc))}, status_code=422)


async def model_missing(request: Request, exc: RegistryError) -> JSONResponse:
    """503: the request needs a model this service was started without (named, without the registry's path)."""
    return JSONResponse({"detail": f"model unavailable: {_without_paths(str(exc))}"}, status_code=503)
