"""The contact table: interactions validated, conversation features joined, each contact predicted once."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from carelens.data.adapters import read_conversations
from carelens.data.contracts import (
    INTERACTION_FEATURES, INTERACTIONS, ContractError, Conversation, TableContract, alike, check_text_names, stacked,
    stacked_alike, validated_each,
)
from carelens.data.errors import CareLensError, UsageError, each_done, raised
from carelens.data.readers import Keys, checked_keys, header_lines, read_table
from carelens.models.conversation_features import AGENT, DRIVER, EVIDENCE, FEATURE_COLUMNS, TRANSCRIPT_FEATURES
from carelens.models.satisfaction import INFERRED_CSAT, expected_score
from carelens.models.scoring import as_conversations
from carelens.models.tabular import RiskModel

PathLike = Union[str, Path]
Interactions = Union[pd.DataFrame, Sequence[dict], PathLike]
Conversations = Union[Sequence[Union[Conversation, dict]], PathLike]
PREDICTION_COLUMNS = ["customer_id", "contact_id", "churn_risk", "retaliation_risk", "retaliation_type",
                      "churn_flagged", "retaliation_flagged"]
#: What a contact's prediction carries beside its scores for the supervisor's pages: who answered it (the
#: interactions' agent_id, else its conversation's), the turns its conversation features stand on, its driver, and the
#: satisfaction the customer would likely have rated it (1–5; missing without a satisfaction model).
CONTEXT_COLUMNS = [AGENT, EVIDENCE, DRIVER, INFERRED_CSAT]


class MissingConversations(CareLensError):
    """Models that read transcript features were asked to score answered contacts without their conversations."""


def _given_kind(value: object, name: str, expected: str, kinds: tuple) -> None:
    """UsageError naming what `name` got and what was `expected`, unless `value` is one of `kinds`."""
    if not isinstance(value, kinds):
        raise UsageError(f"{name}: got {type(value).__name__}, expected {expected}")


def _records_frame(records: Sequence) -> pd.DataFrame:
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
    return raised(interactions_frames([interactions], extra_numeric, extra_categorical)[0])


def interactions_frames(given: Sequence[Interactions], extra_numeric: Sequence[str] = (),
                        extra_categorical: Sequence[str] = ()) -> list[Union[pd.DataFrame, Exception]]:
    """`interactions_frame` of each: its typed table, or the error it alone raised; those given as DataFrames or
    records are checked together (`validated_each`), each file on its own."""
    return _validated_tables(given, _raw_interactions, INTERACTIONS, extra_numeric=extra_numeric,
                             extra_categorical=extra_categorical)


def _validated_tables(given: Sequence, raw: Callable[[Any], tuple[pd.DataFrame, str, int]], contract: TableContract,
                      **declared) -> list[Union[pd.DataFrame, Exception]]:
    """Each given, read by `raw` as (an untyped table, the source its errors name, the lines before its first row)
    and validated against `contract`, the tables of one source checked together: its typed table, or the error it
    alone raised."""
    answers: dict[int, Union[pd.DataFrame, Exception]] = {}
    raws = each_done(range(len(given)), lambda number: raw(given[number]), answers)
    sources: dict[tuple[str, int], list[int]] = {}
    for number, (_, source, header_rows) in raws.items():
        sources.setdefault((source, header_rows), []).append(number)
    for (source, header_rows), numbers in sources.items():
        answers.update(zip(numbers, validated_each([raws[number][0] for number in numbers], contract, source,
                                                   header_rows, **declared)))
    return [answers[number] for number in range(len(given))]


def _raw_interactions(interactions: Interactions) -> tuple[pd.DataFrame, str, int]:
    """(the interactions as an untyped table, the source its errors name, the lines before its first row)."""
    _given_kind(interactions, "interactions", "a DataFrame, a list of dicts or a CSV/Parquet path",
                (pd.DataFrame, list, tuple, str, Path))
    if isinstance(interactions, (str, Path)):
        path = Path(interactions)
        return read_table(path), str(path), header_lines(path)
    frame = interactions if isinstance(interactions, pd.DataFrame) else _records_frame(interactions)
    # Records number from 1 like file rows without a header, so "row 3" is the third dict or DataFrame row.
    return frame.reset_index(drop=True), "interactions", 0


def features_frame(features: pd.DataFrame) -> pd.DataFrame:
    """Transcript features scored earlier (a DataFrame as `score_transcripts` returns it), typed and checked:
    ContractError naming the row and column of a value that is neither a finite number nor missing."""
    return raised(features_frames([features])[0])


def features_frames(given: Sequence[Optional[pd.DataFrame]]) -> list[Union[pd.DataFrame, None, Exception]]:
    """`features_frame` of each given (None where none was), checked together (`validated_each`): each its typed
    table, or the error it alone raised."""
    present = [number for number, features in enumerate(given) if features is not None]
    checked = dict(zip(present, _validated_tables([given[number] for number in present], _raw_features,
                                                  TRANSCRIPT_FEATURES)))
    return [checked.get(number) for number in range(len(given))]


def _raw_features(features: pd.DataFrame) -> tuple[pd.DataFrame, str, int]:
    """(the features as given, numbered from row 1, the source its errors name, no header); UsageError unless they
    are a DataFrame."""
    _given_kind(features, "transcript_features", "a DataFrame such as score_transcripts returns", (pd.DataFrame,))
    return features.reset_index(drop=True), "transcript_features", 0


def conversation_list(conversations: Conversations, keys: Optional[Keys] = None) -> list[Conversation]:
    """Conversations from Conversation objects, dicts, or a path in any format the batch scorer reads (JSON Lines,
    long-form Parquet, ABCD JSON), validated, their contract keys read from the fields `keys` names."""
    _given_kind(conversations, "conversations", "a list of conversations (dicts or Conversation) or a JSON Lines / "
                                                "long-form Parquet / ABCD JSON path", (list, tuple, str, Path))
    keys = checked_keys(keys)
    if isinstance(conversations, (str, Path)):
        return read_conversations(conversations, keys)
    return as_conversations(list(conversations), keys=keys)


def features_needed(models: Iterable[RiskModel]) -> list[str]:
    """Every feature any of the models takes, in first-seen order."""
    return list(dict.fromkeys(f for model in models for f in model.feature_names_in_))


def extra_columns(models: Sequence[RiskModel]) -> tuple[list[str], list[str]]:
    """Features of the models beyond the interactions contract and the transcript features: (numeric, categorical)."""
    extra = [f for f in features_needed(models) if f not in INTERACTION_FEATURES and f not in FEATURE_COLUMNS]
    categorical = {f for model in models for f in model.categorical_features_}
    return [f for f in extra if f not in categorical], [f for f in extra if f in categorical]


def last_per_contact(features: pd.DataFrame, keys: Sequence[str] = ("contact_id",)) -> pd.DataFrame:
    """Conversation features once per contact (per `keys`): the last conversation of a contact wins, those without
    one go."""
    return features.dropna(subset=["contact_id"]).drop_duplicates(list(keys), keep="last")


def with_conversation_features(table: pd.DataFrame, features: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Validated interactions with the conversation features and evidence joined on contact_id (NaN where a contact
    has no conversation, which the models were trained to expect; every contact's when `features` is None), and the
    conversation's agent where the interactions name none."""
    return _joined_on(table, features, ["contact_id"])


