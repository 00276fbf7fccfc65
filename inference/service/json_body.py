"""The JSON body, checked once before pydantic reads it: refused where no contract can take it, counted for the log."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from email.message import Message
from itertools import islice
from typing import Any, Callable, Iterator, Optional, Union

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from carelens.data.contracts import SURROGATE
from carelens.data.redaction import redacted
from carelens.inference.service.dependencies import service_of
from carelens.inference.service.errors import printable

#: Deeper JSON than any contract needs (a turn's empathy labels sit 5 levels down); refused before it reaches pandas.
MAX_DEPTH = 32
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; no field takes that"
#: Digits of the longest whole number a float can hold (1.8e308).
LONGEST_FINITE = 309
#: The lists of a request body counted on its access-log line, and those whose turns' texts `log_text` adds.
COUNTED = ("conversations", "interactions", "transcripts", "transcript_features")
WITH_TEXT = ("conversations", "transcripts")


def _body_error(place: tuple, kind: str, message: str, **ctx: Any) -> dict:
    """One error about the raw body, shaped as pydantic's are (loc from "body", type, msg, ctx)."""
    return {"type": kind, "loc": ("body", *place), "msg": message, **({"ctx": ctx} if ctx else {})}


def _body_faults(body: Any) -> Iterator[dict]:
    """An error for each place of a parsed body that JSON allows but no contract can take: NaN or an infinity (Python
    reads NaN, Infinity and 1e400 as floats), text or a key with a lone UTF-16 surrogate (not a Unicode character:
    it can be neither answered nor logged), nesting deeper than MAX_DEPTH."""
    pending = [((), body)]
    while pending:
        place, value = pending.pop()
        if isinstance(value, (dict, list)) and len(place) >= MAX_DEPTH:
            yield _body_error(place[:4], "too_deep", TOO_DEEP)
        elif isinstance(value, dict):
            for key in value:
                if SURROGATE.search(key):
                    yield _body_error(place, "key_surrogate", f"key {printable(key)!r} holds a lone UTF-16 surrogate, "
                                                              f"which is not a Unicode character")
            pending.extend(((*place, key), inner) for key, inner in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend(((*place, index), inner) for index, inner in reversed(list(enumerate(value))))
        elif isinstance(value, _Overlong):
            yield _body_error(place, "finite_number", f"Input should be a finite number, got a whole number of "
                                                      f"{value.digits:,} digits, which no number field takes (send an "
                                                      f"id as text)")
        elif isinstance(value, float) and not math.isfinite(value):
            yield _body_error(place, "finite_number", "Input should be a finite number, got " + (
                "NaN" if math.isnan(value) else f"{'-' * (value < 0)}Infinity (numbers beyond 1.8e308 read as that)"))
        elif isinstance(value, str) and SURROGATE.search(value):
            at = SURROGATE.search(value).start()
            yield _body_error(place, "string_surrogate", f"lone UTF-16 surrogate {printable(value[at])} at character "
                                                         f"{at}, which is not a Unicode character; expected text")


@dataclass(frozen=True)
class _Overlong:
    """A JSON whole number with more digits than any finite number (`digits` of them): _body_faults refuses it."""

    digits: int


def _json_integer(digits: str) -> Union[int, _Overlong]:
    """A JSON whole number as an int, or as _Overlong when it has more digits than any finite number: such a number
    then meets _body_faults' check, where Python would refuse it (over 4,300 digits) with an error of its own, and
    pydantic and pandas would meet integers that no field can hold (or, in an id, text no client meant)."""
    length = len(digits.lstrip("-"))
    return int(digits) if length <= LONGEST_FINITE else _Overlong(length)


class _DuplicateKey(ValueError):
    """A JSON object that names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict; _DuplicateKey when a key comes twice. JSON leaves a repeated key's meaning open:
    Python keeps the last value, a proxy or validator in front of the service may keep the first, and the two would
    then disagree on what was asked."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _parsed_body(body: bytes) -> Any:
    """The JSON body, parsed; RequestValidationError saying where it is not JSON or holds what _body_faults refuses."""
    try:
        value = json.loads(body, parse_int=_json_integer, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise RequestValidationError([_body_error((), "duplicate_key", f"key {printable(exc.args[0])!r} given more "
                                                                       f"than once in one object")])
    except json.JSONDecodeError as exc:
        raise RequestValidationError([_body_error((exc.pos,), "json_invalid", "JSON decode error", error=exc.msg)])
    except UnicodeDecodeError as exc:
        raise RequestValidationError([_body_error((exc.start,), "json_invalid", "JSON decode error",
                                                  error=f"not UTF-8 text ({exc.reason})")])
    except RecursionError:
        raise RequestValidationError([_body_error((), "too_deep", TOO_DEEP)])
    faults = list(islice(_body_faults(value), 10))
    if faults:
        raise RequestValidationError(faults)
    return value


def _takes_json(request: Request) -> bool:
    """Whether FastAPI reads this request's body as JSON: it has a JSON content type (FastAPI's strict default reads
    a body without one as bytes)."""
    given = request.headers.get("content-type")
    if not given:
        return False
    message = Message()
    message["content-type"] = given
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _encoded(request: Request) -> Optional[str]:
    """The content coding the body was sent in (gzip, br, ...) when it is not the body itself: the service reads no
    compressed body, and would otherwise answer that its bytes are not UTF-8 JSON."""
    given = request.headers.get("content-encoding", "").strip()
    return given if given and given.lower() != "identity" else None


def _body_facts(body: Any, log_text: bool, redact: bool = False) -> dict:
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


class _CheckedJSONRequest(Request):
    """A request whose JSON body is parsed by _parsed_body, so that FastAPI validates only what passed its checks."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _parsed_body(await self.body())
        return self._json


class CheckedJSONRoute(APIRoute):
    """A route that parses and checks the JSON body before FastAPI does: FastAPI turns any error raised while it reads
    the body into a bare 400, where these checks answer 422 naming the place."""

    def get_route_handler(self) -> Callable:
        handle = super().get_route_handler()

        async def checked(request: Request):
            request = _CheckedJSONRequest(request.scope, request.receive)
            if request.method == "POST" and await request.body():
                if _encoded(request):
                    raise HTTPException(415, f"body: sent with Content-Encoding: {_encoded(request)}, which this "
                                             f"service does not decode; send the JSON uncompressed")
                if not _takes_json(request):
                    given = request.headers.get("content-type")
                    raise HTTPException(415, f"body: expected JSON with Content-Type: application/json, got "
                                             f"{repr(given) if given else 'none'}")
                body = await request.json()
                service = service_of(request)
                request.state.body_facts = _body_facts(body, service.settings.log_text, service.scorer.redact)
            return await handle(request)
        return checked
