"""Adapters from public formats (airline tweets, EPITOME pairs, ABCD chats) and labelled transcripts to training tables."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import (
    LEVELS, MECHANISMS, SENTIMENTS, SYNTHETIC_TEXT, ContractError, Conversation, Turn, plain_column,
)
from carelens.data.paths import plain_file
from carelens.data.readers import (
    Keys, conversation_from_record, csv_columns, field_at, parsed_json, read_table, read_transcripts, shown,
)
from carelens.data.spreadsheet import restored

PathLike = Union[str, Path]
EMPATHY_COLUMNS = ["context", "response", *MECHANISMS]
#: EPITOME's rationales per mechanism: the '|'-separated parts of the response that show the level (missing where
#: the mechanism was not annotated, empty where the level is 0).
RATIONALE_COLUMNS = [f"rationale_{m}" for m in MECHANISMS]
#: What labelled text is, beside SYNTHETIC_TEXT: written by people, or a mix of both kinds.
REAL_TEXT, MIXED_TEXT = "real", "mixed"
_MECHANISM_IN_NAME = re.compile("|".join(MECHANISMS))


def _require_columns(frame: pd.DataFrame, needed: Sequence[str], source: str, what: str) -> None:
    """Raise ContractError naming the first missing column and what the format needs."""
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ContractError(source, f"missing column(s) {', '.join(missing)}; {what} need {', '.join(needed)} "
                                    f"(found {', '.join(map(str, frame.columns))})", column=missing[0])


def _first_bad_row(bad: pd.Series, values: pd.Series, source: str, column: str, expected: str,
                   rows: Optional[pd.Series] = None) -> None:
    """Raise ContractError for the first flagged row, numbered as an editor shows a CSV (header = row 1) or, for a
    table some of whose rows were skipped, as `rows` says."""
    if bad.any():
        position = int(bad.to_numpy().nonzero()[0][0])
        more = f" ({int(bad.sum()) - 1} more bad row(s))" if bad.sum() > 1 else ""
        raise ContractError(source, f"got {values.iloc[position]!r}, expected {expected}{more}",
                            row=position + 2 if rows is None else int(rows.iloc[position]), column=column)


def _plain(frame: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    """The named columns with one plain value per cell; ContractError naming the first nested value or non-UTF-8
    text (read_table has already refused a repeated column)."""
    frame = frame.copy()
    for column in columns:
        frame[column], problems = plain_column(frame[column])
        _first_bad_row(problems != "", problems, source, column, "a single UTF-8 value")
    return frame


def _texts(values: pd.Series, source: str, column: str) -> pd.Series:
    """A text column with every value present and not blank."""
    blank = values.isna() | (values.astype("string").str.strip() == "")
    _first_bad_row(blank.fillna(True).astype(bool), values, source, column, "non-empty text")
    return values.astype(str)


def read_airline_tweets(path: PathLike) -> pd.DataFrame:
    """Airline tweets (columns text, label) as a sentiment table `text, label` with labels negative/neutral/positive."""
    frame = read_table(path)
    source = str(path)
    _require_columns(frame, ["text", "label"], source, "airline tweet files")
    frame = _plain(frame, ["text", "label"], source)
    labels = frame["label"].astype("string").str.strip().str.lower()
    _first_bad_row(~labels.isin(SENTIMENTS).fillna(False).astype(bool), frame["label"], source, "label",
                   f"one of {', '.join(SENTIMENTS)}")
    return pd.DataFrame({"text": _texts(frame["text"], source, "text"), "label": labels.astype(str)})


def mechanism_of(path: PathLike) -> Optional[str]:
    """The EPITOME mechanism a file name declares (epitome_<mechanism>_train.csv), or None."""
    found = _MECHANISM_IN_NAME.search(Path(path).name)
    return found.group(0) if found else None


def read_epitome(path: PathLike, mechanism: Optional[str] = None) -> pd.DataFrame:
    """One EPITOME CSV (seeker_post, response_post, level) as rows `sp_id, rp_id, context, response, mechanism, level`.

    The mechanism comes from `mechanism`, else a `mechanism` column, else the file name.
    """
    frame = read_table(path)
    source = str(path)
    _require_columns(frame, ["seeker_post", "response_post", "level"], source, "EPITOME files")
    frame = _plain(frame, [c for c in ("seeker_post", "response_post", "level", "mechanism", "sp_id", "rp_id",
                                       "rationales") if c in frame.columns], source)
    named = mechanism or mechanism_of(path)
    if named is None and "mechanism" not in frame.columns:
        raise ContractError(source, f"cannot tell the empathy mechanism: name the file epitome_<mechanism>_*.csv or add "
                                    f"a 'mechanism' column, with <mechanism> one of {', '.join(MECHANISMS)}")
    mechanisms = pd.Series(named, index=frame.index) if named else frame["mechanism"].astype("string").str.strip()
    _first_bad_row(~mechanisms.isin(MECHANISMS).fillna(False).astype(bool), mechanisms, source, "mechanism",
                   f"one of {', '.join(MECHANISMS)}")
    levels = pd.to_numeric(frame["level"], errors="coerce")
    _first_bad_row(~levels.isin(LEVELS).fillna(False).astype(bool), frame["level"], source, "level", "0, 1 or 2")
    responses = _texts(frame["response_post"], source, "response_post")
    return pd.DataFrame({
        "sp_id": frame["sp_id"].astype(str) if "sp_id" in frame.columns else frame.index.astype(str),
        "rp_id": frame["rp_id"].astype(str) if "rp_id" in frame.columns else responses,
        "context": frame["seeker_post"].fillna("").astype(str),
        "response": responses,
        "mechanism": mechanisms.astype(str),
        "level": levels.astype(int),
        "rationale": (frame["rationales"].fillna("").astype(str) if "rationales" in frame.columns
                      else pd.Series("", index=frame.index)),
    })


def empathy_pairs(long: pd.DataFrame) -> pd.DataFrame:
    """EPITOME rows (one per pair and mechanism) as one row per (seeker, response) pair with a level and a rationale
    column per mechanism (missing where that mechanism was not annotated), so that the encoder reads each pair once."""
    first = long.drop_duplicates(["sp_id", "rp_id", "mechanism"], keep="first")
    if "rationale" not in first.columns:
        first = first.assign(rationale="")
    levels = first.pivot(index=["sp_id", "rp_id"], columns="mechanism", values="level")
    rationales = first.pivot(index=["sp_id", "rp_id"], columns="mechanism", values="rationale")
    texts = first.drop_duplicates(["sp_id", "rp_id"]).set_index(["sp_id", "rp_id"])[["context", "response"]]
    joined = texts.join(levels.reindex(columns=list(MECHANISMS))).join(
        rationales.reindex(columns=list(MECHANISMS)).add_prefix("rationale_"))
    for mechanism in MECHANISMS:
        joined[mechanism] = joined[mechanism].astype("Int64")
    return joined.reset_index(drop=True)[EMPATHY_COLUMNS + RATIONALE_COLUMNS]


def read_empathy_files(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Several EPITOME CSVs merged into one row per (seeker, response) pair."""
    return empathy_pairs(pd.concat([read_epitome(p) for p in paths], ignore_index=True))


