"""How the churn and retaliation models are made: load labelled data, split it, select and fit, measure and publish."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from carelens.data.contracts import (
    CATEGORICAL_FEATURES, INTERACTION_FEATURES, INTERACTIONS, Column, ContractError, TableContract, validated,
)
from carelens.data.readers import header_lines, read_interactions, read_labels, read_table
from carelens.models.conversation_features import (
    AGENT, COUNT_FEATURES, DRIVER, EVIDENCE, FEATURE_COLUMNS, FEATURE_GROUPS, features_lineage,
)
from carelens.models.drift import numeric_distribution
from carelens.models.registry import Artifact, Registry, frame_fingerprint
from carelens.models.tabular import RiskModel, save_model
from carelens.training.bootstrap import LEVEL, RESAMPLES, roc_auc_differences
from carelens.training.metrics import group_rates, model_metrics
from carelens.training.report import tabular_report

PathLike = Union[str, Path]
KEYS = ("contact_id", "customer_id")
#: Columns that identify or date a row, or tell a supervisor about it (who answered, the turns quoted, why the customer
#: came): never features unless declared.
NOT_FEATURES = ("contact_id", "customer_id", AGENT, "started_at", EVIDENCE, DRIVER)
#: Rows held out for the reported figures; the rest train, calibrate (cross-fitted) and set the threshold.
TEST_SHARE = 0.2
#: Split seeds the headline figures are averaged over: on a few hundred test rows one split can mislead.
SPREAD_SEEDS = 5
#: Held-out figures summarised across split seeds.
SPREAD_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "accuracy", "f1", "macro_f1")
#: Beside a published model: the hashed contact_ids of the rows it was fitted and calibrated on, as Parquet (reading
#: it runs no code), so that an evaluation on those contacts is told apart from a held-out one.
FITTED_CONTACTS = "fitted_contacts.parquet"
#: The group of every feature joined from other tables (`--features-from`), whose effect is measured too.
ADDED_GROUP = "all added features"


@dataclass(frozen=True)
class Task:
    """One model CareLens trains: its registry name, default label column, negative class and outcome wording."""

    name: str
    target: str
    negative_class: object
    outcome: str
    # Churn is reported the way the seed studies put it: as re-purchase, the complement of the risk.
    report_complement: bool


TASKS = {
    "churn": Task("churn", "churned", False, "re-purchase", report_complement=True),
    "retaliation": Task("retaliation", "retaliation", "none", "retaliation", report_complement=False),
}


@dataclass
class LabelledData:
    """A labelled table ready for training or evaluation: features, the target and where it came from."""

    frame: pd.DataFrame
    target: str
    features: list[str]
    categorical: Optional[list[str]]
    source: str
    groups: Optional[pd.Series] = None
    #: Features joined from other tables (`--features-from`); training also fits a model without them to compare.
    added: list[str] = field(default_factory=list)
    #: The transcript model version that scored the joined conversation features, when their file records it.
    transcript_model: Optional[str] = None

    @property
    def contacts_per_day(self) -> float:
        return contacts_per_day(self.frame)


def _split_names(text: Optional[str]) -> Optional[list[str]]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def typed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns that hold only numbers (as CSV gives them) converted to numbers; keys and the rest left as text."""
    typed = frame.copy()
    for name in frame.columns:
        text = pd.api.types.is_object_dtype(frame[name]) or pd.api.types.is_string_dtype(frame[name])
        if text and name not in KEYS:
            numbers = pd.to_numeric(frame[name], errors="coerce")
            if numbers.notna().sum() == frame[name].notna().sum():
                typed[name] = numbers
    return typed


def _contract_tables(interactions: pd.DataFrame, labels: pd.DataFrame, source: str) -> pd.DataFrame:
    """Interactions joined to their labels on contact_id; ContractError naming a contact that has no label."""
    joined = interactions.merge(labels, on="contact_id", how="left", validate="one_to_one", indicator=True)
    unlabelled = np.flatnonzero((joined["_merge"] == "left_only").to_numpy())
    if unlabelled.size:
        raise ContractError(source, f"contact {joined['contact_id'].iloc[unlabelled[0]]!r} has no label "
                                    f"({unlabelled.size} contact(s) unlabelled); expected a label for every contact",
                            column="contact_id")
    return joined.drop(columns="_merge")


