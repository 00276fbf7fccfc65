"""CSV as the toolkit writes it: no text cell that a spreadsheet would run as a formula (OWASP's CSV-injection advice)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

#: What a spreadsheet reads as the start of a formula (tab and carriage return too: some strip them, then read on).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: Any) -> Any:
    """Text that starts as a formula would, behind a leading `'` (shown as text, not run); any other value as given,
    so that a negative number stays a number."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def restored(value: Any) -> Any:
    """A cell as it was before `inert` guarded it (the toolkit reading back a CSV it wrote, such as a label file)."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def holds_text(column: pd.Series) -> bool:
    """Whether a column can hold text: numbers, booleans and dates cannot, so they are written as they are."""
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
                or pd.api.types.is_datetime64_any_dtype(column))


def inert_column(column: pd.Series) -> pd.Series:
    """The column with every text cell inert, as Python objects (pandas' Arrow strings cannot hold every str)."""
    if not holds_text(column):
        return column
    return pd.Series([inert(value) for value in column.astype(object)], index=column.index, dtype=object)


def inert_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell and column name made inert; other cells unchanged."""
    columns = [inert_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
    safe = pd.concat(columns, axis=1, ignore_index=True) if columns else pd.DataFrame(index=frame.index)
    safe.columns = pd.Index([inert(name) for name in frame.columns], dtype=object)
    return safe


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """`path`, holding the frame as CSV with every text cell inert. Lines end in CRLF (RFC 4180), so that a cell
    holding a lone carriage return is quoted: unquoted, a spreadsheet starts a new row there, and what follows would
    start a cell unseen. Text that is not valid Unicode (a lone surrogate) is written as its \\udxxx escape rather
    than failing half-way through the file."""
    inert_frame(frame).to_csv(path, index=False, lineterminator="\r\n", errors="backslashreplace")
    return path