def _customer_context(turns: Sequence, index: int) -> str:
    """The text of the last non-blank customer turn before turn `index`: the message an agent turn answers."""
    return next((t.text for t in reversed(turns[:index]) if t.speaker == "customer" and t.text.strip()), "")


def answered_customer_texts(conversation: Conversation) -> list[str]:
    """For each turn, the customer turn it answers (empty for customer turns and for agent turns before any)."""
    return [_customer_context(conversation.turns, i) if t.speaker == "agent" else ""
            for i, t in enumerate(conversation.turns)]


def _empathy_levels(turn, source: str, where: str) -> dict:
    """An agent turn's `empathy` labels as {mechanism: level}, or ContractError when a level is not 0, 1 or 2."""
    labels = turn.empathy
    if not isinstance(labels, dict):
        raise ContractError(source, f"{where}: 'empathy' must be an object of {', '.join(MECHANISMS)}, got {labels!r}")
    levels = {}
    for mechanism in MECHANISMS:
        level = labels.get(mechanism)
        if level is not None and level not in LEVELS:
            raise ContractError(source, f"{where}: empathy '{mechanism}' is {level!r}, expected 0, 1 or 2")
        levels[mechanism] = level
    return levels


def labelled_turns(conversations: Sequence[Conversation], source: str = "transcripts") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sentiment table, empathy table) from the customer turns that carry `sentiment` and the agent turns that carry
    `empathy`; each agent turn is paired with the customer turn it answers."""
    sentiment, empathy = [], []
    for conversation in conversations:
        contexts = answered_customer_texts(conversation)
        for index, turn in enumerate(conversation.turns):
            where = f"conversation {conversation.conversation_id}, turn {index}"
            label = getattr(turn, "sentiment", None)
            if turn.speaker == "customer" and label is not None:
                if label not in SENTIMENTS:
                    raise ContractError(source, f"{where}: sentiment {label!r}, expected one of {', '.join(SENTIMENTS)}")
                sentiment.append({"text": turn.text, "label": label})
            if turn.speaker == "agent" and getattr(turn, "empathy", None) is not None:
                empathy.append({"context": contexts[index], "response": turn.text,
                                **_empathy_levels(turn, source, where)})
    empathy_frame = pd.DataFrame(empathy, columns=EMPATHY_COLUMNS)
    for mechanism in MECHANISMS:
        empathy_frame[mechanism] = empathy_frame[mechanism].astype("Int64")
    return pd.DataFrame(sentiment, columns=["text", "label"]), empathy_frame


#: Where an ABCD record keeps the contract's keys: a chat is one contact, so its convo_id is the conversation, the
#: contact and (ABCD has no customer number) the customer; `keys` maps any of them elsewhere.
ABCD_KEYS = {"conversation_id": "convo_id", "customer_id": "convo_id", "contact_id": "convo_id"}


def abcd_conversation(record: dict, source: str = "abcd", line_no: Optional[int] = None,
                      keys: Optional[Keys] = None) -> Conversation:
    """One ABCD record (`original`: [speaker, text] pairs) as a Conversation, its keys read where ABCD_KEYS (updated
    by `keys`) says; `action` lines are system events, not speech, so they are left out."""
    if not isinstance(record, dict) or not isinstance(record.get("original"), list):
        raise ContractError(source, "expected an ABCD record with an 'original' list of [speaker, text] pairs",
                            row=line_no, column="original", unit="entry")
    turns = []
    for position, entry in enumerate(record["original"]):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise ContractError(source, f"original[{position}] is {shown(entry)}, expected [speaker, text]",
                                row=line_no, column="original", unit="entry")
        if entry[0] != "action":
            turns.append({"speaker": entry[0], "text": entry[1]})
    found = {key: field_at(record, path) for key, path in {**ABCD_KEYS, **(keys or {})}.items()}
    # A record without a convo_id is still a chat: it is known by its place in the file.
    identifier = found["conversation_id"] if found["conversation_id"] is not None else line_no
    return conversation_from_record({"conversation_id": identifier, "channel": "chat", "turns": turns,
                                     "customer_id": found["customer_id"] if found["customer_id"] is not None
                                     else identifier,
                                     **({"contact_id": found["contact_id"]} if found["contact_id"] is not None else {})},
                                    source, line_no, unit="entry")


def read_abcd(path: PathLike, keys: Optional[Keys] = None) -> list[Conversation]:
    """An ABCD JSON file (a list of records) as Conversations."""
    path = plain_file(path)
    try:
        records = parsed_json(path.read_text(encoding="utf-8"), str(path), None)
    except UnicodeDecodeError as exc:
        raise ContractError(str(path), f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ContractError(str(path), f"expected a JSON list of ABCD records, got {type(records).__name__}")
    return [abcd_conversation(r, str(path), i + 1, keys) for i, r in enumerate(records)]


def read_conversations(path: PathLike, keys: Optional[Keys] = None) -> list[Conversation]:
    """The conversations of a transcript file in any format the toolkit reads: ABCD JSON (`.json`, a list of chats),
    or the contract's JSON Lines / long-form Parquet; their contract keys read from the fields `keys` names."""
    return read_abcd(path, keys) if Path(path).suffix.lower() == ".json" else read_transcripts(path, keys)


