"""Labelled redaction cases: values of each kind in many real-world formats, decoys and negatives, set into sentences;
seeded, so the same seed always gives the same set."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

#: Kinds of personal data in a labelled case, and NONE for a negative that must stay as it is.
NONE = "NONE"


@dataclass(frozen=True)
class Gold:
    """One labelled value: its kind and [start, end) span; `group` says which generator made it (for reports)."""

    kind: str
    start: int
    end: int
    group: str


@dataclass
class Case:
    """A text, the text of the turn before it (for cues), and its labelled values."""

    text: str
    gold: list[Gold] = field(default_factory=list)
    before: str = ""


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn check (written here, not taken from the library under
    test, so that the generator is an independent oracle)."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return str((10 - total % 10) % 10)


def passes_luhn(number: str) -> bool:
    return luhn_check_digit(number[:-1]) == number[-1]


#: (network, IIN prefixes, length, grouping when written in groups)
CARD_NETWORKS = (
    ("visa", ("4",), 16, (4, 4, 4, 4)),
    ("visa13", ("4",), 13, (4, 4, 5)),
    ("mastercard", ("51", "52", "53", "54", "55", "2221", "2720"), 16, (4, 4, 4, 4)),
    ("amex", ("34", "37"), 15, (4, 6, 5)),
    ("discover", ("6011", "65"), 16, (4, 4, 4, 4)),
)


def card_digits(rng: random.Random, valid: bool = True) -> tuple[str, str]:
    """(network, digits) of a card number that passes Luhn, or fails it when `valid` is False."""
    network, prefixes, length, _ = rng.choice(CARD_NETWORKS)
    prefix = rng.choice(prefixes)
    payload = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = luhn_check_digit(payload)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return network, payload + check


def written_card(rng: random.Random, digits: str, network: str) -> str:
    """The card number as a customer types it: in its network's groups joined by spaces or dashes, or in one run."""
    grouping = next(g for n, _, _, g in CARD_NETWORKS if n == network)
    separator = rng.choice([" ", "-", ""])
    groups, at = [], 0
    for size in grouping:
        groups.append(digits[at:at + size])
        at += size
    return separator.join(groups)


def card(rng: random.Random, valid: bool = True) -> str:
    network, digits = card_digits(rng, valid)
    return written_card(rng, digits, network)


def _digits(rng: random.Random, count: int, first: str = "0123456789") -> str:
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(count - 1))


def us_phone(rng: random.Random) -> tuple[str, str]:
    """(format name, number) of a North American number in one of the ways people write it."""
    area, exchange, line = _digits(rng, 3, "23456789"), _digits(rng, 3, "23456789"), _digits(rng, 4)
    formats = {
        "us_parens": f"({area}) {exchange}-{line}",
        "us_parens_tight": f"({area}){exchange}-{line}",
        "us_dashes": f"{area}-{exchange}-{line}",
        "us_dots": f"{area}.{exchange}.{line}",
        "us_spaces": f"{area} {exchange} {line}",
        "us_plus1_spaces": f"+1 {area} {exchange} {line}",
        "us_plus1_dashes": f"+1-{area}-{exchange}-{line}",
        "us_1_dashes": f"1-{area}-{exchange}-{line}",
        "us_e164": f"+1{area}{exchange}{line}",
        "us_local": f"{exchange}-{line}",
    }
    name = rng.choice(sorted(formats))
    return name, formats[name]


def uk_phone(rng: random.Random) -> tuple[str, str]:
    """(format name, number) of a UK London or mobile number, national or international."""
    london = f"20 {rng.choice('78')}{_digits(rng, 3)} {_digits(rng, 4)}"
    mobile = f"7{rng.choice('4589')}{_digits(rng, 2)} {_digits(rng, 6)}"
    number = rng.choice([london, mobile])
    if rng.random() < 0.5:
        return "uk_international", f"+44 {number}"
    return "uk_national", f"0{number}"


