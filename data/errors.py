"""The toolkit's own errors: one base class, so the CLI reports these and lets anything else surface as the bug it is."""
from __future__ import annotations


class CareLensError(Exception):
    """An error a user can act on: bad input, a refused artifact, a run that would mix two runs, a bad option."""


class UsageError(CareLensError, ValueError):
    """An argument or option outside what the function or command accepts; the message says what was expected."""
