"""Adapters: airline tweets, EPITOME pairs, ABCD chats and labelled transcripts, with errors naming row and column."""
import json

import pandas as pd
import pytest

from carelens.data.adapters import (
    abcd_conversation, empathy_pairs, labelled_turns, read_abcd, read_airline_tweets, read_epitome, read_labelled,
    read_labelled_text,
)
from carelens.data.contracts import ContractError, Conversation
from carelens.data.readers import write_transcripts
from conftest import requires_shared


def _csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_airline_tweets_keep_text_and_lowercased_label(tmp_path):
    path = _csv(tmp_path / "t.csv", [{"id": 1, "text": "@united late again", "label": "Negative"},
                                     {"id": 2, "text": "thanks!", "label": "positive"}])
    frame = read_airline_tweets(path)
    assert frame.to_dict("records") == [{"text": "@united late again", "label": "negative"},
                                        {"text": "thanks!", "label": "positive"}]


def test_airline_tweet_with_an_unknown_label_names_row_and_column(tmp_path):
    path = _csv(tmp_path / "t.csv", [{"text": "ok", "label": "neutral"}, {"text": "meh", "label": "mixed"}])
    with pytest.raises(ContractError, match=r"row 3, column 'label': got 'mixed', expected one of negative"):
        read_airline_tweets(path)


def test_airline_tweets_without_a_text_column_say_what_is_needed(tmp_path):
    path = _csv(tmp_path / "t.csv", [{"tweet": "ok", "label": "neutral"}])
    with pytest.raises(ContractError, match="missing column.*text.*airline tweet files need text, label"):
        read_airline_tweets(path)


def test_blank_tweet_text_is_an_error(tmp_path):
    path = _csv(tmp_path / "t.csv", [{"text": " ", "label": "neutral"}])
    with pytest.raises(ContractError, match="row 2, column 'text'.*non-empty text"):
        read_airline_tweets(path)


def _epitome(path, levels, responses=None):
    return _csv(path, [{"sp_id": f"s{i}", "rp_id": f"r{i}", "seeker_post": f"seeker {i}",
                        "response_post": (responses or {}).get(i, f"reply {i}"), "level": level, "rationales": ""}
                       for i, level in enumerate(levels)])


def test_epitome_mechanism_comes_from_the_file_name(tmp_path):
    frame = read_epitome(_epitome(tmp_path / "epitome_explorations_train.csv", [0, 2]))
    assert frame["mechanism"].tolist() == ["explorations"] * 2
    assert frame[["context", "response", "level"]].values.tolist() == [["seeker 0", "reply 0", 0],
                                                                       ["seeker 1", "reply 1", 2]]


def test_epitome_without_a_mechanism_is_an_error(tmp_path):
    with pytest.raises(ContractError, match="cannot tell the empathy mechanism"):
        read_epitome(_epitome(tmp_path / "pairs.csv", [0]))


def test_epitome_level_outside_0_to_2_names_the_row(tmp_path):
    with pytest.raises(ContractError, match=r"row 3, column 'level': got '3', expected 0, 1 or 2"):
        read_epitome(_epitome(tmp_path / "epitome_interpretations_train.csv", [1, 3]))


def test_epitome_files_merge_into_one_row_per_pair_with_missing_mechanisms(tmp_path):
    _epitome(tmp_path / "epitome_emotional_reactions_train.csv", [1, 2])
    _epitome(tmp_path / "epitome_explorations_train.csv", [0])
    _, pairs = read_labelled([tmp_path])
    assert len(pairs) == 2
    first = pairs.iloc[0]
    assert (first["emotional_reactions"], first["explorations"]) == (1, 0) and pd.isna(first["interpretations"])
    assert pd.isna(pairs.iloc[1]["explorations"])


