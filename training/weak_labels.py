"""The keyword baseline an empathy starter is measured against: a few words per mechanism, written first."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


#: The keyword baseline every starter is measured against: a reply naming any of these words shows the mechanism at
#: its most common level in EPITOME's definitions (a reaction is usually weak, an interpretation or exploration strong).
KEYWORDS = {
    "emotional_reactions": (r"\b(?:sorry|sad|hope|glad|happy for|hugs?)\b", 1),
    "interpretations": (r"\b(?:understand|relate|me too|been there|same here)\b", 2),
    "explorations": (r"\?", 2),
}


def keyword_levels(responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per mechanism, the keyword baseline's level for each reply."""
    text = pd.Series(list(responses), dtype="string").str.lower().fillna("")
    return {m: np.where(text.str.contains(pattern, regex=True), level, 0).astype(int)
            for m, (pattern, level) in KEYWORDS.items()}



