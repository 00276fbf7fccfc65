"""Masks customers' e-mail addresses, phone numbers, payment cards and order or account numbers in transcript text."""
# Not Presidio (measured: +366 MB with spaCy, 0.6 s import, a suffix list fetched online, 12k tweets/s) but its phone
# metadata, phonenumberslite, with python-stdnum's Luhn check and regexes (+11 MB, 1 s install, 70k tweets/s).
from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Union

import phonenumbers
from stdnum import luhn

from carelens.data.contracts import Conversation

Kind = Literal["EMAIL", "PHONE", "CARD", "ORDER"]
KINDS: tuple[Kind, ...] = ("EMAIL", "PHONE", "CARD", "ORDER")
Record = Union[dict, list, str, int, float, bool, None]


@dataclass(frozen=True)
class Redaction:
    """One masked value: its kind and its [start, end) span in the text."""

    kind: Kind
    start: int
    end: int

    @property
    def placeholder(self) -> str:
        return f"[{self.kind}]"


_DIGIT = re.compile(r"\d")
# The local part takes RFC 5322's characters, at most 64 (RFC 5321), a bound that also keeps the backward scan linear
# on hostile input; top-level domains are letters or punycode (xn--p1ai).
_LOCAL_PART = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}\Z")
_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:(?i:xn)--[^\W_][\w-]{0,58}|[^\W\d_]{2,63})(?![^\W\d_]|-)")
# Card numbers are written as one run of 13-19 digits or in groups of 3-6 (Visa 4-4-4-4, Amex 4-6-5), not half and
# half ("call 2444253248 4439" is no card); first digits 2-6 cover the payment networks (ISO/IEC 7812).
_DIGIT_GROUPS = re.compile(r"(?<!\d)(?:\d{3,6}(?:[ -]\d{3,6})+|\d{13,19})(?!\d)")
_GROUP = re.compile(r"\d+")
_CARD_LENGTHS = range(13, 20)
_CARD_FIRST_DIGITS = "23456"
_ID = r"(?P<id>(?=[A-Za-z-]*\d)[A-Za-z0-9][A-Za-z0-9-]{2,38}[A-Za-z0-9])(?![A-Za-z0-9])"
# A bare '#' is not a label: tweets use it for hashtags and flight numbers ("#AA919", "flight #668").
_LABELLED_ID = re.compile(
    r"\b(?:order|account|acct|customer|member(?:ship)?|user\s?(?:name|id)|confirmation|conf|booking|reservation|res"
    r"|record\s?locator|pnr|e-?ticket|ticket|reference|ref|case|claim|incident|invoice|receipt|tracking)\b\.?"
    r"(?:[\s:#=-]{0,4}(?:number|num|no|nr|id|code)\b\.?)?[\s:#=-]{0,4}(?:(?:is|was)\s+)?" + _ID,
    re.IGNORECASE)
# Amounts, decimals, percentages and counted units are not identifiers even when long ("99.99999999%", "150000 miles").
_DIGIT_RUN = re.compile(r"(?<![\d$€£])(?<!\d[.,])\d{6,}(?!\d|%|[.,]\d|\s?(?:miles|points|pts|feet|ft)\b)",
                        re.IGNORECASE)
# A whole turn that is one token mixing letters and digits is a customer answering with an id ("aphoenix939").
_LONE_ID = re.compile(r"\s*(?=[A-Za-z._-]*\d)(?=[\d._-]*[A-Za-z])[A-Za-z0-9._-]{4,40}\s*\Z")
# North American numbers as people format them ("(977) 625-2661", "+1 977.625.2661", "625-2661"): NANP area codes and
# exchanges start with 2-9, which keeps "100 200 3000" out. A regex finds them: libphonenumber's matcher misses some
# (inside parentheses, before a time).
_NANP = re.compile(r"(?<![\d$])(?<!\d[.,/-])(?:(?:\+?1[\s.-]?)?(?:\([2-9]\d{2}\)[\s.-]?|[2-9]\d{2}[\s.-])"
                   r"[2-9]\d{2}[\s.-]\d{4}|[2-9]\d{2}-\d{4})(?![\d-]|[.,]\d)")
