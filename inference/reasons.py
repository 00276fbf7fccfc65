"""Per-customer reasons: which features pushed this row's risk up from a value worse than typical, said in words."""
from __future__ import annotations

import json
import math
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np
import pandas as pd

from carelens.models.conversation_features import (
    EMPATHY_FEATURES, EVIDENCE, FEATURE_COLUMNS, FEATURE_EVIDENCE, MECHANISM_FEATURES, TIMING_FEATURES,
)

#: Risk must rise by at least this much (absolute probability) for a feature to count as a reason.
MIN_PUSH = 0.005


def pushes(risk: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame, typical: dict,
           base: Optional[np.ndarray] = None, candidates_only: bool = False) -> pd.DataFrame:
    """For every row and feature in `typical`: how much higher the row's risk is than with that one feature set to
    its typical value (a per-row, one-feature-at-a-time attribution; positive means the feature raised the risk).
    `base` is the rows' own risk when it was already predicted, so that no row is predicted twice; with
    `candidates_only`, only the pushes that can make a reason are measured (`reason_candidates`), the others NaN."""
    features = measured_features(frame, typical)
    if frame.empty or not features:
        return pd.DataFrame(index=frame.index, columns=features, dtype=float)
    base = risk(frame) if base is None else np.asarray(base, dtype=float)
    chosen = reason_candidates(frame, typical, features) if candidates_only else \
        np.ones((len(frame), len(features)), bool)
    # Feature after feature, each block the rows whose push it measures: one call scores them all, the booster
    # walking one long table instead of a short one per feature.
    blocks, rows = np.nonzero(chosen.T)
    changed = np.full((len(frame), len(features)), np.nan)
    if len(rows):
        changed[rows, blocks] = risk(_variants(frame, typical, features, rows, blocks))
    return pd.DataFrame(base[:, None] - changed, index=frame.index, columns=features)


def measured_features(frame: pd.DataFrame, typical: dict) -> list[str]:
    """The features of `typical` whose pushes `pushes` measures: those the frame has, with a typical value."""
    return [f for f in typical if f in frame.columns and typical[f] is not None]


def _variants(frame: pd.DataFrame, typical: dict, features: list, rows: np.ndarray,
              blocks: np.ndarray) -> pd.DataFrame:
    """Row `rows[i]` of the frame with feature `features[blocks[i]]` set to its typical value, for each i; built a
    column at a time (a copy of the whole frame per feature cost more than the models that read it). A varied
    number or yes/no column becomes float, which is how the models read it; any other holds Python objects, so that
    the typical value keeps its own type, as it does when assigned to a whole column."""
    block = {feature: number for number, feature in enumerate(features)}

    def column(name) -> np.ndarray:
        values = frame[name]
        if name not in block:
            return values.to_numpy()[rows]
        numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
        varied = values.to_numpy(dtype=float, na_value=np.nan)[rows] if numeric else \
            values.to_numpy()[rows].astype(object)
        varied[blocks == block[name]] = typical[name]
        return varied

    return pd.DataFrame({name: column(name) for name in frame.columns})


def percentile_of(value: float, percentiles: Optional[list]) -> Optional[float]:
    """Where `value` lies among the training rows (0 = lowest, 100 = highest), from the stored percentiles."""
    if percentiles is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    points = np.asarray(percentiles, float)
    below, at_most = np.searchsorted(points, value, "left"), np.searchsorted(points, value, "right")
    return float(np.clip((below + at_most) / 2, 0, 100))


def ranked_share(percentile: float) -> str:
    """'the bottom 10%' / 'the top 5%': the nearest band of five that holds the value."""
    if percentile <= 50:
        return f"the bottom {max(5, math.ceil(percentile / 5) * 5)}%"
    return f"the top {max(5, math.ceil((100 - percentile) / 5) * 5)}%"


def _count(value: float, one: str, many: str) -> str:
    number = int(round(value))
    return f"{number} {one if number == 1 else many}"


#: Below this a customer's sentiment (-1 … 1) reads as negative, above its opposite as positive.
NEGATIVE_MOOD = -1 / 3


def _mood(value: float) -> str:
    return "negative" if value < NEGATIVE_MOOD else "positive" if value > -NEGATIVE_MOOD else "neutral"


