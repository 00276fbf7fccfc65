"""The data contracts: interactions, labels and transcripts, declared once and enforced by every reader."""
from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carelens.data.errors import CareLensError, raised

CHANNELS = ("phone", "chat", "email", "social")
RETALIATION_TYPES = ("none", "escalate", "switch", "vent")
SPEAKERS = ("agent", "customer")
#: What the transcript model reads: customer sentiment, and agent empathy as three EPITOME mechanisms, each at a level.
SENTIMENTS = ("negative", "neutral", "positive")
MECHANISMS = ("emotional_reactions", "interpretations", "explorations")
LEVELS = (0, 1, 2)
LEVEL_NAMES = ("none", "weak", "strong")


class ContractError(CareLensError, ValueError):
    """Input that breaks a data contract; the message names the file, row, column and what was expected."""

    def __init__(self, source: str, problem: str, row: Optional[int] = None, column: Optional[str] = None,
                 unit: str = "row"):
        self.source, self.problem, self.row, self.column = source, problem, row, column
        where = ", ".join(p for p in (
            f"{unit} {row}" if row is not None else "",
            f"column '{column}'" if column is not None else "",
        ) if p)
        super().__init__(f"{source}: {where + ': ' if where else ''}{problem}")


#: The dates a contact can carry: wider than any contact centre's history, narrow enough that every tool downstream
#: (pandas' nanosecond timestamps, Parquet, JSON) can hold them.
EARLIEST, LATEST = pd.Timestamp("1900-01-01", tz="UTC"), pd.Timestamp("2100-12-31 23:59:59", tz="UTC")
#: Whole numbers beyond this lose their last digits as floats (2**53).
LARGEST_WHOLE = 2 ** 53
#: The largest float: an int beyond it cannot be read as a number at all.
LARGEST_FLOAT = sys.float_info.max
#: Characters no valid Unicode text holds: undecodable bytes smuggled into a Python str, or a lone JSON escape.
SURROGATE = re.compile("[\ud800-\udfff]")
#: Control characters: no identifier holds one (a NUL ends the id in C tools; a newline or escape forges output).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Column:
    """One column of a table contract: its kind, whether it may be missing, and the values it may take."""

    name: str
    kind: Literal["id", "int", "float", "bool", "category", "datetime"]
    nullable: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    allowed: tuple = ()
    #: An optional column may be absent from a table altogether; when present it is checked like any other.
    optional: bool = False

    def expectation(self) -> str:
        """Words for what a valid value of this column looks like."""
        if self.allowed:
            return f"one of {', '.join(map(str, self.allowed))}"
        if self.kind == "bool":
            return "0/1, true/false or yes/no"
        bounds = ""
        if self.minimum is not None and self.maximum is not None:
            bounds = f" between {self.minimum:g} and {self.maximum:g}"
        elif self.minimum is not None:
            bounds = f" >= {self.minimum:g}"
        return {"id": "a non-empty identifier without control characters", "int": "a whole number", "float": "a finite number",
                "datetime": f"a date-time such as 2026-11-22T09:30:00, in the years {EARLIEST.year}-{LATEST.year}",
                }.get(self.kind, self.kind) + bounds


@dataclass(frozen=True)
class TableContract:
    """A table's required columns; `unique` names the column whose values must not repeat."""

    name: str
    columns: tuple[Column, ...]
    unique: Optional[str] = None
    extra_columns_allowed: bool = True

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        """The columns a table must have (every one but the optional)."""
        return [c.name for c in self.columns if not c.optional]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


INTERACTIONS = TableContract(
    name="interactions",
    unique="contact_id",
    columns=(
        Column("customer_id", "id"),
        Column("contact_id", "id"),
        Column("started_at", "datetime"),
        Column("channel", "category", allowed=CHANNELS),
        Column("answer_time_s", "float", minimum=0),
        Column("abandoned", "bool"),
        Column("hold_time_s", "float", minimum=0),
        Column("handle_time_s", "float", minimum=0),
        Column("transfers", "int", minimum=0),
        Column("product_problem", "bool"),
        Column("resolved", "bool"),
        Column("repeat_contacts_30d", "int", minimum=0),
        Column("tenure_months", "float", minimum=0),
        Column("monthly_value", "float", minimum=0),
        Column("csat", "float", nullable=True, minimum=1, maximum=5),
        Column("agent_id", "id", nullable=True, optional=True),
    ),
)

