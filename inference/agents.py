"""Agent scorecards: per agent, over a night or a window of nights, empathy by mechanism shrunk toward the centre, their customers' mood and risk, and coaching hints that quote their own turns."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import MECHANISMS, json_records
from carelens.data.redaction import redacted
from carelens.inference.nightly.layout import FLAGGED_PARQUET, PREDICTIONS
from carelens.inference.nightly.storage import read_parts
from carelens.inference.reasons import MECHANISM_WORDS
from carelens.models.conversation_features import AGENT, EVIDENCE
from carelens.models.satisfaction import INFERRED_CSAT

PathLike = Union[str, Path]
#: What a scorecard measures per agent, and the conversation feature it averages: the combined empathy (0–1) and each
#: EPITOME mechanism's mean expected level (0–2).
MEASURES = {"empathy": "agent_empathy_mean", **{m: f"agent_{m}_mean" for m in MECHANISMS}}
#: The normal quantile of a two-sided 90% interval.
Z90 = 1.645
#: Mechanisms a coaching hint names at most, and the agent's own turns it quotes for each.
HINTED_MECHANISMS, QUOTED_TURNS = 2, 2


def shrunk_means(values: pd.Series, agents: pd.Series) -> pd.DataFrame:
    """Per agent, over the contacts where `values` is recorded: how many, the raw mean, the empirical-Bayes mean and
    its 90% interval.

    Normal-normal model: an agent's true mean varies around the centre's with a between-agent variance estimated by
    the method of moments (the spread of the agents' means less the part their sampling noise explains), and each
    agent's mean is pulled toward the centre's by the share of its variance that is noise, so an agent seen on five
    contacts is not ranked first or last on luck.
    """
    return shrunk_means_each(values.to_frame(name="values"), agents)["values"]


def shrunk_means_each(values: pd.DataFrame, agents: pd.Series) -> dict[str, pd.DataFrame]:
    """`shrunk_means` of each column of `values`, the agents numbered once for them all (a scorecard's measures)."""
    named = agents.notna().to_numpy()
    codes, names = agent_numbers(agents[named])
    numbers = values[named].to_numpy(dtype=float, na_value=np.nan)
    return {column: _shrunk_frame(_shrunk(numbers[:, i], codes, len(names)), names)
            for i, column in enumerate(values.columns)}


def agent_numbers(agents: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(each contact's agent as a number, the agents in sorted order, as pandas groups them): the scorecard's
    per-agent figures are bincounts over these numbers, which cost a request's ten contacts a fraction of a groupby
    (the scorecard of a /v1/flag request took 34 ms in pandas groupbys)."""
    codes, names = pd.factorize(agents, sort=True)
    return codes, pd.Index(names, name=agents.name)


def agent_means(codes: np.ndarray, agents: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per agent: how many of its contacts record `values`, their mean, NaN where none does)."""
    recorded = ~np.isnan(values)
    count = np.bincount(codes[recorded], minlength=agents)
    total = np.bincount(codes[recorded], weights=values[recorded], minlength=agents)
    return count, np.divide(total, count, out=np.full(agents, np.nan), where=count > 0)


def _shrunk(values: np.ndarray, codes: np.ndarray, agents: int) -> dict[str, np.ndarray]:
    """`shrunk_means` of one measure as arrays over the agents that record it (`seen`, a mask over the `agents`
    numbers): `values` per contact (NaN where not recorded), `codes` their agents' numbers."""
    count, mean = agent_means(codes, agents, values)
    recorded = ~np.isnan(values)
    squares = float(((values[recorded] - mean[codes[recorded]]) ** 2).sum())
    seen = count > 0
    count, mean = count[seen], mean[seen]
    total = int(count.sum())
    centre = float(values[recorded].mean()) if total else np.nan
    freedom = total - len(count)
    within = squares / freedom if freedom > 0 else float(np.var(values[recorded], ddof=1)) if total > 1 else np.nan
    noise = within / count
    between = max(0.0, float(np.var(mean, ddof=1)) - float(noise.mean())) if len(count) > 1 else 0.0
    weight = between / (between + noise) if between > 0 else noise * 0.0
    posterior = centre + weight * (mean - centre)
    spread = Z90 * np.sqrt(weight * noise)
    return {"seen": seen, "n": count, "raw": mean, "shrunk": posterior, "low": posterior - spread,
            "high": posterior + spread}


def _shrunk_frame(shrunk: dict[str, np.ndarray], names: pd.Index) -> pd.DataFrame:
    """`_shrunk`'s arrays as `shrunk_means` answers them: a row per agent that records the measure."""
    return pd.DataFrame({part: shrunk[part] for part in ("n", "raw", "shrunk", "low", "high")},
                        index=names[shrunk["seen"]])


def _every_agent(shrunk: dict[str, np.ndarray], part: str) -> np.ndarray:
    """One of `_shrunk`'s arrays over every agent numbered, NaN for those that do not record the measure."""
    values = np.full(len(shrunk["seen"]), np.nan)
    values[shrunk["seen"]] = shrunk[part]
    return values


def _measured(contacts: dict[str, np.ndarray], codes: np.ndarray, agents: int) -> dict[str, dict[str, np.ndarray]]:
    """The shrunk means (`_shrunk`) of every measure the contacts' columns carry (a run whose models read no
    transcript features has none), their agents numbered by `agent_numbers`."""
    carried = {name: contacts[feature] for name, feature in MEASURES.items()
               if feature in contacts and not np.isnan(contacts[feature]).all()}
    return {name: _shrunk(values, codes, agents) for name, values in carried.items()}


def _outcomes(contacts: dict[str, np.ndarray], codes: np.ndarray, names: pd.Index, flagged_customers: Iterable[str],
              labels: Optional[pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per agent (numbered by `agent_numbers`): contacts, customers, the share of their customers flagged, their
    customers' mean sentiment shift and inferred satisfaction (when predicted), and with `labels` (contact_id,
    churned, retaliation) the churn and retaliation rate among their contacts."""
    agents = len(names)
    contacts_per_agent = np.bincount(codes, minlength=agents)
    customer_codes, customers = pd.factorize(contacts["customer_id"])
    known, width = customer_codes >= 0, max(len(customers), 1)
    # Each distinct (agent, customer) pair once, as one number: agent * width + customer.
    pairs = np.unique(codes[known].astype(np.int64) * width + customer_codes[known])
    flagged = pd.Series(contacts["customer_id"]).isin(pd.Index(flagged_customers)).to_numpy(dtype=float)
    out = {"contacts": contacts_per_agent, "customers": np.bincount(pairs // width, minlength=agents),
           "flagged_share": np.bincount(codes, weights=flagged, minlength=agents) / contacts_per_agent}
    for column, name in (("customer_sentiment_shift", "sentiment_shift"), (INFERRED_CSAT, INFERRED_CSAT)):
        if column in contacts and not np.isnan(contacts[column]).all():
            out[name] = agent_means(codes, agents, contacts[column])[1]
    if labels is not None:
        known_labels = pd.DataFrame({AGENT: contacts[AGENT], "contact_id": contacts["contact_id"]}).merge(
            labels, on="contact_id")
        by_agent = known_labels.groupby(AGENT)
        out["churn_rate"] = by_agent["churned"].mean().astype(float).reindex(names).to_numpy()
        out["retaliation_rate"] = by_agent["retaliation"].agg(lambda kinds: (kinds != "none").mean()).reindex(
            names).to_numpy(dtype=float)
    return out


def _examples(own: Sequence[tuple[str, object]], mechanism: str, redact: bool) -> list[dict]:
    """The agent's QUOTED_TURNS turns that showed `mechanism` least, `own` holding each of the agent's contacts as
    (contact_id, its EVIDENCE text)."""
    found = []
    for contact, text in own:
        entry = json.loads(text).get(f"least_{mechanism}") if isinstance(text, str) else None
        if entry:
            found.append({"contact_id": contact, "turn": entry["turn"], "score": entry["score"],
                          "quote": redacted(entry["quote"]) if redact else entry["quote"]})
    distinct = {example["quote"]: example for example in sorted(found, key=lambda example: -example["score"])}
    return sorted(distinct.values(), key=lambda example: example["score"])[:QUOTED_TURNS]


def mechanism_levels(measured: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per EPITOME mechanism measured (`_shrunk`): (the centre's level, its contacts' mean; the spread of the agents'
    shrunk means, 1 where they do not differ), the yardstick of every agent's coaching gap."""
    return {m: (float(np.average(measured[m]["raw"], weights=measured[m]["n"])),
                float(np.std(measured[m]["shrunk"])) or 1.0) for m in MECHANISMS if m in measured}


def coaching(own: Sequence[tuple[str, object]], shrunk: dict[str, dict[str, float]],
             levels: dict[str, tuple[float, float]], agent: str, redact: bool = False) -> list[dict]:
    """Up to HINTED_MECHANISMS mechanisms where the agent's shrunk mean (`shrunk`: per mechanism, per agent) lies
    furthest below the centre's (in units of the agents' spread, both from `levels`: `mechanism_levels`), each with
    the agent's level, the centre's, and two of their own turns (from `own`, the agent's contacts as (contact_id,
    EVIDENCE text)) that showed it least."""
    gaps = {m: ((shrunk[m][agent] - centre) / spread, centre)
            for m, (centre, spread) in levels.items() if agent in shrunk[m]}
    lowest = sorted((m for m, (gap, _) in gaps.items() if gap < 0), key=lambda m: gaps[m][0])[:HINTED_MECHANISMS]
    return [{"mechanism": m, "agent": round(shrunk[m][agent], 3), "centre": round(gaps[m][1], 3),
             "examples": _examples(own, m, redact)} for m in lowest]


def hint_text(hints: Sequence[dict]) -> str:
    """Coaching hints in one line a supervisor reads: what to practise, the levels, and the agent's own turns."""
    parts = []
    for hint in hints:
        quotes = "; ".join(f"“{e['quote']}” ({e['contact_id']}, turn {e['turn']})" for e in hint["examples"])
        parts.append(f"{MECHANISM_WORDS[hint['mechanism']][0]}: {hint['agent']:.2f} of 2 against the centre's "
                     f"{hint['centre']:.2f}" + (f", e.g. {quotes}" if quotes else ""))
    return " | ".join(parts)


def _scorecard_columns(contacts: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns a scorecard reads, as arrays over the contacts that name their agent (the night's other columns
    and rows are not copied)."""
    used = [c for c in (AGENT, "customer_id", "contact_id", EVIDENCE, "customer_sentiment_shift", INFERRED_CSAT,
                        *MEASURES.values()) if c in contacts.columns]
    named = contacts[AGENT].notna().to_numpy() if AGENT in contacts.columns else np.zeros(len(contacts), bool)
    numbers = {"customer_sentiment_shift", INFERRED_CSAT, *MEASURES.values()}
    return {c: contacts[c].to_numpy(dtype=float, na_value=np.nan)[named] if c in numbers else
            contacts[c].to_numpy()[named] for c in used}


def _empathy_order(card: dict[str, np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(the card's rows most empathic first, ties by more contacts, then by agent; each row's empathy rank, 1 = most
    empathic by the shrunk mean, NaN where unmeasured): the agents in order when empathy is not measured."""
    if "empathy" not in card:
        return np.arange(len(card["contacts"])), None
    rank = pd.Series(card["empathy"]).rank(ascending=False, method="min").to_numpy()
    return np.lexsort((-card["contacts"], np.nan_to_num(rank, nan=np.inf))), rank


def agent_scorecard(contacts: pd.DataFrame, flagged_customers: Iterable[str] = (),
                    labels: Optional[pd.DataFrame] = None, redact: bool = False) -> pd.DataFrame:
    """One row per agent of the contacts (per-contact predictions with AGENT, as the nightly job writes them), most
    empathic first: contacts and customers, the share of their customers flagged, their customers' mean sentiment
    shift, churn and retaliation among their contacts (with `labels`), per measure (MEASURES) the shrunk mean and
    its 90% interval (`shrunk_means`), the empathy rank (1 = most empathic, by the shrunk mean), and coaching hints
    (`coaching`; quotes masked with `redact`); `attrs["coaching"]` holds the hints per agent as records. Empty when no
    contact names its agent."""
    named = _scorecard_columns(contacts)
    if AGENT not in named or not len(named[AGENT]):
        return pd.DataFrame(columns=[AGENT, "contacts", "customers", "flagged_share"])
    codes, names = agent_numbers(pd.Series(named[AGENT], dtype=contacts[AGENT].dtype, name=AGENT))
    columns = _outcomes(named, codes, names, flagged_customers, labels)
    measured = _measured(named, codes, len(names))
    for name, shrunk in measured.items():
        columns.update({name: _every_agent(shrunk, "shrunk"), f"{name}_low": _every_agent(shrunk, "low"),
                        f"{name}_high": _every_agent(shrunk, "high")})
    order, rank = _empathy_order(columns)
    card = pd.DataFrame({AGENT: names.take(order), **{name: values[order] for name, values in columns.items()}})
    if rank is not None:
        card["empathy_rank"] = pd.array(rank[order], dtype="Int64")
    # Split once: selecting each agent's rows from the whole night, agent by agent, took most of a second.
    own: dict[str, list] = {agent: [] for agent in names.tolist()}
    texts = named[EVIDENCE].tolist() if EVIDENCE in named else [None] * len(codes)
    for agent, contact, text in zip(named[AGENT].tolist(), named["contact_id"].tolist(), texts):
        own[agent].append((contact, text))
    levels = mechanism_levels(measured)
    shrunk = {m: dict(zip(names[measured[m]["seen"]].tolist(), measured[m]["shrunk"].tolist())) for m in levels}
    agents = card[AGENT].tolist()
    hints = {agent: coaching(own[agent], shrunk, levels, agent, redact) for agent in agents}
    card["coaching"] = [hint_text(hints[agent]) for agent in agents]
    card.attrs["coaching"] = hints
    return card


def scorecard_records(card: pd.DataFrame) -> list[dict]:
    """The scorecard as one record per agent, missing values as None and each agent's coaching hints (with their
    quoted turns) under `hints`: what the API and the HTTP service hand on."""
    hints = card.attrs.get("coaching", {})
    return [{**row, "hints": hints.get(row[AGENT], [])} for row in json_records(card)]


def run_contacts(runs: Sequence[PathLike]) -> tuple[pd.DataFrame, set[str]]:
    """(every contact predicted in the nightly runs' folders, the last night's prediction of a contact winning; the
    customers flagged on any of those nights): a window of nights for `agent_scorecard`."""
    frames, flagged = [], set()
    for run in map(Path, runs):
        frames.append(read_parts(run, PREDICTIONS))
        if (run / FLAGGED_PARQUET).is_file():
            flagged |= set(pd.read_parquet(run / FLAGGED_PARQUET, columns=["customer_id"])["customer_id"])
    contacts = pd.concat(frames, ignore_index=True).drop_duplicates("contact_id", keep="last")
    return contacts, flagged
