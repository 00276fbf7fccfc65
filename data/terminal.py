"""Terminal output every command shares: the consoles, tables of rows, and how the toolkit's errors end a command."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from carelens.data.errors import CareLensError

console = Console()
error_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """The toolkit's own errors end the command with their message and exit code (2 unless the error says otherwise);
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except CareLensError as exc:
        error_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from exc


def warn(message: str) -> None:
    """A warning on standard error, in the one style every command uses."""
    error_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def rows_table(rows: list[dict], title: str) -> Table:
    """Rows of dicts as a rich table; floats to 4 places, missing values as a dash, every value shown as written (a
    tweet's "[sic]" is text, not rich markup)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(*columns, title=title)
    for row in rows:
        values = (row.get(c) for c in columns)
        table.add_row(*(Text("—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)) for v in values))
    return table