#: The columns a person fills in: a sentiment for customer turns, a level per mechanism for agent turns.
LABEL_COLUMNS = ["sentiment", *MECHANISMS]
#: The columns `carelens label suggest` writes that training reads: the turn, and its labels.
SUGGESTED_COLUMNS = ["speaker", "context", "text", *LABEL_COLUMNS]


def _is_suggested(path: Path) -> bool:
    """Whether a CSV is a `carelens label suggest` file (it has speaker, text and the label columns)."""
    return path.stat().st_size > 0 and set(SUGGESTED_COLUMNS) <= set(csv_columns(path))


def check_suggested(path: PathLike) -> None:
    """ContractError naming the file and the missing columns unless it has the columns of a label file, before
    anything is trained (a `--labels` file read as another kind would be refused with that kind's columns)."""
    if Path(path).suffix.lower() != ".csv":
        raise ContractError(str(path), "expected a CSV file (.csv) written by `carelens label suggest` and filled in")
    _require_columns(pd.DataFrame(columns=csv_columns(path)), SUGGESTED_COLUMNS, str(path),
                     "label files from `carelens label suggest`")


#: Where a label file's turn was read: the file and its row as an editor numbers it (header = row 1).
_SOURCE, _ROW = "_source", "_row"


def _blank(values: pd.Series) -> pd.Series:
    return (values.isna() | (values.astype("string").str.strip() == "")).fillna(True).astype(bool)