LABELS = TableContract(
    name="labels",
    unique="contact_id",
    columns=(
        Column("contact_id", "id"),
        Column("churned", "bool"),
        Column("retaliation", "category", allowed=RETALIATION_TYPES),
    ),
)

#: The interaction columns a model uses as features (identifiers and timestamps are not features).
INTERACTION_FEATURES = [c.name for c in INTERACTIONS.columns if c.kind not in ("id", "datetime")]
CATEGORICAL_FEATURES = [c.name for c in INTERACTIONS.columns if c.kind == "category"]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def as_bool(values: pd.Series) -> pd.Series:
    """0/1, true/false, yes/no (any case) as a nullable boolean Series; anything else becomes NA."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    text = values.astype("string").str.strip().str.lower()
    text = text.str.replace(r"\.0$", "", regex=True)
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[text.isin(_TRUE).fillna(False).astype(bool)] = True
    out[text.isin(_FALSE).fillna(False).astype(bool)] = False
    return out


def json_records(frame: pd.DataFrame) -> list[dict]:
    """The rows as dicts of plain Python values, missing values (NaN, pd.NA) and infinite numbers as None (JSON
    null): what the Python API and the HTTP service hand on."""
    values = without_attrs(frame).astype(object)
    names = list(values.columns)
    # Rows read from one array of Python objects: pandas' to_dict("records") took 4 ms for a ten-agent scorecard.
    return [{name: _json_value(value) for name, value in zip(names, row)} for row in values.to_numpy().tolist()]


def _json_value(value: Any) -> Any:
    """A cell as a plain Python value, None for missing values (NaN, pd.NA) and infinite numbers."""
    if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
    return value.item() if isinstance(value, np.generic) else value


def plain_value(value: Any) -> tuple[Any, str]:
    """A cell as one plain value (bytes decoded as UTF-8), or NA and why it cannot be one (empty when it can)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return pd.NA, f"got bytes {bytes(value)[:24]!r}, expected UTF-8 text"
    if isinstance(value, str):
        if SURROGATE.search(value):
            return pd.NA, f"got {value[:40]!r}, which is not valid UTF-8 (it holds a lone surrogate)"
        return value, ""
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        return pd.NA, f"got a nested value ({type(value).__name__}), expected a single value"
    return value, ""


