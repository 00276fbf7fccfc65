"""Hostile inputs, round 2: what the readers and the Scorer let through as a library's exception or accepted silently
(far-future zoned dates, control characters in ids, turns that end before they start, lone surrogates in column names,
None, and transcript features nobody checked) is refused with the toolkit's own error naming what was expected."""
import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carelens.data.contracts import INTERACTIONS, ContractError, validated
from carelens.data.errors import CareLensError, UsageError
from carelens.data.readers import read_interactions, read_transcripts
from carelens.data.synthetic import generate
from carelens.inference.nightly.predictions import predicted_chunk
from carelens.inference.nightly.units import table_chunks


@pytest.fixture
def zoned_far_future(tmp_path):
    """A Parquet interactions file whose first started_at is 9999-12-31 in a time zone that is not UTC."""
    interactions = generate(3, seed=1).interactions
    table = pa.Table.from_pandas(interactions, preserve_index=False)
    stamps = pa.array([dt.datetime(9999, 12, 31, 23)] + [dt.datetime(2026, 11, 2)] * (len(interactions) - 1),
                      type=pa.timestamp("us", tz="Europe/Paris"))
    path = tmp_path / "day.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("started_at"), "started_at", stamps), path)
    return path


def test_a_far_future_zoned_date_is_a_contract_error_naming_file_row_and_column(zoned_far_future):
    with pytest.raises(ContractError, match=r"day.parquet: row 1, column 'started_at': got Timestamp\('9999-12-31"):
        read_interactions(zoned_far_future)


def test_a_far_future_zoned_date_is_dead_lettered_by_the_batch_path(scorer, zoned_far_future):
    chunk, = table_chunks(zoned_far_future, 10)
    predicted, dead = predicted_chunk(scorer, chunk, str(zoned_far_future), 1, None, [], [])
    assert len(predicted) == 2 and len(dead) == 1
    assert dead[0]["row"] == 1 and dead[0]["reason"].startswith("column 'started_at': got Timestamp('9999-12-31")
    assert json.loads(dead[0]["record"])["started_at"].startswith("9999-12-31")


@pytest.mark.parametrize("bad", ["C\x00001", "C1\n=cmd", "\x1b[2JC1"])
def test_control_characters_in_ids_are_refused(bad):
    interactions = generate(3, seed=1).interactions.astype(object)
    interactions.loc[1, "customer_id"] = bad
    with pytest.raises(ContractError, match="row 2, column 'customer_id': .*without control characters"):
        validated(interactions, INTERACTIONS, "day", header_rows=0)


def test_a_conversation_id_with_a_nul_is_refused(tmp_path):
    conversation = generate(3, seed=1).conversations[0]
    (tmp_path / "day.jsonl").write_text(json.dumps({**conversation, "customer_id": "C\x00001"}) + "\n")
    with pytest.raises(ContractError, match="line 1, column 'customer_id': .*without control characters"):
        read_transcripts(tmp_path / "day.jsonl")


def test_a_turn_that_ends_before_it_starts_is_refused(tmp_path):
    conversation = generate(3, seed=1).conversations[0]
    conversation["turns"][1].update(start_s=9.0, end_s=2.0)
    (tmp_path / "day.jsonl").write_text(json.dumps(conversation) + "\n")
    with pytest.raises(ContractError, match=r"line 1, column 'turns.1': .*end_s 2 is before start_s 9"):
        read_transcripts(tmp_path / "day.jsonl")


def test_a_lone_surrogate_in_a_column_name_is_a_contract_error(scorer, day):
    records = day.interactions.head(3).astype(object).to_dict("records")
    records[1]["\udc01x"] = 1
    with pytest.raises(ContractError, match=r"interactions: row 2: column name '\\udc01x' is not valid UTF-8"):
        scorer.predict(records)
    frame = day.interactions.head(3).astype(object)
    frame.columns = frame.columns.astype(object)
    frame.insert(0, "\ud800x", "v")
    with pytest.raises(ContractError, match=r"column name '\\ud800x' is not valid UTF-8"):
        scorer.predict(frame)


@pytest.mark.parametrize("call, expected", [
    (lambda s: s.predict(None), "interactions: got NoneType, expected a DataFrame, a list of dicts or a CSV/Parquet"),
    (lambda s: s.flag_at_risk(None, capacity=1), "interactions: got NoneType, expected a DataFrame"),
    (lambda s: s.score_transcripts(None), "conversations: got NoneType, expected a list of conversations"),
    (lambda s: s.predict([1, 2]), "interactions: row 1: got int, expected a dict of column values"),
])
def test_what_is_not_a_table_or_a_list_is_refused_naming_what_was_expected(scorer, call, expected):
    with pytest.raises(CareLensError, match=expected.replace("(", r"\(")):
        call(scorer)


