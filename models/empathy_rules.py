"""EPITOME's empathy mechanisms as rules written from their definitions: levels a model can pool with its own."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from carelens.data.contracts import LEVEL_NAMES, MECHANISMS

#: Rules written from the mechanism definitions (Sharma et al., 2020), strongest first: the first that matches
#: names the level. Emotional reactions: warmth or concern, strong when the feeling is named; interpretations: an
#: understanding of the person's feelings or experience, strong when it is specified or shared; explorations: asking
#: about what was not said, strong when the question is about the person's own feelings or situation.
RULES = {
    "emotional_reactions": (
        (2, r"\b(?:i'?m|i am|i feel|i felt|that'?s|that is|it'?s|it is|how|so) (?:so |really |truly |very |deeply )*"
            r"(?:sorry|sad|heartbroken|heartbreaking|awful|terrible|horrible|upset|worried|concerned|happy for you|"
            r"proud of you|glad)\b|\bmy heart (?:goes|breaks)|\bsending (?:you )?(?:love|hugs)|\b(?:big )?hugs\b|<3|:\("),
        (1, r"\b(?:sorry|hope|glad|hang in there|take care|you'?ve got this|you can do (?:it|this)|good luck|"
            r"(?:it|things|everything) will (?:be|get) (?:ok|okay|fine|better)|stay strong|be gentle with yourself|"
            r"you'?re not alone|i'?m here for you|thank you for (?:sharing|telling))\b"),
    ),
    "interpretations": (
        (2, r"\b(?:i'?ve been (?:there|through)|i have been (?:there|through)|i went through|i(?:'?ve| have)? (?:also|too) "
            r"(?:had|felt|struggled|dealt|been)|me too|same (?:here|thing happened)|i know (?:exactly )?(?:how|what) "
            r"(?:it|that|you)|i can relate|i used to (?:feel|be|have)|when i was|i (?:was|had|felt) (?:in|the same|"
            r"like that|there)|it (?:must|must have) (?:be|been)|that must (?:be|have)|(?:it )?sounds like you|"
            r"you seem (?:to be )?(?:really |so )?(?:tired|hurt|scared|frustrated|overwhelmed|lonely)|you must (?:feel|be)|"
            r"i (?:can )?(?:see|imagine) (?:how|why|that) (?:you|this|that|it))\b"),
        (1, r"\b(?:i understand|i get (?:it|that)|i hear you|i see|that makes sense|understandable|i know)\b"),
    ),
    "explorations": (
        (2, r"\b(?:you|your|yourself)\b[^.!?]*\?"),
        (1, r"\?"),
    ),
}


class RuleLevels(ClassifierMixin, BaseEstimator):
    """One mechanism's rules as a classifier of replies: the level the first matching rule names gets `confidence`,
    the other levels share the rest. It learns nothing (`fit` only records the classes), so a model can pool it with a
    learned head the way it pools a TF-IDF floor; stored by skops as plain strings, it runs no code on load."""

    def __init__(self, mechanism: str = MECHANISMS[0], confidence: float = 0.8):
        self.mechanism = mechanism
        self.confidence = confidence

    def fit(self, texts=None, levels=None):
        self.classes_ = np.arange(len(LEVEL_NAMES))
        self.patterns_ = [[level, pattern] for level, pattern in RULES[self.mechanism]]
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        text = pd.Series(list(texts), dtype="string").str.lower().fillna("")
        found = np.zeros(len(text), dtype=int)
        for level, pattern in reversed(self.patterns_):
            found = np.where(text.str.contains(pattern, regex=True).to_numpy(bool), level, found)
        probabilities = np.full((len(text), len(self.classes_)), (1 - self.confidence) / (len(self.classes_) - 1))
        probabilities[np.arange(len(text)), found] = self.confidence
        return probabilities

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_proba(texts).argmax(axis=1)


def rule_levels(responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Per mechanism, the level the first matching rule gives each reply (0 where none does)."""
    return {m: RuleLevels(m).fit().predict(responses) for m in MECHANISMS}
