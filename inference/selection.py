"""Which customers are flagged: riskiest contact first, by a capacity, a threshold or the models' own thresholds."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from carelens.data.errors import UsageError
from carelens.data.contracts import stacked, stacked_alike
from carelens.inference.reasons import cited_turns, pushes, reason_features, reason_typicals, reasons_in_words
from carelens.models.conversation_features import AGENT
from carelens.models.satisfaction import INFERRED_CSAT

#: The play a contact centre runs for each kind of retaliation; a churn risk alone gets proactive outreach.
ACTIONS = {"escalate": "supervisor callback", "switch": "retention offer", "vent": "social-care follow-up"}
CHURN_ONLY_ACTION = "proactive outreach"
FLAG_COLUMNS = ["customer_id", "churn_risk", "retaliation_risk", "retaliation_type", "reasons", "action", "risk",
                "contact_id", AGENT, "evidence", INFERRED_CSAT]


def selection_rule(capacity: Optional[int], threshold: Optional[float]) -> str:
    """Which customers get flagged, in words."""
    if capacity is not None:
        return f"capacity: the {capacity:,} riskiest customers"
    if threshold is not None:
        return f"threshold: customers whose risk is at least {threshold:g}"
    return "each model's own decision threshold"


def _is_number(value: Any, whole: bool = False) -> bool:
    """Whether a value is a real number (an integer with `whole`) and not a bool: True is not one customer."""
    kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def checked_selection(capacity: Optional[int], threshold: Optional[float]) -> None:
    """UsageError unless at most one of capacity and threshold is given, each a number in range."""
    if capacity is not None and threshold is not None:
        raise UsageError("give capacity or threshold, not both (neither: each model's own decision threshold)")
    if capacity is not None and not (_is_number(capacity, whole=True) and capacity >= 0):
        raise UsageError(f"capacity must be a whole number of customers, 0 or more, got {capacity!r}")
    if threshold is not None and not (_is_number(threshold) and 0 <= threshold <= 1):
        raise UsageError(f"threshold must be a probability between 0 and 1, got {threshold!r}")


def _larger_risk(contacts: pd.DataFrame) -> pd.Series:
    """Per contact, the risk customers are ranked by: the larger of the churn and the retaliation risk."""
    return np.maximum(contacts["churn_risk"], contacts["retaliation_risk"])


def per_customer(contacts: pd.DataFrame) -> pd.DataFrame:
    """Each customer's riskiest contact (by the larger of the two risks; the first of equals), customers in the order
    they first appear, keeping the contact table's index."""
    return contacts.iloc[_riskiest_positions(contacts, _larger_risk(contacts).to_numpy())]


def _riskiest_positions(contacts: pd.DataFrame, risk: np.ndarray) -> np.ndarray:
    """The row positions of `per_customer`: sorted by customer, riskiest and then earliest first, each customer's
    first row (a groupby's idxmax cost a request's ten contacts more than its models' trees)."""
    codes = pd.factorize(contacts["customer_id"])[0]
    order = np.lexsort((np.arange(len(codes)), -risk, codes))
    order = order[codes[order] >= 0]
    return order[np.r_[True, codes[order][1:] != codes[order][:-1]]] if len(order) else order


