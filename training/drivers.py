"""How call drivers are made: the customers' opening turns of history embedded by the transcript model, clustered with the number of drivers chosen by silhouette, each named by class-based TF-IDF, published to the registry."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import silhouette_score

from carelens.data.contracts import Conversation
from carelens.models.drivers import DRIVERS_NAME, DriverModel, unit_rows
from carelens.models.registry import Artifact, Registry, frame_fingerprint
from carelens.models.scoring import TranscriptPipeline

#: The numbers of drivers tried, and the rows the silhouette is measured on (it is quadratic in rows).
DRIVER_COUNTS, SILHOUETTE_ROWS = range(4, 41), 3_000
#: Terms that name a driver.
NAME_TERMS = 3


def opening_turns(conversations: Sequence[Conversation]) -> list[tuple[int, str]]:
    """(position, text) of each conversation's first customer turn that says something: why the customer came."""
    found = []
    for position, conversation in enumerate(conversations):
        text = next((t.text for t in conversation.turns if t.speaker == "customer" and t.text.strip()), None)
        if text is not None:
            found.append((position, text))
    return found


def chosen_count(vectors: np.ndarray, counts: Sequence[int], seed: int) -> tuple[int, dict[int, float]]:
    """(the number of drivers whose k-means clustering has the highest mean silhouette, every count's silhouette)."""
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), SILHOUETTE_ROWS), replace=False)]
    scores = {}
    for k in (k for k in counts if k < len(sample)):
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels, random_state=seed))
    return max(scores, key=scores.get), scores


#: Handles and links name nobody's reason for calling: they are left out of the terms that name a driver.
NOT_TERMS = re.compile(r"@\w+|https?://\S+|www\.\S+")


def class_tfidf_terms(texts: Sequence[str], labels: np.ndarray, count: int, top: int = NAME_TERMS) -> list[list[str]]:
    """Per cluster, its `top` most distinctive terms by class-based TF-IDF (BERTopic's c-TF-IDF): a cluster's texts
    are one document, a term weighs its frequency in that document times log(1 + mean words per cluster / the term's
    frequency over all clusters)."""
    vectorizer = CountVectorizer(stop_words="english", ngram_range=(1, 2), min_df=2, token_pattern=r"(?u)\b[a-zA-Z]{2,}\b")
    counts = vectorizer.fit_transform([NOT_TERMS.sub(" ", text) for text in texts])
    per_cluster = np.vstack([np.asarray(counts[labels == c].sum(axis=0)).ravel() for c in range(count)]).astype(float)
    frequency = per_cluster / np.maximum(per_cluster.sum(axis=1, keepdims=True), 1)
    weight = np.log(1 + per_cluster.sum(axis=1).mean() / np.maximum(per_cluster.sum(axis=0), 1))
    scores = frequency * weight
    vocabulary = vectorizer.get_feature_names_out()
    return [[str(vocabulary[i]) for i in np.argsort(-row, kind="stable")[:top] if row[i] > 0] for row in scores]


def unique_names(terms: list[list[str]]) -> list[str]:
    """Each driver's terms as its name ('billed · twice · month'), numbered where two would read the same."""
    names = [" · ".join(t) or f"driver {i + 1}" for i, t in enumerate(terms)]
    return [f"{name} ({i + 1})" if names.count(name) > 1 else name for i, name in enumerate(names)]


def fit_drivers(pipeline: TranscriptPipeline, conversations: Sequence[Conversation], transcript_model: str,
                counts: Sequence[int] = DRIVER_COUNTS, seed: int = 0) -> tuple[DriverModel, dict]:
    """(the driver model of the conversations' opening turns, what fitting found: the silhouette per count tried and
    the rows): embedded once by `pipeline`, the count chosen by silhouette, k-means refit on every opening turn."""
    texts = [text for _, text in opening_turns(conversations)]
    if len(texts) < 2 * min(counts):
        raise ValueError(f"{len(texts)} conversations with a customer turn; fitting drivers needs at least "
                         f"{2 * min(counts)}")
    vectors = unit_rows(pipeline.encode(texts))
    count, silhouettes = chosen_count(vectors, counts, seed)
    clusters = KMeans(count, n_init=4, random_state=seed).fit(vectors)
    terms = class_tfidf_terms(texts, clusters.labels_, count)
    share = np.bincount(clusters.labels_, minlength=count) / len(texts)
    model = DriverModel(unit_rows(clusters.cluster_centers_), unique_names(terms), terms,
                        [round(float(s), 6) for s in share], transcript_model)
    return model, {"conversations": len(texts), "silhouette": silhouettes, "drivers": count, "seed": seed,
                   "training_data_fingerprint": frame_fingerprint(pd.DataFrame({"text": texts}))}


def publish_drivers(model: DriverModel, found: dict, registry: Registry, source: str) -> Artifact:
    """The driver model as a new registry version, with its lineage (the transcript model whose embeddings it
    clusters), how the count was chosen and where the conversations came from."""
    return registry.publish(DRIVERS_NAME, model.save, {
        "kind": "drivers", "transcript_model": model.transcript_model, "source": source,
        "criterion": "mean silhouette of k-means on unit-length embeddings of the customer's opening turn",
        "names": model.names, "training_share": model.training_share, **found,
    })