def other_phone(rng: random.Random) -> tuple[str, str]:
    """(format name, number) of an international number written with its country code."""
    return "international", rng.choice([
        f"+33 1 {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
        f"+49 30 {_digits(rng, 8)}",
        f"+61 2 {_digits(rng, 4, '6789')} {_digits(rng, 4)}",
        f"+91 98{_digits(rng, 3)} {_digits(rng, 5)}",
    ])


def phone(rng: random.Random) -> tuple[str, str]:
    return rng.choice([us_phone, us_phone, us_phone, uk_phone, other_phone])(rng)


def bare_phone(rng: random.Random) -> tuple[str, str]:
    """A US number typed as ten bare digits: a phone only when a cue says so ("call me at ...")."""
    return "us_bare_with_cue", _digits(rng, 3, "23456789") + _digits(rng, 3, "23456789") + _digits(rng, 4)


FIRST = ("john", "maria", "cminh", "aphoenix", "li", "o'brien", "jean-luc", "ana", "x", "dmangen")
LAST = ("smith", "garcia", "wu", "nguyen", "mueller", "okafor", "rossi")
DOMAINS = ("gmail.com", "hotmail.com", "email.com", "mail.example.co.uk", "sub.domain.example.io", "aa.com",
           "century21.ca", "example.org", "my-company.net")


def email(rng: random.Random) -> tuple[str, str]:
    """(format name, address): plain, dotted, plus-addressed, digits, subdomains and upper case."""
    first, last, digits = rng.choice(FIRST), rng.choice(LAST), str(rng.randint(1, 999))
    formats = {
        "plain": f"{first}{digits}",
        "dotted": f"{first}.{last}",
        "plus": f"{first}.{last}+{rng.choice(['airline', 'orders', 'x1'])}",
        "underscore": f"{first}_{last}{digits}",
    }
    name = rng.choice(sorted(formats))
    address = f"{formats[name]}@{rng.choice(DOMAINS)}"
    if rng.random() < 0.2:
        name, address = name + "_upper", address.upper()
    return name, address


def order_id(rng: random.Random) -> tuple[str, str, str]:
    """(format name, template with {v}, id) of an order or account number as customers and agents write it."""
    number = _digits(rng, rng.randint(6, 12))
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(1, 2)))
    code = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(5)) + rng.choice("0123456789")
    choices = [
        ("order_hash_alnum", "order #{v}", f"{letters}{_digits(rng, 5)}"),
        ("order_id_colon", "Order ID: {v}", _digits(rng, 10, "123456789")),
        ("account_number", "account number {v}", number),
        ("acct_abbrev", "acct. {v}", number),
        ("account_id_is", "my account ID is {v}", f"{letters.lower()}{rng.randint(100, 99999)}"),
        ("order_number_dashes", "order number {v}", f"{_digits(rng, 3)}-{_digits(rng, 7)}"),
        ("booking_ref", "booking reference {v}", code),
        ("bare_digits", "{v}", number),
        ("my_order", "my order {v}", number),
    ]
    return rng.choice(choices)


