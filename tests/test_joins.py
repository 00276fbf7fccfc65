"""Joins that say what matched: transcript keys mapped from a format's own fields, the join counted and explained, the
dropped records and the one drift line a person reads first."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.adapters import read_abcd
from carelens.data.contracts import ContractError
from carelens.data.errors import UsageError
from carelens.data.readers import conversation_from_record, parsed_keys, read_transcripts
from carelens.inference.contacts import join_lines, join_report, missing_conversations_warning
from carelens.inference.nightly.run import run_nightly
from carelens.models.conversation_features import FEATURE_COLUMNS

TURNS = [["agent", "Hi, how can I help?"], ["customer", "My order arrived broken."], ["action", "Order pulled up."],
         ["agent", "I am sorry, I will send a new one today."], ["customer", "great thanks for your help"]]


def abcd_chats(path: Path, ids=(3592, 9489, 3695)) -> Path:
    """An ABCD file: a JSON list of chats keyed by convo_id, with a nested customer username."""
    path.write_text(json.dumps([{"convo_id": i, "scenario": {"personal": {"username": f"user{i}"}}, "original": TURNS}
                                for i in ids]))
    return path


def contacts_csv(path: Path, contact_ids, channels=None) -> Path:
    """A contacts (interactions) file with one answered chat contact per id."""
    channels = channels or ["chat"] * len(contact_ids)
    pd.DataFrame({"customer_id": [f"c{n}" for n in range(len(contact_ids))], "contact_id": list(contact_ids),
                  "started_at": "2026-12-05T09:00:00", "channel": channels, "answer_time_s": 30, "abandoned": False,
                  "hold_time_s": 0, "handle_time_s": 600, "transfers": 0, "product_problem": True,
                  "resolved": True, "repeat_contacts_30d": 0, "tenure_months": 24, "monthly_value": 50,
                  "csat": None}).to_csv(path, index=False)
    return path


def test_the_join_report_counts_each_way_a_conversation_misses_a_contact():
    conversations = pd.DataFrame({"conversation_id": [f"v{n}" for n in range(9)],
                                  "contact_id": ["a", "b", None, "zz", "yy", "a", "xx", "ww", "e"]})
    contacts = pd.DataFrame({"contact_id": ["a", "b", "c", "d"], "abandoned": [False, False, False, True]})
    report = join_report(conversations, contacts, dropped={"e", "f"})
    assert report == {"transcripts": 9, "matched": 3, "without_contact_id": 1, "without_examples": ["v2"],
                      "contact_field": None, "dropped_contact": 1, "dropped_examples": ["e"],
                      "unknown_contact_id": 4, "unknown_examples": ["zz", "yy", "xx"], "contacts": 4,
                      "with_conversation": 2, "answered_without": 1, "abandoned": 1}
    assert join_lines(report) == [
        "transcripts: 9 read, 3 matched a contact; not matched: 1 with no contact_id (v2); 1 whose contact was dropped "
        "(e); 4 with a contact_id the contacts do not have (zz, yy, xx, …)",
        "contacts: 4 scored, 2 with a conversation, 1 answered without one, 1 abandoned"]


def test_a_mapped_contact_field_that_no_record_has_is_named():
    conversations = pd.DataFrame({"conversation_id": ["v1", "v2"], "contact_id": [None, None]})
    report = join_report(conversations, pd.DataFrame({"contact_id": ["a"]}), contact_field="callid")
    assert join_lines(report)[0] == ("transcripts: 2 read, 0 matched a contact; not matched: 2 with no contact_id "
                                     "(v1, v2): no record has the field 'callid' that contact_id is read from")


def test_keys_are_given_as_key_equals_field_and_refused_by_name_otherwise():
    assert parsed_keys(["contact_id=convo_id", " customer_id = scenario.personal.username "]) == {
        "contact_id": "convo_id", "customer_id": "scenario.personal.username"}
    for bad, message in [("contact_id", "expected KEY=FIELD"), ("=x", "expected KEY=FIELD"),
                         ("agent_id=x", "the keys a transcript record carries are conversation_id, customer_id, "
                                        "contact_id"), ("contact_id=a..b", "expected the name of a record field")]:
        with pytest.raises(UsageError, match=message):
            parsed_keys([bad])


def test_keys_given_as_anything_but_a_mapping_are_refused_by_name(scorer, tmp_path):
    for bad in ("contact_id=convo_id", [("contact_id", "convo_id")], {"contact_id": 7}):
        with pytest.raises(UsageError, match="keys: got|expected the name of a record field"):
            scorer.score_transcripts(abcd_chats(tmp_path / "chats.json"), keys=bad)


def test_a_mapped_key_is_read_from_a_nested_field_and_a_missing_one_is_named_with_its_field():
    record = {"conversation_id": "x1", "customer_id": "c1", "meta": {"call": 7}, "turns": [{"speaker": "agent",
                                                                                            "text": "Hello"}]}
    assert conversation_from_record(record, "calls.jsonl", 1, keys={"contact_id": "meta.call"}).contact_id == "7"
    assert conversation_from_record(record, "calls.jsonl", 1).contact_id is None
    with pytest.raises(ContractError, match=r"calls.jsonl: line 4, column 'customer_id': Field required .*customer_id "
                                            r"is read from the field 'who'"):
        conversation_from_record({k: v for k, v in record.items() if k != "customer_id"}, "calls.jsonl", 4,
                                 keys={"customer_id": "who"})


def test_long_form_transcripts_refuse_a_mapped_conversation_id(tmp_path):
    path = tmp_path / "turns.parquet"
    pd.DataFrame({"call": ["a"], "turn_index": [0], "speaker": ["agent"], "text": ["Hi"]}).to_parquet(path)
    with pytest.raises(UsageError, match="rename the column 'call' to conversation_id"):
        read_transcripts(path, keys={"conversation_id": "call"})


def test_an_abcd_chat_is_its_own_contact_unless_keys_say_otherwise(tmp_path):
    path = abcd_chats(tmp_path / "chats.json")
    chats = read_abcd(path)
    assert [(c.conversation_id, c.customer_id, c.contact_id) for c in chats] == [
        ("3592", "3592", "3592"), ("9489", "9489", "9489"), ("3695", "3695", "3695")]
    assert [len(c.turns) for c in chats] == [4, 4, 4]  # the action line is not speech
    mapped = read_abcd(path, keys={"customer_id": "scenario.personal.username", "contact_id": "nowhere"})
    assert [(c.customer_id, c.contact_id) for c in mapped] == [("user3592", None), ("user9489", None),
                                                              ("user3695", None)]


def test_the_api_joins_abcd_chats_and_says_how_they_matched(scorer, tmp_path):
    chats = abcd_chats(tmp_path / "chats.json")
    flagged = scorer.flag_at_risk(contacts_csv(tmp_path / "contacts.csv", ["3592", "9489", "3695"]), chats,
                                  threshold=0.0)
    assert flagged.attrs["joins"]["matched"] == 3 and flagged.attrs["joins"]["with_conversation"] == 3
    assert not any("no conversation features" in w for w in flagged.attrs["warnings"])
    missed = scorer.predict(contacts_csv(tmp_path / "other.csv", ["3592", "X2"]), chats,
                            keys={"contact_id": "scenario.personal.username"})
    assert missed.attrs["joins"]["matched"] == 0 and missed.attrs["joins"]["unknown_examples"] == [
        "user3592", "user9489", "user3695"]
    [warning] = [w for w in missed.attrs["warnings"] if "no conversation features" in w]
    assert "3 with a contact_id the contacts do not have (user3592, user9489, user3695)" in warning
    assert "--key contact_id=FIELD" in warning
    assert scorer.score_transcripts(chats).attrs["warnings"] == scorer.warnings


def test_a_jsonl_field_named_by_key_joins_its_contacts(registry_with_models, tmp_path):
    folder = registry_with_models.day_dir
    renamed = tmp_path / "calls.jsonl"
    with open(folder / "transcripts.jsonl") as source, open(renamed, "w") as target:
        for line in source:
            record = json.loads(line)
            record["call_ref"] = record.pop("contact_id")
            target.write(json.dumps(record) + "\n")
    manifests = [run_nightly([renamed], [folder / "interactions.parquet"], tmp_path / name, registry_with_models.root,
                             show_progress_bar=False, **options)
                 for name, options in (("plain", {}), ("keyed", {"keys": {"contact_id": "call_ref"}}))]
    plain, keyed = (m["joins"] for m in manifests)
    assert plain["matched"] == 0 and plain["without_contact_id"] == plain["transcripts"] > 0
    # Not one transcript joined: the night ran on contact data alone, a failure a scheduler sees (exit code 1).
    assert [f["stage"] for f in manifests[0]["failures"]] == ["predictions"]
    assert "none of the" in manifests[0]["failures"][0]["reason"] and manifests[1]["failures"] == []
    assert keyed["matched"] == keyed["transcripts"] == plain["transcripts"]
    assert keyed["with_conversation"] + keyed["answered_without"] + keyed["abandoned"] == keyed["contacts"]
    assert keyed["answered_without"] == 0
    assert json.loads((tmp_path / "keyed" / "_plan.json").read_text())["keys"] == {"contact_id": "call_ref"}


def test_a_small_night_opens_with_the_join_the_dropped_contact_and_one_drift_line(registry_with_models, tmp_path):
    """A three-customer day, two transcripts that match no contact and one contact the contract refuses: the first ten
    lines a person reads say what matched, what was dropped and why, and drift once."""
    chats = abcd_chats(tmp_path / "chats.json")
    contacts = contacts_csv(tmp_path / "contacts.csv", ["3592", "X2", "X3"], ["chat", "webchat", "chat"])
    command = [str(Path(sys.executable).with_name("carelens")), "nightly", "--interactions", str(contacts),
               "--transcripts", str(chats), "--registry", str(registry_with_models.root), "--out",
               str(tmp_path / "run")]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout
    first = result.stdout.splitlines()[:10]
    assert first[0] == ("transcripts: 3 read, 1 matched a contact; not matched: 2 with a contact_id the contacts do "
                        "not have (9489, 3695)")
    assert first[1] == "contacts: 2 scored, 1 with a conversation, 1 answered without one"
    assert first[2].startswith("dropped 1 contact (every one with its reason in ")
    assert first[3] == "  contacts.csv row 3: column 'channel': got 'webchat', expected one of phone, chat, email, social"
    assert [line for line in first if "drift" in line] == [
        "warning: drift not measured: 2 contacts tonight, and PSI on fewer than 200 is noise"]
    assert len([line for line in result.stdout.splitlines() if "PSI" in line]) == 1
    manifest = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    assert manifest["drift"] == [] and manifest["joins"]["unknown_examples"] == ["9489", "3695"]
    assert manifest["dropped"] == [{"what": "contact", "field": "channel", "count": 1, "first": [first[3].strip()]}]
    summary = (tmp_path / "run" / "summary.html").read_text()
    assert "1 matched a contact" in summary and "got &#x27;webchat&#x27;" in summary


@given(st.lists(st.tuples(st.booleans(), st.lists(st.booleans(), min_size=3, max_size=3)), max_size=12),
       st.sets(st.sampled_from(FEATURE_COLUMNS[:3])))
@settings(max_examples=60, deadline=None)
def test_the_missing_conversations_warning_counts_answered_contacts_with_none_of_the_features_read(rows, read):
    columns = FEATURE_COLUMNS[:3]
    contacts = pd.DataFrame({"abandoned": [hung_up for hung_up, _ in rows],
                             **{c: [np.nan if row[i] else 0.5 for _, row in rows] for i, c in enumerate(columns)
                                if c in read}})
    lacking = sum(not hung_up and all(row[i] for i, c in enumerate(columns) if c in read) for hung_up, row in rows)
    warning = missing_conversations_warning(contacts)
    answered = sum(not hung_up for hung_up, _ in rows)
    assert (warning is None) if not lacking else \
        warning.startswith(f"{lacking} of {answered} answered contacts have no conversation features")
