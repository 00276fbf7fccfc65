"""Redaction of e-mails, phones, cards and order/account numbers: exact outputs on small texts, and properties."""
import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelens.data.contracts import Conversation
from carelens.data.redaction import KINDS, Redaction, redacted, redacted_conversation, redacted_record, redactions
from redaction_cases import card, email, passes_luhn, phone

FUZZ = settings(max_examples=int(os.environ.get("CARELENS_FUZZ_EXAMPLES", 50)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("text, expected", [
    ("write to Jane.Doe+care@mail.example.co.uk today", "write to [EMAIL] today"),
    ("CMINH730@EMAIL.COM", "[EMAIL]"),
    ("call me at (977) 625-2661 tonight", "call me at [PHONE] tonight"),
    ("977-625-2661 or 977.625.2661 or +1 977 625 2661", "[PHONE] or [PHONE] or [PHONE]"),
    ("London: +44 20 7946 0958, or 020 7946 0958", "London: [PHONE], or [PHONE]"),
    ("please call 9148445695", "please call [PHONE]"),
    ("my card is 4111 1111 1111 1111, thanks", "my card is [CARD], thanks"),
    ("amex 3782 822463 10005 and 4111-1111-1111-1111", "amex [CARD] and [CARD]"),
    ("Order ID: 3348917502", "Order ID: [ORDER]"),
    ("order #A12345 and account number 123456789", "order #[ORDER] and account number [ORDER]"),
    ("Username: cminh730", "Username: [ORDER]"),
    ("aphoenix939", "[ORDER]"),
    ("7916676427", "[ORDER]"),
])
def test_each_kind_is_masked_with_its_placeholder(text, expected):
    assert redacted(text) == expected


def test_a_number_failing_luhn_is_no_card():
    assert not passes_luhn("4111111111111112")
    assert redacted("card 4111 1111 1111 1112") == "card [ORDER]"
    assert redacted("card 4111111111111112") == "card [ORDER]"
    assert [r.kind for r in redactions("4111 1111 1111 1111 / 4111 1111 1111 1112")] == ["CARD", "ORDER"]


def test_a_text_with_every_kind():
    text = "I'm cminh730@email.com, (977) 625-2661, card 4111-1111-1111-1111, order #A12345 from 2019-11-06"
    assert redacted(text) == "I'm [EMAIL], [PHONE], card [CARD], order #[ORDER] from 2019-11-06"
    assert [r.kind for r in redactions(text)] == ["EMAIL", "PHONE", "CARD", "ORDER"]


@pytest.mark.parametrize("text", [
    "@united Flight UA 1234 on 2/22 at 10:30 cost $94.00, I'm 99.5% sure; zip 75227 ✈️",
    "over 150000 miles, $1,234,567.00, 2015-02-22 10:30:00, 737-800, seat 12A, AA1344, flight #668",
    "Ok, all promo codes expire after 7 days without fail.",
    "שלום, مرحبا 😀 \u202etext\u202c",
])
def test_text_without_personal_data_is_unchanged_byte_for_byte(text):
    assert redacted(text) == text
    assert redactions(text) == []


def test_spans_say_kind_start_and_end():
    text = "mail a@b.co now"
    assert redactions(text) == [Redaction("EMAIL", 5, 11)]
    assert text[5:11] == "a@b.co" and Redaction("EMAIL", 5, 11).placeholder == "[EMAIL]"
    assert set(KINDS) == {"EMAIL", "PHONE", "CARD", "ORDER"}


def test_bare_digits_are_a_phone_only_after_a_cue():
    assert redacted("9776252661") == "[ORDER]"
    assert redacted("9776252661", before="I'd just need your phone number.") == "[PHONE]"
    assert redacted("my number is 9776252661") == "my number is [PHONE]"


def abcd_like() -> Conversation:
    return Conversation.model_validate({
        "conversation_id": "3592", "customer_id": "c1", "channel": "chat", "queue": "returns",
        "turns": [{"speaker": "agent", "text": "May I have your username and order ID?"},
                  {"speaker": "customer", "text": "Username: cminh730, Order ID: 3348917502", "start_s": 3.0},
                  {"speaker": "agent", "text": "I'd just need your phone number."},
                  {"speaker": "customer", "text": "9776252661"}]})


def test_a_conversation_is_copied_with_every_turn_redacted():
    conversation = abcd_like()
    copy = redacted_conversation(conversation)
    assert [t.text for t in copy.turns] == ["May I have your username and order ID?",
                                          "Username: [ORDER], Order ID: [ORDER]",
                                          "I'd just need your phone number.", "[PHONE]"]
    assert copy.turns[1].start_s == 3.0 and copy.conversation_id == "3592" and copy.queue == "returns"
    assert conversation.turns[1].text == "Username: cminh730, Order ID: 3348917502"


def test_a_record_has_every_string_and_number_redacted_however_nested():
    record = {"conversation_id": "x1", "turns": [{"speaker": "customer", "text": "mail me: a.b@c.com"}],
              "extra": {"phones": ["(977) 625-2661", 3348917502], "ok": True, "n": 3, "none": None}}
    assert redacted_record(record) == {
        "conversation_id": "x1", "turns": [{"speaker": "customer", "text": "mail me: [EMAIL]"}],
        "extra": {"phones": ["[PHONE]", "[ORDER]"], "ok": True, "n": 3, "none": None}}
    assert record["turns"][0]["text"] == "mail me: a.b@c.com"


def test_a_raw_string_record_is_redacted_as_json_or_as_text():
    assert json.loads(redacted_record('{"text": "card 4111111111111111", "id": 7}')) == {"text": "card [CARD]", "id": 7}
    assert redacted_record("{not json, card 4111111111111111") == "{not json, card [CARD]"
    assert redacted_record("3348917502") == "[ORDER]"
    assert redacted_record("[" * 100_000) == "[" * 100_000


@pytest.mark.parametrize("text", [
    "", "\x00", "\x00(977) 625-2661\x00", "\ud800 4111 1111 1111 1111 \udfff", "a@\ud800.com",
    "\U0001F4DE +44 20 7946 0958", "\u202e977-625-2661\u202c", "٤١١١١١١١١١١١١١١١", "@" * 1000, "+" * 1000, "1" * 10_000,
    ("order 12345 call (977) 625-2661 a@b.com 4111 1111 1111 1111 " * 20_000)[:1_000_000],
])
def test_odd_and_huge_texts_never_raise(text):
    out = redacted(text)
    assert isinstance(out, str) and redacted(out) == out


valid_values = st.randoms(use_true_random=False).map(
    lambda rng: rng.choice([card, lambda r: email(r)[1], lambda r: phone(r)[1]])(rng))


@FUZZ
@given(st.text())
def test_property_redaction_never_raises_and_spans_are_ordered(text):
    found = redactions(text)
    assert all(0 <= a.start < a.end <= len(text) for a in found)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    redacted(text)


@FUZZ
@given(st.text())
def test_property_redaction_is_idempotent(text):
    once = redacted(text)
    assert redacted(once) == once


@FUZZ
@given(st.text(), valid_values, st.text())
def test_property_an_inserted_card_email_or_phone_never_survives(head, value, tail):
    text = f"{head} {value} {tail}"
    assert value not in redacted(text)


@FUZZ
@given(st.emails(), st.text(alphabet=st.characters(blacklist_characters="@")))
def test_property_any_valid_email_address_never_survives(address, surrounding):
    assert address not in redacted(f"{surrounding} {address} {surrounding}")


@FUZZ
@given(st.text().filter(lambda t: "@" not in t and not any(c.isdecimal() for c in t)))
def test_property_text_without_digits_or_at_sign_is_unchanged(text):
    assert redacted(text) is text


def test_the_property_helpers_make_valid_values():
    rng = random.Random(0)
    assert all(passes_luhn("".join(c for c in card(rng) if c.isdigit())) for _ in range(100))