def suggested_rows(path: PathLike) -> pd.DataFrame:
    """The labelled rows of a filled-in `carelens label suggest` CSV, checked: speaker, context and text (as said:
    the guard `label suggest` put before formula-like cells taken off), the sentiment or NA, each mechanism's level
    or NA, and where each row was read. Rows without a label are skipped, and so are wholly blank rows (a spreadsheet
    writes the rows a person cleared as commas); a labelled row without text is refused."""
    source = str(path)
    frame = read_table(path)
    _require_columns(frame, SUGGESTED_COLUMNS, source, "label files from `carelens label suggest`")
    frame = _plain(frame, SUGGESTED_COLUMNS, source).assign(**{_SOURCE: source, _ROW: np.arange(len(frame)) + 2})
    frame = frame[~pd.concat([_blank(frame[c]) for c in SUGGESTED_COLUMNS], axis=1).all(axis=1)]
    speaker = frame["speaker"].astype("string").str.strip()
    _first_bad_row(~speaker.isin(["customer", "agent"]).fillna(False).astype(bool), frame["speaker"], source,
                   "speaker", "customer or agent", frame[_ROW])
    sentiment = frame["sentiment"].astype("string").str.strip().str.lower().replace("", pd.NA)
    _first_bad_row((sentiment.notna() & ~sentiment.isin(SENTIMENTS)).fillna(False).astype(bool) |
                   (sentiment.notna() & (speaker == "agent")).fillna(False).astype(bool), frame["sentiment"], source,
                   "sentiment", f"one of {', '.join(SENTIMENTS)} on a customer turn, or blank", frame[_ROW])
    levels = {}
    for mechanism in MECHANISMS:
        text = frame[mechanism].astype("string").str.strip().replace("", pd.NA)
        bad = (text.notna() & (~text.isin([str(level) for level in LEVELS]) | (speaker == "customer")))
        _first_bad_row(bad.fillna(False).astype(bool), frame[mechanism], source, mechanism,
                       "0, 1 or 2 on an agent turn, or blank", frame[_ROW])
        levels[mechanism] = pd.to_numeric(text).astype("Int64")
    labelled = (sentiment.notna() | pd.DataFrame(levels).notna().any(axis=1)).to_numpy()
    _first_bad_row(_blank(frame["text"]) & labelled, frame["text"], source, "text", "non-empty text on a labelled turn",
                   frame[_ROW])
    # `label suggest` wrote the turns with formula-like cells guarded (a leading '): read them back as they were said.
    return pd.DataFrame({"speaker": speaker, "context": frame["context"].astype("string").fillna("").map(restored),
                         "text": frame["text"].astype("string").fillna("").map(restored), "sentiment": sentiment,
                         **levels, _SOURCE: frame[_SOURCE], _ROW: frame[_ROW]})[labelled].reset_index(drop=True)


def _once_each(rows: pd.DataFrame) -> pd.DataFrame:
    """Label rows with each turn (speaker, context, text) once: a repeat with the same labels (a file given twice, a
    row copied) is dropped, so that it neither weighs double nor lands in both the train and the test split; a repeat
    with other labels is refused, naming both rows and the first label they differ in."""
    turn = ["speaker", "context", "text"]
    labels = rows[LABEL_COLUMNS].astype("string").fillna("")
    first = rows.assign(**labels).groupby(turn, sort=False).transform("first")
    for column in LABEL_COLUMNS:
        differs = (labels[column] != first[column]).to_numpy()
        if differs.any():
            at = int(differs.nonzero()[0][0])
            earlier = first.iloc[at]
            raise ContractError(rows[_SOURCE].iloc[at],
                                f"got {labels[column].iloc[at] or 'blank'!r}, but row {earlier[_ROW]} of "
                                f"{earlier[_SOURCE]} labels the same turn {earlier[column] or 'blank'!r}; expected "
                                f"one label per turn", row=int(rows[_ROW].iloc[at]), column=column)
    return rows.drop_duplicates(turn).reset_index(drop=True)


