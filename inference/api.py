"""The Python API: load the models once; score transcripts, predict per contact, flag customers with reasons.

The nightly job (`carelens.inference.nightly`) and the HTTP service call the same stage methods the API does:
`contact_table` (validate and join), `contact_predictions` (each contact predicted once) and `flagged` (per-customer
selection, reasons for the flagged only), so every entry point gives the same list for the same input.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import (
    INTERACTION_FEATURES, INTERACTIONS, ContractError, Conversation, check_text_names, validated,
)
from carelens.data.errors import CareLensError, UsageError
from carelens.data.readers import header_lines, read_table, read_transcripts
from carelens.data.redaction import redacted_conversation
from carelens.inference.reasons import pushes, top_reasons
from carelens.models.conversation_features import FEATURE_COLUMNS, TRANSCRIPT_FEATURES
from carelens.models.registry import Registry, RegistryError
from carelens.models.tabular import RiskModel, load_tabular
from carelens.models.scoring import (
    ScoringOptions, TranscriptPipeline, as_conversations, load_scoring_pipeline, transcript_features,
)
from carelens.models.transcript import MODEL_NAME, training_text_warning

PathLike = Union[str, Path]
Interactions = Union[pd.DataFrame, Sequence[dict], PathLike]
Conversations = Union[Sequence[Union[Conversation, dict]], PathLike]
Versions = Union[str, dict]
TABULAR = ("churn", "retaliation")
#: The play a contact centre runs for each kind of retaliation; a churn risk alone gets proactive outreach.
ACTIONS = {"escalate": "supervisor callback", "switch": "retention offer", "vent": "social-care follow-up"}
CHURN_ONLY_ACTION = "proactive outreach"
PREDICTION_COLUMNS = ["customer_id", "contact_id", "churn_risk", "retaliation_risk", "retaliation_type",
                      "churn_flagged", "retaliation_flagged"]
FLAG_COLUMNS = ["customer_id", "churn_risk", "retaliation_risk", "retaliation_type", "reasons", "action", "risk",
                "contact_id"]


class MissingConversations(CareLensError):
    """Models that read transcript features were asked to score answered contacts without their conversations."""


def given_kind(value: object, name: str, expected: str, kinds: tuple) -> None:
    """UsageError naming what `name` got and what was `expected`, unless `value` is one of `kinds`."""
    if not isinstance(value, kinds):
        raise UsageError(f"{name}: got {type(value).__name__}, expected {expected}")


def records_frame(records: Sequence) -> pd.DataFrame:
    """A list of dicts as a table of Python objects (pandas' inferred Arrow strings raise on text that is not valid
    UTF-8); ContractError naming the first record that is not a dict, or whose column name is not valid text."""
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise ContractError("interactions", f"got {type(record).__name__}, expected a dict of column values",
                                row=number)
        check_text_names(list(record), "interactions", row=number)
    return pd.DataFrame(list(records), dtype=object)


def interactions_frame(interactions: Interactions, extra_numeric: Sequence[str] = (),
                       extra_categorical: Sequence[str] = ()) -> pd.DataFrame:
    """Interactions from a DataFrame, a list of dicts or a CSV/Parquet path, typed and checked by the contract."""
    given_kind(interactions, "interactions", "a DataFrame, a list of dicts or a CSV/Parquet path",
               (pd.DataFrame, list, tuple, str, Path))
    if isinstance(interactions, (str, Path)):
        path = Path(interactions)
        return validated(read_table(path), INTERACTIONS, str(path), header_rows=header_lines(path),
                         extra_numeric=extra_numeric, extra_categorical=extra_categorical)
    frame = interactions if isinstance(interactions, pd.DataFrame) else records_frame(interactions)
    # Records number from 1 like file rows without a header, so "row 3" is the third dict or DataFrame row.
    return validated(frame.reset_index(drop=True), INTERACTIONS, "interactions", header_rows=0,
                     extra_numeric=extra_numeric, extra_categorical=extra_categorical)


def features_frame(features: pd.DataFrame) -> pd.DataFrame:
    """Transcript features scored earlier (a DataFrame as `score_transcripts` returns it), typed and checked:
    ContractError naming the row and column of a value that is neither a finite number nor missing."""
    given_kind(features, "transcript_features", "a DataFrame such as score_transcripts returns", (pd.DataFrame,))
    return validated(features.reset_index(drop=True), TRANSCRIPT_FEATURES, "transcript_features", header_rows=0)


def conversation_list(conversations: Conversations) -> list[Conversation]:
    """Conversations from Conversation objects, dicts, or a JSON Lines / long-form Parquet path, validated."""
    given_kind(conversations, "conversations", "a list of conversations (dicts or Conversation) or a JSON Lines / "
                                               "long-form Parquet path", (list, tuple, str, Path))
    if isinstance(conversations, (str, Path)):
        return read_transcripts(conversations)
    return as_conversations(list(conversations))


def features_needed(models: Iterable[RiskModel]) -> list[str]:
    """Every feature any of the models takes, in first-seen order."""
    return list(dict.fromkeys(f for model in models for f in model.feature_names_in_))


def parse_versions(text: str) -> Versions:
    """`latest`, `v3` (every model) or `churn=v2,retaliation=v2,transcripts=v1` (pinned per model)."""
    if "=" not in text:
        return text.strip()
    parts = [part.strip() for part in text.split(",") if part.strip()]
    malformed = [part for part in parts if not part.partition("=")[0].strip() or "=" not in part]
    if malformed:
        raise UsageError(f"--version {text!r}: {malformed[0]!r} is not model=version; expected latest, one version "
                         f"for every model (v2), or model=version pairs (churn=v2,retaliation=v2,transcripts=v1)")
    pairs = [[side.strip() for side in part.split("=", 1)] for part in parts]
    twice = sorted({name for name, _ in pairs if [n for n, _ in pairs].count(name) > 1})
    if twice:
        raise UsageError(f"--version {text!r}: {', '.join(twice)} is pinned twice; expected each model once")
    chosen = dict(pairs)
    unknown = sorted(set(chosen) - {*TABULAR, MODEL_NAME})
    if unknown:
        raise UsageError(f"--version {text!r}: unknown model(s) {', '.join(unknown)}; expected names among "
                         f"{', '.join((*TABULAR, MODEL_NAME))}")
    return chosen


def selection_rule(capacity: Optional[int], threshold: Optional[float]) -> str:
    """Which customers get flagged, in words."""
    if capacity is not None:
        return f"capacity: the {capacity:,} riskiest customers"
    if threshold is not None:
        return f"threshold: customers whose risk is at least {threshold:g}"
    return "each model's own decision threshold"


def is_number(value: Any, whole: bool = False) -> bool:
    """Whether a value is a real number (an integer with `whole`) and not a bool: True is not one customer."""
    kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def checked_selection(capacity: Optional[int], threshold: Optional[float]) -> None:
    """UsageError unless at most one of capacity and threshold is given, each a number in range."""
    if capacity is not None and threshold is not None:
        raise UsageError("give a capacity or a threshold, not both (neither: each model's own decision threshold)")
    if capacity is not None and not (is_number(capacity, whole=True) and capacity >= 0):
        raise UsageError(f"capacity must be a whole number of customers, 0 or more, got {capacity!r}")
    if threshold is not None and not (is_number(threshold) and 0 <= threshold <= 1):
        raise UsageError(f"threshold must be a probability between 0 and 1, got {threshold!r}")


def per_customer(contacts: pd.DataFrame) -> pd.DataFrame:
    """Each customer's riskiest contact (by the larger of the two risks), keeping the contact table's index."""
    risk = np.maximum(contacts["churn_risk"], contacts["retaliation_risk"])
    riskiest = risk.groupby(contacts["customer_id"], sort=False).idxmax()
    return contacts.loc[riskiest.to_numpy()]


def ranked_customers(predictions: pd.DataFrame) -> pd.DataFrame:
    """Each customer's riskiest contact with its `risk` (the larger of the two), riskiest first, ties by customer."""
    customers = per_customer(predictions)
    customers = customers.assign(risk=np.maximum(customers["churn_risk"], customers["retaliation_risk"]))
    return customers.sort_values(["risk", "customer_id"], ascending=[False, True], kind="stable")


