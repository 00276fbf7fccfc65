"""Table readers refuse bad interactions and labels with a message naming the file, row, column and expectation."""
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data import contracts
from carelens.data.contracts import INTERACTIONS, Column, ContractError, as_bool, validated, validated_each
from carelens.data.readers import read_interactions, read_labels

GOOD_ROW = {
    "customer_id": "C1", "contact_id": "K1", "started_at": "2026-11-02T09:30:00", "channel": "phone",
    "answer_time_s": "31.5", "abandoned": "0", "hold_time_s": "12", "handle_time_s": "300", "transfers": "1",
    "product_problem": "yes", "resolved": "no", "repeat_contacts_30d": "2", "tenure_months": "14",
    "monthly_value": "42.0", "csat": "",
}


def _csv(tmp_path, rows, name="interactions.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _interactions_with(tmp_path, **second_row):
    """A CSV of two contacts whose second (file row 3) carries the given bad values."""
    return _csv(tmp_path, [GOOD_ROW, {**GOOD_ROW, "contact_id": "K2", **second_row}])


def _raises(path, reader, *parts):
    """The reader raises ContractError whose message holds the file name and every given part, in order."""
    with pytest.raises(ContractError) as caught:
        reader(path)
    pattern = ".*".join(re.escape(p) for p in (path.name, *parts))
    assert re.search(pattern, str(caught.value)), str(caught.value)
    return caught.value


def test_a_good_file_reads_typed(tmp_path):
    frame = read_interactions(_interactions_with(tmp_path))
    assert frame["product_problem"].tolist() == [True, True]
    assert frame["csat"].isna().all()


def test_missing_column_is_named_with_what_the_contract_needs(tmp_path):
    rows = [{k: v for k, v in GOOD_ROW.items() if k != "hold_time_s"}]
    error = _raises(_csv(tmp_path, rows), read_interactions, "column 'hold_time_s'", "missing column(s) hold_time_s",
                    "contract needs")
    assert error.column == "hold_time_s"


def test_wrong_type_names_row_column_value_and_expectation(tmp_path):
    _raises(_interactions_with(tmp_path, answer_time_s="soon"), read_interactions,
            "row 3", "column 'answer_time_s'", "got 'soon'", "expected a finite number")


def test_negative_duration_is_refused(tmp_path):
    _raises(_interactions_with(tmp_path, handle_time_s="-5"), read_interactions,
            "row 3", "column 'handle_time_s'", "got '-5'", "expected a finite number >= 0")


def test_unknown_channel_lists_the_allowed_ones(tmp_path):
    _raises(_interactions_with(tmp_path, channel="pigeon"), read_interactions,
            "row 3", "column 'channel'", "got 'pigeon'", "expected one of phone, chat, email, social")


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_bytes(b"")
    _raises(path, read_interactions, "the file is empty")


def test_header_only_file_is_refused_naming_the_expected_columns(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text(",".join(GOOD_ROW) + "\n")
    _raises(path, read_interactions, "the file has no rows", "expected a interactions table with columns customer_id")


def test_duplicate_contact_id_names_the_repeat(tmp_path):
    _raises(_interactions_with(tmp_path, contact_id="K1"), read_interactions,
            "row 3", "column 'contact_id'", "duplicate value 'K1'", "expected each contact_id once")


def test_churned_outside_its_set_is_refused(tmp_path):
    path = _csv(tmp_path, [{"contact_id": "K1", "churned": "1", "retaliation": "none"},
                           {"contact_id": "K2", "churned": "2", "retaliation": "none"}], "labels.csv")
    _raises(path, read_labels, "row 3", "column 'churned'", "got '2'", "expected 0/1, true/false or yes/no")


def test_retaliation_outside_its_set_is_refused(tmp_path):
    path = _csv(tmp_path, [{"contact_id": "K1", "churned": "0", "retaliation": "sue"}], "labels.csv")
    _raises(path, read_labels, "row 2", "column 'retaliation'", "got 'sue'", "expected one of none, escalate, switch, vent")


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"contact_id": ["K1", "K2"], "churned": [0, 2], "retaliation": ["none", "vent"]}).to_parquet(path)
    _raises(path, read_labels, "row 2", "column 'churned'", "got 2")


SPELLINGS = {True: ["1", "true", "TRUE", "Yes", "y", "T", "1.0"], False: ["0", "false", "False", "NO", "n", "f", "0.0"]}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=30))
def test_as_bool_reads_every_spelling_back_to_its_value(pairs):
    values = pd.Series([SPELLINGS[b][i] for b, i in pairs], dtype=object)
    assert as_bool(values).tolist() == [b for b, _ in pairs]