def plain_column(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(the column with every cell a plain value or NA, per row why a cell was not plain): only columns of Python
    objects can hold nested values, raw bytes or broken text, so typed columns pass as they are, date-times with a
    time zone in UTC (the same instants: shown in a local zone, one near the end of the calendar overflows)."""
    if isinstance(raw.dtype, pd.ArrowDtype):
        # Arrow-backed columns (pandas' dtype_backend="pyarrow") lack operations the checks use (`%`): their values
        # as Python objects are checked as any object column is.
        raw = raw.astype(object).where(raw.notna(), None)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC"), pd.Series("", index=raw.index, dtype=object)
    if raw.dtype != object:
        return raw, pd.Series("", index=raw.index, dtype=object)
    values, problems = zip(*map(plain_value, raw.to_numpy())) if len(raw) else ((), ())
    return (pd.Series(values, index=raw.index, dtype=object, name=raw.name),
            pd.Series(problems, index=raw.index, dtype=object))


def _coerced(values: pd.Series, column: Column) -> pd.Series:
    """The column converted to its contract type; unconvertible values become NA."""
    if values.dtype == object and column.kind not in ("int", "float"):
        values = values.map(_na_if_textless)
    if column.kind == "bool":
        return as_bool(values)
    if column.kind in ("int", "float"):
        return real_numbers(values)
    if column.kind == "datetime":
        stamps = pd.to_datetime(undated_numbers(values), errors="coerce", utc=True, format="mixed")
        return stamps.where((stamps >= EARLIEST) & (stamps <= LATEST)).astype("datetime64[ns, UTC]")
    if column.kind == "category":
        return values.astype("string").str.strip().str.lower()
    return (values.map(_na_if_bool) if values.dtype == object else values).astype("string").str.strip()


def undated_numbers(values: pd.Series) -> pd.Series:
    """A date-time column with its bare numbers as NA: pandas reads 1700000000 as nanoseconds after 1970, while its
    writer meant seconds (or milliseconds): a number is refused rather than guessed."""
    if pd.api.types.is_numeric_dtype(values):
        return pd.Series(pd.NA, index=values.index, dtype=object)
    if values.dtype == object:
        return values.map(lambda v: pd.NA if isinstance(v, (int, float, np.number)) else v)
    return values


def _na_if_textless(value: Any) -> Any:
    """The value, or NA when it is a whole number too long for Python to write as text (no id, category or flag is)."""
    return pd.NA if isinstance(value, int) and value.bit_length() > LONGEST_TEXT_INT_BITS else value


def _na_if_bool(value: Any) -> Any:
    """The value, or NA when it is a bool: True is neither 1 transfer nor an id named "True"."""
    return pd.NA if isinstance(value, (bool, np.bool_)) else value


#: Bits of the longest whole number Python writes as text (sys.get_int_max_str_digits() digits, 4,300 by default).
LONGEST_TEXT_INT_BITS = int((sys.get_int_max_str_digits() or 4300) / math.log10(2)) - 1


def shown(value: Any, limit: int = 80) -> str:
    """A value's repr, cut to `limit` characters: an error message must not carry a whole transcript, nor a number of
    thousands of digits (whose repr Python refuses past 4,300)."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:
        return f"a whole number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def _real_or_na(value: Any) -> Any:
    """A cell of a number column as a number pandas can read: NA for what is no real number (a bool, a complex
    number, whose imaginary part would be dropped, or a duration, which would count nanoseconds), ±inf for an int
    past any float (refused as not finite, where pandas raised OverflowError)."""
    if isinstance(value, (bool, np.bool_, complex, np.complexfloating, dt.timedelta, np.timedelta64)):
        return pd.NA
    if isinstance(value, int) and abs(value) > LARGEST_FLOAT:
        return math.inf if value > 0 else -math.inf
    return value


def real_numbers(values: pd.Series) -> pd.Series:
    """A number column as floats or ints, what is no real number NA (`_real_or_na`): a column of complex numbers or
    durations is wholly NA, not cast."""
    if values.dtype == object:
        return pd.to_numeric(values.map(_real_or_na), errors="coerce")
    if pd.api.types.is_complex_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
        return pd.Series(np.nan, index=values.index)
    return pd.to_numeric(values, errors="coerce")


def not_a_bool(value: Any) -> Any:
    """The value unless it is a bool (ValueError): pydantic would read True where a number is expected as 1."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError("expected a number, not true or false")
    return value


def blank(raw: pd.Series) -> pd.Series:
    """Per row, whether a cell is missing or text of only spaces (cell by cell: casting a column to text fails on a
    whole number of thousands of digits)."""
    if raw.dtype != object and not pd.api.types.is_string_dtype(raw):
        return raw.isna()
    return raw.isna() | raw.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)


def plain_ascii(value: Any) -> bool:
    """Whether the value is ASCII text without control characters: Python trims and lower-cases it as pandas' string
    operations do (other text they may treat by their own rules)."""
    return type(value) is str and value.isascii() and not CONTROL.search(value)


def without_attrs(frame: pd.DataFrame) -> pd.DataFrame:
    """A view of the frame without its attrs: pandas deep-copies a frame's attrs into every frame and column it hands
    out (a flagged list's, holding the scorecard, took 2 ms a copy)."""
    return pd.DataFrame(frame, copy=False)


def _plain_cells(raw: pd.Series, column: Column) -> Optional[Union[np.ndarray, pd.api.extensions.ExtensionArray]]:
    """A column as `_coerced` types it when every cell is plainly valid (`_plain_numbers`; for ids and categories
    ASCII text of no control character, not blank, an allowed value where the contract lists them; for flags
    Python bools): `plain_column` and `_column_problems` would find nothing, and are skipped; None when any cell
    needs them. A service request's columns come so, and their checks cost more than its models."""
    if column.kind in ("int", "float"):
        return None if column.allowed else _plain_numbers(raw, column)
    if raw.dtype != object or not len(raw) or column.kind not in ("bool", "id", "category"):
        return None
    cells = raw.to_numpy()
    if column.kind == "bool":
        return pd.array(cells, dtype="boolean") if all(type(value) is bool for value in cells) else None
    if not all(plain_ascii(value) for value in cells):
        return None
    text = [value.strip().lower() if column.kind == "category" else value.strip() for value in cells]
    if not all(text) or (column.allowed and not set(text) <= set(column.allowed)):
        return None
    return pd.array(text, dtype="string")


def _plain_numbers(raw: pd.Series, column: Column) -> Optional[np.ndarray]:
    """A number column's values as `_coerced` types them, when every cell is a number the contract takes as it is
    (missing only where the column is nullable): `_column_problems` would find nothing, and is skipped; None when any
    cell needs the checks (or the column holds no number, whose type only the checks settle)."""
    if raw.dtype == object:
        # Exact types: a bool, a numpy number or a float in an int column takes the checks' path, which types them.
        kind = float if column.kind == "float" else int
        if not all(type(value) is kind or value is None for value in raw.to_numpy()):
            return None
        try:
            numbers = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        except OverflowError:  # a whole number past any float
            return None
    elif isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "iuf":  # not pandas' nullable or Arrow numbers
        numbers = raw.to_numpy(dtype=np.float64)
    else:
        return None
    missing = np.isnan(numbers)
    present = numbers[~missing]
    low = -np.inf if column.minimum is None else column.minimum
    high = np.inf if column.maximum is None else column.maximum
    if missing.all() or (missing.any() and not column.nullable) or not (
            (np.abs(present) < (LARGEST_WHOLE if column.kind == "int" else np.inf)).all()
            and (column.kind == "float" or (present % 1 == 0).all()) and ((present >= low) & (present <= high)).all()):
        return None
    if raw.dtype != object:
        return raw.to_numpy()
    # As pandas reads Python numbers: whole numbers as integers, unless one is missing.
    return numbers.astype(np.int64) if column.kind == "int" and not missing.any() else numbers


def _column_problems(raw: pd.Series, value: pd.Series, column: Column) -> np.ndarray:
    """Per row, what is wrong with this column's value (empty string when nothing is)."""
    problems = np.full(len(raw), "", dtype=object)
    cells = raw.to_numpy(dtype=object)  # Python values, as the messages show them (2, not np.int64(2))

    def mark(rows: np.ndarray, message: Callable[[Any], str]) -> None:
        # Only rows that break the rule are touched: on a clean column (most of them) no message is built.
        if rows.any():
            problems[rows] = [message(v) for v in cells[rows]]

    missing_raw = blank(raw).to_numpy(dtype=bool)
    absent = value.isna().to_numpy(dtype=bool)
    bad_type = absent & ~missing_raw
    if column.kind == "id" and not absent.all():
        bad_type = bad_type | value.fillna("").str.contains(CONTROL).to_numpy(dtype=bool)
    if not column.nullable and missing_raw.any():
        problems[missing_raw] = f"missing value, expected {column.expectation()}"
    mark(bad_type, lambda v: f"got {shown(v)}, expected {column.expectation()}")
    present = ~absent
    if column.kind in ("int", "float"):
        numbers = value.to_numpy(dtype=float, na_value=0.0)
        limit = LARGEST_WHOLE if column.kind == "int" else np.inf
        unbounded = present & ~(np.abs(numbers) < limit)
        mark(unbounded, lambda v: f"got {shown(v)}, expected {column.expectation()}"
                                  f"{' below 2**53' if column.kind == 'int' else ''}")
        present = present & ~unbounded
        if column.kind == "int":
            mark(present & (np.where(present, numbers, 0) % 1 != 0), lambda v: f"got {shown(v)}, expected a whole number")
        if column.minimum is not None or column.maximum is not None:
            low = column.minimum if column.minimum is not None else -np.inf
            high = column.maximum if column.maximum is not None else np.inf
            mark(present & ((numbers < low) | (numbers > high)),
                 lambda v: f"got {shown(v)}, expected {column.expectation()}")
    if column.allowed:
        mark(present & ~value.isin(column.allowed).fillna(False).to_numpy(dtype=bool),
             lambda v: f"got {shown(v)}, expected {column.expectation()}")
    return problems


@dataclass
class Checked:
    """A table after contract checking: typed values, and per row the reason it is bad (empty when good)."""

    frame: pd.DataFrame
    problems: pd.Series = field(repr=False)

    @property
    def good(self) -> pd.DataFrame:
        return self.frame[self.problems == ""]

    @property
    def bad(self) -> pd.DataFrame:
        return self.frame[self.problems != ""].assign(_reason=self.problems[self.problems != ""])


def check_unique_names(names: Sequence, source: str) -> None:
    """ContractError naming the columns a table holds more than once: which one holds the values is ambiguous."""
    counts = Counter(names)
    repeated = sorted(str(n) for n, count in counts.items() if count > 1)
    if repeated:
        raise ContractError(source, f"column(s) {', '.join(repeated)} appear more than once; expected each column "
                                    f"once", column=repeated[0])


def check_text_names(names: Sequence, source: str, row: Optional[int] = None) -> None:
    """ContractError naming a column name that is not valid text (it holds a lone surrogate), which pandas cannot
    hold as a column label."""
    broken = next((name for name in names if isinstance(name, str) and SURROGATE.search(name)), None)
    if broken is not None:
        raise ContractError(source, f"column name {broken!r} is not valid UTF-8 (it holds a lone surrogate); expected "
                                    f"text", row=row)


def stacked(frames: Sequence[pd.DataFrame], columns: Optional[list[str]] = None
            ) -> tuple[pd.DataFrame, list[slice]]:
    """(the frames one under the other, only `columns` of each when given; per frame, the slice of its rows in the
    result): what several tables or calls that come together run one check or model call over, each taking back its
    own rows."""
    ends = np.cumsum([len(frame) for frame in frames]).tolist()
    spans = [slice(start, end) for start, end in zip([0, *ends[:-1]], ends)]
    if len(frames) == 1:
        return frames[0] if columns is None else frames[0][columns], spans
    return pd.concat([frame if columns is None else frame[columns] for frame in frames], ignore_index=True), spans


def alike(items: Sequence) -> list[list[int]]:
    """The positions of the frames (or of lists of frames and Nones) grouped by their columns and dtypes: frames
    alike stack (`stacked`) without a column changing its type."""
    groups: dict[tuple, list[int]] = {}
    for number, item in enumerate(items):
        frames = item if isinstance(item, list) else [item]
        signature = tuple(None if frame is None else tuple(zip(frame.columns, map(str, frame.dtypes)))
                          for frame in frames)
        groups.setdefault(signature, []).append(number)
    return list(groups.values())


def stacked_alike(frames: Sequence[pd.DataFrame]) -> list[tuple[list[int], pd.DataFrame, list[slice]]]:
    """Per group of frames alike (`alike`): their positions, the frames stacked and each one's rows (`stacked`)."""
    return [(numbers, *stacked([frames[number] for number in numbers])) for numbers in alike(frames)]


def check_table(raw: pd.DataFrame, contract: TableContract, source: str,
                extra_numeric: Sequence[str] = (), extra_categorical: Sequence[str] = (),
                earlier: Optional[Mapping[str, str]] = None) -> Checked:
    """Type every contract column and collect per-row problems; raises only for table-level faults.

    Table-level faults (no rows, a missing column) raise ContractError at once: no row could be good.
    Row-level faults are returned so that a batch can send just those rows to a dead-letter file. `earlier` maps the
    unique values that earlier chunks or files of the same batch already hold to where they were: a row repeating one
    is a duplicate too.
    """
    columns = _contract_columns(raw, contract, source, extra_numeric, extra_categorical)
    return _checked_rows(raw, columns, contract.unique, [slice(0, len(raw))], earlier)


def _contract_columns(raw: pd.DataFrame, contract: TableContract, source: str, extra_numeric: Sequence[str] = (),
                      extra_categorical: Sequence[str] = ()) -> list[Column]:
    """The columns the table is checked against; ContractError for a table-level fault (no rows, a column name twice
    or not valid text, a missing column)."""
    if raw.shape[0] == 0:
        raise ContractError(source, f"the file has no rows; expected a {contract.name} table "
                                    f"with columns {', '.join(contract.names)}")
    check_unique_names(list(raw.columns), source)
    check_text_names(list(raw.columns), source)
    declared = [Column(n, "float", nullable=True) for n in extra_numeric] + \
               [Column(n, "category", nullable=True) for n in extra_categorical]
    columns = [c for c in list(contract.columns) + declared if not (c.optional and c.name not in raw.columns)]
    missing = [c.name for c in columns if c.name not in raw.columns]
    if missing:
        raise ContractError(source, f"missing column(s) {', '.join(missing)}; the {contract.name} contract "
                                    f"needs {', '.join(c.name for c in columns)} (found {', '.join(map(str, raw.columns))})",
                            column=missing[0])
    return columns


def _checked_rows(raw: pd.DataFrame, columns: Sequence[Column], unique: Optional[str], tables: Sequence[slice],
                  earlier: Optional[Mapping[str, str]] = None) -> Checked:
    """`raw` typed column by column with per row its first problem; `tables` are the spans of the rows of each table
    stacked in `raw`: a `unique` value repeats only within its own table."""
    # Per row problems gather in a numpy array: a row's first problem is kept, and on a small table (a service
    # request) pandas operations per column cost more than the checks themselves.
    problems = np.full(len(raw), "", dtype=object)
    typed: dict[Any, Union[pd.Series, np.ndarray]] = {}
    for column in columns:
        plain = _plain_cells(raw[column.name], column)
        if plain is not None:
            typed[column.name] = plain
            continue
        plain, not_plain = plain_column(raw[column.name])
        typed[column.name] = _coerced(plain, column)
        unplain = not_plain.to_numpy(dtype=object)
        found = np.where(unplain != "", unplain, _column_problems(plain, typed[column.name], column))
        fresh = (problems == "") & (found != "")
        if fresh.any():
            problems[fresh] = [f"column '{column.name}': {p}" for p in found[fresh]]
    # One frame built from the typed columns: assigning them one by one cost more than checking them.
    frame = pd.DataFrame({name: typed[name] if name in typed else raw[name] for name in raw.columns}, index=raw.index)
    problems = pd.Series(problems, index=raw.index, dtype=object)
    if unique:
        values = frame[unique]
        # Looked up one by one: `earlier` can hold a whole night's contacts, too many to hash again for every chunk.
        first_in = pd.Series([earlier.get(v) if earlier and isinstance(v, str) else None for v in values],
                             index=values.index, dtype=object)
        # Repeats among the rows otherwise good: a bad row goes to the dead letters with its own fault, and the good
        # row of the same contact after it is that contact's first, not a duplicate.
        valid = (problems == "") & values.notna()
        keyed = values if len(tables) == 1 else pd.DataFrame({
            "table": np.repeat(np.arange(len(tables)), [span.stop - span.start for span in tables]),
            "value": values.to_numpy()}, index=values.index)
        within = keyed[valid].duplicated(keep="first").reindex(values.index, fill_value=False)
        fresh = valid & (within | first_in.notna())
        problems[fresh] = [f"column '{unique}': duplicate value {v!r}, expected each {unique} once"
                           + (f" (it came first in {where})" if where else "")
                           for v, where in zip(frame.loc[fresh, unique], first_in[fresh])]
    return Checked(frame.reset_index(drop=True), problems.reset_index(drop=True))


def validated(raw: pd.DataFrame, contract: TableContract, source: str, header_rows: int = 1, **declared) -> pd.DataFrame:
    """The typed table, or ContractError naming the first bad row (numbered as in the file, header = row 1)."""
    return raised(validated_each([raw], contract, source, header_rows, **declared)[0])


def validated_each(raws: Sequence[pd.DataFrame], contract: TableContract, source: str, header_rows: int = 1,
                   **declared) -> list[Union[pd.DataFrame, ContractError]]:
    """`validated` of each table, all from `source`: each table's typed rows, or the ContractError naming its own
    first bad row. Tables with the same columns and dtypes are typed and checked as one (a column's checks cost about
    as much for ten rows as for thousands: the service checks its concurrent requests so); a value of the contract's
    unique column repeats only within its own table, and a number column is typed over them all (14 is 14.0 in each
    when another holds 42.5)."""
    answers: dict[int, Union[pd.DataFrame, ContractError]] = {}
    layouts: dict[tuple, tuple[list[Column], list[int]]] = {}
    for number, raw in enumerate(raws):
        try:
            columns = _contract_columns(raw, contract, source, **declared)
        except ContractError as error:
            answers[number] = error
        else:
            layouts.setdefault((tuple(raw.columns), tuple(raw.dtypes)), (columns, []))[1].append(number)
    for columns, numbers in layouts.values():
        together, spans = stacked([raws[number] for number in numbers])
        checked = _checked_rows(together, columns, contract.unique, spans)
        for number, span in zip(numbers, spans):
            rows = (checked.frame, checked.problems) if len(spans) == 1 else \
                (checked.frame[span].reset_index(drop=True), checked.problems[span].reset_index(drop=True))
            answers[number] = _typed_or_error(*rows, source, header_rows)
    return [answers[number] for number in range(len(raws))]


def _typed_or_error(frame: pd.DataFrame, problems: pd.Series, source: str, header_rows: int
                    ) -> Union[pd.DataFrame, ContractError]:
    """The typed table, or the ContractError naming its first bad row (numbered as in the file, header = row 1)."""
    bad = np.flatnonzero((problems != "").to_numpy())
    if not bad.size:
        return frame
    first = int(bad[0])
    column_part, _, problem = problems[first].partition(": ")
    column = column_part.removeprefix("column ").strip("'")
    more = f" ({bad.size - 1} more bad row(s))" if bad.size > 1 else ""
    return ContractError(source, problem + more, row=first + header_rows + 1, column=column)


class Turn(BaseModel):
    """One utterance of a conversation."""

    model_config = ConfigDict(extra="allow")

    speaker: Literal["agent", "customer"]
    text: str
    start_s: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False)
    end_s: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("speaker", mode="before")
    @classmethod
    def _lower_speaker(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("start_s", "end_s", mode="before")
    @classmethod
    def _seconds_not_true(cls, value):
        return not_a_bool(value)

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> "Turn":
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s:g} is before start_s {self.start_s:g}; expected a turn to end at or "
                             f"after its start")
        return self


