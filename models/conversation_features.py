"""Turn-level transcript scores rolled up, by group, into the per-conversation features the risk models take."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from carelens.data.contracts import MECHANISMS, Column, TableContract

KEYS = ["conversation_id", "customer_id", "contact_id"]
#: Who answered the conversation (the transcripts contract's optional `agent_id`), written beside the features.
AGENT = "agent_id"
#: Why the customer came: the call driver of their opening turn (`carelens train drivers`), when drivers are fitted.
DRIVER = "driver"
#: The turns a conversation feature stands on, as JSON text: `EVIDENCE_TURNS` name → {turn, speaker, quote, score}.
EVIDENCE = "evidence"
#: Each conversation's place in the batch it was scored in: turns roll up by it, not by conversation_id, so two
#: conversations that share an id (a client's bug) keep their own features whatever the batch boundaries.
POSITION = "position"
#: Turn-score columns per EPITOME mechanism: its expected level (0 none … 2 strong) and whether its decided level is
#: above none (the same decision that makes a turn `empathic`).
EMPATHY_LEVEL_COLUMNS = [f"{m}_level" for m in MECHANISMS]
EMPATHY_PRESENT_COLUMNS = [f"{m}_present" for m in MECHANISMS]
SENTIMENT_FEATURES = ["customer_sentiment_start", "customer_sentiment_end", "customer_sentiment_shift",
                      "customer_sentiment_mean", "customer_sentiment_slope", "customer_sentiment_worst"]
EMPATHY_FEATURES = ["agent_empathy_mean", "agent_empathy_min", "agent_empathic_share"]
#: Per mechanism: the agent's mean expected level and the share of agent turns where it is present.
MECHANISM_FEATURES = {m: [f"agent_{m}_mean", f"agent_{m}_share"] for m in MECHANISMS}
#: The turn-score column each mechanism feature averages over the agent's turns.
MECHANISM_AVERAGED = {f"{m}_{column}": f"agent_{m}_{feature}" for m in MECHANISMS
                      for column, feature in (("level", "mean"), ("present", "share"))}
TIMING_FEATURES = ["non_talk_s", "non_talk_share", "interruptions", "agent_interruptions"]
#: How long the conversation was, in turns: written with the features, but no risk model reads them, since their
#: scale is the channel's and the transcript source's, not the customer's (a generated chat has 2–5 customer turns,
#: a real ABCD chat 13 or more, and a model fitted on the one read the other as off its scale: a calm chat that ended
#: in thanks was given retaliation risk 0.98, 0.45 without them; held-out ROC-AUC on generated data moved by 0.002).
COUNT_FEATURES = ["customer_turns", "agent_turns"]
#: The conversation features the risk models read, by what they measure, each feature in one group: training reports
#: what each group adds to held-out ROC-AUC, so that a centre sees whether, say, the agent's interpretations matter in
#: its own data.
FEATURE_GROUPS = {
    "customer sentiment": SENTIMENT_FEATURES,
    "agent empathy (combined)": EMPATHY_FEATURES,
    **{f"agent {m.replace('_', ' ')}": features for m, features in MECHANISM_FEATURES.items()},
    "timing": TIMING_FEATURES,
}
#: Every conversation feature written per conversation.
FEATURE_COLUMNS = [*(feature for features in FEATURE_GROUPS.values() for feature in features), *COUNT_FEATURES]
#: Features a caller scored earlier and hands back (`Scorer.flag_at_risk(transcript_features=...)`): each feature a
#: finite number or missing (not measurable), joined to contacts on contact_id (a row without one joins nothing).
TRANSCRIPT_FEATURES = TableContract(
    name="transcript features",
    columns=(Column("contact_id", "id", nullable=True), *(Column(name, "float", nullable=True)
                                                         for name in FEATURE_COLUMNS)),
)


def least_squares_slopes(x: pd.Series, y: pd.Series, groups: pd.Series) -> pd.Series:
    """Per group, the least-squares slope of y on x; 0 where x does not vary (a single point shows no change)."""
    dx = x - x.groupby(groups).transform("mean")
    dy = y - y.groupby(groups).transform("mean")
    sums = pd.DataFrame({"xy": dx * dy, "xx": dx * dx}).groupby(groups, sort=False).sum()
    return (sums["xy"] / sums["xx"].where(sums["xx"] > 0)).fillna(0.0)


def sentiment_features(turns: pd.DataFrame) -> pd.DataFrame:
    """Per conversation, over its scored customer turns: the first and last turn's sentiment, the shift between them,
    the mean, the worst (lowest) turn, and the slope per customer turn (least squares over the customer turns' order,
    0 for a single turn, whose shift is 0 too)."""
    scored = turns[(turns["speaker"] == "customer") & turns["sentiment"].notna()].sort_values("turn_index")
    grouped = scored.groupby(POSITION, sort=False)["sentiment"]
    order = grouped.cumcount().astype(float)
    out = pd.DataFrame({"customer_sentiment_start": grouped.first(), "customer_sentiment_end": grouped.last(),
                        "customer_sentiment_mean": grouped.mean(), "customer_sentiment_worst": grouped.min(),
                        "customer_sentiment_slope": least_squares_slopes(order, scored["sentiment"], scored[POSITION]),
                        "customer_turns": grouped.size()})
    out["customer_sentiment_shift"] = out["customer_sentiment_end"] - out["customer_sentiment_start"]
    return out


def empathy_features(turns: pd.DataFrame) -> pd.DataFrame:
    """Per conversation: the agent's mean and lowest empathy score, the share of agent turns judged empathic, and per
    mechanism the mean expected level and the share of agent turns where it is present."""
    scored = turns[(turns["speaker"] == "agent") & turns["empathy"].notna()]
    grouped = scored.groupby(POSITION, sort=False)
    mechanisms = grouped[list(MECHANISM_AVERAGED)].mean().astype(float).rename(columns=MECHANISM_AVERAGED)
    combined = pd.DataFrame({"agent_empathy_mean": grouped["empathy"].mean(),
                             "agent_empathy_min": grouped["empathy"].min(),
                             "agent_empathic_share": grouped["empathic"].mean().astype(float),
                             "agent_turns": grouped.size()})
    return combined.join(mechanisms)


def covered_seconds(starts: np.ndarray, ends: np.ndarray) -> float:
    """Seconds during which at least one turn is being spoken (the union of the turn intervals)."""
    order = np.argsort(starts, kind="stable")
    covered, reach = 0.0, -np.inf
    for start, end in zip(starts[order], ends[order]):
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return covered


def interrupting_turns(starts: np.ndarray, ends: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """For each turn, whether it starts while an earlier turn by the other speaker is still going on."""
    order = np.argsort(starts, kind="stable")
    interrupts = np.zeros(len(starts), dtype=bool)
    speaking_until = {"agent": -np.inf, "customer": -np.inf}
    for i in order:
        other = "customer" if speakers[i] == "agent" else "agent"
        interrupts[i] = starts[i] < speaking_until[other]
        speaking_until[speakers[i]] = max(speaking_until[speakers[i]], ends[i])
    return interrupts


def _timing_row(turns: pd.DataFrame) -> pd.Series:
    """Non-talk time, its share of the conversation span, and interruptions for one conversation's timed turns."""
    starts, ends = turns["start_s"].to_numpy(float), turns["end_s"].to_numpy(float)
    span = ends.max() - starts.min()
    silent = max(0.0, span - covered_seconds(starts, ends))
    interrupts = interrupting_turns(starts, ends, turns["speaker"].to_numpy())
    return pd.Series({"non_talk_s": silent, "non_talk_share": silent / span if span > 0 else 0.0,
                      "interruptions": float(interrupts.sum()),
                      "agent_interruptions": float((interrupts & (turns["speaker"] == "agent").to_numpy()).sum())})