def test_as_bool_turns_anything_else_into_missing():
    assert as_bool(pd.Series(["2", "maybe", None])).isna().all()


#: Cells that break the interactions contract, and one that is good but makes its column fractional.
BAD_CELLS = [{"answer_time_s": "-4"}, {"channel": "fax"}, {"tenure_months": "x"}, {"transfers": "1.5"},
             {"started_at": 1700000000}, {"customer_id": ["C1"]}, {"monthly_value": "42.5"}]
_rows = st.lists(st.tuples(st.sampled_from(["K1", "K2", "K3"]), st.none() | st.sampled_from(BAD_CELLS)), max_size=4)
_tables = st.lists(st.tuples(_rows, st.booleans(), st.booleans()), min_size=1, max_size=4)


def _table(rows, as_records: bool, without_channel: bool) -> pd.DataFrame:
    """A table of GOOD_ROW with the given contact ids and bad cells: Python objects as records become (the service's
    requests), or columns typed by pandas; without its channel column when asked."""
    records = [{**GOOD_ROW, "contact_id": contact, **(cell or {})} for contact, cell in rows]
    frame = pd.DataFrame(records, dtype=object) if as_records else pd.DataFrame(records)
    return frame.drop(columns="channel", errors="ignore") if without_channel else frame


@settings(deadline=None, max_examples=60)
@given(_tables)
def test_tables_checked_together_get_what_each_gets_alone(specs):
    tables = [_table(*spec) for spec in specs]
    together = validated_each(tables, INTERACTIONS, "interactions", header_rows=0)
    for table, answer in zip(tables, together):
        try:
            alone = validated(table, INTERACTIONS, "interactions", header_rows=0)
        except ContractError as error:  # the same error, its row numbered within its own table
            assert isinstance(answer, ContractError) and str(answer) == str(error)
        else:
            # A number column is typed over the tables checked together: 14 may be 14.0 beside 42.5 of another table.
            pd.testing.assert_frame_equal(answer, alone, check_dtype=False)


def test_a_contact_id_repeats_only_within_its_own_table():
    one, two = _table([("K1", None), ("K2", None)], True, False), _table([("K2", None), ("K2", None)], True, False)
    first, second = validated_each([one, two], INTERACTIONS, "interactions", header_rows=0)
    assert first["contact_id"].tolist() == ["K1", "K2"]
    assert str(second) == ("interactions: row 2, column 'contact_id': duplicate value 'K2', expected each contact_id "
                           "once")


#: Columns of each kind the checks may skip: numbers nullable or not, bounded or not, ids, categories, flags.
_PLAIN_COLUMNS = [Column("f", "float", nullable=True, minimum=0), Column("g", "float", minimum=1, maximum=5),
                  Column("i", "int", minimum=0), Column("j", "int", nullable=True), Column("id", "id"),
                  Column("c", "category", allowed=("phone", "chat")), Column("x", "category", nullable=True),
                  Column("b", "bool")]
_cells = st.one_of(st.none(), st.floats(), st.integers(-2 ** 60, 2 ** 60), st.integers(-3, 9), st.floats(0, 9),
                   st.booleans(), st.text(max_size=2),
                   st.sampled_from([2 ** 53, 10 ** 400, np.int64(3), np.nan, pd.NA]))
_words = st.sampled_from(["phone", " Chat ", "PHONE", "fax", "", "  ", "C1", "c\x00", "K\t", "Ä", "\xa0chat",
                          "i\u0307"])


@st.composite
def _plain_tables(draw):
    """Tables of `_PLAIN_COLUMNS`, each column of Python objects (anything, plain numbers, words, bools) or typed by
    numpy."""
    rows = draw(st.integers(1, 5))
    kinds = {"objects": (_cells, object), "plain floats": (st.none() | st.floats(-3, 9), object),
             "plain ints": (st.integers(-3, 9) | st.integers(0, 2 ** 54), object), "words": (_words, object),
             "bools": (st.booleans(), object), "float64": (st.floats(), np.float64),
             "int64": (st.integers(-2 ** 62, 2 ** 62), np.int64)}
    columns = {}
    for column in _PLAIN_COLUMNS:
        cells, dtype = kinds[draw(st.sampled_from(sorted(kinds)))]
        columns[column.name] = pd.Series(draw(st.lists(cells, min_size=rows, max_size=rows)), dtype=dtype)
    return pd.DataFrame(columns)


