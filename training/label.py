"""Which turns a person should label first: those the current model is least sure of, spread over the kinds of turns."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import MiniBatchKMeans

from carelens.data.adapters import LABEL_COLUMNS
from carelens.data.contracts import LEVEL_NAMES, MECHANISMS, SENTIMENTS
from carelens.models.scoring import TranscriptPipeline, turn_table


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of each row's distribution over its last axis, divided by its maximum: 0 certain, 1 uniform."""
    clipped = np.clip(probabilities, 1e-12, 1)
    return -(clipped * np.log(clipped)).sum(axis=-1) / np.log(probabilities.shape[-1])


#: The share of each group's turns, nearest its centre, among which the least certain is picked.
TYPICAL_SHARE = 0.25


def diverse_uncertain(embeddings: np.ndarray, uncertainty: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of `n` turns: all turns clustered on their embeddings into n groups (k-means), and from each group
    the least certain of its typical turns (the quarter nearest the group's centre). The groups keep the mix of kinds
    of turns; the least certain turn of a whole group is mostly an odd one out, and a model adapted on odd ones out
    learns less (tests/benchmarks/test_learning_curves.py: 300 tweets so picked scored 0.791 against a random
    draw's 0.830)."""
    if n <= 0 or len(uncertainty) == 0:
        return np.zeros(0, dtype=int)
    if len(uncertainty) <= n:
        return np.argsort(-uncertainty, kind="stable")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    clusters = MiniBatchKMeans(n_clusters=n, n_init=1, random_state=seed, batch_size=max(1024, 3 * n)).fit(unit)
    centres = clusters.cluster_centers_ / np.maximum(np.linalg.norm(clusters.cluster_centers_, axis=1, keepdims=True),
                                                     1e-12)
    turns = pd.DataFrame({"row": np.arange(len(uncertainty)), "group": clusters.labels_, "uncertainty": uncertainty,
                          "closeness": (unit * centres[clusters.labels_]).sum(axis=1)})
    nearness = turns.groupby("group")["closeness"].rank(ascending=False, method="first")
    typical = turns[nearness <= np.maximum(1, TYPICAL_SHARE * turns.groupby("group")["row"].transform("size"))]
    first = typical.sort_values("uncertainty", ascending=False, kind="stable").groupby("group").head(1)["row"].to_numpy()
    # A group k-means left empty gives no pick: the least certain turns not yet picked make up the number.
    ranked = turns.sort_values("uncertainty", ascending=False, kind="stable")["row"]
    rest = ranked[~ranked.isin(first)].to_numpy()[:n - len(first)]
    return np.concatenate([first, rest])


def shares(counts: Sequence[int], n: int) -> list[int]:
    """`n` split over groups in proportion to their counts, each at most its count (largest remainders)."""
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return [0] * len(counts)
    exact = counts / counts.sum() * min(n, counts.sum())
    given = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - given), kind="stable")[:int(min(n, counts.sum()) - given.sum())]:
        given[k] += 1
    return given.tolist()


def guessed_sentiment(probabilities: np.ndarray) -> list[str]:
    return [f"{SENTIMENTS[k]} {p[k]:.2f}" for p, k in zip(probabilities, probabilities.argmax(axis=1))]


def guessed_levels(probabilities: np.ndarray) -> list[str]:
    return ["; ".join(f"{m} {LEVEL_NAMES[k]}" for m, k in zip(MECHANISMS, row)) for row in probabilities.argmax(axis=2)]


def suggested_turns(pipeline: TranscriptPipeline, conversations: Sequence, n: int, seed: int = 0) -> pd.DataFrame:
    """The `n` turns to label, customer and agent turns in proportion to how many there are (each distinct text once),
    picked by `diverse_uncertain`, with the model's guess and empty label columns, least certain first."""
    model = pipeline.model
    turns = turn_table(conversations)
    turns = turns[turns["text"].str.strip() != ""].drop_duplicates(["speaker", "text"]).reset_index(drop=True)
    customer, agent = turns[turns["speaker"] == "customer"], turns[turns["speaker"] == "agent"]
    wanted = dict(zip(("customer", "agent"), shares([len(customer), len(agent)], n)))
    picked = []
    if len(customer):
        pooled = pipeline.encode(customer["text"].tolist())
        probabilities = model.postprocess_sentiment(model.head_logits(pooled)[0], customer["text"].tolist())
        uncertainty = normalised_entropy(probabilities)
        rows = diverse_uncertain(pooled, uncertainty, wanted["customer"], seed)
        picked.append(customer.iloc[rows].assign(uncertainty=uncertainty[rows],
                                                 model_guess=guessed_sentiment(probabilities[rows])))
    if len(agent):
        pooled = pipeline.encode(agent["text"].tolist(), agent["context"].tolist())
        probabilities = model.postprocess_empathy(model.head_logits(pooled)[1], agent["text"].tolist())
        uncertainty = normalised_entropy(probabilities).mean(axis=1)
        rows = diverse_uncertain(pooled, uncertainty, wanted["agent"], seed)
        picked.append(agent.iloc[rows].assign(uncertainty=uncertainty[rows],
                                              model_guess=guessed_levels(probabilities[rows])))
    chosen = pd.concat(picked, ignore_index=True) if picked else turns.head(0).assign(uncertainty=[], model_guess=[])
    chosen = chosen.sort_values("uncertainty", ascending=False, kind="stable")
    columns = ["conversation_id", "turn_index", "speaker", "context", "text", "model_guess", "uncertainty"]
    return chosen[columns].assign(**{c: "" for c in LABEL_COLUMNS}).reset_index(drop=True)
