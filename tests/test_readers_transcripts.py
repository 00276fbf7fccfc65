"""Transcript readers: JSON Lines and long-form Parquet round-trips, and errors that name the line and field."""
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.contracts import ContractError, Conversation
from carelens.data.readers import read_transcripts, write_transcripts

turns = st.lists(st.fixed_dictionaries({
    "speaker": st.sampled_from(["agent", "customer"]),
    "text": st.text(max_size=40),
}), min_size=0, max_size=5)
conversations = st.lists(st.builds(
    lambda i, c, t: {"conversation_id": f"V{i}", "customer_id": f"C{c}", "turns": t},
    st.integers(0, 10**6), st.integers(0, 10**6), turns), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(conversations)
def test_jsonl_round_trip_keeps_every_conversation_and_turn(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("t") / "day.jsonl"
    write_transcripts(records, path)
    back = read_transcripts(path)
    assert [c.model_dump(exclude_none=True) for c in back] == records


def test_long_form_parquet_is_grouped_back_in_turn_order(tmp_path):
    long = pd.DataFrame({
        "conversation_id": ["V2", "V2", "V1", "V1"],
        "customer_id": ["C2", "C2", "C1", "C1"],
        "turn_index": [1, 0, 1, 0],
        "speaker": ["customer", "agent", "customer", "agent"],
        "text": ["thanks", "hi", "it broke", "hello"],
    })
    path = tmp_path / "long.parquet"
    long.to_parquet(path)
    back = read_transcripts(path)
    assert [c.conversation_id for c in back] == ["V2", "V1"]
    assert [t.text for t in back[1].turns] == ["hello", "it broke"]
    assert [t.speaker for t in back[0].turns] == ["agent", "customer"]


def test_a_conversation_whose_rows_are_split_is_refused_naming_both_rows(tmp_path):
    long = pd.DataFrame({"conversation_id": ["V1", "V2", "V1"], "customer_id": ["C1", "C2", "C1"],
                         "turn_index": [0, 0, 1], "speaker": ["agent", "agent", "customer"], "text": ["a", "b", "c"]})
    long.to_parquet(tmp_path / "split.parquet")
    with pytest.raises(ContractError, match=r"split\.parquet: row 3, column 'conversation_id': conversation_id 'V1' "
                                            r"already had rows from row 1; the rows of one conversation must be "
                                            r"contiguous"):
        read_transcripts(tmp_path / "split.parquet")


def test_a_long_form_row_without_conversation_id_is_refused(tmp_path):
    long = pd.DataFrame({"conversation_id": ["V1", None], "customer_id": ["C1", "C1"], "turn_index": [0, 1],
                         "speaker": ["agent", "customer"], "text": ["a", "b"]})
    long.to_parquet(tmp_path / "null.parquet")
    with pytest.raises(ContractError, match=r"row 2, column 'conversation_id': missing value"):
        read_transcripts(tmp_path / "null.parquet")


def _jsonl(tmp_path, *lines):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"conversation_id": "V1", "customer_id": "C1", "turns": [{"speaker": "agent", "text": "hi"}]})


def test_broken_json_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path, GOOD, '{"conversation_id": "V2", ')
    with pytest.raises(ContractError, match=r"bad\.jsonl: line 2: not valid JSON"):
        read_transcripts(path)


def test_unknown_speaker_names_the_field_and_the_allowed_values(tmp_path):
    bad = json.dumps({"conversation_id": "V2", "customer_id": "C1", "turns": [{"speaker": "robot", "text": "x"}]})
    with pytest.raises(ContractError, match=r"line 2, column 'turns\.0\.speaker': .*'agent' or 'customer'.*robot"):
        read_transcripts(_jsonl(tmp_path, GOOD, bad))


def test_missing_turns_is_named(tmp_path):
    with pytest.raises(ContractError, match=r"line 1, column 'turns': Field required"):
        read_transcripts(_jsonl(tmp_path, json.dumps({"conversation_id": "V1", "customer_id": "C1"})))


def test_a_line_that_is_not_an_object_is_refused(tmp_path):
    with pytest.raises(ContractError, match=r"line 1: expected a JSON object \(a conversation\), got list"):
        read_transcripts(_jsonl(tmp_path, "[1, 2]"))


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ContractError, match=r"empty\.jsonl: the file is empty"):
        read_transcripts(path)


def test_integer_ids_are_read_as_text():
    conversation = Conversation.model_validate({"conversation_id": 7, "customer_id": 9, "turns": []})
    assert (conversation.conversation_id, conversation.customer_id) == ("7", "9")


def test_undecodable_bytes_are_tolerated_in_text_and_refused_in_an_id(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"conversation_id": "a", "customer_id": "c", "turns": [{"speaker": "agent", "text": "caf\xff"}]}\n')
    assert read_transcripts(path)[0].turns[0].text == "caf\udcff"  # the tokenizer reads it as "caf\ufffd"
    path.write_bytes(b'{"conversation_id": "a\xff", "customer_id": "c", "turns": []}\n')
    with pytest.raises(ContractError, match=r"line 1, column 'conversation_id': .*not valid UTF-8"):
        read_transcripts(path)