# Seven digits close together: anything less cannot be a phone number, and most turns skip all the phone rules.
_PHONE_SHAPED = re.compile(r"\d(?:\W{0,4}\d){6}")
# Candidates for libphonenumber: a '+' or a national 0 and what follows that could belong to the number.
_INTERNATIONAL = re.compile(r"(?<![\d+])\+\s?\d[\d\s().-]{5,24}\d")
# National candidates overlap: a number may start inside the one before it ("on 01 020 7946 0958").
_UK_NATIONAL = re.compile(r"(?<![\d+])(?=(\(?0[1-9][\d\s().-]{5,24}\d))")
# E.164 caps a number at 15 digits with its country code; UK national numbers are 0 and 9 or 10 digits.
_INTERNATIONAL_DIGITS = range(7, 16)
_UK_NATIONAL_DIGITS = range(10, 12)
_BARE_RUN = re.compile(r"(?<![\d$.,])\d{7,11}(?![\d%]|[.,]\d)")
_PHONE_CUE = re.compile(r"\b(?:phone|tel\b|mobile|cell|call|text|reach|contact|number|whatsapp|sms|fax|ring)",
                        re.IGNORECASE)
_CUE_WINDOW = 40
_LONGEST_NUMBER = 10 ** 20


class _Spans:
    """Accepted redactions, kept sorted and non-overlapping: an earlier, more specific rule keeps its span."""

    def __init__(self):
        self.starts: list[int] = []
        self.items: list[Redaction] = []

    def free(self, start: int, end: int) -> bool:
        at = bisect.bisect_right(self.starts, start)
        before_ok = at == 0 or self.items[at - 1].end <= start
        return before_ok and (at == len(self.items) or end <= self.items[at].start)

    def add(self, kind: Kind, start: int, end: int) -> None:
        if start < end and self.free(start, end):
            at = bisect.bisect_right(self.starts, start)
            self.starts.insert(at, start)
            self.items.insert(at, Redaction(kind, start, end))


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for at in (m.start() for m in re.finditer("@", text)):
        local = _LOCAL_PART.search(text, max(0, at - 64), at)
        domain = _DOMAIN.match(text, at + 1, at + 254)
        if local and domain:
            start = local.start() + len(local.group()) - len(local.group().lstrip("."))
            if start < at:
                yield start, domain.end()


def _digits(candidate: str) -> str:
    return "".join(c for c in candidate if c.isdecimal())


def _is_card(digits: str) -> bool:
    ascii_digits = "".join(str(int(c)) for c in digits)
    return (len(ascii_digits) in _CARD_LENGTHS and ascii_digits[0] in _CARD_FIRST_DIGITS
            and luhn.is_valid(ascii_digits))


def _card_windows(text: str, groups: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Spans of cards inside a run of digit groups, each the longest that starts on a 4-digit group (or is the whole
    run) and passes Luhn: a card stays a card when other digits stand beside it ("#1007 3779 413270 16267")."""
    first = 0
    while first < len(groups):
        card_end = None
        for last in range(first, len(groups)):
            digits = _digits(text[groups[first][0]:groups[last][1]])
            if len(digits) > _CARD_LENGTHS[-1]:
                break
            starts_a_card = len(groups) == 1 or groups[first][1] - groups[first][0] == 4
            if starts_a_card and _is_card(digits):
                card_end = last
        if card_end is None:
            first += 1
        else:
            yield groups[first][0], groups[card_end][1]
            first = card_end + 1


def _cards(text: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, passes Luhn): the cards in each run of digit groups, or, when it holds none, the whole run if it
    has a card's length."""
    for run in _DIGIT_GROUPS.finditer(text):
        groups = [(run.start() + group.start(), run.start() + group.end()) for group in _GROUP.finditer(run.group())]
        cards = [(start, end, True) for start, end in _card_windows(text, groups)]
        yield from cards
        if not cards and len(_digits(run.group())) in _CARD_LENGTHS:
            yield run.start(), run.end(), False


def _has_phone_cue(text: str, start: int, before: str) -> bool:
    window = (before[-_CUE_WINDOW:] + "\n" + text[max(0, start - _CUE_WINDOW):start])[-_CUE_WINDOW:]
    return _PHONE_CUE.search(window) is not None


def _longest_number(candidate: str, offset: int, region: str, accept, lengths: range) -> Optional[tuple[int, int]]:
    """The span of the longest leading part of a candidate (at `offset` in the text) with a phone number's count of
    digits that libphonenumber parses and `accept`s: "+44 20 7946 0958 5 hours" is cut back to the phone number."""
    ends, count = [], 0
    for group in _GROUP.finditer(candidate):
        count += len(group.group())
        if count in lengths:
            ends.append(group.end())
    for end in reversed(ends):
        try:
            number = phonenumbers.parse(candidate[:end], region)
        except phonenumbers.NumberParseException:
            continue
        if accept(number):
            # An opening "(" belongs to the number when it closes inside it, around an area code: "(020) 7946 0958".
            opened = candidate.startswith("(") and ")" not in candidate[:end]
            return offset + opened, offset + end
    return None


def _is_possible_us(digits: str) -> bool:
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(digits, "US"))
    except phonenumbers.NumberParseException:
        return False


