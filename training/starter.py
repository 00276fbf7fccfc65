"""The starter transcript model: built from permissively licensed text only, so that any registry reads real conversations."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import MECHANISMS, SENTIMENTS
from carelens.data.adapters import labelled_turns
from carelens.data.public_text import VADER, fetched, rated_sentences
from carelens.data.synthetic import generate
from carelens.models.empathy_rules import RULES, rule_levels
from carelens.models.scoring import as_conversations
from carelens.models.transcript import without_handles
from carelens.training import empathy_prototypes, sentiment_prototypes
from carelens.training.splits import SOFT_COLUMNS, Data, empathy_strata, three_way_split
from carelens.training.transcript_options import Options
from carelens.training.transcripts import Trained, trained_on

PathLike = Union[str, Path]
#: What a starter's `training_text` says: text people wrote, under licences that allow commercial use.
STARTER_TEXT = "public-permissive"
#: Rule-labelled sentences in the empathy table (the rules, not this table, carry most of the starter's empathy).
EMPATHY_SENTENCES = 4_000
#: Customers of the seeded generator whose labelled turns join the rated sentences: contact-centre wording (a
#: complaint about a fault with no feeling word in it is still negative), a few thousand distinct turns.
GENERATED_CUSTOMERS = 10_000
GENERATOR_SEED = 29
#: Generated agent turns in the empathy table (the rules carry most of the starter's empathy).
GENERATED_REPLIES = 3_000
#: Each generated customer turn counts this many times in the training rows: a few thousand turns of contact-centre
#: wording beside 23,702 sentences mostly from reviews and editorials.
GENERATED_WEIGHT = 3
#: Each hand-written prototype counts this many times in the empathy training rows: 70 replies written to the
#: definitions weigh as much as about 5,000 rule-labelled sentences.
PROTOTYPE_WEIGHT = 20
#: Each hand-written customer turn counts this many times in the sentiment training rows: 120 turns weigh as much as
#: about 1,200 rated sentences, a twentieth of them.
SENTIMENT_PROTOTYPE_WEIGHT = 10
OWN_SOURCE = {"package": "carelens", "licence": "the project's own", "what": "empathy prototypes "
              "(training/empathy_prototypes.py) and mechanism rules (models/empathy_rules.py) written from the "
              "EPITOME definitions (Sharma et al., 2020), no EPITOME text or label; customer turns written for CareLens "
              "(training/sentiment_prototypes.py); labelled turns of the seeded "
              "synthetic generator (data/synthetic.py)"}


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


def with_repeated(splits: dict[str, pd.DataFrame], extra: pd.DataFrame, times: int) -> dict[str, pd.DataFrame]:
    """The splits with `extra` rows added `times` over to the training rows only (the held-out splits never see
    them)."""
    return {**splits, "train": pd.concat([splits["train"], *[extra] * times], ignore_index=True)}


def generated_turns() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sentiment, empathy) tables of the seeded generator's labelled turns, each distinct text once."""
    conversations = as_conversations(generate(GENERATED_CUSTOMERS, seed=GENERATOR_SEED).conversations, "generator")
    sentiment, empathy = labelled_turns(conversations, "generator")
    return sentiment.drop_duplicates("text"), empathy.drop_duplicates("response").assign(context="")


def readable(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The table with `column` as the starter reads it (without @handles and links), so that the TF-IDF floor learns
    the same text the encoder sees."""
    return frame.assign(**{column: frame[column].map(without_handles)})


def starter_data(sources: Optional[PathLike], options: Options, rows: Optional[int] = None) -> tuple[Data, list[dict]]:
    """(the starter's training data split with the run's seed — `rows` of the rated sentences drawn with it when
    given —, the sources it came from with their hashes and licences)."""
    archive = fetched(VADER, sources)
    rated = rated_sentences(archive)
    # A quick starter (`rows` of the sentences) draws the same share of the empathy rows, so it stays quick.
    share = min(1.0, (rows or len(rated)) / len(rated))
    rated = rated.sample(frac=share, random_state=options.seed).reset_index(drop=True) if share < 1 else rated
    generated_sentiment, generated_empathy = generated_turns()
    soft = np.eye(len(SENTIMENTS))[generated_sentiment["label"].map(SENTIMENTS.index).to_numpy()]
    sentiment = readable(pd.concat([starter_sentiment(rated), generated_sentiment.assign(
        **dict(zip(SOFT_COLUMNS, soft.T)), generated=True)], ignore_index=True), "text")
    sentiment["generated"] = sentiment["generated"].fillna(False).astype(bool)
    sampled = rated["text"].sample(min(round(EMPATHY_SENTENCES * share), len(rated)), random_state=options.seed)
    generated_empathy = generated_empathy.sample(min(round(GENERATED_REPLIES * share), len(generated_empathy)),
                                                 random_state=options.seed)
    empathy = readable(pd.concat([starter_empathy(sampled), generated_empathy], ignore_index=True), "response")
    empathy = empathy.astype({m: "Int64" for m in MECHANISMS})
    sentiment_splits = three_way_split(sentiment, sentiment["label"], options)
    train = sentiment_splits["train"]
    written = readable(sentiment_prototypes.prototype_table().assign(generated=False), "text")
    sentiment_splits = with_repeated(sentiment_splits, pd.concat(
        [train[train["generated"]]] * (GENERATED_WEIGHT - 1) + [written] * SENTIMENT_PROTOTYPE_WEIGHT), 1)
    data = Data(sentiment_splits, with_repeated(three_way_split(empathy, empathy_strata(empathy), options),
                                                empathy_prototypes.prototype_table(), PROTOTYPE_WEIGHT),
                STARTER_TEXT, True)
    own = {**OWN_SOURCE, "prototypes": len(empathy_prototypes.PROTOTYPES),
           "customer_turns": len(sentiment_prototypes.PROTOTYPES), "rules": {m: len(RULES[m]) for m in MECHANISMS},
           "generator": {"customers": GENERATED_CUSTOMERS, "seed": GENERATOR_SEED, "weight": GENERATED_WEIGHT,
                         "turns": {"sentiment": len(generated_sentiment), "empathy": len(generated_empathy)}}}
    return data, [{**VADER.record(archive), "sentences": len(rated)}, own]


def build_starter(options: Options, sources: Optional[PathLike] = None, encoder: Optional[PathLike] = None,
                  log: Callable[[str], None] = print, rows: Optional[int] = None) -> Trained:
    """The starter model trained on the permissive sources (`rows` of the rated sentences, default all), its metadata
    naming them (`sources`, `training_text`)."""
    data, records = starter_data(sources, options, rows)
    trained = trained_on(data, options, encoder, log)
    return replace(trained, details={**trained.details, "sources": records})


def starter_options(**chosen) -> Options:
    """The training options a starter is built with: windows of 128 tokens (rated sentences are short; scoring
    windows longer turns), text read without @handles and links, the raters' shares as they are (no class weights:
    balancing lifted neutral far past its share of customer text), and the empathy heads pooled with the rules."""
    return Options(**{"max_length": 128, "empathy_floor": "rules", "empathy_repeats": 1, "epochs": 2, "lr": 5e-5,
                      "strip_handles": True, "class_weights": False, **chosen})