def _truth_groups(directory: Path, frame: pd.DataFrame) -> Optional[pd.Series]:
    """The hidden seed group of each row when a synthetic truth.parquet lies beside the data."""
    truth_path = directory / "truth.parquet"
    if not truth_path.is_file() or "contact_id" not in frame.columns:
        return None
    truth = read_table(truth_path).set_index("contact_id")["seed_group"]
    return frame["contact_id"].map(truth).astype("string").reset_index(drop=True)


def _target_checked(frame: pd.DataFrame, target: str, task: Task, source: str, header_rows: int) -> pd.Series:
    """The target column as booleans (churn) or lower-case classes; ContractError naming a bad or missing value."""
    if target not in frame.columns:
        raise ContractError(source, f"no target column '{target}'; found {', '.join(map(str, frame.columns))} "
                                    f"(name the label column with --target)", column=target)
    kind = "bool" if task.negative_class is False else "category"
    contract = TableContract(f"{task.name} labels", (Column(target, kind),))
    return validated(frame[[target]], contract, source, header_rows=header_rows)[target]


def _own_file(path: Path, task: Task, target: Optional[str], features, categorical) -> LabelledData:
    """Any CSV/Parquet with a label column: contract interactions are validated, other tables typed as found."""
    raw = read_table(path)
    target = target or task.target
    header_rows = header_lines(path)
    contract = set(INTERACTIONS.required) <= set(raw.columns)
    frame = typed_columns(validated(raw, INTERACTIONS, str(path), header_rows) if contract else raw)
    frame[target] = _target_checked(raw, target, task, str(path), header_rows)
    if features is None and contract:
        features, categorical = list(INTERACTION_FEATURES), categorical or list(CATEGORICAL_FEATURES)
    features = features or [c for c in frame.columns if c != target and c not in NOT_FEATURES]
    return LabelledData(frame, target, features, categorical, str(path))


def _contract_data(interactions: Path, labels: Path, task: Task, target: Optional[str], features,
                   categorical) -> LabelledData:
    """Contract interactions joined to contract labels, with contract features unless others are declared."""
    frame = _contract_tables(read_interactions(interactions), read_labels(labels), str(labels))
    return LabelledData(frame, target or task.target, features or list(INTERACTION_FEATURES),
                        categorical or (None if features else list(CATEGORICAL_FEATURES)), str(interactions),
                        groups=_truth_groups(interactions.parent, frame))


def contacts_per_day(frame: pd.DataFrame) -> float:
    """Contacts a day: rows over distinct days of `started_at`, or all rows when the table has no dates."""
    if "started_at" not in frame.columns:
        return float(len(frame))
    days = pd.to_datetime(frame["started_at"], utc=True, errors="coerce").dt.floor("D").nunique()
    return len(frame) / max(days, 1)


def with_features_from(data: LabelledData, tables: Sequence[PathLike]) -> LabelledData:
    """The data with the numeric columns of each keyed table (by contact_id, else customer_id) joined as features,
    but for the turn counts a features table carries (COUNT_FEATURES: no risk model reads them)."""
    frame, features, lineage = data.frame, list(data.features), data.transcript_model
    for path in tables:
        extra = typed_columns(read_table(path))
        lineage = features_lineage(path) or lineage
        key = next((k for k in KEYS if k in extra.columns and k in frame.columns), None)
        if key is None:
            raise ContractError(str(path), f"no key column shared with the training data; expected one of "
                                           f"{', '.join(KEYS)} (found {', '.join(map(str, extra.columns))})")
        repeated = extra[key].duplicated()
        if repeated.any():
            raise ContractError(str(path), f"duplicate value {extra[key][repeated].iloc[0]!r}, expected each {key} "
                                           f"once", row=int(np.flatnonzero(repeated)[0]) + header_lines(path) + 1,
                                column=key)
        numeric = [c for c in extra.columns if c not in (*KEYS, *COUNT_FEATURES, *NOT_FEATURES)
                   and pd.api.types.is_numeric_dtype(extra[c])]
        clash = [c for c in numeric if c in frame.columns]
        if clash:
            raise ContractError(str(path), f"column(s) {', '.join(clash)} already exist in the training data; "
                                           f"expected new feature names", column=clash[0])
        frame = frame.merge(extra[[key, *numeric]].astype({key: frame[key].dtype}), on=key, how="left")
        features += numeric
    return LabelledData(frame, data.target, features, data.categorical, data.source, data.groups,
                        [*data.added, *[f for f in features if f not in data.features]], lineage)


