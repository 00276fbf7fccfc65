"""Seed-calibrated synthetic contacts, labels, hidden truth and transcripts that reproduce DESIGN.md's evidence."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.special import expit

from carelens.data import synthetic_phrases as phrases
from carelens.data.contracts import CHANNELS, MECHANISMS, RETALIATION_TYPES, SENTIMENTS, SYNTHETIC_TEXT
from carelens.data.errors import UsageError
from carelens.data.readers import write_transcripts
from carelens.data.synthetic_agents import drawn_agents

SEED_GROUPS = ("no_problem", "problem_ineffective", "problem_effective")
ESCALATE, SWITCH, VENT = (RETALIATION_TYPES.index(kind) for kind in ("escalate", "switch", "vent"))


@dataclass(frozen=True)
class GeneratorParams:
    """Every number the generator uses; the comment above each says where it comes from.

    "Evidence" values are DESIGN.md's industry figures and are reproduced by construction; "assumption" values
    shape the population and the spread of risk within the evidence groups, and give the reason for the choice.
    Tuples are coefficients of the formula their comment writes out; "quality" is the latent care quality (0-1)
    and "bar" the quality above which care counts as effective.
    """

    # ---- Evidence (DESIGN.md) ----
    #: BenchmarkPortal/Purdue: a product with no problem is re-purchased 78% of the time.
    repurchase_no_problem: float = 0.78
    #: BenchmarkPortal/Purdue: a problem and ineffective care, 32%.
    repurchase_problem_ineffective: float = 0.32
    #: BenchmarkPortal/Purdue: a problem and effective care, 89%.
    repurchase_problem_effective: float = 0.89
    #: Five9 (2013): 85% retaliate after a poor service experience (here: a problem met by ineffective care).
    retaliation_poor_experience: float = 0.85
    #: DESIGN.md: calls wait 30 s on average before an answer (the sample mean is rescaled to it exactly).
    mean_answer_time_s: float = 30.0
    #: DESIGN.md: 3% of calls are abandoned.
    abandon_rate: float = 0.03
    #: DESIGN.md: 70% of consumers phone for important needs.
    phone_share: float = 0.70

    # ---- Assumptions: the customers and the service they get ----
    #: Assumption: the non-phone 30% splits chat/email/social like this; chat is the commonest written channel.
    written_channel_split: tuple[float, float, float] = (0.55, 0.28, 0.17)
    #: Assumption: ~40% of inbound contacts report a product problem; the rest are routine requests.
    problem_share: float = 0.40
    #: Assumption: care quality (agent x contact) ~ Beta(2, 2): spread over 0-1, most contacts middling.
    care_quality_beta: tuple[float, float] = (2.0, 2.0)
    #: Assumption: one agent per 40 answered contacts of the window, enough for each to have a scorecard.
    contacts_per_agent: int = 40
    #: Assumption: the agent's share of the variance of care quality (on the normal scale): who answers matters, but
    #: most of the care varies contact by contact. Each agent's skill ~ N(0, 1), recorded in the truth table.
    agent_care_share: float = 0.3
    #: Assumption: slightly more than half of answered contacts get effective care; this sets the bar (a quantile).
    effective_care_share: float = 0.55
    #: Assumption: tenure ~ Gamma(shape, mean / shape) months: a typical subscription lasts 2-3 years...
    tenure_mean_months: float = 30.0
    #: ...with many new customers and a long tail of loyal ones (shape near 1).
    tenure_shape: float = 1.2
    #: Assumption: monthly value is log-normal around a ~45 consumer subscription...
    monthly_value_median: float = 45.0
    #: ...with a few high-value accounts.
    monthly_value_sigma: float = 0.6
    #: Assumption: queue waits are gamma-distributed, right-skewed (most short, some very long).
    answer_time_shape: float = 1.3
    #: Assumption: abandonment rises steeply with the wait (logit slope per log of wait / mean wait).
    abandon_wait_slope: float = 1.5
    #: Assumption: the labelled contacts fall in the month after `start`.
    window_days: int = 30
    #: Assumption: phone and chat contacts start in office hours, ~ N(13:30, 3 h) clipped to 08:00-20:00 (hours);
    #: email and social arrive around the clock.
    office_hours: tuple[float, float, float, float] = (13.5, 3.0, 8.0, 20.0)
    #: Assumption: median talk (or work) time in seconds per channel: phone, chat, email, social.
    talk_median_s: tuple[float, float, float, float] = (300.0, 480.0, 240.0, 180.0)
    #: Assumption: log-normal spread of talk time.
    talk_sigma: float = 0.45
    #: Assumption: a problem contact takes 40% longer than a request.
    talk_problem_factor: float = 0.4
    #: Assumption: poor care drags a contact out by up to 30%.
    talk_poor_care_factor: float = 0.3
    #: Assumption: P(hold) = 0.2 + 0.5 x (1 - quality); only phone and chat put customers on hold.
    hold_probability: tuple[float, float] = (0.2, 0.5)
    #: Assumption: hold ~ Exponential(60 s) x (0.4 + 1.2 x (1 - quality)) x (1 + 0.5 x problem): poor agents
    #: and problems need more checking.
    hold_s: tuple[float, float, float, float] = (60.0, 0.4, 1.2, 0.5)
    #: Assumption: transfers ~ Poisson(0.1 + 0.8 x (1 - quality)^2 + 0.15 x problem): poor agents pass customers on.
    transfer_rate: tuple[float, float, float] = (0.1, 0.8, 0.15)
    #: Assumption: P(resolved) = sigmoid(2 for a request, 0 for a problem + 6 x (quality - bar)); effective care
    #: resolves much more often (measured: ~75% vs ~28% of problems), but not always, so `resolved` only
    #: partly reveals care.
    resolve_logit: tuple[float, float, float] = (2.0, 0.0, 6.0)
    #: Assumption: earlier contacts in 30 days ~ Poisson(0.2 + 0.5 x problem + 1.5 x problem x (1 - quality)):
    #: badly handled problems bring customers back.
    repeat_rate: tuple[float, float, float] = (0.2, 0.5, 1.5)
    #: Assumption: a typical post-contact survey response rate; abandoned contacts get no survey.
    csat_response_rate: float = 0.15
    #: Assumption: score = round(3 + 3 x (quality - bar) + 1 x (resolved - 0.5) - 0.3 x problem + N(0, 0.9)),
    #: clipped to 1-5: rises with care and resolution, but one answer is noisy.
    csat_score: tuple[float, float, float, float, float] = (3.0, 3.0, 1.0, -0.3, 0.9)

    # ---- Assumptions: who churns and retaliates within each evidence group ----
    # The group rates are fixed by the evidence (intercepts solved per group); these only spread risk within a group.
    #: Assumption: long-tenured customers stay (logit per log of tenure / mean); the strongest driver in telecom data.
    churn_tenure: float = -1.2
    #: Assumption: higher-value customers are more invested (per log of value / median).
    churn_value: float = -0.5
    #: Assumption: long waits erode loyalty (per log of wait / mean wait).
    churn_wait: float = 0.35
    #: Assumption: giving up in the queue is a bad experience in itself.
    churn_abandoned: float = 0.8
    #: Assumption: each earlier contact about the issue adds effort and risk.
    churn_repeat: float = 0.35
    #: Assumption: each transfer adds effort.
    churn_transfers: float = 0.25
    #: Assumption: a resolved contact keeps customers.
    churn_resolved: float = -0.6
    #: Assumption: care quality moves churn beyond the effective/ineffective split (Teleperformance: a bad contact
    #: cuts loyalty 29%, a good one lifts it 14%); the table shows it only partly, the transcript wording the rest.
    churn_care: float = -4.0
    #: Assumption: reasons nobody observes (a competitor's offer, moving house).
    churn_noise_sd: float = 0.7
    #: Assumption: customers without a poor experience still retaliate now and then.
    retaliation_base_rate: float = 0.06
    #: Assumption: retaliators who escalate / switch / vent: asking for a manager is the commonest act, a public
    #: post the rarest. Only churners switch (switch = took their business elsewhere).
    retaliation_split: tuple[float, float, float] = (0.45, 0.35, 0.20)
    #: Assumption: those who leave are likelier to retaliate on the way out.
    retaliation_churned: float = 1.5
    #: Assumption: poor care provokes retaliation beyond the group label.
    retaliation_care: float = -3.0
    #: Assumption: high-value customers expect more and complain more (per log of value / median).
    retaliation_value: float = 0.3
    #: Assumption: being left in the queue provokes.
    retaliation_abandoned: float = 0.6
    #: Assumption: temperament nobody observes.
    retaliation_noise_sd: float = 0.8
    #: Assumption: customers who contact on social media vent there rather than escalate.
    vent_social: float = 2.0
    #: Assumption: newer customers vent rather than escalate (per log of tenure / mean).
    vent_tenure: float = -0.5

    # ---- Assumptions: transcripts ----
    #: Assumption: 2 + Binomial(3, 0.25 + 0.25 x problem + 0.3 x (1 - quality)) agent/customer pairs, so 4-10
    #: turns with the farewell, longer when the contact goes badly.
    turn_pairs_extra: tuple[float, float, float] = (0.25, 0.25, 0.3)
    #: Assumption: some agents add a farewell line.
    farewell_probability: float = 0.35
    #: Assumption: an agent's warmth varies turn to turn around the contact's care quality, so effective
    #: agents are curt sometimes and poor ones kind now and then. The thesis of the product is that the words
    #: show the care: with 0.15 and a steepness of 8, even the true turn labels let a churn model recover only
    #: 67% of the seed gap (tests/test_synthetic.py::test_the_true_turn_labels_carry_most_of_the_care_gap).
    warmth_noise_sd: float = 0.05
    #: Assumption: the chance an agent turn is warm = sigmoid(24 x (noisy quality - bar)): wording tracks care.
    warmth_steepness: float = 24.0
    #: Assumption: a routine request calls for less emotional reaction than a problem.
    request_empathy_factor: float = 0.5
    #: Assumption: a customer's mood wobbles between turns...
    customer_sentiment_noise_sd: float = 0.5
    #: ...and follows the warmth of the agent turn before it.
    customer_reaction: float = 1.0
    #: Assumption: ending mood = 1.6 x resolved + 3 x (quality - bar) - 0.6 x problem + N(0, 0.7); good care is
    #: forgiven even when the problem is not solved (Teleperformance).
    end_sentiment: tuple[float, float, float, float] = (1.6, 3.0, -0.6, 0.7)
    #: Assumption: an ending mood below / above these reads negative / positive.
    end_sentiment_cuts: tuple[float, float] = (-0.2, 1.0)
    #: Assumption: characters per second spoken (phone) or typed (chat, email, social).
    speech_chars_per_s: tuple[float, float, float, float] = (15.0, 5.0, 4.0, 5.0)
    #: Assumption: a turn lasts chars / speed x LogNormal(0, 0.2) + 0.5 s.
    turn_duration: tuple[float, float] = (0.2, 0.5)
    #: Assumption: mean pause in seconds before a reply per channel (phone, chat, email, social).
    reply_gap_s: tuple[float, float, float, float] = (0.8, 8.0, 900.0, 240.0)
    #: Assumption: P(a phone turn interrupts the last) = 0.03 + 0.25 x (1 - quality): poor care provokes
    #: talking over each other...
    interruption: tuple[float, float] = (0.03, 0.25)
    #: ...starting 20-60% of the way before the previous turn's end.
    interruption_overlap: tuple[float, float] = (0.2, 0.6)


@dataclass
class SyntheticData:
    """Generated tables, row-aligned (row i of each frame is the same contact), and conversations of answered contacts.

    `conversations` is None when generated with `transcripts=False`.
    """

    interactions: pd.DataFrame
    labels: pd.DataFrame
    truth: pd.DataFrame
    conversations: Optional[list[dict]]
    seed: int
    params: GeneratorParams = field(repr=False)


def exact_share(rng: np.random.Generator, score: np.ndarray, target: float) -> np.ndarray:
    """A logistic draw whose intercept is set so that exactly a `target` share of rows comes out true.

    Each row is true when score + intercept + logistic noise > 0 (a logistic model); taking the rows with the
    highest score + noise fixes the intercept at the value that selects round(target x rows) of them, the count
    rounded up or down at random so that its expectation is exact too. Rows with a higher score are likelier
    chosen, which is the within-group heterogeneity a model can learn, while the share holds by construction.
    """
    count = int(np.floor(score.size * float(np.clip(target, 0, 1)) + rng.random()))
    utility = score + rng.logistic(size=score.size)
    chosen = np.zeros(score.size, dtype=bool)
    chosen[np.argsort(-utility, kind="stable")[:count]] = True
    return chosen


def exact_categories(rng: np.random.Generator, n: int, shares: Sequence[float]) -> np.ndarray:
    """Category codes for n rows in random order, each code's count matching its share (largest remainders)."""
    expected = n * np.asarray(shares, dtype=float) / sum(shares)
    counts = np.floor(expected).astype(int)
    counts[np.argsort(counts - expected, kind="stable")[:n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(counts.size), counts))