def test_repeated_annotation_of_a_pair_keeps_the_first():
    long = pd.DataFrame({"sp_id": ["s", "s"], "rp_id": ["r", "r"], "context": ["c", "c"], "response": ["x", "x"],
                         "mechanism": ["explorations"] * 2, "level": [2, 0]})
    assert empathy_pairs(long)["explorations"].tolist() == [2]


def test_labelled_transcripts_pair_each_agent_turn_with_the_customer_turn_it_answers():
    conversation = Conversation.model_validate({"conversation_id": "v", "customer_id": "c", "turns": [
        {"speaker": "agent", "text": "hello", "empathy": {"emotional_reactions": 0, "interpretations": 0,
                                                          "explorations": 1}},
        {"speaker": "customer", "text": "my bag is lost", "sentiment": "negative"},
        {"speaker": "customer", "text": "  "},
        {"speaker": "agent", "text": "so sorry", "empathy": {"emotional_reactions": 2, "interpretations": 1,
                                                             "explorations": 0}},
        {"speaker": "customer", "text": "thanks"},
    ]})
    sentiment, empathy = labelled_turns([conversation])
    assert sentiment.to_dict("records") == [{"text": "my bag is lost", "label": "negative"}]
    assert empathy["context"].tolist() == ["", "my bag is lost"]
    assert empathy.iloc[1][["emotional_reactions", "interpretations", "explorations"]].tolist() == [2, 1, 0]


def test_labelled_text_is_synthetic_real_or_mixed_by_the_conversations_that_carry_labels(tmp_path):
    labelled = [{"speaker": "customer", "text": "my bag is lost", "sentiment": "negative"}]
    generated = {"conversation_id": "g", "customer_id": "c", "text_source": "synthetic", "turns": labelled}
    unlabelled = {**generated, "conversation_id": "u", "turns": [{"speaker": "customer", "text": "hi"}]}
    real = {"conversation_id": "r", "customer_id": "c", "turns": labelled}
    kinds = {}
    for name, records in {"synthetic": [generated, unlabelled], "real": [real, unlabelled],
                          "mixed": [generated, real]}.items():
        kinds[name] = read_labelled_text([write_transcripts(records, tmp_path / f"{name}.jsonl")]).text
    assert kinds == {"synthetic": "synthetic", "real": "real", "mixed": "mixed"}


def test_labelled_transcript_with_a_bad_empathy_level_says_where(tmp_path):
    path = write_transcripts([{"conversation_id": "v9", "customer_id": "c", "turns": [
        {"speaker": "agent", "text": "hi", "empathy": {"explorations": 5}}]}], tmp_path / "t.jsonl")
    with pytest.raises(ContractError, match="conversation v9, turn 0: empathy 'explorations' is 5"):
        read_labelled([path])


def test_abcd_record_becomes_a_conversation_without_actions():
    record = {"convo_id": 7, "original": [["agent", "Hi!"], ["customer", "my order"], ["action", "Account pulled"],
                                           ["agent", "sure"]]}
    conversation = abcd_conversation(record)
    assert conversation.conversation_id == "7" and conversation.channel == "chat"
    assert [t.speaker for t in conversation.turns] == ["agent", "customer", "agent"]


def test_abcd_record_with_a_malformed_entry_names_it(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"convo_id": 1, "original": [["agent"]]}]))
    with pytest.raises(ContractError, match=r"entry 1, column 'original': original\[0\]"):
        read_abcd(tmp_path / "a.json")


@requires_shared
def test_shared_files_load_through_the_adapters(shared_data):
    sentiment, empathy = read_labelled([shared_data / "sentiment", shared_data / "empathy"])
    assert len(sentiment) == 11711 and set(sentiment["label"]) == {"negative", "neutral", "positive"}
    assert 2900 < len(empathy) < 3100 and empathy["explorations"].notna().sum() > 2400
    conversations = read_abcd(shared_data / "transcripts" / "abcd_sample.json")
    assert len(conversations) == 3 and all(c.turns for c in conversations)