@settings(deadline=None, max_examples=80)
@given(_plain_tables())
def test_plainly_valid_columns_skip_the_cell_checks_and_type_as_they_would(raw):
    def checked(columns: list[Column]) -> contracts.Checked:
        return contracts._checked_rows(raw, columns, None, [slice(0, len(raw))])
    skipping = [checked([column]) for column in _PLAIN_COLUMNS] + [checked(_PLAIN_COLUMNS)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contracts, "_plain_cells", lambda raw, column: None)
        every_cell = [checked([column]) for column in _PLAIN_COLUMNS] + [checked(_PLAIN_COLUMNS)]
    for skipped, checked_all in zip(skipping, every_cell):  # each column alone: a row keeps only its first problem
        pd.testing.assert_series_equal(skipped.problems, checked_all.problems)
        pd.testing.assert_frame_equal(skipped.frame, checked_all.frame, check_exact=True)


def test_plain_cells_are_taken_as_they_are_and_anything_else_is_checked():
    plain = contracts._plain_cells
    floats, ints = pd.Series([1.5, None, 2.0], dtype=object), pd.Series([1, 2], dtype=object)
    assert np.array_equal(plain(floats, _PLAIN_COLUMNS[0]), [1.5, np.nan, 2.0], equal_nan=True)
    assert plain(ints, _PLAIN_COLUMNS[2]).dtype == np.int64
    assert plain(pd.Series([1.0, 2.0], dtype=object), _PLAIN_COLUMNS[2]) is None  # a float in an int column
    assert plain(pd.Series([True, 2], dtype=object), _PLAIN_COLUMNS[2]) is None
    assert plain(floats, _PLAIN_COLUMNS[1]) is None  # missing where not nullable
    assert plain(pd.Series([0.5, 6.0]), _PLAIN_COLUMNS[1]) is None  # outside 1..5
    assert plain(pd.Series([None, None], dtype=object), _PLAIN_COLUMNS[0]) is None
    assert plain(pd.Series([" C1 ", "C2"], dtype=object), _PLAIN_COLUMNS[4]).tolist() == ["C1", "C2"]
    assert plain(pd.Series([" Chat", "PHONE"], dtype=object), _PLAIN_COLUMNS[5]).tolist() == ["chat", "phone"]
    assert plain(pd.Series(["fax"], dtype=object), _PLAIN_COLUMNS[5]) is None  # not allowed
    assert plain(pd.Series(["C\x001"], dtype=object), _PLAIN_COLUMNS[4]) is None  # a control character
    assert plain(pd.Series(["Ä"], dtype=object), _PLAIN_COLUMNS[4]) is None  # beyond ASCII
    assert plain(pd.Series([" "], dtype=object), _PLAIN_COLUMNS[4]) is None  # blank
    assert plain(pd.Series([True, False], dtype=object), _PLAIN_COLUMNS[7]).tolist() == [True, False]
    assert plain(pd.Series([True, "yes"], dtype=object), _PLAIN_COLUMNS[7]) is None


def test_json_records_hand_on_plain_python_values_and_none_for_what_json_cannot_hold():
    frame = pd.DataFrame({"f": [1.5, np.nan, -np.inf], "i": [1, 2, 3], "n": pd.array([1, None, 3], dtype="Int64"),
                          "s": pd.array(["a", None, "c"], dtype="string"), "b": [True, False, True],
                          "o": pd.Series([np.float64(2.0), None, np.int64(4)], dtype=object),
                          "t": pd.to_datetime(["2026-01-01", None, "2026-01-02"], utc=True)})
    frame.attrs["big"] = list(range(5))
    records = contracts.json_records(frame)
    assert [[(name, type(value).__name__) for name, value in row.items()] for row in records] == [
        [("f", "float"), ("i", "int"), ("n", "int"), ("s", "str"), ("b", "bool"), ("o", "float"), ("t", "Timestamp")],
        [("f", "NoneType"), ("i", "int"), ("n", "NoneType"), ("s", "NoneType"), ("b", "bool"), ("o", "NoneType"),
         ("t", "NaTType")],
        [("f", "NoneType"), ("i", "int"), ("n", "int"), ("s", "str"), ("b", "bool"), ("o", "int"), ("t", "Timestamp")]]
    assert records[0] == {"f": 1.5, "i": 1, "n": 1, "s": "a", "b": True, "o": 2.0,
                          "t": pd.Timestamp("2026-01-01", tz="UTC")}
