"""The transcript model's labelled data: train / validation / test splits, and what each head reads and is scored on."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from carelens.data.adapters import read_labelled_text
from carelens.data.contracts import MECHANISMS, SENTIMENTS
from carelens.data.errors import UsageError
from carelens.training.transcript_options import Options

PathLike = Union[str, Path]
SPLITS = ("train", "validation", "test")
#: Strata smaller than this are pooled, so that a stratified split never meets a class it cannot divide.
MIN_STRATUM = 10
#: Optional sentiment columns: the share of the people who rated a text negative, neutral and positive.
SOFT_COLUMNS = [f"p_{s}" for s in SENTIMENTS]


@dataclass
class Data:
    """The labelled tables of both tasks, each split into train / validation / test."""

    sentiment: dict[str, pd.DataFrame]
    empathy: dict[str, pd.DataFrame]
    #: What the rows' text is: "synthetic" (generator conversations only), "real" or "mixed" (`read_labelled_text`).
    training_text: Optional[str] = None
    #: Whether every row came from the public CSVs, the only text that reports may show (`read_labelled_text`).
    public_text: bool = False

    def sizes(self) -> dict:
        return {task: {split: len(frame) for split, frame in getattr(self, task).items()}
                for task in ("sentiment", "empathy")}


def empathy_strata(frame: pd.DataFrame) -> pd.Series:
    """One stratum per combination of annotated levels (missing as '-'), so each split keeps the mix of all three."""
    return frame[list(MECHANISMS)].astype("string").fillna("-").agg("".join, axis=1)


def _pooled(strata: pd.Series) -> np.ndarray:
    """Strata with the rare ones merged into one, or None when even that cannot be split."""
    counts = strata.value_counts()
    pooled = strata.where(strata.map(counts) >= MIN_STRATUM, "rare").to_numpy()
    return pooled if pd.Series(pooled).value_counts().min() >= 2 else None


def three_way_split(frame: pd.DataFrame, strata: pd.Series, options: Options) -> dict[str, pd.DataFrame]:
    """Train / validation / test parts of a table, stratified and seeded; the test part is never trained on."""
    if frame.empty:
        return {split: frame for split in SPLITS}
    held = options.validation_fraction + options.test_fraction
    rows = np.arange(len(frame))
    train, rest = train_test_split(rows, test_size=held, random_state=options.seed, stratify=_pooled(strata))
    validation, test = train_test_split(rest, test_size=options.test_fraction / held, random_state=options.seed,
                                        stratify=_pooled(strata.iloc[rest]))
    return {split: frame.iloc[part].reset_index(drop=True) for split, part in zip(SPLITS, (train, validation, test))}


def split_data(sentiment: pd.DataFrame, empathy: pd.DataFrame, options: Options) -> Data:
    """Both tasks' tables carved into train / validation / test with the run's seed."""
    return Data(three_way_split(sentiment, sentiment["label"], options),
                three_way_split(empathy, empathy_strata(empathy), options))


def load_data(paths: Sequence[PathLike], options: Options) -> Data:
    """Labelled rows from any mix of airline tweets, EPITOME and labelled transcript files, split for training."""
    labelled = read_labelled_text(paths)
    if labelled.sentiment.empty and labelled.empathy.empty:
        raise UsageError(f"no labelled rows in {', '.join(map(str, paths))}: expected airline tweet or EPITOME CSVs, "
                         f"or transcripts whose turns carry `sentiment` / `empathy` labels")
    return replace(split_data(labelled.sentiment, labelled.empathy, options), training_text=labelled.text,
                   public_text=labelled.public)


def sentiment_targets(frame: pd.DataFrame) -> np.ndarray:
    """Sentiment labels as class indices (negative 0, neutral 1, positive 2)."""
    return frame["label"].map({s: i for i, s in enumerate(SENTIMENTS)}).to_numpy(int)


def soft_sentiment_targets(frame: pd.DataFrame) -> Optional[np.ndarray]:
    """Per row, the share of its raters on each sentiment [n, 3] where the table carries SOFT_COLUMNS (sentences
    rated by several people); None for a table of plain labels."""
    return frame[SOFT_COLUMNS].to_numpy(np.float32) if set(SOFT_COLUMNS) <= set(frame.columns) else None


def empathy_targets(frame: pd.DataFrame) -> np.ndarray:
    """Empathy levels [n, 3 mechanisms], with -100 where a mechanism was not annotated (ignored by the loss)."""
    return frame[list(MECHANISMS)].astype("Int64").fillna(-100).to_numpy(int).reshape(-1, len(MECHANISMS))


def head_targets(data: Data, split: str) -> dict[str, np.ndarray]:
    """Per head, the class index of every row of a split (-100 where unannotated)."""
    empathy = empathy_targets(data.empathy[split])
    return {"sentiment": sentiment_targets(data.sentiment[split]),
            **{m: empathy[:, k] for k, m in enumerate(MECHANISMS)}}


def head_texts(data: Data, split: str, head: str) -> list[str]:
    """The texts a head reads on a split: tweets for sentiment, the agent's replies for empathy."""
    return (data.sentiment[split]["text"] if head == "sentiment" else data.empathy[split]["response"]).tolist()