def _duration(seconds: float) -> str:
    """'95 s', '4.5 min' or '2.0 h': the unit a supervisor would use for that length of time."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


#: What each EPITOME mechanism shows in an agent's replies, in a supervisor's words: (what it is, what a reply did).
MECHANISM_WORDS = {"emotional_reactions": ("warmth", "showed warmth"),
                   "interpretations": ("understanding of the customer's feelings",
                                       "acknowledged the customer's feelings"),
                   "explorations": ("questions about the customer's situation", "asked about the customer's situation")}


def mechanism_phrases(mechanism: str) -> dict[str, Callable[[object, Optional[float]], str]]:
    """The phrases of one mechanism's features: its mean level (ranked among training rows when known) and share."""
    what, did = MECHANISM_WORDS[mechanism]
    mean, share = MECHANISM_FEATURES[mechanism]
    return {mean: lambda v, p: f"agent's {what} in {ranked_share(p)}" if p is not None else
                  f"agent's {what} at {v:.1f} of 2",
            share: lambda v, p: f"{v:.0%} of agent replies {did}"}


#: Supervisor wording per feature a reason can name (those of RISK_SIDES): value (and its percentile among training
#: rows) → phrase. The phrases stay true for a protective value too, though such a value is never given as a reason.
PHRASES: dict[str, Callable[[object, Optional[float]], str]] = {
    "answer_time_s": lambda v, p: f"waited {_duration(v)} to be answered",
    "hold_time_s": lambda v, p: f"was on hold for {_duration(v)}" if v > 0 else "was not put on hold",
    # An answered contact with no handling time is a recording gap, not a contact that took "0.0 min".
    "handle_time_s": lambda v, p: f"contact took {_duration(v)}" if v > 0 else "handle time recorded as 0",
    "transfers": lambda v, p: f"transferred {_count(v, 'time', 'times')}" if round(v) else "was not transferred",
    "abandoned": lambda v, p: "abandoned the call" if v else "was answered",
    "product_problem": lambda v, p: "had a problem with the product" if v else "called with a routine request",
    "resolved": lambda v, p: "issue left unresolved" if not v else "issue marked resolved",
    "repeat_contacts_30d": lambda v, p: (f"{_count(v, 'repeat contact', 'repeat contacts')} in 30 days" if round(v)
                                         else "no repeat contacts in 30 days"),
    "csat": lambda v, p: f"rated the contact {v:.0f}/5",
    "customer_sentiment_end": lambda v, p: f"customer ended {_mood(v)}",
    "customer_sentiment_mean": lambda v, p: f"customer mostly {_mood(v)}",
    "customer_sentiment_shift": lambda v, p: ("customer's mood fell during the contact" if v < 0 else
                                              "customer's mood did not lift" if v == 0 else
                                              "customer's mood lifted during the contact"),
    "customer_sentiment_slope": lambda v, p: ("customer's mood sank turn by turn" if v < 0 else
                                              "customer's mood held steady" if v == 0 else
                                              "customer's mood rose turn by turn"),
    "customer_sentiment_worst": lambda v, p: f"customer's worst turn was {_mood(v)}",
    "agent_empathy_mean": lambda v, p: f"agent empathy in {ranked_share(p)}" if p is not None else
                                       f"agent empathy {v:.2f}",
    "agent_empathy_min": lambda v, p: f"agent's least empathic reply in {ranked_share(p)}" if p is not None else
                                      f"agent's least empathic reply {v:.2f}",
    "agent_empathic_share": lambda v, p: f"{v:.0%} of agent replies empathic",
    **{feature: phrase for mechanism in MECHANISM_WORDS for feature, phrase in mechanism_phrases(mechanism).items()},
    "non_talk_s": lambda v, p: f"{v:.0f} s of silence",
    "non_talk_share": lambda v, p: f"silent {v:.0%} of the contact",
    "interruptions": lambda v, p: _count(v, "interruption", "interruptions"),
    "agent_interruptions": lambda v, p: f"agent interrupted {_count(v, 'time', 'times')}",
}

HIGHER, LOWER = 1, -1


class RiskSide(NamedTuple):
    """The side of a feature's values that raises risk: `worse` HIGHER or LOWER than typical (a yes/no feature counts
    True as 1: HIGHER when True is the bad answer), and `past`, for a feature whose value can be good in itself
    whatever is typical, the point a value must also lie beyond to be bad."""
    worse: int
    past: Optional[float] = None


