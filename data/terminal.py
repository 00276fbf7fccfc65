"""Terminal output every command shares: the consoles, tables of rows, and how the toolkit's errors end a command."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from carelens.data.errors import CareLensError

#: The characters that change the direction text is drawn in (Unicode's bidirectional controls). From data they
#: reorder what follows them ("Trojan Source"): an id `\u202eK12-0003` shows as `3000-21K`, another customer's.
_DIRECTION_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
DIRECTION_CONTROLS = re.compile(f"[{_DIRECTION_CONTROLS}]")
#: Control characters other than newline and tab (terminal escape sequences start with one), lone surrogates and the
#: direction controls.
_UNSHOWABLE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff{_DIRECTION_CONTROLS}]")


def visible(text: str) -> str:
    """Text as the terminal should show it: control characters and lone surrogates as their escapes (\\x1b, \\ud800),
    so that an id or a file name cannot move the cursor, recolour the terminal or fail to encode; text of only
    zero-width characters (a lone emoji modifier or combining mark) escaped in full, as it would vanish from a table."""
    shown = _UNSHOWABLE.sub(lambda found: escaped(found.group()), text)
    return escaped(shown) if shown and cell_len(shown) == 0 else shown


def escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def in_one_direction(text: str) -> str:
    """The text with its direction controls as their escapes (\\u202e), so that it shows in the order it is written:
    for pages (HTML), which show every other character as it is."""
    return DIRECTION_CONTROLS.sub(lambda found: escaped(found.group()), text)


class LiteralConsole(Console):
    """A console that shows every string as written: no rich markup and no emoji codes are read (an id `[vip]` shows,
    `[/]` does not end a style that was never opened), and control characters are escaped. What the toolkit prints
    comes from data (ids, column names, file names, the values an error quotes) as often as from the toolkit; its own
    styles are applied with `tagged`."""

    def __init__(self, **options: Any):
        super().__init__(markup=False, emoji=False, **options)

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(visible(text), **options)


console = LiteralConsole()
error_console = LiteralConsole(stderr=True)


def tagged(tag: str, style: str, message: object) -> Text:
    """`tag` in `style`, then the message as written."""
    return Text.assemble((tag, style), " ", visible(str(message)))


@contextmanager
def user_errors() -> Iterator[None]:
    """The toolkit's own errors end the command with their message and exit code (2 unless the error says otherwise);
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except CareLensError as exc:
        error_console.print(tagged("error:", "bold red", exc), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from exc


def warn(message: str) -> None:
    """A warning on standard error, in the one style every command uses."""
    error_console.print(tagged("warning:", "bold yellow", message), highlight=False, soft_wrap=True)


def rows_table(rows: list[dict], title: str) -> Table:
    """Rows of dicts as a rich table; floats to 4 places, missing values as a dash, every value shown as written (a
    tweet's "[sic]" is text, not rich markup)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(*columns, title=title)
    for row in rows:
        values = (row.get(c) for c in columns)
        table.add_row(*(Text(visible("—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)))
                        for v in values))
    return table
