"""The starter transcript model: built from permissively licensed text only, so that any registry reads real conversations."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import MECHANISMS, SENTIMENTS
from carelens.data.public_text import VADER, fetched, rated_sentences
from carelens.models.empathy_rules import RULES, rule_levels
from carelens.training.empathy_prototypes import PROTOTYPES, prototype_table
from carelens.training.transcripts import (
    SOFT_COLUMNS, Data, Options, Trained, empathy_strata, three_way_split, trained_on,
)

PathLike = Union[str, Path]
#: What a starter's `training_text` says: text people wrote, under licences that allow commercial use.
STARTER_TEXT = "public-permissive"
#: Each hand-written prototype counts this many times in the empathy training rows: 70 replies written to the
#: definitions weigh as much as about 5,000 rule-labelled sentences.
PROTOTYPE_WEIGHT = 20
OWN_SOURCE = {"package": "carelens", "licence": "the project's own", "what": "empathy prototypes "
              "(training/empathy_prototypes.py) and mechanism rules (training/weak_labels.py) written from the "
              "EPITOME definitions (Sharma et al., 2020); no EPITOME text or label"}


def starter_sentiment(rated: pd.DataFrame) -> pd.DataFrame:
    """The rated sentences as a sentiment table: each with the share of its raters per class (the soft target) and,
    for metrics and calibration, the class most of them chose."""
    label = np.array(SENTIMENTS)[rated[SOFT_COLUMNS].to_numpy().argmax(axis=1)]
    return pd.DataFrame({"text": rated["text"], "label": label, **{c: rated[c] for c in SOFT_COLUMNS}})


def starter_empathy(texts: pd.Series) -> pd.DataFrame:
    """Sentences labelled by the mechanism rules (weak labels): `context` (none), `response`, a level per mechanism."""
    levels = rule_levels(texts.tolist())
    frame = pd.DataFrame({"context": "", "response": texts.to_numpy(), **levels})
    return frame.astype({m: "Int64" for m in MECHANISMS})


def with_prototypes(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The empathy splits with the prototypes added to the training rows only (the held-out splits stay rule-labelled
    sentences, which the prototypes never join)."""
    repeated = pd.concat([prototype_table()] * PROTOTYPE_WEIGHT, ignore_index=True)
    return {**splits, "train": pd.concat([splits["train"], repeated], ignore_index=True)}


def starter_data(sources: Optional[PathLike], options: Options, rows: Optional[int] = None) -> tuple[Data, list[dict]]:
    """(the starter's training data split with the run's seed — `rows` of the rated sentences drawn with it when
    given —, the sources it came from with their hashes and licences)."""
    archive = fetched(VADER, sources)
    rated = rated_sentences(archive)
    if rows is not None and rows < len(rated):
        rated = rated.sample(rows, random_state=options.seed).reset_index(drop=True)
    sentiment = starter_sentiment(rated)
    empathy = starter_empathy(rated["text"])
    data = Data(three_way_split(sentiment, sentiment["label"], options),
                with_prototypes(three_way_split(empathy, empathy_strata(empathy), options)), STARTER_TEXT, True)
    own = {**OWN_SOURCE, "prototypes": len(PROTOTYPES), "rules": {m: len(RULES[m]) for m in MECHANISMS}}
    return data, [VADER.record(archive), own]


def build_starter(options: Options, sources: Optional[PathLike] = None, encoder: Optional[PathLike] = None,
                  log: Callable[[str], None] = print, rows: Optional[int] = None) -> Trained:
    """The starter model trained on the permissive sources (`rows` of the rated sentences, default all), its metadata
    naming them (`sources`, `training_text`)."""
    data, records = starter_data(sources, options, rows)
    trained = trained_on(data, options, encoder, log)
    return replace(trained, details={**trained.details, "sources": records, "rated_sentences": len(
        pd.concat(data.sentiment.values()))})


def starter_options(**chosen) -> Options:
    """The training options a starter is built with: windows of 128 tokens (rated sentences are short; scoring
    windows longer turns), soft sentiment targets, and the empathy heads pooled with the mechanism rules."""
    return Options(**{"max_length": 128, "empathy_floor": "rules", "empathy_repeats": 1, "epochs": 2, "lr": 5e-5,
                      **chosen})