#: The column that keeps the calls apart while the contacts of several are joined together.
_CALL = "__carelens_call__"


def with_conversation_features_each(tables: Sequence[pd.DataFrame],
                                    features: Sequence[Optional[pd.DataFrame]]) -> list[pd.DataFrame]:
    """`with_conversation_features` of each table and its features, the calls alike (`alike`: the same columns and
    types in both) joined in one merge on (call, contact_id), each taking back its own rows."""
    answers: dict[int, pd.DataFrame] = {}
    for numbers in alike([[table, given] for table, given in zip(tables, features)]):
        if len(numbers) == 1:
            answers[numbers[0]] = with_conversation_features(tables[numbers[0]], features[numbers[0]])
            continue
        table, spans = stacked([tables[n] for n in numbers])
        given = [features[n] for n in numbers]
        keyed = stacked(given)[0] if given[0] is not None else None
        table[_CALL] = np.repeat(numbers, [len(tables[n]) for n in numbers])
        if keyed is not None:
            keyed[_CALL] = np.repeat(numbers, [len(f) for f in given])
        joined = _joined_on(table, keyed, ["contact_id", _CALL]).drop(columns=_CALL)
        answers.update((n, joined.iloc[span].reset_index(drop=True)) for n, span in zip(numbers, spans))
    return [answers[n] for n in range(len(tables))]