def quality_bar(params: GeneratorParams) -> float:
    """The care quality above which care counts as effective (a quantile of the quality distribution)."""
    return float(stats.beta.ppf(1 - params.effective_care_share, *params.care_quality_beta))


def _customers(rng: np.random.Generator, n: int, params: GeneratorParams) -> dict[str, np.ndarray]:
    """Who the customers are and what brings them: tenure, value, channel, problem, and the care they will get."""
    written = (1 - params.phone_share) * np.asarray(params.written_channel_split)
    return {
        "tenure_months": rng.gamma(params.tenure_shape, params.tenure_mean_months / params.tenure_shape, n),
        "monthly_value": params.monthly_value_median * np.exp(rng.normal(0, params.monthly_value_sigma, n)),
        "channel_code": exact_categories(rng, n, [params.phone_share, *written]),
        "product_problem": rng.random(n) < params.problem_share,
        "care_quality": rng.beta(*params.care_quality_beta, n),
    }


def _queue(rng: np.random.Generator, world: dict, params: GeneratorParams) -> dict[str, np.ndarray]:
    """Answer time (rescaled to the evidence mean exactly) and abandonment, likelier after a long wait."""
    n = world["care_quality"].size
    raw = rng.gamma(params.answer_time_shape, 1.0, n)
    answer = raw * (params.mean_answer_time_s / raw.mean()) if n else raw
    wait_score = params.abandon_wait_slope * np.log(answer / params.mean_answer_time_s)
    return {"answer_time_s": answer, "abandoned": exact_share(rng, wait_score, params.abandon_rate)}