def load_labelled(data: PathLike, task: Task, labels: Optional[PathLike] = None, target: Optional[str] = None,
                  features: Optional[str] = None, categorical: Optional[str] = None,
                  features_from: Sequence[PathLike] = ()) -> LabelledData:
    """Labelled data from a generator output directory, interactions + labels files, or any table with a target."""
    data = Path(data)
    features, categorical = _split_names(features), _split_names(categorical)
    if data.is_dir():
        loaded = _contract_data(data / "interactions.parquet", data / "labels.parquet", task, target, features,
                                categorical)
    elif labels is not None:
        loaded = _contract_data(data, Path(labels), task, target, features, categorical)
    else:
        loaded = _own_file(data, task, target, features, categorical)
    missing = [f for f in loaded.features if f not in loaded.frame.columns]
    if missing:
        raise ContractError(loaded.source, f"no feature column(s) {', '.join(missing)}; found "
                                           f"{', '.join(map(str, loaded.frame.columns))}", column=missing[0])
    return with_features_from(loaded, features_from)


def target_values(data: LabelledData, task: Task) -> np.ndarray:
    """The labels as a numpy array: booleans for churn, class names for retaliation."""
    values = data.frame[data.target].to_numpy()
    return values.astype(bool) if task.negative_class is False else values.astype(str)