def _ranked(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(the positions of each customer's riskiest contact, riskiest first, ties by customer; every contact's `risk`,
    the larger of the two)."""
    risk = _larger_risk(predictions).to_numpy()
    riskiest = _riskiest_positions(predictions, risk)
    # Two stable sorts, the last by risk: ties in risk stay in customer order.
    by_customer = np.argsort(predictions["customer_id"].to_numpy()[riskiest], kind="stable")
    return riskiest[by_customer][np.argsort(-risk[riskiest][by_customer], kind="stable")], risk


def ranked_customers(predictions: pd.DataFrame) -> pd.DataFrame:
    """Each customer's riskiest contact with its `risk` (the larger of the two), riskiest first, ties by customer."""
    ranked, risk = _ranked(predictions)
    return predictions.iloc[ranked].assign(risk=risk[ranked])


def selected(customers: pd.DataFrame, capacity: Optional[int], threshold: Optional[float]) -> pd.DataFrame:
    """The ranked customers a capacity, a threshold or (neither) the models' own thresholds flag."""
    return customers[_chosen(customers["risk"].to_numpy(), capacity, threshold, lambda: _flagged(customers))]


def selected_customers(predictions: pd.DataFrame, capacity: Optional[int], threshold: Optional[float]) -> pd.DataFrame:
    """`selected(ranked_customers(predictions), capacity, threshold)`, taking only the selected rows from the contacts
    (copying a request's every row twice to keep three cost more than choosing them)."""
    ranked, risk = _ranked(predictions)
    chosen = ranked[_chosen(risk[ranked], capacity, threshold, lambda: _flagged(predictions)[ranked])]
    return predictions.iloc[chosen].assign(risk=risk[chosen])


def _flagged(contacts: pd.DataFrame) -> np.ndarray:
    """Whether either model's own threshold flags each contact."""
    return contacts["churn_flagged"].to_numpy(dtype=bool) | contacts["retaliation_flagged"].to_numpy(dtype=bool)


def _chosen(risk: np.ndarray, capacity: Optional[int], threshold: Optional[float],
            flagged: Callable[[], np.ndarray]) -> np.ndarray:
    """Which of the ranked customers (their `risk`, riskiest first) the capacity, the threshold or (neither) the
    models' own thresholds select (`flagged`: whether either flags each; read only then, so that a ranked list
    without the flags can still be cut by capacity or threshold)."""
    if capacity is not None:
        return np.arange(len(risk)) < capacity
    if threshold is not None:
        return risk >= threshold
    return flagged()


def _action_of(retaliation_type: str, retaliation_flagged: bool) -> str:
    """The play for a flagged customer: by the retaliation type when retaliation is flagged, else outreach."""
    return ACTIONS.get(retaliation_type, CHURN_ONLY_ACTION) if retaliation_flagged else CHURN_ONLY_ACTION


def explained(chosen: pd.DataFrame, risk: Callable[[pd.DataFrame], np.ndarray], profile: dict) -> pd.DataFrame:
    """The selected customers as the flagged list (FLAG_COLUMNS): the features that raised each one's `risk` most
    from its riskiest contact with a value worse than the training `profile`'s typical one, in words, the turns of
    its conversation those reasons stand on (`evidence`), its agent, and the action the centre should take."""
    return explained_each([chosen], risk, profile)[0]


def explained_each(chosen: Sequence[pd.DataFrame], risk: Callable[[pd.DataFrame], np.ndarray],
                   profile: dict) -> list[pd.DataFrame]:
    """`explained` of each selection, `risk` called once over the rows of all of them (`contact_predictions_each`
    says why) and the selections alike (`alike`) explained together, each taking back its own rows."""
    if not chosen:
        return []
    groups = stacked_alike(chosen)
    together, blocks = stacked([group for _, group, _ in groups])
    contributions = pushes(risk, together, reason_typicals(profile["typical"]), base=together["risk"],
                           candidates_only=True)
    answers: dict[int, pd.DataFrame] = {}
    for (numbers, group, own), rows in zip(groups, blocks):
        flagged = _explained(group, contributions.iloc[rows].set_axis(group.index), profile)
        answers.update((n, flagged.iloc[span].reset_index(drop=True)) for n, span in zip(numbers, own))
    return [answers[n] for n in range(len(chosen))]


def _explained(chosen: pd.DataFrame, contributions: pd.DataFrame, profile: dict) -> pd.DataFrame:
    """The selected rows as the flagged list, from each row's feature contributions (`explained`)."""
    chosen = chosen.copy()
    features = reason_features(chosen, contributions, profile)
    chosen["reasons"] = reasons_in_words(chosen, features, profile)
    chosen["evidence"] = cited_turns(chosen, features, chosen["reasons"].tolist())
    chosen[AGENT] = chosen[AGENT] if AGENT in chosen.columns else None
    chosen[INFERRED_CSAT] = chosen[INFERRED_CSAT] if INFERRED_CSAT in chosen.columns else np.nan
    chosen["action"] = [_action_of(kind, flagged) for kind, flagged in
                        zip(chosen["retaliation_type"], chosen["retaliation_flagged"])]
    return chosen[FLAG_COLUMNS].reset_index(drop=True)