#: The features a reason can name, and the side of each that raises risk: what the centre can change (the wait, hold,
#: handling, transfers, resolution, the agent's empathy, silences and interruptions) or should know (a product
#: problem, repeat contacts, a hang-up, the customer's mood, a poor rating). Every other feature is context that may
#: move the risk but gives a supervisor nothing to act on, so it is never a reason: the turn counts, tenure, monthly
#: value, channel, any column a centre adds, and the mood the customer opened with (what the contact left them with
#: is the end, mean and worst mood).
RISK_SIDES: dict[str, RiskSide] = {
    "answer_time_s": RiskSide(HIGHER), "hold_time_s": RiskSide(HIGHER), "handle_time_s": RiskSide(HIGHER),
    "transfers": RiskSide(HIGHER), "abandoned": RiskSide(HIGHER), "product_problem": RiskSide(HIGHER),
    "resolved": RiskSide(LOWER), "repeat_contacts_30d": RiskSide(HIGHER),
    # CSAT counts a 4 or a 5 as a satisfied customer, however the centre's ratings usually fall.
    "csat": RiskSide(LOWER, past=4),
    # A mood is a reason when it is negative, or fell during the contact, not merely below a typical (gloomy) one.
    **{feature: RiskSide(LOWER, past=NEGATIVE_MOOD) for feature in
       ("customer_sentiment_end", "customer_sentiment_mean", "customer_sentiment_worst")},
    **{feature: RiskSide(LOWER, past=0) for feature in ("customer_sentiment_shift", "customer_sentiment_slope")},
    **{feature: RiskSide(LOWER) for feature in
       [*EMPATHY_FEATURES, *(f for features in MECHANISM_FEATURES.values() for f in features)]},
    **{feature: RiskSide(HIGHER) for feature in TIMING_FEATURES},
}


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def described(feature: str, value: object, percentiles: Optional[list] = None) -> str:
    """The value of a feature a reason can name, as a supervisor would say it (ranked among the training rows where
    its phrase does that)."""
    if _missing(value):
        return f"no {feature.replace('_', ' ')} recorded"
    return PHRASES[feature](value, percentile_of(float(value), percentiles))


def _risky_rule(feature: str, typical: object) -> Optional[tuple[int, list]]:
    """(the side that raises risk, the bounds a value must lie beyond on it) of a feature with a declared side
    (RISK_SIDES) and a typical value; None otherwise."""
    side = RISK_SIDES.get(feature)
    if side is None or _missing(typical):
        return None
    return side.worse, [typical] if side.past is None else [typical, side.past]


def on_risky_side(feature: str, value: object, typical: object) -> bool:
    """Whether `value` lies beyond the typical value, and beyond the feature's own bound where it has one, on the
    side that raises risk (RISK_SIDES); never for a feature without a declared side, nor for a missing value."""
    rule = _risky_rule(feature, typical)
    if rule is None or _missing(value):
        return False
    worse, bounds = rule
    return all(worse * (float(value) - float(bound)) > 0 for bound in bounds)


def _risky(values: pd.Series, feature: str, typical: object) -> np.ndarray:
    """`on_risky_side` of every value of one feature's column."""
    rule = _risky_rule(feature, typical)
    if rule is None:
        return np.zeros(len(values), bool)
    worse, bounds = rule
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    return np.logical_and.reduce([worse * (numbers - float(bound)) > 0 for bound in bounds])


def reason_candidates(frame: pd.DataFrame, typical: dict, features: list) -> np.ndarray:
    """Rows × `features`: whether a row's push of a feature can make one of its reasons (`reason_features`): its
    recorded value lies on the risky side of `typical` (`on_risky_side`), or the row is an abandoned contact and the
    feature one its abandonment stands for (`reason_pushes` folds them, missing or not). Measuring only these pushes
    scores 43% of the variants on the service benchmark's requests and changes no reason."""
    abandoned = np.zeros(len(frame), bool)
    if "abandoned" in frame.columns:
        hung_up = frame["abandoned"].to_numpy(dtype=float, na_value=np.nan)
        abandoned = ~np.isnan(hung_up) & (hung_up != 0)
    return np.column_stack([_risky(frame[f], f, typical.get(f)) | (abandoned & (f in ABANDONMENT))
                            for f in features])


def reason_typicals(typical: dict) -> dict:
    """The typical values of the features a reason can name: only their pushes are worth measuring."""
    return {feature: value for feature, value in typical.items() if feature in RISK_SIDES}


#: What follows from hanging up before an answer: nothing was handled, held, transferred, resolved or said. For an
#: abandoned contact these are the abandonment itself, not reasons of their own.
ABANDONMENT_CONSEQUENCES = frozenset({"handle_time_s", "hold_time_s", "resolved", "transfers", *FEATURE_COLUMNS})
#: The features one "abandoned the call after waiting …" reason stands for: the hang-up and the wait before it.
ABANDONMENT = frozenset({"abandoned", "answer_time_s"}) | ABANDONMENT_CONSEQUENCES


def was_abandoned(row: Mapping) -> bool:
    """Whether the row records a caller who hung up before being answered."""
    value = row.get("abandoned")
    return not _missing(value) and bool(value)


def abandoned_the_call(row: Mapping) -> str:
    """The abandonment as one reason, with the wait before it when that is known."""
    wait = row.get("answer_time_s")
    return "abandoned the call" if _missing(wait) else f"abandoned the call after waiting {_duration(float(wait))}"