def timing_features(turns: pd.DataFrame) -> pd.DataFrame:
    """Per conversation with timestamps (turns carrying start_s and end_s, end after start): timing features."""
    timed = turns[turns["start_s"].notna() & turns["end_s"].notna() & (turns["end_s"] >= turns["start_s"])]
    if timed.empty:
        return pd.DataFrame(columns=TIMING_FEATURES, dtype=float)
    return timed.groupby(POSITION, sort=False)[["start_s", "end_s", "speaker"]].apply(_timing_row)


#: The turn each piece of evidence is, per conversation: (speaker, turn-score column, whether the lowest or the
#: last scored turn of that speaker); the first customer turn is the `first` of the opening mood.
EVIDENCE_TURNS = {
    "opening": ("customer", "sentiment", "first"),
    "ending": ("customer", "sentiment", "last"),
    "worst_mood": ("customer", "sentiment", "lowest"),
    "least_empathic": ("agent", "empathy", "lowest"),
    **{f"least_{m}": ("agent", f"{m}_level", "lowest") for m in MECHANISMS},
}
#: The evidence turn behind each conversation feature a reason can name.
FEATURE_EVIDENCE = {
    "customer_sentiment_start": "opening", "customer_sentiment_end": "ending", "customer_sentiment_shift": "ending",
    "customer_sentiment_slope": "ending", "customer_sentiment_mean": "worst_mood",
    "customer_sentiment_worst": "worst_mood",
    **dict.fromkeys(EMPATHY_FEATURES, "least_empathic"),
    **{feature: f"least_{m}" for m, features in MECHANISM_FEATURES.items() for feature in features},
}
#: Characters of a turn quoted as evidence: enough to recognise it, short enough for a cell of a table.
QUOTE_CHARS = 120


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """A turn's text on one line, cut at a word boundary to at most `limit` characters with an ellipsis."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[:limit - 1].rsplit(" ", 1)[0] if " " in line[:limit - 1] else line[:limit - 1]
    return cut + "…"


def _replies(turns: pd.DataFrame) -> pd.Series:
    """Whether each turn comes after the customer first spoke: an agent's greeting answers nobody, so it is never the
    reply that showed least empathy."""
    customer_index = turns["turn_index"].where(turns["speaker"] == "customer")
    first_customer = customer_index.groupby(turns[POSITION]).transform("min")
    return turns["turn_index"] > first_customer


def _evidence_rows(turns: pd.DataFrame, speaker: str, column: str, pick: str) -> pd.DataFrame:
    """Per conversation (POSITION), the one turn of `speaker` that `pick` names among its scored turns (an agent's
    among its replies)."""
    candidates = (turns["speaker"] == speaker) & turns[column].notna() & (_replies(turns) if speaker == "agent" else True)
    scored = turns[candidates].sort_values([POSITION, "turn_index"])
    if pick == "lowest":
        # The first of equally low turns: the stable sort keeps each conversation's turns in their order.
        scored = scored.sort_values([POSITION, column], kind="stable")
        return scored.drop_duplicates(POSITION, keep="first").set_index(POSITION)
    return scored.drop_duplicates(POSITION, keep="first" if pick == "first" else "last").set_index(POSITION)


def evidence_json(turns: pd.DataFrame) -> pd.Series:
    """Per conversation (indexed by POSITION), JSON text mapping each EVIDENCE_TURNS name to the turn it names: its
    index, speaker, a short quote and its score; a conversation without such turns has no entry for that name."""
    found: dict = {}
    for name, (speaker, column, pick) in EVIDENCE_TURNS.items():
        rows = _evidence_rows(turns, speaker, column, pick)
        for position, index, text, score in zip(rows.index, rows["turn_index"], rows["text"], rows[column]):
            found.setdefault(position, {})[name] = {"turn": int(index), "speaker": speaker, "quote": quoted(text),
                                                    "score": round(float(score), 4)}
    return pd.Series({position: json.dumps(entries, ensure_ascii=False) for position, entries in found.items()},
                     dtype=object)


def opening_drivers(turns: pd.DataFrame) -> pd.Series:
    """Per conversation (POSITION), the driver its opening turn was assigned (none without drivers)."""
    named = turns[turns[DRIVER].notna()] if DRIVER in turns.columns else turns.iloc[:0]
    return named.groupby(POSITION, sort=False)[DRIVER].first().astype(object).rename(DRIVER) if len(named) else \
        pd.Series(dtype=object, name=DRIVER)


def conversation_features(turns: pd.DataFrame, conversations: pd.DataFrame) -> pd.DataFrame:
    """One row per conversation in `conversations` (ids, AGENT and POSITION, in its order): FEATURE_COLUMNS from the
    turn scores, matched on POSITION, the EVIDENCE turns behind them and the call DRIVER of its opening.

    A feature is NaN where its turns are absent (no scored customer turn: no sentiment; no scored agent turn: no
    empathy; no timestamps: no timing); turn counts are 0 then, so a model can tell missing from neutral. Agent turns
    carry `empathy`, `empathic` and, per mechanism, EMPATHY_LEVEL_COLUMNS and EMPATHY_PRESENT_COLUMNS.
    """
    parts = [sentiment_features(turns), empathy_features(turns), timing_features(turns),
             evidence_json(turns).rename(EVIDENCE), opening_drivers(turns)]
    joined = conversations[[*KEYS, AGENT, POSITION]].join(pd.concat(parts, axis=1), on=POSITION)
    joined = joined.reindex(columns=[*KEYS, AGENT, *FEATURE_COLUMNS, EVIDENCE, DRIVER])
    joined[COUNT_FEATURES] = joined[COUNT_FEATURES].fillna(0).astype(int)
    return joined.astype({c: float for c in FEATURE_COLUMNS if c not in COUNT_FEATURES}).reset_index(drop=True)


#: Parquet key-value metadata naming the transcript model version that scored a features file (its lineage).
LINEAGE_KEY = "carelens.transcript_model"


def with_lineage(table: pa.Table, version: str) -> pa.Table:
    """The table with the transcript model version that produced it recorded in its schema metadata."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), LINEAGE_KEY.encode(): version.encode()})


def write_features(frame: pd.DataFrame, path: Union[str, Path], version: str) -> Path:
    """Conversation features written as Parquet, recording which transcript model version scored them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(with_lineage(pa.Table.from_pandas(frame, preserve_index=False), version), path)
    return path


def features_lineage(path: Union[str, Path]) -> Optional[str]:
    """The transcript model version a Parquet features file records, or None (CSV, or written without it)."""
    if Path(path).suffix.lower() not in (".parquet", ".pq"):
        return None
    recorded = (pq.read_schema(path).metadata or {}).get(LINEAGE_KEY.encode())
    return recorded.decode() if recorded else None