def _service(rng: np.random.Generator, world: dict, params: GeneratorParams) -> dict[str, np.ndarray]:
    """What the centre observes of the care: hold, transfers, handle time, resolution, repeat contacts, csat."""
    n, bar = world["care_quality"].size, quality_bar(params)
    quality, problem, answered = world["care_quality"], world["product_problem"], ~world["abandoned"]
    poor = 1 - quality
    holds_possible = np.isin(world["channel_code"], (CHANNELS.index("phone"), CHANNELS.index("chat")))
    held = holds_possible & answered & (rng.random(n) < params.hold_probability[0] + params.hold_probability[1] * poor)
    mean_s, hold_base, hold_poor, hold_problem = params.hold_s
    hold = np.where(held, rng.exponential(mean_s, n) * (hold_base + hold_poor * poor) * (1 + hold_problem * problem),
                    0.0)
    base, slope, per_problem = params.transfer_rate
    transfers = np.where(answered, rng.poisson(base + slope * poor ** 2 + per_problem * problem), 0)
    talk = (np.asarray(params.talk_median_s)[world["channel_code"]] * np.exp(rng.normal(0, params.talk_sigma, n))
            * (1 + params.talk_problem_factor * problem) * (1 + params.talk_poor_care_factor * poor))
    request_logit, problem_logit, care_slope = params.resolve_logit
    resolve_logit = np.where(problem, problem_logit, request_logit) + care_slope * (quality - bar)
    resolved = answered & (rng.random(n) < expit(resolve_logit))
    repeat_base, repeat_problem, repeat_poor = params.repeat_rate
    repeats = rng.poisson(repeat_base + problem * (repeat_problem + repeat_poor * poor))
    csat, satisfaction = _csat(rng, quality - bar, resolved, problem, answered, params)
    return {"hold_time_s": hold, "transfers": transfers, "handle_time_s": np.where(answered, talk + hold, 0.0),
            "resolved": resolved, "repeat_contacts_30d": repeats, "csat": csat, "satisfaction": satisfaction}