def _phones(text: str, before: str) -> Iterator[tuple[int, int]]:
    """Phone numbers: NANP-formatted, international (+...) ones libphonenumber finds possible, UK national ones it
    finds valid, and bare digits after a cue such as 'call me'. Bare digits with no cue are left to the order rule:
    ABCD order ids are bare ten-digit numbers."""
    for match in _NANP.finditer(text):
        yield match.span()
    for match in _INTERNATIONAL.finditer(text):
        if span := _longest_number(match.group(), match.start(), "US", phonenumbers.is_possible_number,
                                   _INTERNATIONAL_DIGITS):
            yield span
    # National numbers are read as UK ones, and only valid ones: most digit strings are a possible number somewhere.
    taken_until = 0
    for match in _UK_NATIONAL.finditer(text):
        if match.start() >= taken_until and (span := _longest_number(
                match.group(1), match.start(), "GB", phonenumbers.is_valid_number, _UK_NATIONAL_DIGITS)):
            taken_until = span[1]
            yield span
    for match in _BARE_RUN.finditer(text):
        if _has_phone_cue(text, match.start(), before) and _is_possible_us(match.group()):
            yield match.span()


def redactions(text: str, before: str = "") -> list[Redaction]:
    """The values to mask in `text`, in order; `before` is the preceding turn, read only for cues ("your phone?").

    Rules run from most to least specific and a later rule never takes a span an earlier one holds: e-mail, card
    (Luhn-checked), labelled id ("order ID: ..."), phone, then long numbers and lone ids as [ORDER].
    """
    spans = _Spans()
    if "@" in text:
        for start, end in _emails(text):
            spans.add("EMAIL", start, end)
    if _DIGIT.search(text) is None:
        return spans.items
    cards = list(_cards(text))
    for start, end, valid in cards:
        if valid:
            spans.add("CARD", start, end)
    for match in _LABELLED_ID.finditer(text):
        spans.add("ORDER", *match.span("id"))
    if _PHONE_SHAPED.search(text):
        for start, end in _phones(text, before):
            spans.add("PHONE", start, end)
    # A card-shaped number that fails Luhn is no card, but it is still a long identifier (or a mistyped card).
    for start, end, valid in cards:
        spans.add("ORDER", start, end)
    for match in _DIGIT_RUN.finditer(text):
        spans.add("ORDER", *match.span())
    if not spans.items and _LONE_ID.match(text):
        spans.add("ORDER", len(text) - len(text.lstrip()), len(text.rstrip()))
    return spans.items


def redacted(text: str, before: str = "") -> str:
    """`text` with every e-mail, phone, card and order/account number replaced by [EMAIL], [PHONE], [CARD], [ORDER]."""
    found = redactions(text, before)
    if not found:
        return text
    pieces, last = [], 0
    for item in found:
        pieces += [text[last:item.start], item.placeholder]
        last = item.end
    pieces.append(text[last:])
    return "".join(pieces)


def redacted_conversation(conversation: Conversation) -> Conversation:
    """A copy of the conversation with every turn's text redacted (each turn read with the one before it for cues)."""
    previous = [""] + [turn.text for turn in conversation.turns[:-1]]
    turns = [turn.model_copy(update={"text": redacted(turn.text, before)})
             for turn, before in zip(conversation.turns, previous)]
    return conversation.model_copy(update={"turns": turns})


def _redacted_value(value: Record) -> Record:
    if isinstance(value, str):
        return redacted(value)
    if isinstance(value, dict):
        return {key: _redacted_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted_value(item) for item in value]
    # A number is an id, phone or card as much as its digits are ({"order_id": 3348917502}); none has 20 digits, and
    # str() refuses ints of thousands.
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _LONGEST_NUMBER:
        masked = redacted(str(value))
        return value if masked == str(value) else masked
    return value


def redacted_record(record: Union[dict, str]) -> Union[dict, str]:
    """A raw record (as a dead letter carries it) with every string value redacted, however deeply nested; a string
    holding JSON is parsed, redacted and written back, and any other string is redacted as text."""
    if not isinstance(record, str):
        return _redacted_value(record)
    try:
        parsed = json.loads(record)
    except (ValueError, RecursionError):
        return redacted(record)
    if not isinstance(parsed, (dict, list)):
        return redacted(record)
    return json.dumps(_redacted_value(parsed), ensure_ascii=False)