#: Things that look numeric but are no one's personal data; none of them may be masked.
def negative(rng: random.Random) -> tuple[str, str]:
    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(2010, 2026)
    choices = [
        ("date_iso", f"{year}-{month:02d}-{day:02d}"),
        ("date_us", f"{month:02d}/{day:02d}/{year}"),
        ("date_dots", f"{month:02d}.{day:02d}.{year}"),
        ("date_words", f"Feb {day}, {year}"),
        ("date_range", f"{month}/{day}-{month}/{day + 1}"),
        ("time", f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}"),
        ("time_range", f"{rng.randint(1, 11)}:{rng.randint(0, 59):02d} - "
                       f"{rng.randint(12, 23)}:{rng.randint(0, 59):02d}"),
        ("time_am", f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}am"),
        ("price", f"${rng.randint(1, 999)}.{rng.randint(0, 99):02d}"),
        ("price_thousands", f"${rng.randint(1, 99)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}"),
        ("price_big", f"${rng.randint(1, 9)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}"),
        ("flight_ua", f"UA {rng.randint(1, 9999)}"),
        ("flight_word", f"flight {rng.randint(1, 9999)}"),
        ("flight_hash", f"flight #{rng.randint(1, 9999)}"),
        ("flight_code", f"AA{rng.randint(1, 9999)}"),
        ("percent", f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%"),
        ("zip", f"{rng.randint(10000, 99999)}"),
        ("zip_plus4", f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}"),
        ("aircraft", rng.choice(["737-800", "777-200ER", "B767-400", "A320"])),
        ("seat", f"seat {rng.randint(1, 40)}{rng.choice('ABCDEF')}"),
        ("miles", f"{rng.randint(100, 999)},{rng.randint(0, 999):03d} miles"),
        ("count", f"{rng.randint(2, 500)} passengers"),
        ("year", f"{year}"),
        ("duration", f"{rng.randint(1, 9)}hrs {rng.randint(1, 59)}min"),
    ]
    return rng.choice(choices)


PHONE_TEMPLATES = ("call me at {v}", "my number is {v}", "{v}", "reach me on {v}", "phone: {v}", "text {v} please",
                   "({v})")
BARE_PHONE_TEMPLATES = ("call me at {v}", "my phone number is {v}", "please call {v}", "cell {v}")
EMAIL_TEMPLATES = ("email me at {v}", "{v}", "my email is {v}", "contact: {v}.", "<{v}>", "send it to {v}, thanks")
CARD_TEMPLATES = ("my card is {v}", "card number {v}", "{v}", "charged to {v} twice", "cc: {v}.")
NEGATIVE_TEMPLATES = ("on {v}", "{v}", "it was {v}", "about {v}.")


#: What could hide unlabelled personal data in a tweet: an e-mail-like '@' (an @mention starts a word), a token mixing
#: letters and digits (a booking code, but also a flight number), or a word that introduces an id.
POSSIBLY_PERSONAL = re.compile(r"[^\s@]@[^\s@]|\b(?=[A-Za-z]*\d)(?=\d*[A-Za-z])\w{4,}|\b(?:conf\w*|locator|pnr|res"
                               r"|reservation|booking|ticket|order|account|acct|case|claim|ref\w*|id|number|tag)\b",
                               re.IGNORECASE)


def carrier_sentences(tweets: list[str]) -> list[str]:
    """Tweets that can carry an inserted value and still be labelled without reading them: fewer than six digits and
    nothing POSSIBLY_PERSONAL (numeric look-alikes come from the negative generator instead)."""
    return [t for t in tweets if len(re.findall(r"\d", t)) < 6 and not POSSIBLY_PERSONAL.search(t)]


def inserted(rng: random.Random, sentence: str, phrase: str) -> tuple[str, int]:
    """`phrase` set between two words of `sentence` (or at an end); (text, offset of the phrase)."""
    words = sentence.split(" ")
    at = rng.randint(0, len(words))
    head, tail = " ".join(words[:at]), " ".join(words[at:])
    text = (head + " " if head else "") + phrase + (" " + tail if tail else "")
    return text, len(head) + 1 if head else 0


def placed(rng: random.Random, sentences: list[str], template: str, value: str, kind: str, group: str) -> Case:
    phrase = template.format(v=value)
    text, offset = inserted(rng, rng.choice(sentences), phrase)
    start = offset + phrase.index(value)
    return Case(text, [Gold(kind, start, start + len(value), group)])


def generated_cases(tweets: list[str], seed: int, per_kind: int) -> list[Case]:
    """`per_kind` cases each of phones, bare phones with a cue, e-mails, cards, Luhn-failing card decoys (labelled
    [ORDER]: a long number, and maybe a mistyped card), order/account numbers and negatives, plus cases holding
    several kinds at once."""
    rng = random.Random(seed)
    sentences = carrier_sentences(tweets)
    cases = []
    for _ in range(per_kind):
        name, value = phone(rng)
        cases.append(placed(rng, sentences, rng.choice(PHONE_TEMPLATES), value, "PHONE", name))
        name, value = bare_phone(rng)
        cases.append(placed(rng, sentences, rng.choice(BARE_PHONE_TEMPLATES), value, "PHONE", name))
        name, value = email(rng)
        cases.append(placed(rng, sentences, rng.choice(EMAIL_TEMPLATES), value, "EMAIL", name))
        network, digits = card_digits(rng)
        cases.append(placed(rng, sentences, rng.choice(CARD_TEMPLATES), written_card(rng, digits, network), "CARD",
                            network))
        network, digits = card_digits(rng, valid=False)
        cases.append(placed(rng, sentences, rng.choice(CARD_TEMPLATES), written_card(rng, digits, network), "ORDER",
                            "luhn_decoy"))
        name, template, value = order_id(rng)
        cases.append(placed(rng, sentences, template, value, "ORDER", name))
        name, value = negative(rng)
        cases.append(placed(rng, sentences, rng.choice(NEGATIVE_TEMPLATES), value, NONE, name))
        cases.append(several_kinds(rng, sentences))
    return cases


def several_kinds(rng: random.Random, sentences: list[str]) -> Case:
    """One sentence carrying an e-mail, a formatted phone, a card, an order id and a negative, in shuffled order."""
    parts = [("EMAIL", "mixed", email(rng)[1]), ("PHONE", "mixed", us_phone(rng)[1]),
             ("CARD", "mixed", card(rng)), ("ORDER", "mixed", f"A{_digits(rng, 6)}"), (NONE, "mixed", negative(rng)[1])]
    rng.shuffle(parts)
    labels = {"EMAIL": "email {v}", "PHONE": "phone {v}", "CARD": "card {v}", "ORDER": "order #{v}", NONE: "on {v}"}
    text, gold = rng.choice(sentences), []
    for kind, group, value in parts:
        phrase = labels[kind].format(v=value)
        start = len(text) + 1 + phrase.index(value)
        text = f"{text} {phrase},"
        gold.append(Gold(kind, start, start + len(value), group))
    return Case(text, gold)


def abcd_cases(records: list[dict]) -> list[Case]:
    """Every spoken ABCD turn (actions are system events and are left out, as the ABCD adapter does) labelled with
    the scenario's known values wherever they occur: e-mail, phone, order id, and the username as an account id."""
    cases = []
    for record in records:
        personal, order = record["scenario"].get("personal", {}), record["scenario"].get("order", {})
        phone_digits = re.sub(r"\D", "", personal.get("phone") or "")
        known = [("EMAIL", personal.get("email")), ("PHONE", personal.get("phone")), ("PHONE", phone_digits),
                 ("ORDER", order.get("order_id")), ("ORDER", personal.get("username"))]
        spoken = [(speaker, text) for speaker, text in record["original"] if speaker != "action"]
        for position, (_, text) in enumerate(spoken):
            before = spoken[position - 1][1] if position else ""
            cases.append(Case(text, located(text, [(k, v) for k, v in known if v]), before))
    return cases


def located(text: str, known: list[tuple[str, str]]) -> list[Gold]:
    """Spans of the known values in `text` (case-insensitive, whole words); a value inside a longer one already
    labelled (the username inside the e-mail address) is part of that one."""
    gold: list[Gold] = []
    for kind, value in sorted(known, key=lambda kv: -len(kv[1])):
        for match in re.finditer(rf"(?<![\w.]){re.escape(value)}(?![\w])", text, re.IGNORECASE):
            if all(match.end() <= g.start or match.start() >= g.end for g in gold):
                gold.append(Gold(kind, match.start(), match.end(), f"abcd_{kind.lower()}"))
    return sorted(gold, key=lambda g: g.start)
