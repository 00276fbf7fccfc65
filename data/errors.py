"""The toolkit's own errors: one base class, so the CLI reports these and lets anything else surface as the bug it is."""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, TypeVar, Union

T = TypeVar("T")


class CareLensError(Exception):
    """An error a user can act on: bad input, a refused artifact, a run that would mix two runs, a bad option."""

    #: The CLI's exit code for it: 2 (the input or the command must change) unless a subclass says otherwise.
    exit_code = 2


class OutOfSpace(CareLensError, OSError):
    """A write failed because the disk, the quota or the file-size limit is full; nothing half-written was kept, so a
    re-run after freeing space resumes (exit code 1, as for an incomplete run)."""

    exit_code = 1


class UsageError(CareLensError, ValueError):
    """An argument or option outside what the function or command accepts; the message says what was expected."""


def each_done(keys: Iterable[Hashable], work: Callable[[Hashable], T], errors: dict) -> dict:
    """work(key) for each key, by key; a key whose work raises is left out, its error recorded in `errors`: one call's
    own failure (a broken contract, a bad selection) when several calls are served together, the others go on."""
    done = {}
    for key in keys:
        try:
            done[key] = work(key)
        except Exception as error:  # that call's own failure: recorded as its answer, not lost
            errors[key] = error
    return done


def raised(answer: Union[T, Exception]) -> T:
    """One call's answer of several served together: its result, or its error raised."""
    if isinstance(answer, Exception):
        raise answer
    return answer