def _csat(rng: np.random.Generator, quality_gap: np.ndarray, resolved: np.ndarray, problem: np.ndarray,
          answered: np.ndarray, params: GeneratorParams) -> tuple[np.ndarray, np.ndarray]:
    """(post-contact survey scores 1-5 for the few who answer it, NaN for the rest; the score every answered customer
    would give, NaN for those who hung up): higher for good, resolved care. The second is hidden truth."""
    n = answered.size
    rows = np.flatnonzero(answered)
    responded = np.zeros(n, dtype=bool)
    responded[rows] = exact_share(rng, np.zeros(rows.size), params.csat_response_rate * n / max(rows.size, 1))
    base, care, resolution, per_problem, noise_sd = params.csat_score
    score = (base + care * quality_gap + resolution * (resolved - 0.5) + per_problem * problem
             + rng.normal(0, noise_sd, n))
    would_give = np.clip(np.rint(score), 1, 5)
    return np.where(responded, would_give, np.nan), np.where(answered, would_give, np.nan)


def _seed_groups(problem: np.ndarray, care_effective: np.ndarray) -> np.ndarray:
    """The evidence group of each contact as an index into SEED_GROUPS."""
    return np.where(problem, np.where(care_effective, 2, 1), 0)


def _churn(rng: np.random.Generator, world: dict, params: GeneratorParams) -> np.ndarray:
    """Churn drawn from a per-group logistic model whose intercept is solved to hit the group's re-purchase evidence."""
    n = world["group"].size
    score = (params.churn_tenure * np.log(world["tenure_months"] / params.tenure_mean_months)
             + params.churn_value * np.log(world["monthly_value"] / params.monthly_value_median)
             + params.churn_wait * np.log(world["answer_time_s"] / params.mean_answer_time_s)
             + params.churn_abandoned * world["abandoned"] + params.churn_repeat * world["repeat_contacts_30d"]
             + params.churn_transfers * world["transfers"] + params.churn_resolved * world["resolved"]
             + params.churn_care * (world["care_quality"] - quality_bar(params))
             + rng.normal(0, params.churn_noise_sd, n))
    repurchase = (params.repurchase_no_problem, params.repurchase_problem_ineffective,
                  params.repurchase_problem_effective)
    churned = np.zeros(n, dtype=bool)
    for group, rate in enumerate(repurchase):
        members = world["group"] == group
        churned[members] = exact_share(rng, score[members], 1 - rate)
    return churned


def _retaliation(rng: np.random.Generator, world: dict, params: GeneratorParams) -> np.ndarray:
    """Retaliation per contact (index into RETALIATION_TYPES): 85% of poor experiences, the rest at a base rate."""
    n = world["group"].size
    score = (params.retaliation_churned * world["churned"]
             + params.retaliation_care * (world["care_quality"] - quality_bar(params))
             + params.retaliation_value * np.log(world["monthly_value"] / params.monthly_value_median)
             + params.retaliation_abandoned * world["abandoned"]
             + rng.normal(0, params.retaliation_noise_sd, n))
    kind = np.zeros(n, dtype=int)
    for members, rate in ((world["poor_experience"], params.retaliation_poor_experience),
                          (~world["poor_experience"], params.retaliation_base_rate)):
        rows = np.flatnonzero(members)
        retaliating = rows[exact_share(rng, score[rows], rate)]
        kind[retaliating] = _retaliation_kinds(rng, world, retaliating, params)
    return kind


def _retaliation_kinds(rng: np.random.Generator, world: dict, rows: np.ndarray,
                       params: GeneratorParams) -> np.ndarray:
    """Escalate, switch or vent for each retaliating row: only churners switch; social and new customers vent."""
    _, switch_share, vent_share = np.asarray(params.retaliation_split) / sum(params.retaliation_split)
    kinds = np.full(rows.size, ESCALATE)
    # The shares are of all retaliators, but only churners can switch, so the draw among churners is scaled up.
    churners = np.flatnonzero(world["churned"][rows])
    switch_target = switch_share * rows.size / max(churners.size, 1)
    kinds[churners[exact_share(rng, np.zeros(churners.size), switch_target)]] = SWITCH
    rest = np.flatnonzero(kinds == ESCALATE)
    vent_score = (params.vent_social * (world["channel_code"][rows[rest]] == CHANNELS.index("social"))
                  + params.vent_tenure * np.log(world["tenure_months"][rows[rest]] / params.tenure_mean_months))
    kinds[rest[exact_share(rng, vent_score, vent_share * rows.size / max(rest.size, 1))]] = VENT
    return kinds