def identifier(value: Any) -> Any:
    """An id as the contract takes it: a whole number becomes text; text must be non-blank, valid Unicode."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a non-empty identifier")
        if SURROGATE.search(value):
            raise ValueError("not valid UTF-8 (it holds a lone surrogate)")
        if CONTROL.search(value):
            raise ValueError("expected an identifier without control characters")
    return value


def date_time_text(value: Any) -> Any:
    """A date-time given as text, checked to be one the interactions contract takes (kept as written)."""
    if isinstance(value, str):
        if SURROGATE.search(value):
            raise ValueError("not valid UTF-8 (it holds a lone surrogate)")
        stamp = pd.to_datetime(pd.Series([value]), errors="coerce", utc=True, format="mixed").iloc[0]
        if pd.isna(stamp) or not EARLIEST <= stamp <= LATEST:
            raise ValueError(f"expected {Column('started_at', 'datetime').expectation()}")
    return value


#: The `text_source` the synthetic generator stamps on every conversation it writes (an extra field the contract
#: allows), so that a model trained on generated text can say so; a conversation without it counts as real text.
SYNTHETIC_TEXT = "synthetic"


class Conversation(BaseModel):
    """One conversation of the transcripts contract (a JSON Lines record)."""

    model_config = ConfigDict(extra="allow")

    conversation_id: str
    customer_id: str
    contact_id: Optional[str] = None
    agent_id: Optional[str] = None
    channel: Optional[Literal["phone", "chat", "email", "social"]] = None
    started_at: Optional[str] = None
    turns: list[Turn]

    @field_validator("conversation_id", "customer_id", "contact_id", "agent_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value):
        return identifier(value)

    @field_validator("started_at", mode="before")
    @classmethod
    def _a_date_time(cls, value):
        return date_time_text(value)