def suggested_tables(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sentiment table, empathy table) of checked label rows: customer turns with a sentiment, agent turns with at
    least one mechanism level (the others unannotated)."""
    rated = rows["sentiment"].notna().to_numpy()
    leveled = rows[list(MECHANISMS)].notna().any(axis=1).to_numpy()
    return (pd.DataFrame({"text": rows["text"][rated].astype(str).to_numpy(),
                          "label": rows["sentiment"][rated].astype(str).to_numpy()}),
            pd.DataFrame({"context": rows["context"][leveled].astype(str).to_numpy(),
                          "response": rows["text"][leveled].astype(str).to_numpy(),
                          **{m: rows[m][leveled].to_numpy() for m in MECHANISMS}}).astype({m: "Int64" for m in MECHANISMS}))


def read_suggested(path: PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sentiment table, empathy table) from a filled-in `carelens label suggest` CSV (`suggested_rows`), each turn
    once (`_once_each`)."""
    return suggested_tables(_once_each(suggested_rows(path)))


def _is_epitome(path: Path) -> bool:
    """Whether a CSV holds EPITOME pairs (it has a seeker_post column) rather than sentiment-labelled texts."""
    return path.stat().st_size > 0 and "seeker_post" in csv_columns(path)


@dataclass(frozen=True)
class LabelledText:
    """The sentiment and empathy training tables, and what text their rows were read from."""

    sentiment: pd.DataFrame
    empathy: pd.DataFrame
    #: SYNTHETIC_TEXT when every row came from generator conversations, REAL_TEXT when none did, MIXED_TEXT for
    #: both; None without rows.
    text: Optional[str]
    #: Whether every row came from the public CSVs (airline tweets, EPITOME): only their text may be shown in reports,
    #: since contract transcripts may hold customers' words.
    public: bool = False


def _carries_label(turn: Turn) -> bool:
    return (turn.speaker == "customer" and getattr(turn, "sentiment", None) is not None) or \
        (turn.speaker == "agent" and getattr(turn, "empathy", None) is not None)


def labelled_text_sources(conversations: Sequence[Conversation]) -> set[str]:
    """SYNTHETIC_TEXT and/or REAL_TEXT: what the conversations that carry a turn label were, by their `text_source`."""
    return {SYNTHETIC_TEXT if getattr(c, "text_source", None) == SYNTHETIC_TEXT else REAL_TEXT
            for c in conversations if any(map(_carries_label, c.turns))}


def text_kind(sources: set[str]) -> Optional[str]:
    """One word for a set of text sources: the source itself when there is one, MIXED_TEXT for several."""
    return None if not sources else next(iter(sources)) if len(sources) == 1 else MIXED_TEXT


def read_labelled_text(paths: Iterable[PathLike]) -> LabelledText:
    """The sentiment and empathy tables from any mix of airline tweet CSVs, EPITOME CSVs and labelled transcripts
    (a directory stands for the CSV and JSONL files inside it), whether their text is synthetic or real, and whether
    it is all the public CSVs'."""
    files = sorted(f for p in map(Path, paths) for f in ([p] if not p.is_dir() else
                   [c for c in p.iterdir() if c.suffix.lower() in (".csv", ".jsonl", ".parquet")]))
    sentiment, epitome, turns, suggested, sources = [], [], [], [], set()
    for path in files:
        if path.suffix.lower() == ".csv" and _is_epitome(path):
            epitome.append(read_epitome(path))
        elif path.suffix.lower() == ".csv" and _is_suggested(path):
            suggested.append(suggested_rows(path))
        elif path.suffix.lower() == ".csv":
            sentiment.append(read_airline_tweets(path))
        else:
            conversations = read_transcripts(path)
            turns.append(labelled_turns(conversations, str(path)))
            sources |= labelled_text_sources(conversations)
    if suggested:
        # Label files are checked together: one turn labelled in two of them must agree, and counts once.
        turns.append(suggested_tables(_once_each(pd.concat(suggested, ignore_index=True))))
        sources.add(REAL_TEXT)
    if any(len(f) for f in [*sentiment, *epitome]):
        # The public CSVs (airline tweets, EPITOME) hold text people wrote.
        sources.add(REAL_TEXT)
    empathy = [empathy_pairs(pd.concat(epitome, ignore_index=True))] if epitome else []
    sentiment += [s for s, _ in turns]
    empathy += [e for _, e in turns]
    public = not any(len(s) or len(e) for s, e in turns)
    return LabelledText(_concat(sentiment, ["text", "label"]), _concat(empathy, EMPATHY_COLUMNS), text_kind(sources),
                        public)


def read_labelled(paths: Iterable[PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sentiment table, empathy table) from any mix of airline tweet CSVs, EPITOME CSVs and labelled transcripts;
    a directory stands for the CSV and JSONL files inside it."""
    labelled = read_labelled_text(paths)
    return labelled.sentiment, labelled.empathy


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