def _joined_on(table: pd.DataFrame, features: Optional[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """`with_conversation_features`, the features' rows matched to the table's on `keys`."""
    columns = [*keys, AGENT, *FEATURE_COLUMNS, EVIDENCE, DRIVER]
    per_contact = last_per_contact(features.reindex(columns=columns) if features is not None
                                   else pd.DataFrame(columns=columns), keys)
    # Only the key retyped: astype with a dict copies every column of the frame.
    keyed = per_contact.rename(columns={AGENT: "conversation_agent"}).assign(
        contact_id=per_contact["contact_id"].astype(str))
    joined = table.merge(keyed, on=keys, how="left")
    agent = joined.pop("conversation_agent")
    joined[AGENT] = joined[AGENT].fillna(agent) if AGENT in table.columns else agent
    return joined


def contact_predictions(churn: RiskModel, retaliation: RiskModel, table: pd.DataFrame,
                        satisfaction: Optional[RiskModel] = None) -> pd.DataFrame:
    """Per contact, predicted once: churn and retaliation risk, each model's flag, the likeliest retaliation type
    (empty unless retaliation is flagged), the CONTEXT_COLUMNS (the inferred satisfaction from `satisfaction`), and
    the features the models read (for reasons and drift)."""
    return contact_predictions_each(churn, retaliation, [table], satisfaction)[0]


def contact_predictions_each(churn: RiskModel, retaliation: RiskModel, tables: Sequence[pd.DataFrame],
                             satisfaction: Optional[RiskModel] = None) -> list[pd.DataFrame]:
    """`contact_predictions` of each table, each model called once over the rows of all of them (a calibrated
    ensemble's call costs about as much for ten rows as for a hundred, so requests that come together share it) and
    the tables alike (`alike`) framed together, each taking back its own rows."""
    if not tables:
        return []
    models = (churn, retaliation, *((satisfaction,) if satisfaction is not None else ()))
    inputs = features_needed(models)
    groups = stacked_alike(tables)
    together, blocks = stacked([frame for _, frame, _ in groups], inputs)
    # A batch chunk whose every row broke the contract leaves nothing to predict; scikit-learn refuses 0 rows.
    proba = retaliation.predict_proba(together) if len(together) else np.zeros((0, len(retaliation.classes_)))
    churn_risk = churn.risk(together) if len(together) else np.zeros(0)
    csat = expected_score(satisfaction, together) if satisfaction is not None else np.full(len(together), np.nan)
    answers: dict[int, pd.DataFrame] = {}
    for (numbers, frame, own), rows in zip(groups, blocks):
        framed = _predictions_frame(churn, retaliation, frame, inputs, proba[rows], churn_risk[rows], csat[rows])
        answers.update((n, framed.iloc[span].set_axis(tables[n].index)) for n, span in zip(numbers, own))
    return [answers[n] for n in range(len(tables))]


def _predictions_frame(churn: RiskModel, retaliation: RiskModel, table: pd.DataFrame, inputs: list[str],
                       proba: np.ndarray, churn_risk: np.ndarray, csat: np.ndarray) -> pd.DataFrame:
    """One table's contact predictions from its rows' model outputs (`contact_predictions`)."""
    retaliation_risk = retaliation.risk_from_proba(proba)
    retaliation_flagged = retaliation_risk >= retaliation.threshold_
    scores = pd.DataFrame({
        "customer_id": table["customer_id"].astype(str).to_numpy(),
        "contact_id": table["contact_id"].astype(str).to_numpy(),
        "churn_risk": churn_risk, "retaliation_risk": retaliation_risk,
        "retaliation_type": np.where(retaliation_flagged, retaliation.likeliest_other_class(proba).astype(str), ""),
        "churn_flagged": churn_risk >= churn.threshold_,
        "retaliation_flagged": retaliation_flagged,
        **{column: table[column] if column in table.columns else None for column in CONTEXT_COLUMNS},
    }, index=table.index)
    scores[INFERRED_CSAT] = csat
    return pd.concat([scores, table[[f for f in inputs if f not in scores.columns]]], axis=1)


def _answered(contacts: pd.DataFrame) -> np.ndarray:
    """Which contacts were answered (abandoned contacts have no conversation by nature)."""
    return ~contacts["abandoned"].to_numpy(dtype=bool) if "abandoned" in contacts.columns else \
        np.ones(len(contacts), bool)


#: How many contact_ids a join report names of those that matched nothing.
NAMED_IDS = 3


def _named(ids: Iterable[str]) -> list[str]:
    """The first NAMED_IDS distinct ids."""
    return list(dict.fromkeys(ids))[:NAMED_IDS]


def join_report(conversations: pd.DataFrame, contacts: pd.DataFrame, dropped: Iterable[str] = (),
                contact_field: Optional[str] = None) -> dict:
    """How conversations (conversation_id, contact_id) met contacts on contact_id: conversations read, matched to a
    contact, without a contact_id, belonging to a contact that was `dropped` (dead-lettered), naming one the contacts
    do not have, each with the first NAMED_IDS ids; contacts, with a conversation, answered without one, abandoned.
    `contact_field` is the record field a mapping read contact_id from, named when no conversation had it."""
    # Ids as Python text and sets of them: pandas' per-call cost was most of a request's join report.
    given = conversations["contact_id"]
    has_id = given.notna().to_numpy()
    ids = np.array(given[has_id].astype(str).tolist() if has_id.any() else [], dtype=object)
    # Features scored earlier may come without their conversation_id: a conversation is then named by its row.
    names = conversations["conversation_id"][~has_id].astype(str).tolist() if "conversation_id" in \
        conversations.columns else [f"row {n}" for n in np.flatnonzero(~has_id) + 1]
    contact_ids = contacts["contact_id"].astype(str).tolist()
    known, gone, spoken = set(contact_ids), set(map(str, dropped)), set(ids)
    matched = np.array([i in known for i in ids], dtype=bool)
    lost = ~matched & np.array([i in gone for i in ids], dtype=bool)
    unknown = ~matched & ~lost
    talked = np.array([c in spoken for c in contact_ids], dtype=bool)
    answered = _answered(contacts)
    return {"transcripts": len(conversations), "matched": int(matched.sum()),
            "without_contact_id": int((~has_id).sum()),
            "without_examples": _named(names),
            "contact_field": contact_field if contact_field and not has_id.any() else None,
            "dropped_contact": int(lost.sum()), "dropped_examples": _named(ids[lost]),
            "unknown_contact_id": int(unknown.sum()), "unknown_examples": _named(ids[unknown]),
            "contacts": len(contacts), "with_conversation": int(talked.sum()),
            "answered_without": int((answered & ~talked).sum()), "abandoned": int((~answered & ~talked).sum())}


def _listed(count: int, examples: list[str]) -> str:
    """'(a, b, c, …)': the examples, with an ellipsis when there are more."""
    return f"({', '.join(examples)}{', …' if count > len(examples) else ''})"


def _unmatched(report: dict) -> list[str]:
    """Why conversations matched no contact, in words (empty when all matched)."""
    field = report.get("contact_field")
    missing = f": no record has the field {field!r} that contact_id is read from" if field else ""
    why = [(report["without_contact_id"], "with no contact_id", report.get("without_examples", []), missing),
           (report.get("dropped_contact", 0), "whose contact was dropped", report.get("dropped_examples", []), ""),
           (report["unknown_contact_id"], "with a contact_id the contacts do not have", report["unknown_examples"], "")]
    return [f"{count:,} {what} {_listed(count, examples)}{after}" for count, what, examples, after in why if count]


def join_lines(report: dict) -> list[str]:
    """The join in two lines a person reads first: what the transcripts matched, and what the contacts had."""
    unmatched = _unmatched(report)
    contacts = (f"contacts: {report['contacts']:,} scored, {report['with_conversation']:,} with a conversation, "
                f"{report['answered_without']:,} answered without one" +
                (f", {report['abandoned']:,} abandoned" if report["abandoned"] else ""))
    return [f"transcripts: {report['transcripts']:,} read, {report['matched']:,} matched a contact" +
            (f"; not matched: {'; '.join(unmatched)}" if unmatched else ""), contacts]


def missing_conversations_warning(contacts: pd.DataFrame, joins: Optional[dict] = None) -> Optional[str]:
    """A warning when answered contacts have no conversation features (no conversation with their contact_id was
    given), saying from `joins` why the conversations given did not match; None otherwise."""
    if contacts.empty:
        return None
    answered = _answered(contacts)
    # Only the conversation features the models read are carried: a model may have been trained on some of them.
    read = [c for c in FEATURE_COLUMNS if c in contacts.columns]
    # Column by column, stopping once every answered contact has one: selecting the columns as one frame copied them
    # all, which cost a request more than the check.
    unread = answered.copy()
    for column in read:
        if not unread.any():
            break
        unread &= contacts[column].isna().to_numpy()
    lacking = int(unread.sum())
    if not lacking:
        return None
    unmatched = _unmatched(joins) if joins else []
    why = (f"of the transcripts, {' and '.join(unmatched)}: check which field of a transcript holds the contacts' "
           f"contact_id and name it (--key contact_id=FIELD, or keys={{'contact_id': FIELD}} in Python)"
           if unmatched else "pass their transcripts or transcript features")
    return (f"{lacking:,} of {int(answered.sum()):,} answered contacts have no conversation features: the models read "
            f"them as contacts without a conversation, which can move a risk a long way; {why}")