def reason_pushes(pushed: Mapping[str, float], row: Mapping) -> dict[str, float]:
    """The push behind each candidate reason of one row (`pushed` and `row` by feature name): each recorded
    feature's own push, except that for an abandoned contact the abandonment features (missing ones too: no
    transcript is part of hanging up) make one candidate, `abandoned`, pushing as hard as the hardest of them (their
    pushes overlap, so they are not added)."""
    recorded = {feature: push for feature, push in pushed.items() if not _missing(row.get(feature))}
    if not was_abandoned(row):
        return recorded
    others = {feature: push for feature, push in recorded.items() if feature not in ABANDONMENT}
    folded = [push for feature, push in pushed.items() if feature in ABANDONMENT]
    if not folded:
        return others
    return {**others, "abandoned": max((push for push in folded if not math.isnan(push)), default=math.nan)}


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """The frame's rows as dicts of the named columns' Python values: a pandas row per contact, or pandas' own
    `to_dict`, cost more than the reasons drawn from them."""
    return [dict(zip(columns, values)) for values in zip(*(frame[c].tolist() for c in columns))] if columns else \
        [{} for _ in range(len(frame))]


def reason_features(frame: pd.DataFrame, contributions: pd.DataFrame, profile: dict,
                    count: int = 3) -> list[list[str]]:
    """Per row: up to `count` features that raised its risk most (by at least MIN_PUSH) from a recorded value on the
    risky side of the training profile's typical value (`on_risky_side`), hardest push first. A missing value is not
    a reason a supervisor can act on (no transcript mostly means the caller hung up, which `abandoned` says); an
    abandoned contact's hang-up, wait and what follows from them are one feature, `abandoned` (`reason_pushes`)."""
    typical = profile["typical"]
    read = [c for c in dict.fromkeys([*contributions.columns, "abandoned"]) if c in frame.columns]
    rows = _records(frame if frame.index.equals(contributions.index) else frame.loc[contributions.index], read)
    chosen = []
    for pushed, row in zip(_records(contributions, list(contributions.columns)), rows):
        risky = [(feature, push) for feature, push in reason_pushes(pushed, row).items()
                 if push >= MIN_PUSH and on_risky_side(feature, row[feature], typical.get(feature))]
        chosen.append([feature for feature, _ in sorted(risky, key=lambda item: -item[1])][:count])
    return chosen


#: The one reason of a flagged row none of whose features qualifies: its risk comes from context (tenure, turn
#: counts …), from values that are fine on their own, or from features only together. Naming any of those would send
#: a supervisor after what is not wrong, and an empty cell would read as a missing explanation.
NO_SINGLE_CAUSE = "no single cause to act on: the risk comes from the customer and the contact as a whole"


def reasons_in_words(frame: pd.DataFrame, features: list[list[str]], profile: dict) -> list[list[str]]:
    """Per row, its reason features (`reason_features`) in words; NO_SINGLE_CAUSE when it has none."""
    percentiles = profile.get("percentiles", {})
    read = [c for c in dict.fromkeys([f for chosen in features for f in chosen] + ["answer_time_s"])
            if c in frame.columns]
    return [[abandoned_the_call(row) if f == "abandoned" else described(f, row[f], percentiles.get(f))
             for f in chosen] or [NO_SINGLE_CAUSE] for row, chosen in zip(_records(frame, read), features)]


def top_reasons(frame: pd.DataFrame, contributions: pd.DataFrame, profile: dict, count: int = 3) -> list[list[str]]:
    """Per row: 1 to `count` reasons in words, those of `reason_features`; NO_SINGLE_CAUSE when none qualifies."""
    return reasons_in_words(frame, reason_features(frame, contributions, profile, count), profile)


def cited_turns(frame: pd.DataFrame, features: list[list[str]], reasons: list[list[str]]) -> list[list[dict]]:
    """Per row, for each of its reasons that comes from its conversation, the turn it stands on (the row's EVIDENCE,
    FEATURE_EVIDENCE): the reason, the turn's index, speaker and a short quote; none for a row without evidence."""
    cited = []
    for index, chosen, words in zip(frame.index, features, reasons):
        text = frame.at[index, EVIDENCE] if EVIDENCE in frame.columns else None
        turns = json.loads(text) if isinstance(text, str) else {}
        cited.append([{"reason": said, **{k: turn[k] for k in ("turn", "speaker", "quote")}}
                      for feature, said in zip(chosen, words)
                      if (turn := turns.get(FEATURE_EVIDENCE.get(feature, ""))) is not None])
    return cited


def evidence_text(cited: list[dict]) -> str:
    """A row's cited turns on one line, as a spreadsheet cell shows them."""
    return "; ".join(f"{c['reason']}: turn {c['turn']} ({c['speaker']}) “{c['quote']}”" for c in cited)