def test_transcript_features_given_by_the_caller_are_checked_by_their_contract(scorer, day):
    features = scorer.score_transcripts(day.conversations).astype(object)
    flagged = scorer.flag_at_risk(day.interactions, transcript_features=features, threshold=0)
    assert len(flagged) == day.interactions["customer_id"].nunique()
    truth = features.copy()
    truth.loc[2, "agent_empathy_mean"] = True
    with pytest.raises(ContractError, match="transcript_features: row 3, column 'agent_empathy_mean': got True"):
        scorer.flag_at_risk(day.interactions, transcript_features=truth, threshold=0)
    broken = features.copy()
    broken.loc[0, "contact_id"] = "K\ud800"
    with pytest.raises(ContractError, match="row 1, column 'contact_id': .*lone surrogate"):
        scorer.flag_at_risk(day.interactions, transcript_features=broken, threshold=0)
    with pytest.raises(ContractError, match="missing column.*non_talk_s"):
        scorer.flag_at_risk(day.interactions, transcript_features=features.drop(columns=["non_talk_s"]))
    with pytest.raises(UsageError, match="transcript_features: got list, expected a DataFrame"):
        scorer.flag_at_risk(day.interactions, transcript_features=[features])


@pytest.mark.parametrize("selection, expected", [
    ({"capacity": True}, "capacity must be a whole number of customers, 0 or more, got True"),
    ({"capacity": 2.5}, "capacity must be a whole number of customers, 0 or more, got 2.5"),
    ({"threshold": "0"}, "threshold must be a probability between 0 and 1, got '0'"),
    ({"threshold": True}, "threshold must be a probability between 0 and 1, got True"),
    ({"threshold": float("nan")}, "threshold must be a probability between 0 and 1, got nan"),
])
def test_a_capacity_or_threshold_that_is_not_a_number_is_a_usage_error(scorer, day, selection, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        scorer.flag_at_risk(day.interactions, day.conversations, **selection)


def test_true_as_an_id_or_a_turn_time_is_refused_not_read_as_text_or_1(scorer, day, tmp_path):
    for column in ("customer_id", "contact_id"):
        frame = day.interactions.astype({column: object})
        frame.loc[1, column] = True
        with pytest.raises(ContractError, match=rf"interactions: row 2, column '{column}': got True, expected"):
            scorer.flag_at_risk(frame, threshold=0)
    conversation = json.loads(json.dumps(generate(3, seed=5).conversations[0]))
    conversation["turns"][0]["start_s"] = True
    (tmp_path / "day.jsonl").write_text(json.dumps(conversation) + "\n")
    with pytest.raises(ContractError, match=r"line 1, column 'turns.0.start_s': .*expected a number, not true or false"):
        read_transcripts(tmp_path / "day.jsonl")


@pytest.mark.parametrize("column, values", [
    ("transfers", [10 ** 400, 1, 1]),  # a Python int past any float: OverflowError
    ("transfers", [-(10 ** 400), 1, 1]),
    ("monthly_value", [complex(5, 1), 1.0, 1.0]),  # cast to 5.0, its imaginary part dropped with a warning
    ("monthly_value", [1j, 1j, 1j]),  # a complex column
    ("answer_time_s", [dt.timedelta(seconds=3), dt.timedelta(seconds=1), dt.timedelta(seconds=1)]),  # read as 3e9
    ("transfers", [True, False, False]),  # a bool column: neither 1 nor 0 transfers
])
def test_a_number_that_is_no_real_number_is_refused_naming_row_and_column(column, values):
    import numpy as np
    interactions = generate(3, seed=1).interactions
    frame = interactions.assign(**{column: np.array(values, dtype=object) if column == "transfers" and
                                   isinstance(values[0], int) else values})
    with pytest.raises(ContractError, match=rf"frame: row 2, column '{column}': got .*, expected"):
        validated(frame, INTERACTIONS, "frame")


@pytest.mark.parametrize("column", ["customer_id", "channel", "resolved", "answer_time_s", "transfers"])
def test_a_whole_number_of_5000_digits_is_refused_by_row_and_column_in_a_short_message(column):
    # Python refuses to write such a number as text: casting the column to text raised ValueError.
    frame = generate(3, seed=1).interactions.astype(object)
    frame.loc[frame.index[1], column] = 10 ** 5000
    with pytest.raises(ContractError, match=rf"row 3, column '{column}': got a whole number of about 5,001 digits, "
                                            r"expected") as refused:
        validated(frame, INTERACTIONS, "frame")
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("stamps", [[1700000000] * 3, [1.7e9] * 3, ["2026-11-05T09:30:00", 1700000000, "2026-11-05"]])
def test_a_bare_number_as_a_date_time_is_refused_not_read_as_nanoseconds_after_1970(stamps):
    frame = generate(3, seed=1).interactions.astype(object).assign(started_at=stamps)
    row = 2 if isinstance(stamps[0], (int, float)) else 3
    with pytest.raises(ContractError, match=rf"row {row}, column 'started_at': got 1700000000(\.0)?, expected a date-time"):
        validated(frame, INTERACTIONS, "frame")


def test_a_frame_of_arrow_backed_columns_reads_as_the_same_frame_of_numpy_columns():
    # pandas reads Parquet this way with dtype_backend="pyarrow": the whole-number check failed on Arrow's `%`.
    interactions = generate(5, seed=1).interactions
    arrow = validated(interactions.convert_dtypes(dtype_backend="pyarrow"), INTERACTIONS, "frame")
    expected = validated(interactions, INTERACTIONS, "frame")
    assert arrow.astype(object).where(arrow.notna(), None).equals(expected.astype(object).where(expected.notna(), None))
