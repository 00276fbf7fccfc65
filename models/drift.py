"""Is tonight's data like the training data: binned training distributions, and their population stability index."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

#: Bins of a numeric distribution: its deciles on the training rows (fewer where values repeat), plus a missing bin.
QUANTILES = np.linspace(0, 1, 11)[1:-1]
#: A PSI above this means the distribution moved enough to matter (the usual rule of thumb: < 0.1 stable,
#: 0.1–0.2 moderate, > 0.2 a significant shift).
PSI_WARNING = 0.2
#: Fewer rows than this and PSI is noise: drawn from the training distribution itself, 100 rows pass 0.2 on 3% of
#: nights per feature over ten bins (a night of 30 features then warns more often than not), 200 rows on none of
#: 2,000 simulated nights (95th percentile 0.09).
MIN_DRIFT_ROWS = 200
#: Shares are floored here before the logarithm, so an empty bin on one side gives a large but finite PSI.
SHARE_FLOOR = 1e-4
MISSING = "(missing)"


def numeric_distribution(values: pd.Series) -> dict:
    """Bin edges (the training deciles, repeats merged) and each bin's share of the rows, with the missing share."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    present = numbers.dropna().to_numpy()
    edges = np.unique(np.quantile(present, QUANTILES)).tolist() if present.size else []
    return {"kind": "numeric", "edges": edges, "shares": numeric_shares(edges, numbers)}


def numeric_shares(edges: list, values: pd.Series) -> dict[str, float]:
    """Share of rows in each bin (-inf, e1], (e1, e2], …, (ek, inf) and missing, keyed by the bin's label."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    labels = bin_labels(edges)
    missing = np.isnan(numbers)
    index = np.searchsorted(np.asarray(edges, float), numbers[~missing], side="left")
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    total = max(len(numbers), 1)
    return {**dict(zip(labels, (counts / total).tolist())), MISSING: float(missing.sum() / total)}


def bin_labels(edges: list) -> list[str]:
    """Readable bin names: '≤ 12', '12–30', '> 95'."""
    if not edges:
        return ["all"]
    inner = [f"{low:g}–{high:g}" for low, high in zip(edges[:-1], edges[1:])]
    return [f"≤ {edges[0]:g}", *inner, f"> {edges[-1]:g}"]


def categorical_distribution(values: pd.Series) -> dict:
    """Each category's share of the rows (lower-cased, as the models read them), with the missing share."""
    return {"kind": "categorical", "shares": categorical_shares(None, values)}


def categorical_shares(known: Optional[list], values: pd.Series) -> dict[str, float]:
    """Share of rows per category; with `known`, categories outside it are pooled as '(other)'."""
    text = values.astype("string").str.strip().str.lower()
    total = max(len(text), 1)
    counts = text.value_counts(dropna=True)
    shares = {str(k): float(v / total) for k, v in counts.items()}
    if known is not None:
        known_set = set(known) - {MISSING}
        other = sum(v for k, v in shares.items() if k not in known_set)
        shares = {k: shares.get(k, 0.0) for k in known_set}
        if other:
            shares["(other)"] = other
    return {**shares, MISSING: float(text.isna().sum() / total)}


def distribution(values: pd.Series, categorical: bool) -> dict:
    """The training distribution of one feature, as stored in a model's profile."""
    return categorical_distribution(values) if categorical else numeric_distribution(values)


def shares_like(profile: dict, values: pd.Series) -> dict[str, float]:
    """Tonight's shares in the bins (or categories) of a stored training distribution."""
    if profile["kind"] == "numeric":
        return numeric_shares(profile["edges"], values)
    return categorical_shares(list(profile["shares"]), values)


def psi(expected: dict[str, float], actual: dict[str, float]) -> float:
    """Population stability index: Σ (actual − expected) · ln(actual / expected) over the bins of either side."""
    bins = list(dict.fromkeys([*expected, *actual]))
    e = np.maximum([expected.get(b, 0.0) for b in bins], SHARE_FLOOR)
    a = np.maximum([actual.get(b, 0.0) for b in bins], SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_row(name: str, profile: dict, values: pd.Series) -> dict:
    """One feature's (or score's) PSI against its training distribution, whether it passes PSI_WARNING, and both
    distributions."""
    tonight = shares_like(profile, values)
    value = psi(profile["shares"], tonight)
    return {"feature": name, "psi": value, "shifted": value > PSI_WARNING, "training": profile["shares"],
            "tonight": tonight}


def feature_drift(profiles: dict[str, dict], frame: pd.DataFrame) -> list[dict]:
    """A drift row per profiled feature present in `frame`, the largest PSI first."""
    rows = [drift_row(name, profile, frame[name]) for name, profile in profiles.items() if name in frame.columns]
    return sorted(rows, key=lambda r: -r["psi"])