def _start_offsets_s(rng: np.random.Generator, channel_code: np.ndarray, params: GeneratorParams) -> np.ndarray:
    """Seconds after `start` of each contact: voice and chat in business hours, written channels around the clock."""
    n = channel_code.size
    day = rng.integers(0, params.window_days, n)
    peak, spread, opens, closes = params.office_hours
    office = np.clip(rng.normal(peak * 3600, spread * 3600, n), opens * 3600, closes * 3600 - 1)
    anytime = rng.uniform(0, 86_400, n)
    written = channel_code >= CHANNELS.index("email")
    return day * 86_400 + np.floor(np.where(written, anytime, office)).astype(np.int64)


def _world(rng: np.random.Generator, n: int, params: GeneratorParams) -> dict[str, np.ndarray]:
    """Every per-contact quantity, observable or hidden, one array each, in customer order."""
    world = _customers(rng, n, params)
    world.update(_queue(rng, world, params))
    world.update(_service(rng, world, params))
    # Nobody cared for a customer who gave up in the queue: no quality, and never effective.
    world["care_quality"] = np.where(world["abandoned"], 0.0, world["care_quality"])
    world["care_effective"] = world["care_quality"] >= quality_bar(params)
    world["group"] = _seed_groups(world["product_problem"], world["care_effective"])
    world["poor_experience"] = world["group"] == SEED_GROUPS.index("problem_ineffective")
    world["churned"] = _churn(rng, world, params)
    world["retaliation_code"] = _retaliation(rng, world, params)
    world["start_offset_s"] = _start_offsets_s(rng, world["channel_code"], params)
    return world