def split_indices(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / test row indices (TEST_SHARE held out), the same for the same seed."""
    return train_test_split(np.arange(len(y)), test_size=TEST_SHARE, stratify=y, random_state=seed)


@dataclass
class Trained:
    """A fitted model with what it was measured on: the held-out test rows and the metadata to publish."""

    model: RiskModel
    metadata: dict
    test_frame: pd.DataFrame
    test_y: np.ndarray
    #: `contact_hashes` of the training rows (None when the data has no contact_id column).
    fitted_contacts: Optional[np.ndarray] = None


def contact_hashes(ids: pd.Series) -> np.ndarray:
    """64-bit hashes of contact ids, equal for equal ids whatever the column's dtype (text, or numbers from a CSV)."""
    as_text = pd.Series(ids.astype(str).to_numpy(dtype=object))
    return pd.util.hash_pandas_object(as_text, index=False).to_numpy(np.uint64)


def gap_recovered(rows: list[dict]) -> Optional[float]:
    """The share of the observed problem+effective vs problem+ineffective gap that the predictions reproduce."""
    by_group = {r["group"]: r for r in rows}
    if not {"problem_effective", "problem_ineffective"} <= set(by_group):
        return None
    effective, ineffective = by_group["problem_effective"], by_group["problem_ineffective"]
    observed = effective["observed"] - ineffective["observed"]
    return float((effective["predicted"] - ineffective["predicted"]) / observed) if observed else None


def seed_group_rates(task: Task, happened: np.ndarray, risk: np.ndarray, groups: pd.Series) -> dict:
    """Per seed group: observed outcome rate vs mean predicted, for churn as re-purchase (1 − churn), and the share
    of the care-effectiveness gap the model recovers."""
    happened = np.asarray(happened, dtype=float)
    rows = (group_rates(groups, 1 - happened, 1 - risk) if task.report_complement
            else group_rates(groups, happened, risk))
    return {"outcome": task.outcome, "rows": rows, "gap_recovered": gap_recovered(rows)}


def held_out_figures(model: RiskModel, task: Task, frame: pd.DataFrame, y: np.ndarray,
                     groups: Optional[pd.Series]) -> dict:
    """Metrics of the model on labelled rows, and per seed group rates when the groups are known."""
    proba = model.predict_proba(frame)
    risk = model.risk_from_proba(proba)
    figures = {"metrics": model_metrics(model, proba, y),
               "risk_profile": {"distribution": numeric_distribution(pd.Series(risk)),
                                "flagged_share": float(np.mean(risk >= model.threshold_))}}
    if groups is not None:
        figures["seed_groups"] = seed_group_rates(task, y != model.negative_class_, risk, groups)
    return figures


def seed_spread(runs: Sequence[dict]) -> dict:
    """Per split seed its learner and held-out figures, and each figure's mean and standard deviation across seeds."""
    rows = [{"seed": r["seed"], "learner": r["learner"], **{m: r["metrics"][m] for m in SPREAD_METRICS
                                                            if m in r["metrics"]}} for r in runs]
    present = [m for m in SPREAD_METRICS if all(m in r for r in rows)]
    return {"seeds": [r["seed"] for r in rows], "rows": rows,
            "mean": {m: float(np.mean([r[m] for r in rows])) for m in present},
            "std": {m: float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0 for m in present}}


def measured_groups(data: LabelledData, each_group: bool = True) -> dict[str, list[str]]:
    """The feature groups whose effect on held-out ROC-AUC training measures: each conversation feature group (see
    FEATURE_GROUPS) of which the data records some value (unless `each_group` is off), then all features joined from
    other tables; a group whose removal would leave no feature is left out."""
    present = {name: [f for f in features if f in data.features] for name, features in FEATURE_GROUPS.items()
               if each_group}
    groups = {name: features for name, features in present.items()
              if any(data.frame[f].notna().any() for f in features)}
    if data.added:
        groups[ADDED_GROUP] = list(data.added)
    return {name: features for name, features in groups.items() if set(data.features) - set(features)}


def refitted_without(model: RiskModel, dropped: Sequence[str], frame: pd.DataFrame, y: np.ndarray) -> RiskModel:
    """The model refitted on the same rows without the `dropped` features: the same parameters and seed, and its
    chosen learner as the only candidate, so that nothing is selected again and the refit costs one fit."""
    kept = [f for f in model.feature_names_in_ if f not in set(dropped)]
    return clone(model).set_params(features=kept, learner=model.learner_).fit(frame, y)


def feature_group_effects(model: RiskModel, groups: dict[str, list[str]], train: tuple[pd.DataFrame, np.ndarray],
                          test: tuple[pd.DataFrame, np.ndarray], seed: int) -> tuple[dict, dict[str, RiskModel]]:
    """(each group's effect on held-out ROC-AUC: the model's minus that of the model refitted on the same training
    rows without the group, with a paired bootstrap interval over the held-out rows; the refitted model of each
    group). A group whose information other groups also carry shows little effect: the refit leans on those."""
    started = time.perf_counter()
    refits = {name: refitted_without(model, features, *train) for name, features in groups.items()}
    frame, y = test
    positive, risk = y != model.negative_class_, model.risk(frame)
    differences = roc_auc_differences(positive, risk, [m.risk(frame) for m in refits.values()], seed=seed)
    rows = [{"group": name, "features": features, "roc_auc_without": d["roc_auc"], "difference": d["difference"],
             "lower": d["interval"][0], "upper": d["interval"][1], "differs": d["differs"]}
            for (name, features), d in zip(groups.items(), differences)]
    effects = {"metric": "roc_auc", "roc_auc": float(roc_auc_score(positive, risk)), "learner": model.learner_,
               "test_rows": int(len(y)), "resamples": RESAMPLES, "seed": seed, "level": LEVEL,
               "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    return effects, refits


def train_tabular(data: LabelledData, task: Task, goal: str = "f1", seed: int = 0, learner: str = "auto",
                  spread_seeds: int = SPREAD_SEEDS, each_group: bool = True, **params) -> Trained:
    """Hold out 20% of the rows; on the other 80% pick the learner by cross-validation and fit it with cross-fitted
    calibration and threshold (`RiskModel`); measure on the held-out rows. The same is repeated for the next
    `spread_seeds` − 1 split seeds, whose figures give the spread the report shows beside the published model's.
    With conversation features or features joined from other tables, each group of them is dropped in turn and the
    published model refitted without it on the same split (`feature_group_effects`)."""
    y = target_values(data, task)
    rows = data.frame.reset_index(drop=True)

    def held_out(split_seed: int) -> tuple[RiskModel, np.ndarray, np.ndarray, dict]:
        train, test = split_indices(y, split_seed)
        groups = None if data.groups is None else data.groups.iloc[test]
        model = RiskModel(features=data.features, categorical=data.categorical, negative_class=task.negative_class,
                          goal=goal, contacts_per_day=data.contacts_per_day, learner=learner,
                          random_state=split_seed, **params).fit(rows.iloc[train], y[train])
        return model, train, test, held_out_figures(model, task, rows.iloc[test], y[test], groups)

    started = time.perf_counter()
    model, train, test, figures = held_out(seed)
    seconds = time.perf_counter() - started
    others = [held_out(s) for s in range(seed + 1, seed + spread_seeds)]
    runs = [{"seed": s, "learner": m.learner_, "metrics": f["metrics"]}
            for s, (m, _, _, f) in zip(range(seed, seed + spread_seeds), [(model, train, test, figures), *others])]
    metadata = {
        "task": task.name, "target": data.target, "source": data.source,
        "features": model.feature_schema(), "classes": model.classes_.tolist(),
        "negative_class": np.asarray(model.negative_class_).item(),
        "goal": goal, "threshold": model.threshold_, "flag_rate": model.flag_rate_,
        "contacts_per_day": data.contacts_per_day, "seed": seed, "learner": model.learner_,
        "learner_requested": learner, "selection": model.selection_, "training_seconds": round(seconds, 1),
        "calibration": model.calibration_method_,
        "split": {"train": int(train.size), "test": int(test.size)},
        "training_data_fingerprint": frame_fingerprint(rows[[*data.features, data.target]]),
        # Which transcript model scored the conversation features: another one's scores are on another scale.
        "transcript_model": data.transcript_model if set(FEATURE_COLUMNS) & set(data.features) else None,
        **figures, "spread": seed_spread(runs),
    }
    groups = measured_groups(data, each_group)
    if groups:
        metadata["feature_groups"], refits = feature_group_effects(
            model, groups, (rows.iloc[train], y[train]), (rows.iloc[test], y[test]), seed)
        if ADDED_GROUP in refits:
            # The model refitted without the joined features, measured in full: the report shows what they are worth.
            test_groups = None if data.groups is None else data.groups.iloc[test]
            metadata["without_added_features"] = {"added": list(data.added), **held_out_figures(
                refits[ADDED_GROUP], task, rows.iloc[test], y[test], test_groups)}
    fitted_contacts = contact_hashes(rows["contact_id"].iloc[train]) if "contact_id" in rows.columns else None
    return Trained(model, metadata, rows.iloc[test], y[test], fitted_contacts)


def publish_tabular(trained: Trained, registry: Registry) -> Artifact:
    """The model (skops), its HTML report and metadata published as the next version of the task's name."""
    report_html = tabular_report(trained.model, trained.test_frame, trained.test_y, trained.metadata)

    def write(directory: Path) -> None:
        save_model(trained.model, directory)
        (directory / "report.html").write_text(report_html, encoding="utf-8")
        if trained.fitted_contacts is not None:
            pd.DataFrame({"contact_hash": trained.fitted_contacts}).to_parquet(directory / FITTED_CONTACTS,
                                                                               index=False)
    return registry.publish(trained.metadata["task"], write, trained.metadata)
