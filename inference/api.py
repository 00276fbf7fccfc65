"""The Python API: the `Scorer`, models loaded and checked once that run validate, join, predict, select, explain."""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.contracts import json_records
from carelens.data.errors import UsageError, each_done, raised
from carelens.data.redaction import redacted_conversation
from carelens.inference.agents import agent_scorecard, scorecard_records
from carelens.inference.drivers import driver_report
from carelens.inference.contacts import (
    PREDICTION_COLUMNS, Conversations, Interactions, MissingConversations, PathLike, contact_predictions,
    contact_predictions_each, conversation_list, extra_columns, features_frames, features_needed, interactions_frames,
    join_report, missing_conversations_warning, with_conversation_features, with_conversation_features_each,
)
from carelens.data.readers import Keys
from carelens.inference.selection import (
    checked_selection, explained, explained_each, per_customer, ranked_customers, selected, selected_customers,
)
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.names import TABULAR_MODELS
from carelens.models.drivers import DriverModel, drivers_for
from carelens.models.satisfaction import satisfaction_for
from carelens.models.performance_estimate import performance_estimates
from carelens.models.registry import Registry, RegistryError
from carelens.models.tabular import RiskModel, load_tabular
from carelens.models.scoring_form import compile_trees
from carelens.models.scoring import (
    ScoringOptions, TranscriptPipeline, load_scoring_pipeline, score_turns, transcript_features,
)
from carelens.models.transcript import MODEL_NAME, training_text_warning

Versions = Union[str, dict]


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
    unknown = sorted(set(chosen) - {*TABULAR_MODELS, MODEL_NAME})
    if unknown:
        raise UsageError(f"--version {text!r}: unknown model(s) {', '.join(unknown)}; expected names among "
                         f"{', '.join((*TABULAR_MODELS, MODEL_NAME))}")
    return chosen