def identifiers(prefix: str, n: int) -> np.ndarray:
    """'C000001'-style identifiers numbered from 1, at least six digits wide."""
    width = max(6, len(str(n)))
    return np.char.add(prefix, np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def _frames(world: dict, start: pd.Timestamp, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Interactions, labels and truth, sorted by contact time; contact ids follow that order."""
    n = world["group"].size
    order = np.argsort(world["start_offset_s"], kind="stable")
    column = {name: values[order] for name, values in world.items()}
    # Contacts of another seed are other contacts: their ids must differ, or an evaluation on them would look like
    # an evaluation on the contacts a model was trained on.
    customer_id, contact_id = identifiers("C", n)[order], identifiers(f"K{seed}-", n)
    interactions = pd.DataFrame({
        "customer_id": customer_id,
        "contact_id": contact_id,
        "started_at": start + pd.to_timedelta(column["start_offset_s"], unit="s"),
        "channel": np.asarray(CHANNELS, dtype=object)[column["channel_code"]],
        "answer_time_s": column["answer_time_s"].round(1),
        "abandoned": column["abandoned"],
        "hold_time_s": column["hold_time_s"].round(1),
        "handle_time_s": column["handle_time_s"].round(1),
        "transfers": column["transfers"].astype(np.int64),
        "product_problem": column["product_problem"],
        "resolved": column["resolved"],
        "repeat_contacts_30d": column["repeat_contacts_30d"].astype(np.int64),
        "tenure_months": column["tenure_months"].round(1),
        "monthly_value": column["monthly_value"].round(2),
        "csat": column["csat"],
    })
    labels = pd.DataFrame({
        "contact_id": contact_id,
        "churned": column["churned"].astype(np.int64),
        "retaliation": np.asarray(RETALIATION_TYPES, dtype=object)[column["retaliation_code"]],
    })
    truth = pd.DataFrame({
        "customer_id": customer_id,
        "contact_id": contact_id,
        "product_problem": column["product_problem"],
        "care_effective": column["care_effective"],
        "care_quality": column["care_quality"],
        "seed_group": np.asarray(SEED_GROUPS, dtype=object)[column["group"]],
        "poor_experience": column["poor_experience"],
        "satisfaction": column["satisfaction"],
    })
    return interactions, labels, truth


def with_agents(rng: np.random.Generator, interactions: pd.DataFrame, truth: pd.DataFrame,
                params: GeneratorParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interactions with an `agent_id` column (missing for abandoned contacts) and the truth with each contact's
    agent and that agent's skill (the ground truth of an agent scorecard)."""
    agent, skill = drawn_agents(rng, truth["care_quality"].to_numpy(), ~interactions["abandoned"].to_numpy(),
                                params.contacts_per_agent, params.agent_care_share, params.care_quality_beta)
    names = identifiers("A", skill.size)
    agent_id = np.where(agent >= 0, names[np.maximum(agent, 0)], None)
    interactions = interactions.assign(agent_id=agent_id)
    truth = truth.assign(agent_id=agent_id, agent_skill=np.where(agent >= 0, skill[np.maximum(agent, 0)], np.nan))
    return interactions, truth


def generate(customers: int, seed: int = 0, start: str = "2026-11-01", transcripts: bool = True,
             params: Optional[GeneratorParams] = None) -> SyntheticData:
    """`customers` customers, each with one labelled contact (their latest), reproducible from `seed`.

    Tables and transcripts draw from separate random streams, so `transcripts=False` gives identical tables.
    """
    if customers < 1:
        raise UsageError(f"customers must be at least 1, got {customers}")
    params = params or GeneratorParams()
    # Spawned children are numbered: the agents' stream, added third, leaves the first two (and their draws) as they were.
    tables_stream, text_stream, agents_stream = np.random.SeedSequence(seed).spawn(3)
    world = _world(np.random.default_rng(tables_stream), customers, params)
    start_at = pd.Timestamp(start)
    start_at = start_at.tz_localize("UTC") if start_at.tzinfo is None else start_at.tz_convert("UTC")
    interactions, labels, truth = _frames(world, start_at, seed)
    interactions, truth = with_agents(np.random.default_rng(agents_stream), interactions, truth, params)
    conversations = None
    if transcripts:
        with _collector_paused():
            conversations = _conversations(np.random.default_rng(text_stream), interactions, truth, params)
    return SyntheticData(interactions, labels, truth, conversations, seed, params)


# ---------------------------------------------------------------- transcripts

@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector, which millions of new turn dicts would otherwise wake again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


GREETING, OPENING, AGENT_MIDDLE, CUSTOMER_MIDDLE, AGENT_CLOSING, CUSTOMER_CLOSING, FAREWELL = range(7)


def _conversations(rng: np.random.Generator, interactions: pd.DataFrame, truth: pd.DataFrame,
                   params: GeneratorParams) -> list[dict]:
    """One transcripts-contract record per answered contact (nobody spoke to those who abandoned), with turn labels."""
    answered = ~interactions["abandoned"].to_numpy()
    contacts = interactions[answered]
    if contacts.empty:
        return []
    turns, counts, reasons = _turns(rng, contacts, truth["care_quality"].to_numpy()[answered], params)
    bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
    started = contacts["started_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    heads = zip(identifiers("V", len(contacts)).tolist(), contacts["customer_id"].tolist(),
                contacts["contact_id"].tolist(), contacts["agent_id"].tolist(), contacts["channel"].tolist(), started,
                reasons.tolist())
    # `contact_reason` is a label like the turns' own: the truth a call-driver clustering is measured against.
    return [{"conversation_id": conversation_id, "customer_id": customer, "contact_id": contact, "agent_id": agent,
             "channel": channel, "started_at": at, "text_source": SYNTHETIC_TEXT, "contact_reason": reason,
             "turns": turns[bounds[i]:bounds[i + 1]]}
            for i, (conversation_id, customer, contact, agent, channel, at, reason) in enumerate(heads)]


def _turns(rng: np.random.Generator, contacts: pd.DataFrame, quality: np.ndarray,
           params: GeneratorParams) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """All conversations' turns laid end to end, worded, timed and labelled; the number of turns in each; and why
    each customer came (the issue or the request their opening names)."""
    problem, resolved = contacts["product_problem"].to_numpy(), contacts["resolved"].to_numpy()
    channel_code = pd.Categorical(contacts["channel"], categories=CHANNELS).codes.astype(int)
    base, per_problem, per_poor = params.turn_pairs_extra
    pairs = 2 + rng.binomial(3, np.clip(base + per_problem * problem + per_poor * (1 - quality), 0, 1))
    farewell = ((pairs < 5) & (rng.random(pairs.size) < params.farewell_probability)).astype(int)
    counts = 2 * pairs + farewell
    conversation, index, kind = _turn_kinds(pairs, farewell)
    is_agent = np.isin(kind, (GREETING, AGENT_MIDDLE, AGENT_CLOSING, FAREWELL))
    noisy_quality = quality[conversation] + rng.normal(0, params.warmth_noise_sd, kind.size)
    warmth = np.where(is_agent, expit(params.warmth_steepness * (noisy_quality - quality_bar(params))), 0.5)
    levels = _empathy_levels(rng, warmth, kind, problem[conversation], params)
    end_mood = _end_sentiments(rng, quality - quality_bar(params), resolved, problem, params)
    sentiment = _customer_sentiments(rng, conversation, index / (counts[conversation] - 1), kind, warmth,
                                     np.where(problem, -1, 0)[conversation], end_mood[conversation], params)
    written = (channel_code != CHANNELS.index("phone")).astype(int)
    agent = _agent_texts(rng, kind, levels, warmth, problem[conversation], resolved[conversation],
                         written[conversation])
    customer = _customer_texts(rng, kind, sentiment, problem[conversation])
    texts, picks = _filled(rng, np.where(is_agent, agent, customer), conversation, pairs.size)
    start_s, end_s = _timings(rng, np.fromiter(map(len, texts), int, texts.size), conversation, index, kind,
                              channel_code, quality, contacts["hold_time_s"].to_numpy(), params)
    reasons = np.where(problem, picks["issue"], picks["request"])
    return _turn_records(texts, is_agent, sentiment, levels, start_s, end_s), counts, reasons


def _turn_kinds(pairs: np.ndarray, farewell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per turn of all conversations laid end to end: its conversation, its index in it, and its kind.

    Agent and customer alternate, the agent first: greeting, the customer's opening, middle pairs, the agent's
    closing, the customer's last word, and sometimes an agent farewell.
    """
    counts = 2 * pairs + farewell
    conversation = np.repeat(np.arange(counts.size), counts)
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    closing = 2 * pairs[conversation] - 2
    kind = np.select(
        [index == 0, index == 1, index == closing, index == closing + 1, index == closing + 2, index % 2 == 0],
        [GREETING, OPENING, AGENT_CLOSING, CUSTOMER_CLOSING, FAREWELL, AGENT_MIDDLE], CUSTOMER_MIDDLE)
    return conversation, index, kind


def _empathy_levels(rng: np.random.Generator, warmth: np.ndarray, kind: np.ndarray, problem: np.ndarray,
                    params: GeneratorParams) -> np.ndarray:
    """EPITOME levels (0-2) per turn and mechanism: strong empathy needs high warmth; closings only react."""
    reaction_warmth = warmth * np.where(problem, 1.0, params.request_empathy_factor)
    levels = np.zeros((warmth.size, len(MECHANISMS)), dtype=int)
    for mechanism, w in enumerate((reaction_warmth, warmth, warmth)):
        levels[:, mechanism] = (rng.random(w.size) < w).astype(int) + (rng.random(w.size) < w ** 2)
    levels[kind != AGENT_MIDDLE, 1:] = 0
    levels[~np.isin(kind, (AGENT_MIDDLE, AGENT_CLOSING))] = 0
    return levels


def _agent_texts(rng: np.random.Generator, kind: np.ndarray, levels: np.ndarray, warmth: np.ndarray,
                 problem: np.ndarray, resolved: np.ndarray, written: np.ndarray) -> np.ndarray:
    """Agent turns: empathy components around a helpful or deflecting core; empty for customer turns."""
    middle, closing = kind == AGENT_MIDDLE, kind == AGENT_CLOSING
    helpful = rng.random(kind.size) < warmth
    core_bank = np.select(
        [kind == GREETING, kind == FAREWELL, middle & ~helpful, middle & problem, middle,
         closing & resolved, closing & helpful, closing],
        [1 + written, 3, 4, 5, 6, 7, 8, 9], 0)
    core = _phrases(rng, ((), phrases.VOICE_GREETINGS, phrases.WRITTEN_GREETINGS, phrases.FAREWELLS,
                          phrases.DEFLECTING_ACTIONS, phrases.HELPFUL_PROBLEM_ACTIONS, phrases.HELPFUL_REQUEST_ACTIONS,
                          phrases.RESOLVED_CLOSINGS, phrases.FOLLOW_UP_CLOSINGS, phrases.DISMISSIVE_CLOSINGS),
                    core_bank)
    reaction, interpretation, exploration = (
        _phrases(rng, ((), bank[1], bank[2]), levels[:, mechanism])
        for mechanism, bank in enumerate((phrases.EMOTIONAL_REACTIONS, phrases.INTERPRETATIONS,
                                          phrases.EXPLORATIONS)))
    return _joined(reaction, interpretation, core, exploration)


def _customer_texts(rng: np.random.Generator, kind: np.ndarray, sentiment: np.ndarray,
                    problem: np.ndarray) -> np.ndarray:
    """Customer turns worded for their sentiment; empty for agent turns."""
    replies = [phrases.CUSTOMER_REPLIES[s] for s in SENTIMENTS]
    closings = [phrases.CUSTOMER_CLOSINGS[s] for s in SENTIMENTS]
    bank = np.select([kind == OPENING, kind == CUSTOMER_MIDDLE, kind == CUSTOMER_CLOSING],
                     [np.where(problem, 1, 2), 4 + sentiment, 7 + sentiment], 0)
    return _phrases(rng, ((), phrases.PROBLEM_OPENINGS, phrases.REQUEST_OPENINGS, *replies, *closings), bank)


def _phrases(rng: np.random.Generator, banks: Sequence[Sequence[str]], which: np.ndarray) -> np.ndarray:
    """For each element, a random phrase from banks[which] (an empty bank gives ''), as an object array."""
    out = np.full(which.size, "", dtype=object)
    position = rng.random(which.size)
    for key, bank in enumerate(banks):
        chosen = which == key
        if len(bank) and chosen.any():
            out[chosen] = np.asarray(bank, dtype=object)[(position[chosen] * len(bank)).astype(int)]
    return out


def _joined(*parts: np.ndarray) -> np.ndarray:
    """Element-wise join of phrase arrays with single spaces, skipping empty phrases."""
    return np.asarray([" ".join(p for p in row if p) for row in zip(*parts)], dtype=object)


def _filled(rng: np.random.Generator, templates: np.ndarray, conversation: np.ndarray, n: int
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(templates with each conversation's product, issue, request and agent name filled in; those picks per
    conversation)."""
    slots = {"product": phrases.PRODUCTS, "issue": phrases.ISSUES, "request": phrases.REQUESTS,
             "agent": phrases.AGENT_NAMES}
    chosen = {name: np.asarray(bank, dtype=object)[rng.integers(0, len(bank), n)] for name, bank in slots.items()}
    picks = {name: values[conversation].tolist() for name, values in chosen.items()}
    return np.asarray([
        text.format(product=picks["product"][i], issue=picks["issue"][i], request=picks["request"][i],
                    agent=picks["agent"][i], company=phrases.COMPANY) if "{" in text else text
        for i, text in enumerate(templates.tolist())], dtype=object), chosen


def _end_sentiments(rng: np.random.Generator, quality_gap: np.ndarray, resolved: np.ndarray, problem: np.ndarray,
                    params: GeneratorParams) -> np.ndarray:
    """How each customer feels at the end (-1/0/1): resolution and good care lift it, and good care is forgiven."""
    resolved_w, care_w, problem_w, noise_sd = params.end_sentiment
    score = resolved_w * resolved + care_w * quality_gap + problem_w * problem + rng.normal(0, noise_sd, resolved.size)
    low, high = params.end_sentiment_cuts
    return np.where(score < low, -1, np.where(score > high, 1, 0))


def _customer_sentiments(rng: np.random.Generator, conversation: np.ndarray, progress: np.ndarray, kind: np.ndarray,
                         warmth: np.ndarray, start: np.ndarray, end: np.ndarray,
                         params: GeneratorParams) -> np.ndarray:
    """Sentiment (-1/0/1) per turn: from the opening mood towards the ending one, reacting to the agent's last turn."""
    previous_warmth = np.concatenate(([0.5], warmth[:-1]))
    drift = (start + (end - start) * progress + params.customer_reaction * (previous_warmth - 0.5)
             + rng.normal(0, params.customer_sentiment_noise_sd, kind.size))
    sentiment = np.clip(np.rint(drift), -1, 1).astype(int)
    return np.select([kind == OPENING, kind == CUSTOMER_CLOSING], [start, end], sentiment)


def _timings(rng: np.random.Generator, text_chars: np.ndarray, conversation: np.ndarray, index: np.ndarray,
             kind: np.ndarray, channel_code: np.ndarray, quality: np.ndarray, hold: np.ndarray,
             params: GeneratorParams) -> tuple[np.ndarray, np.ndarray]:
    """Start and end seconds per turn: speaking or typing time, pauses, the hold before the closing, interruptions."""
    channel = channel_code[conversation]
    spread, minimum_s = params.turn_duration
    speed = np.asarray(params.speech_chars_per_s)[channel]
    duration = text_chars / speed * np.exp(rng.normal(0, spread, kind.size)) + minimum_s
    gap = rng.exponential(np.asarray(params.reply_gap_s)[channel])
    previous = np.concatenate(([0.0], duration[:-1]))
    base, per_poor = params.interruption
    interrupts = ((channel == CHANNELS.index("phone")) & (index > 0)
                  & (rng.random(kind.size) < base + per_poor * (1 - quality[conversation])))
    # An interruption starts before the previous turn ends but after it began, so turns keep their order.
    gap = np.where(interrupts, -rng.uniform(*params.interruption_overlap, kind.size) * previous, gap)
    gap = np.where(kind == AGENT_CLOSING, gap + hold[conversation], gap)
    elapsed = np.cumsum(np.where(index == 0, 0.0, previous + gap))
    start = elapsed - np.repeat(elapsed[index == 0], np.bincount(conversation))
    return start.round(2), (start + duration).round(2)


def _turn_records(texts: np.ndarray, is_agent: np.ndarray, sentiment: np.ndarray, levels: np.ndarray,
                  start_s: np.ndarray, end_s: np.ndarray) -> list[dict]:
    """Turn dicts in the transcripts contract, labelled: `empathy` on agent turns, `sentiment` on customer turns."""
    mood = np.asarray(SENTIMENTS, dtype=object)[sentiment + 1]
    return [
        {"speaker": "agent", "text": text, "start_s": start, "end_s": end,
         "empathy": dict(zip(MECHANISMS, level))}
        if agent else
        {"speaker": "customer", "text": text, "start_s": start, "end_s": end, "sentiment": feeling}
        for text, agent, feeling, level, start, end in zip(
            texts.tolist(), is_agent.tolist(), mood.tolist(), levels.tolist(), start_s.tolist(), end_s.tolist())]


# ---------------------------------------------------------------- output

def write_synthetic(data: SyntheticData, out_dir: Union[str, Path]) -> dict[str, Path]:
    """The tables as Parquet and the conversations as JSON Lines under `out_dir`; returns what was written, by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("interactions", "labels", "truth"):
        written[name] = out / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(getattr(data, name), preserve_index=False), written[name])
    transcripts = out / "transcripts.jsonl"
    if data.conversations:
        written["transcripts"] = write_transcripts(data.conversations, transcripts)
    else:
        # A transcripts file left by an earlier run would pair another data set's conversations with these tables.
        transcripts.unlink(missing_ok=True)
    return written


def marginals(data: SyntheticData) -> pd.DataFrame:
    """The evidence each marginal reproduces (target) beside what this sample shows (observed)."""
    p, contacts, labels, truth = data.params, data.interactions, data.labels, data.truth
    repurchase = 1 - labels["churned"].groupby(truth["seed_group"].to_numpy()).mean()
    retaliates = labels["retaliation"] != "none"
    poor = truth["poor_experience"].to_numpy()
    kinds = labels.loc[retaliates, "retaliation"].value_counts(normalize=True)
    split = np.asarray(p.retaliation_split) / sum(p.retaliation_split)
    rows = [
        ("re-purchase | no problem", p.repurchase_no_problem, repurchase.get("no_problem", np.nan)),
        ("re-purchase | problem, ineffective care", p.repurchase_problem_ineffective,
         repurchase.get("problem_ineffective", np.nan)),
        ("re-purchase | problem, effective care", p.repurchase_problem_effective,
         repurchase.get("problem_effective", np.nan)),
        ("retaliate | poor experience", p.retaliation_poor_experience, retaliates[poor].mean()),
        ("retaliate | no poor experience", p.retaliation_base_rate, retaliates[~poor].mean()),
        *((f"share of retaliators who {kind}", target, kinds.get(kind, 0.0))
          for kind, target in zip(("escalate", "switch", "vent"), split)),
        ("mean answer time (s)", p.mean_answer_time_s, contacts["answer_time_s"].mean()),
        ("abandoned", p.abandon_rate, contacts["abandoned"].mean()),
        ("phone share", p.phone_share, (contacts["channel"] == "phone").mean()),
        ("csat response rate", p.csat_response_rate, contacts["csat"].notna().mean()),
    ]
    return pd.DataFrame(rows, columns=["measure", "target", "observed"])


def sample_dir() -> Path:
    """The bundled sample: 500 customers generated with seed 7 (`carelens generate --customers 500 --seed 7`)."""
    return Path(__file__).resolve().parent / "sample"
