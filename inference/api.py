"""The Python API: load the churn, retaliation and transcript models once; score transcripts, predict, flag customers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import INTERACTION_FEATURES, INTERACTIONS, Conversation, validated
from carelens.data.errors import UsageError
from carelens.data.readers import header_lines, read_table, read_transcripts
from carelens.inference.reasons import pushes, top_reasons
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.registry import Registry, RegistryError
from carelens.models.tabular import RiskModel, load_tabular
from carelens.models.transcript import (
    MODEL_NAME, SCORING_CACHE_ENTRIES, TranscriptModel, as_conversations, load_transcript_model, transcript_features,
)

PathLike = Union[str, Path]
Interactions = Union[pd.DataFrame, Sequence[dict], PathLike]
Conversations = Union[Sequence[Union[Conversation, dict]], PathLike]
TABULAR = ("churn", "retaliation")
#: The play a contact centre runs for each kind of retaliation; a churn risk alone gets proactive outreach.
ACTIONS = {"escalate": "supervisor callback", "switch": "retention offer", "vent": "social-care follow-up"}
CHURN_ONLY_ACTION = "proactive outreach"
PREDICTION_COLUMNS = ["customer_id", "contact_id", "churn_risk", "retaliation_risk", "retaliation_type",
                      "churn_flagged", "retaliation_flagged"]
FLAG_COLUMNS = ["customer_id", "churn_risk", "retaliation_risk", "retaliation_type", "reasons", "action", "risk",
                "contact_id"]


def interactions_frame(interactions: Interactions, extra_numeric: Sequence[str] = (),
                       extra_categorical: Sequence[str] = ()) -> pd.DataFrame:
    """Interactions from a DataFrame, a list of dicts or a CSV/Parquet path, typed and checked by the contract."""
    if isinstance(interactions, (str, Path)):
        path = Path(interactions)
        return validated(read_table(path), INTERACTIONS, str(path), header_rows=header_lines(path),
                         extra_numeric=extra_numeric, extra_categorical=extra_categorical)
    frame = interactions if isinstance(interactions, pd.DataFrame) else pd.DataFrame(list(interactions))
    # Records number from 1 like file rows without a header, so "row 3" is the third dict or DataFrame row.
    return validated(frame.reset_index(drop=True), INTERACTIONS, "interactions", header_rows=0,
                     extra_numeric=extra_numeric, extra_categorical=extra_categorical)


def conversation_list(conversations: Conversations) -> list[Conversation]:
    """Conversations from Conversation objects, dicts, or a JSON Lines / long-form Parquet path, validated."""
    if isinstance(conversations, (str, Path)):
        return read_transcripts(conversations)
    return as_conversations(list(conversations))


def features_needed(models: Iterable[RiskModel]) -> list[str]:
    """Every feature any of the models takes, in first-seen order."""
    return list(dict.fromkeys(f for model in models for f in model.feature_names_in_))


@dataclass
class Scorer:
    """The three models, loaded and checked once, and what the registry recorded about them."""

    churn: RiskModel
    retaliation: RiskModel
    transcripts: Optional[TranscriptModel] = None
    versions: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    batch_size: int = 64

    @classmethod
    def load(cls, registry: Optional[Union[Registry, PathLike]] = None,
             version: Union[str, dict] = "latest") -> "Scorer":
        """The churn and retaliation models and, when published, the transcript model: checksums verified, library
        versions checked, and the feature schemas checked to fit together. `version` is one version for all three
        ("latest", "v3") or a dict per model name."""
        store = registry if isinstance(registry, Registry) else Registry(registry)
        chosen = version if isinstance(version, dict) else {n: version for n in (*TABULAR, MODEL_NAME)}
        loaded, metadata, versions = {}, {}, {}
        for name in TABULAR:
            loaded[name], metadata[name] = load_tabular(store, name, chosen.get(name, "latest"))
            versions[name] = metadata[name]["version"]
        transcripts = None
        if store.versions(MODEL_NAME):
            transcripts, metadata[MODEL_NAME] = load_transcript_model(store, chosen.get(MODEL_NAME, "latest"),
                                                                      SCORING_CACHE_ENTRIES)
            versions[MODEL_NAME] = metadata[MODEL_NAME]["version"]
        scorer = cls(loaded["churn"], loaded["retaliation"], transcripts, versions, metadata)
        scorer.check_schemas(store.root)
        return scorer

    def check_schemas(self, where: PathLike = "the registry") -> None:
        """RegistryError when a tabular model needs transcript features but no transcript model is published, or was
        trained before reasons could be given (no training profile)."""
        for name, model in zip(TABULAR, (self.churn, self.retaliation)):
            if not hasattr(model, "profile_"):
                raise RegistryError(f"{where}: the {name} model predates per-customer reasons (no training profile); "
                                    f"retrain it with `carelens train {name}`")
        transcript_inputs = [f for f in self.features if f in FEATURE_COLUMNS]
        if transcript_inputs and self.transcripts is None:
            raise RegistryError(f"{where}: the tabular models take transcript features ({', '.join(transcript_inputs)})"
                                f" but no transcript model is published; run `carelens train transcripts` first")

    @property
    def features(self) -> list[str]:
        return features_needed((self.churn, self.retaliation))

    @property
    def uses_transcripts(self) -> bool:
        return any(f in FEATURE_COLUMNS for f in self.features)

    def extra_columns(self) -> tuple[list[str], list[str]]:
        """Features beyond the interactions contract and the transcript features: (numeric, categorical)."""
        extra = [f for f in self.features if f not in INTERACTION_FEATURES and f not in FEATURE_COLUMNS]
        categorical = {f for m in (self.churn, self.retaliation) for f in m.categorical_features_}
        return [f for f in extra if f not in categorical], [f for f in extra if f in categorical]

    # -- scoring ------------------------------------------------------------------------------------------------

    def score_transcripts(self, conversations: Conversations, show_progress_bar: bool = False) -> pd.DataFrame:
        """One row per conversation, in input order: ids and the transcript features."""
        if self.transcripts is None:
            raise RegistryError("no transcript model is loaded; publish one with `carelens train transcripts`")
        return transcript_features(self.transcripts, conversation_list(conversations), self.batch_size,
                                   show_progress_bar)

    def contact_table(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                      transcript_features: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """The validated interactions with every feature the models take (transcript features joined on contact_id;
        NaN where a contact has no conversation, which the models were trained to expect)."""
        numeric, categorical = self.extra_columns()
        table = interactions_frame(interactions, numeric, categorical)
        if transcript_features is None and transcripts is not None and self.transcripts is not None:
            transcript_features = self.score_transcripts(transcripts)
        if self.uses_transcripts:
            per_contact = (transcript_features if transcript_features is not None
                           else pd.DataFrame(columns=["contact_id", *FEATURE_COLUMNS]))
            per_contact = per_contact.dropna(subset=["contact_id"]).drop_duplicates("contact_id", keep="last")
            table = table.merge(per_contact[["contact_id", *FEATURE_COLUMNS]].astype({"contact_id": str}),
                                on="contact_id", how="left")
        return table

    def contact_scores(self, table: pd.DataFrame) -> pd.DataFrame:
        """Per contact: churn and retaliation risk, the likeliest retaliation type, and each model's flag."""
        retaliation = self.retaliation.predict_proba(table)
        classes = self.retaliation.classes_.tolist()
        negative = classes.index(self.retaliation.negative_class_)
        likeliest = np.where(np.arange(len(classes)) == negative, -np.inf, retaliation).argmax(axis=1)
        churn_risk = self.churn.risk(table)
        retaliation_risk = self.retaliation.risk_from_proba(retaliation)
        return pd.DataFrame({
            "customer_id": table["customer_id"].astype(str).to_numpy(),
            "contact_id": table["contact_id"].astype(str).to_numpy(),
            "churn_risk": churn_risk, "retaliation_risk": retaliation_risk,
            "retaliation_type": self.retaliation.classes_[likeliest].astype(str),
            "churn_flagged": churn_risk >= self.churn.threshold_,
            "retaliation_flagged": retaliation_risk >= self.retaliation.threshold_,
        }, index=table.index)

    def predict(self, interactions: Interactions, transcripts: Optional[Conversations] = None) -> pd.DataFrame:
        """Per customer (their riskiest contact of the batch): churn probability, retaliation probability, the most
        likely retaliation type, and whether each model's own threshold flags them."""
        table = self.contact_table(interactions, transcripts)
        return per_customer(self.contact_scores(table))[PREDICTION_COLUMNS].reset_index(drop=True)

    def risk(self, table: pd.DataFrame) -> np.ndarray:
        """The risk customers are ranked by: the larger of P(churn) and P(retaliate)."""
        return np.maximum(self.churn.risk(table), self.retaliation.risk(table))

    @property
    def profile(self) -> dict:
        """The training profile of every feature (the churn model's where both models take a feature)."""
        merged = {"typical": {}, "percentiles": {}}
        for model in (self.retaliation, self.churn):
            for part in merged:
                merged[part].update(model.profile_[part])
        return merged

    def flag_at_risk(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                     top_k: Optional[int] = None, threshold: Optional[float] = None,
                     transcript_features: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """Customers at risk, riskiest first: the `top_k` riskiest, or those with risk >= `threshold`, or (neither
        given) those either model's own threshold flags. Each with the three features that raised their risk most,
        in words, and the action the centre should take."""
        if top_k is not None and top_k < 0:
            raise UsageError(f"top_k must be 0 or more, got {top_k}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise UsageError(f"threshold must be a probability between 0 and 1, got {threshold}")
        table = self.contact_table(interactions, transcripts, transcript_features)
        customers = per_customer(self.contact_scores(table))
        customers["risk"] = np.maximum(customers["churn_risk"], customers["retaliation_risk"])
        customers = customers.sort_values(["risk", "customer_id"], ascending=[False, True], kind="stable")
        if top_k is not None:
            customers = customers.head(top_k)
        elif threshold is not None:
            customers = customers[customers["risk"] >= threshold]
        else:
            customers = customers[customers["churn_flagged"] | customers["retaliation_flagged"]]
        rows = table.loc[customers.index]
        profile = self.profile
        customers["reasons"] = top_reasons(rows, pushes(self.risk, rows, profile["typical"]), profile)
        customers["action"] = [ACTIONS.get(kind, CHURN_ONLY_ACTION) if flagged else CHURN_ONLY_ACTION
                               for kind, flagged in zip(customers["retaliation_type"],
                                                        customers["retaliation_flagged"])]
        return customers[FLAG_COLUMNS].reset_index(drop=True)


def per_customer(contacts: pd.DataFrame) -> pd.DataFrame:
    """Each customer's riskiest contact (by the larger of the two risks), keeping the contact table's index."""
    risk = np.maximum(contacts["churn_risk"], contacts["retaliation_risk"])
    riskiest = risk.groupby(contacts["customer_id"], sort=False).idxmax()
    return contacts.loc[riskiest.to_numpy()]