@dataclass(frozen=True)
class FlagCall:
    """The arguments of one `Scorer.flag_at_risk` call, for `Scorer.flag_each`."""

    interactions: Interactions
    transcripts: Optional[Conversations] = None
    capacity: Optional[int] = None
    threshold: Optional[float] = None
    transcript_features: Optional[pd.DataFrame] = None
    strict: bool = False
    keys: Optional[Keys] = None


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
    #: The call drivers fitted on the transcript model's embeddings, when the registry has them.
    drivers: Optional[DriverModel] = None
    #: The inferred-satisfaction model, when the registry has one that fits the transcript model.
    satisfaction: Optional[RiskModel] = None

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
        chosen = version if isinstance(version, dict) else {n: version for n in (*TABULAR_MODELS, MODEL_NAME)}
        loaded, metadata, versions = {}, {}, {}
        for name in TABULAR_MODELS:
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
        drivers = transcripts.drivers if transcripts is not None else \
            drivers_for(store, versions[MODEL_NAME]) if MODEL_NAME in versions else None
        satisfaction, unfit = satisfaction_for(store, versions.get(MODEL_NAME))
        scorer = cls(loaded["churn"], loaded["retaliation"], transcripts, versions, metadata, redact=redact,
                     drivers=drivers, satisfaction=satisfaction, warnings=[unfit] if unfit else [])
        scorer.check_schemas(store.root, pinned=isinstance(version, dict) if pinned is None else pinned)
        transcript_metadata = metadata.get(MODEL_NAME, {})
        scorer.warnings += [w for w in (training_text_warning(transcript_metadata) if transcript_metadata else None,
                                        transcript_metadata.get("runtime_warning")) if w]
        return scorer

    def check_schemas(self, where: PathLike = "the registry", pinned: bool = False) -> None:
        """RegistryError when a tabular model needs transcript features but no transcript model is published, was
        trained before reasons could be given (no training profile), or was trained on the features of another
        transcript model version than the one loaded (a warning instead when the versions were pinned)."""
        for name, model in zip(TABULAR_MODELS, (self.churn, self.retaliation)):
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
        stale = {name: self.metadata[name].get("transcript_model") for name in TABULAR_MODELS
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
        return features_needed(self.models)

    @property
    def models(self) -> tuple[RiskModel, ...]:
        """The tabular models a contact is predicted with: churn, retaliation and, when loaded, satisfaction."""
        return (self.churn, self.retaliation, *((self.satisfaction,) if self.satisfaction is not None else ()))

    @property
    def runtime_choice(self) -> Optional[dict]:
        """How the transcript model's encoder runs and why (`auto`'s measurement, or the options given); None when
        no encoder is loaded."""
        return self.metadata.get(MODEL_NAME, {}).get("runtime_choice") if self.transcripts is not None else None

    @property
    def uses_transcripts(self) -> bool:
        return any(f in FEATURE_COLUMNS for f in self.features)

    def extra_columns(self) -> tuple[list[str], list[str]]:
        """Features beyond the interactions contract and the transcript features: (numeric, categorical)."""
        return extra_columns(self.models)

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

    def score_transcripts(self, conversations: Conversations, show_progress_bar: bool = False,
                          keys: Optional[Keys] = None) -> pd.DataFrame:
        """One row per conversation, in input order: ids and the transcript features (personal data masked first
        when the Scorer redacts); a file's contract keys read from the fields `keys` names ({"contact_id":
        "call_id"}). `attrs["warnings"]` lists what loading the models warned of."""
        features = transcript_features(self.transcripts, self._conversations(conversations, keys), show_progress_bar)
        features.attrs["warnings"] = list(self.warnings)
        return features

    def score_turns(self, conversations: Conversations, keys: Optional[Keys] = None) -> pd.DataFrame:
        """One row per turn, in input order: ids, speaker, the turn's text (masked when the Scorer redacts) and its
        scores: a customer turn's sentiment probabilities and `sentiment` (P(positive) − P(negative)), an agent turn's
        expected level per empathy mechanism and `empathy` in [0, 1]; `keys` as in `score_transcripts`."""
        turns = score_turns(self.transcripts, self._conversations(conversations, keys))
        turns.attrs["warnings"] = list(self.warnings)
        return turns

    def _conversations(self, conversations: Conversations, keys: Optional[Keys]) -> list:
        """The conversations validated (a file read with `keys`), personal data masked when the Scorer redacts."""
        if self.transcripts is None:
            raise RegistryError("no transcript model is loaded; publish one with `carelens train transcripts`")
        given = conversation_list(conversations, keys)
        return [redacted_conversation(c) for c in given] if self.redact else given

    def contact_table(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                      transcript_features: Optional[pd.DataFrame] = None, keys: Optional[Keys] = None) -> pd.DataFrame:
        """The interactions, validated once, with every feature the models take (transcript features joined on
        contact_id; NaN where a contact has no conversation, which the models were trained to expect);
        `attrs["joins"]` says how the conversations matched the contacts (`join_report`), when any were given."""
        call = FlagCall(interactions, transcripts, transcript_features=transcript_features, keys=keys)
        return raised(self.contact_tables([call])[0])

    def contact_tables(self, calls: Sequence[FlagCall]) -> list[Union[pd.DataFrame, Exception]]:
        """`contact_table` of each call's interactions, transcripts, transcript features and keys: its table, or the
        error it alone raised; the interactions and features of them all checked together."""
        given = interactions_frames([call.interactions for call in calls], *self.extra_columns())
        features = features_frames([call.transcript_features for call in calls])
        answers: dict[int, Union[pd.DataFrame, Exception]] = {}
        inputs = each_done(range(len(calls)), lambda n: (raised(given[n]), self._call_features(calls[n],
                                                                                               raised(features[n]))),
                           answers)
        tables = [table for table, _ in inputs.values()]
        joined = with_conversation_features_each(tables, [f for _, f in inputs.values()]) if self.uses_transcripts \
            else tables
        made = dict(zip(inputs, joined))
        answers.update(each_done(made, lambda n: self._with_join_report(made[n], calls[n], *inputs[n]), answers))
        return [answers[number] for number in range(len(calls))]

    def _call_features(self, call: FlagCall, transcript_features: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
        """The call's transcript features: given, or scored from its transcripts when an encoder is loaded."""
        if transcript_features is None and call.transcripts is not None and self.transcripts is not None:
            return self.score_transcripts(call.transcripts, keys=call.keys)
        return transcript_features

    def _with_join_report(self, joined: pd.DataFrame, call: FlagCall, table: pd.DataFrame,
                          transcript_features: Optional[pd.DataFrame]) -> pd.DataFrame:
        """The joined table with `attrs["joins"]`: how the call's conversations matched its contacts (`join_report`),
        when any were given and the models read them."""
        joined.attrs["joins"] = join_report(transcript_features, table,
                                            contact_field=(call.keys or {}).get("contact_id")) \
            if transcript_features is not None and self.uses_transcripts else None
        return joined

    def joined(self, table: pd.DataFrame, transcript_features: Optional[pd.DataFrame]) -> pd.DataFrame:
        """Validated interactions with the conversation features joined on contact_id (the last conversation of a
        contact wins); unchanged when the models take no transcript features."""
        return with_conversation_features(table, transcript_features) if self.uses_transcripts else table

    def contact_predictions(self, table: pd.DataFrame) -> pd.DataFrame:
        """Per contact, predicted once: churn and retaliation risk, each model's flag, the likeliest retaliation type
        (empty unless retaliation is flagged), and the features the models read (for reasons and drift)."""
        return contact_predictions(self.churn, self.retaliation, table, self.satisfaction)

    def missing_conversations(self, contacts: pd.DataFrame, joins: Optional[dict] = None) -> Optional[str]:
        """A warning when the models read transcript features and answered contacts have none (no conversation
        with their contact_id was given), saying from `joins` why the conversations given matched none; None
        otherwise. Abandoned contacts have no conversation by nature."""
        return missing_conversations_warning(contacts, joins) if self.uses_transcripts else None

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
        return explained(selected(customers, capacity, threshold), self.risk, self.profile)

    def compile_trees(self) -> int:
        """Compile the tabular models' large boosters to native code (`carelens.models.compiled_trees`), or load
        them from the cache where an earlier process compiled them: what the service and the nightly job do before
        they score; how many fold models now score compiled (the others through treelite's runtime, to the same
        sums)."""
        return sum(compile_trees(model.estimator_) for model in self.models)

    def risk(self, table: pd.DataFrame) -> np.ndarray:
        """The risk customers are ranked by: the larger of P(churn) and P(retaliate)."""
        return np.maximum(self.churn.risk(table), self.retaliation.risk(table))

    # -- the API ------------------------------------------------------------------------------------------------

    def predict(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                keys: Optional[Keys] = None) -> pd.DataFrame:
        """Per customer (their riskiest contact of the batch): churn probability, retaliation probability, the
        likeliest retaliation type when retaliation is flagged, and whether each model's own threshold flags them;
        `keys`, `attrs["warnings"]` and `attrs["joins"]` as in `flag_at_risk`."""
        table = self.contact_table(interactions, transcripts, keys=keys)
        predictions = self.contact_predictions(table)
        predicted = per_customer(predictions)[PREDICTION_COLUMNS].reset_index(drop=True)
        joins = table.attrs["joins"]
        return self._warned(predicted, self.missing_conversations(predictions, joins), joins)

    def flag_at_risk(self, interactions: Interactions, transcripts: Optional[Conversations] = None,
                     capacity: Optional[int] = None, threshold: Optional[float] = None,
                     transcript_features: Optional[pd.DataFrame] = None, strict: bool = False,
                     keys: Optional[Keys] = None) -> pd.DataFrame:
        """Customers at risk, riskiest first: the `capacity` riskiest, or those with risk >= `threshold`, or
        (neither given) those either model's own threshold flags. Each with up to three reasons, the actionable
        features worse than typical that raised their risk most, in words (`carelens.inference.reasons`), and the
        action the centre should take. A transcript file's contract keys are read from the fields `keys` names
        ({"contact_id": "convo_id"}). The result's `attrs["joins"]` says how the conversations matched the contacts
        (`join_report`), `attrs["expected_performance"]` the precision and recall each model's flags are expected to
        have over these contacts beside the held-out figures (`performance_estimates`; empty under MIN_DRIFT_ROWS
        contacts), and `attrs["warnings"]` lists what the caller should know (answered contacts without conversation
        features; with `strict`, that raises MissingConversations); `attrs["agents"]` is the scorecard of the agents
        the contacts name, as records (`agent_scorecard`; empty when none does), and `attrs["drivers"]` the call
        drivers of their conversations (`driver_report`; empty without a drivers model)."""
        call = FlagCall(interactions, transcripts, capacity, threshold, transcript_features, strict, keys)
        return raised(self.flag_each([call])[0])

    def flag_each(self, calls: Sequence[FlagCall]) -> list[Union[pd.DataFrame, Exception]]:
        """`flag_at_risk` for each call, in order, each model called once over the contacts of them all (the service
        flags concurrent requests so): each call's flagged customers, or the error that call alone raised."""
        try:
            return self._flagged_together(calls)
        except Exception as error:
            if len(calls) == 1:
                return [error]
            # A model call the calls shared failed: each call alone, so that one call's rows fail that call only.
            return [self.flag_each([call])[0] for call in calls]

    def _flagged_together(self, calls: Sequence[FlagCall]) -> list[Union[pd.DataFrame, Exception]]:
        """`flag_each`, raising only when a stage the calls share fails."""
        answers: dict[int, Union[pd.DataFrame, Exception]] = {}
        selecting = list(each_done(range(len(calls)),
                                   lambda i: checked_selection(calls[i].capacity, calls[i].threshold), answers))
        made = dict(zip(selecting, self.contact_tables([calls[i] for i in selecting])))
        tables = each_done(made, lambda i: raised(made[i]), answers)
        predicted = dict(zip(tables, contact_predictions_each(self.churn, self.retaliation, list(tables.values()),
                                                              self.satisfaction)))
        gaps = each_done(predicted, lambda i: self._strict_gap(calls[i], predicted[i], tables[i].attrs["joins"]),
                         answers)
        chosen = each_done(gaps, lambda i: selected_customers(predicted[i], calls[i].capacity, calls[i].threshold),
                           answers)
        flagged = dict(zip(chosen, explained_each(list(chosen.values()), self.risk, self.profile)))
        answers.update(each_done(flagged, lambda i: self._flag_attrs(
            self._warned(flagged[i], gaps[i], tables[i].attrs["joins"]), predicted[i]), answers))
        return [answers[i] for i in range(len(calls))]

    def _strict_gap(self, call: FlagCall, predictions: pd.DataFrame, joins: Optional[dict]) -> Optional[str]:
        """The missing-conversations warning; MissingConversations instead when the call is strict."""
        gap = self.missing_conversations(predictions, joins)
        if gap and call.strict:
            raise MissingConversations(gap)
        return gap

    def _flag_attrs(self, flagged: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
        """The flagged customers with the agents' scorecard, the call drivers and the expected performance in
        `attrs` (`flag_at_risk`)."""
        # Read before the attrs grow: pandas deep-copies a frame's attrs into every column it hands out.
        customers = flagged["customer_id"]
        flagged.attrs["agents"] = scorecard_records(agent_scorecard(predictions, customers, redact=self.redact))
        flagged.attrs["drivers"] = json_records(driver_report(predictions, customers, self.drivers))
        flagged.attrs["expected_performance"] = performance_estimates(self.metadata, predictions)
        return flagged

    def _warned(self, result: pd.DataFrame, gap: Optional[str], joins: Optional[dict]) -> pd.DataFrame:
        """`result` with `attrs["warnings"]` (what the models' loading warned of, and the missing conversations) and
        `attrs["joins"]`."""
        result.attrs["warnings"] = [*self.warnings, *([gap] if gap else [])]
        result.attrs["joins"] = joins
        return result