def selected(customers: pd.DataFrame, capacity: Optional[int], threshold: Optional[float]) -> pd.DataFrame:
    """The ranked customers a capacity, a threshold or (neither) the models' own thresholds flag."""
    if capacity is not None:
        return customers.head(capacity)
    if threshold is not None:
        return customers[customers["risk"] >= threshold]
    return customers[customers["churn_flagged"] | customers["retaliation_flagged"]]


def action_of(retaliation_type: str, retaliation_flagged: bool) -> str:
    """The play for a flagged customer: by the retaliation type when retaliation is flagged, else outreach."""
    return ACTIONS.get(retaliation_type, CHURN_ONLY_ACTION) if retaliation_flagged else CHURN_ONLY_ACTION


@dataclass
class Scorer:
    """The three models, loaded and checked once, and what the registry recorded about them."""

    churn: RiskModel
    retaliation: RiskModel
    #: The transcript model as a scoring pipeline (runtime, token-budget batches, encoding cache).
    transcripts: Optional[TranscriptPipeline] = None
    versions: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    #: Mask e-mail addresses, phone numbers, card and order numbers in transcript text before it is scored.
    redact: bool = False
    #: What the caller should know about these models (e.g. a transcript model trained on synthetic text only).
    warnings: list = field(default_factory=list)

    @classmethod
    def load(cls, registry: Optional[Union[Registry, PathLike]] = None, version: Versions = "latest",
             load_encoder: bool = True, pinned: Optional[bool] = None, redact: bool = False,
             scoring: ScoringOptions = ScoringOptions()) -> "Scorer":
        """The churn and retaliation models and, when published, the transcript model: checksums verified, library
        versions checked, and the models checked to fit together (feature schemas, and the transcript model version
        the tabular models were trained on). `version` is one version for all three ("latest", "v3") or a dict per
        model name, which pins them (or say so with `pinned`): a pinned set that does not fit together loads with a
        warning instead of an error. `load_encoder=False` loads the tabular models alone (the transcript model's
        metadata is still read); `scoring` says how the transcript model runs (runtime, precision, threads, token
        budget, cache). `redact=True` masks personal data in every transcript before it is scored."""
        store = registry if isinstance(registry, Registry) else Registry(registry)
        chosen = version if isinstance(version, dict) else {n: version for n in (*TABULAR, MODEL_NAME)}
        loaded, metadata, versions = {}, {}, {}
        for name in TABULAR:
            loaded[name], metadata[name] = load_tabular(store, name, chosen.get(name, "latest"))
            versions[name] = metadata[name]["version"]
        transcripts = None
        if store.versions(MODEL_NAME):
            wanted = chosen.get(MODEL_NAME, "latest")
            if load_encoder:
                transcripts, metadata[MODEL_NAME] = load_scoring_pipeline(store, wanted, scoring)
            else:
                metadata[MODEL_NAME] = store.open(MODEL_NAME, wanted).metadata
            versions[MODEL_NAME] = metadata[MODEL_NAME]["version"]
        scorer = cls(loaded["churn"], loaded["retaliation"], transcripts, versions, metadata, redact=redact)
        scorer.check_schemas(store.root, pinned=isinstance(version, dict) if pinned is None else pinned)
        transcript_metadata = metadata.get(MODEL_NAME, {})
        scorer.warnings += [w for w in (training_text_warning(transcript_metadata) if transcript_metadata else None,
                                        transcript_metadata.get("runtime_warning")) if w]
        return scorer

    def check_schemas(self, where: PathLike = "the registry", pinned: bool = False) -> None:
        """RegistryError when a tabular model needs transcript features but no transcript model is published, was
        trained before reasons could be given (no training profile), or was trained on the features of another
        transcript model version than the one loaded (a warning instead when the versions were pinned)."""
        for name, model in zip(TABULAR, (self.churn, self.retaliation)):
            if not hasattr(model, "profile_"):
                raise RegistryError(f"{where}: the {name} model predates per-customer reasons (no training profile); "
                                    f"retrain it with `carelens train {name}`")
        transcript_inputs = [f for f in self.features if f in FEATURE_COLUMNS]
        if transcript_inputs and MODEL_NAME not in self.versions:
            raise RegistryError(f"{where}: the tabular models take transcript features ({', '.join(transcript_inputs)})"
                                f" but no transcript model is published; run `carelens train transcripts` first")
        mismatch = self.lineage_mismatch()
        if mismatch and not pinned:
            raise RegistryError(f"{where}: {mismatch}")
        if mismatch:
            self.warnings.append(f"{mismatch} (loaded anyway: the versions were pinned)")

    def lineage_mismatch(self) -> Optional[str]:
        """What does not fit when a tabular model was trained on another transcript model's features; else None."""
        loaded = self.versions.get(MODEL_NAME)
        stale = {name: self.metadata[name].get("transcript_model") for name in TABULAR
                 if self.metadata[name].get("transcript_model") not in (None, loaded)}
        if not stale:
            return None
        trained = ", ".join(f"{name} {self.versions[name]} on transcripts {v}" for name, v in stale.items())
        return (f"the tabular models were trained on the features of another transcript model ({trained}) than the "
                f"one loaded (transcripts {loaded}), whose scores are on another scale. Retrain "
                f"{' and '.join(stale)} on features scored by transcripts {loaded} (`carelens featurize`, then "
                f"`carelens train {next(iter(stale))} --features-from FILE`), or pin the versions that belong "
                f"together, e.g. --version " + ",".join(f"{n}={self.versions[n]}" for n in stale) +
                f",transcripts={next(iter(stale.values()))}")

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

    @property
    def profile(self) -> dict:
        """The training profile of every feature (the churn model's where both models take a feature)."""
        merged = {"typical": {}, "percentiles": {}, "distributions": {}}
        for model in (self.retaliation, self.churn):
            for part in merged:
                merged[part].update(model.profile_.get(part, {}))
        return merged

    def release_encoder(self) -> None:
        """Drop the transcript model (weights, runtime, cache) and collect it now: scoring transcripts is over, and a
        long-lived batch job should not hold it while it reads the day's predictions."""
        self.transcripts = None
        gc.collect()

    # -- stages -------------------------------------------------------------------------------------------------

    def score_transcripts(self, conversations: Conversations, show_progress_bar: bool = False) -> pd.DataFrame:
        """One row per conversation, in input order: ids and the transcript features (personal data masked first
        when the Scorer redacts)."""
        if self.transcripts is None:
            raise RegistryError("no transcript model is loaded; publish one with `carelens train transcripts`")
        given = conversation_list(conversations)
        return transcript_features(self.transcripts, [redacted_conversation(c) for c in given] if self.redact else given,
                                   show_progress_bar)

    def contact_table(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                      transcript_features: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """The interactions, validated once, with every feature the models take (transcript features joined on
        contact_id; NaN where a contact has no conversation, which the models were trained to expect)."""
        table = interactions_frame(interactions, *self.extra_columns())
        if transcript_features is not None:
            transcript_features = features_frame(transcript_features)
        elif transcripts is not None and self.transcripts is not None:
            transcript_features = self.score_transcripts(transcripts)
        return self.joined(table, transcript_features)

    def joined(self, table: pd.DataFrame, transcript_features: Optional[pd.DataFrame]) -> pd.DataFrame:
        """Validated interactions with the conversation features joined on contact_id (the last conversation of a
        contact wins); unchanged when the models take no transcript features."""
        if not self.uses_transcripts:
            return table
        per_contact = (transcript_features if transcript_features is not None
                       else pd.DataFrame(columns=["contact_id", *FEATURE_COLUMNS]))
        per_contact = per_contact.dropna(subset=["contact_id"]).drop_duplicates("contact_id", keep="last")
        return table.merge(per_contact[["contact_id", *FEATURE_COLUMNS]].astype({"contact_id": str}),
                           on="contact_id", how="left")

    def contact_predictions(self, table: pd.DataFrame) -> pd.DataFrame:
        """Per contact, predicted once: churn and retaliation risk, each model's flag, the likeliest retaliation type
        (empty unless retaliation is flagged), and the features the models read (for reasons and drift)."""
        classes = self.retaliation.classes_.tolist()
        # A batch chunk whose every row broke the contract leaves nothing to predict; scikit-learn refuses 0 rows.
        retaliation = self.retaliation.predict_proba(table) if len(table) else np.zeros((0, len(classes)))
        negative = classes.index(self.retaliation.negative_class_)
        likeliest = np.where(np.arange(len(classes)) == negative, -np.inf, retaliation).argmax(axis=1)
        churn_risk = self.churn.risk(table) if len(table) else np.zeros(0)
        retaliation_risk = self.retaliation.risk_from_proba(retaliation)
        retaliation_flagged = retaliation_risk >= self.retaliation.threshold_
        scores = pd.DataFrame({
            "customer_id": table["customer_id"].astype(str).to_numpy(),
            "contact_id": table["contact_id"].astype(str).to_numpy(),
            "churn_risk": churn_risk, "retaliation_risk": retaliation_risk,
            "retaliation_type": np.where(retaliation_flagged, self.retaliation.classes_[likeliest].astype(str), ""),
            "churn_flagged": churn_risk >= self.churn.threshold_,
            "retaliation_flagged": retaliation_flagged,
        }, index=table.index)
        inputs = [f for f in self.features if f not in scores.columns]
        return pd.concat([scores, table[inputs]], axis=1)

    def missing_conversations(self, contacts: pd.DataFrame) -> Optional[str]:
        """A warning when the models read transcript features and answered contacts have none (no conversation
        with their contact_id was given); None otherwise. Abandoned contacts have no conversation by nature."""
        if not self.uses_transcripts or contacts.empty:
            return None
        answered = ~contacts["abandoned"].astype(bool) if "abandoned" in contacts.columns else \
            pd.Series(True, index=contacts.index)
        lacking = int((answered & contacts[FEATURE_COLUMNS].isna().all(axis=1)).sum())
        if not lacking:
            return None
        return (f"{lacking:,} of {int(answered.sum()):,} answered contacts have no conversation features (no transcript "
                f"with their contact_id was given): the models read them as contacts without a conversation, which "
                f"can move a risk a long way; pass their transcripts or transcript features")

    def flagged(self, predictions: pd.DataFrame, capacity: Optional[int] = None,
                threshold: Optional[float] = None) -> pd.DataFrame:
        """Customers at risk from per-contact predictions, riskiest first: the `capacity` riskiest, those with risk
        >= `threshold`, or (neither) those either model's own threshold flags; reasons are computed for these only,
        from their riskiest contact, and each gets the action the centre should take."""
        return self.flagged_customers(ranked_customers(predictions), capacity, threshold)

    def flagged_customers(self, customers: pd.DataFrame, capacity: Optional[int] = None,
                          threshold: Optional[float] = None) -> pd.DataFrame:
        """`flagged` from customers already ranked (`ranked_customers`)."""
        checked_selection(capacity, threshold)
        chosen = selected(customers, capacity, threshold).copy()
        profile = self.profile
        chosen["reasons"] = top_reasons(chosen, pushes(self.risk, chosen, profile["typical"], base=chosen["risk"]),
                                        profile)
        chosen["action"] = [action_of(kind, flagged) for kind, flagged in
                            zip(chosen["retaliation_type"], chosen["retaliation_flagged"])]
        return chosen[FLAG_COLUMNS].reset_index(drop=True)

    def risk(self, table: pd.DataFrame) -> np.ndarray:
        """The risk customers are ranked by: the larger of P(churn) and P(retaliate)."""
        return np.maximum(self.churn.risk(table), self.retaliation.risk(table))

    # -- the API ------------------------------------------------------------------------------------------------

    def predict(self, interactions: Interactions, transcripts: Optional[Conversations] = None) -> pd.DataFrame:
        """Per customer (their riskiest contact of the batch): churn probability, retaliation probability, the
        likeliest retaliation type when retaliation is flagged, and whether each model's own threshold flags them;
        `attrs["warnings"]` as in `flag_at_risk`."""
        predictions = self.contact_predictions(self.contact_table(interactions, transcripts))
        predicted = per_customer(predictions)[PREDICTION_COLUMNS].reset_index(drop=True)
        gap = self.missing_conversations(predictions)
        predicted.attrs["warnings"] = [*self.warnings, *([gap] if gap else [])]
        return predicted

    def flag_at_risk(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                     capacity: Optional[int] = None, threshold: Optional[float] = None,
                     transcript_features: Optional[pd.DataFrame] = None, strict: bool = False) -> pd.DataFrame:
        """Customers at risk, riskiest first: the `capacity` riskiest, or those with risk >= `threshold`, or
        (neither given) those either model's own threshold flags. Each with the three features that raised their
        risk most, in words, and the action the centre should take. The result's `attrs["warnings"]` lists what
        the caller should know (answered contacts without conversation features; with `strict`, that raises
        MissingConversations instead)."""
        checked_selection(capacity, threshold)
        predictions = self.contact_predictions(self.contact_table(interactions, transcripts, transcript_features))
        gap = self.missing_conversations(predictions)
        if gap and strict:
            raise MissingConversations(gap)
        flagged = self.flagged(predictions, capacity, threshold)
        flagged.attrs["warnings"] = [*self.warnings, *([gap] if gap else [])]
        return flagged
