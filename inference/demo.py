"""The `carelens demo` nightly job: bundled day → models (trained when the registry has none) → scores → flags and summary."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

console = Console()
HISTORY_CUSTOMERS = 8_000
HISTORY_SEED = 1
#: Labelled conversations the transcript heads learn from (the rest of the history is only scored).
TRANSCRIPT_TRAINING_CONVERSATIONS = 1_500
PRINTED = 10


def history_dir(out: Path) -> Path:
    """A labelled history of synthetic customers and transcripts to train on, generated once per output folder."""
    from carelens.data.synthetic import generate, write_synthetic
    history = out / "history"
    if not (history / "labels.parquet").is_file():
        with console.status(f"Generating {HISTORY_CUSTOMERS:,} customers of labelled history (seed {HISTORY_SEED})"):
            write_synthetic(generate(HISTORY_CUSTOMERS, seed=HISTORY_SEED), history)
    return history


def labelled_transcripts(history: Path) -> Path:
    """The first TRANSCRIPT_TRAINING_CONVERSATIONS conversations of the history, with their turn labels."""
    subset = history / "transcripts_for_training.jsonl"
    with open(history / "transcripts.jsonl", encoding="utf-8") as source:
        lines = [line for _, line in zip(range(TRANSCRIPT_TRAINING_CONVERSATIONS), source)]
    subset.write_text("".join(lines), encoding="utf-8")
    return subset


def trained_transcripts(history: Path, registry, out: Path) -> Path:
    """Train the transcript heads (frozen encoder) on labelled history turns and publish; its report copy's path."""
    from carelens.training.report import copied_report
    from carelens.training.transcripts import Options, publish_trained, train_transcripts
    with console.status("Training the transcript model (heads on the frozen encoder)"):
        trained = train_transcripts([labelled_transcripts(history)], Options(mode="heads", max_length=128,
                                                                             show_progress_bar=False),
                                    log=lambda message: None)
        artifact = publish_trained(trained, registry.root)
    test = trained.metrics["test"]
    console.print(f"published transcripts {artifact.version}: test macro-F1 " +
                  ", ".join(f"{head} {test[head]['macro_f1']:.3f}" for head in test if test[head].get("n")))
    return copied_report(artifact.path, out / "reports" / "transcripts.html")


def scored_features(transcripts: Path, out: Path, registry, interactions: Sequence[Path] = ()):
    """The batch scorer run afresh over one transcripts file (and its contacts) into `out`; the conversation
    features it wrote."""
    from carelens.inference.batch import read_parts, score_batch
    from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
    manifest = score_batch([transcripts], out, registry.root, interactions=interactions, restart=True)
    counts = manifest["counts"]
    console.print(f"batch-scored {transcripts}: in {counts['in']:,} = out {counts['out']:,} + dead {counts['dead']:,}"
                  f" in {manifest['elapsed_s']:.1f} s ({out})")
    return read_parts(out, columns=[*KEYS, *FEATURE_COLUMNS])


def history_features(history: Path, registry, out: Path) -> Path:
    """Conversation features of every history transcript, scored by the published transcript model."""
    path = history / "transcript_features.parquet"
    scored_features(history / "transcripts.jsonl", out / "history-scores", registry).to_parquet(path, index=False)
    return path


def trained_tabular(name: str, history: Path, features: Path, registry, out: Path) -> Path:
    """Train and publish one tabular model with the transcript features; the path of its report copy under `out`."""
    from carelens.training.report import copied_report
    from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular
    task = TASKS[name]
    with console.status(f"Training the {name} model on {history} with and without transcript features"):
        trained = train_tabular(load_labelled(history, task, features_from=[features]), task)
        artifact = publish_tabular(trained, registry)
    with_, without = trained.metadata["metrics"], trained.metadata["without_added_features"]["metrics"]
    console.print(f"published {name} {artifact.version}: held-out ROC-AUC {with_['roc_auc']:.3f} with transcript "
                  f"features, {without['roc_auc']:.3f} without")
    return copied_report(artifact.path, out / "reports" / f"{name}.html")


def train_all(store, out: Path) -> dict[str, Path]:
    """Transcript model, then churn and retaliation on its features: the report of each."""
    history = history_dir(out)
    reports = {"transcripts": trained_transcripts(history, store, out)}
    features = history_features(history, store, out)
    for name in ("churn", "retaliation"):
        reports[name] = trained_tabular(name, history, features, store, out)
    return reports


def top_table(flagged, count: int = PRINTED) -> Table:
    """The riskiest flagged customers as a terminal table."""
    table = Table("customer", "churn", "retaliation", "type", "action", "why", title=f"Top {count} at risk tonight")
    for row in flagged.head(count).itertuples():
        table.add_row(row.customer_id, f"{row.churn_risk:.2f}", f"{row.retaliation_risk:.2f}", row.retaliation_type,
                      row.action, "; ".join(row.reasons))
    return table


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the history, scores, flags and reports.")] = Path("runs/demo"),
    registry: Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                          "./registry).")] = None,
    retrain: Annotated[bool, typer.Option(help="Train new versions even when the registry already has models.")] = False,
    top_k: Annotated[Optional[int], typer.Option(help="Flag this many customers (default: whom the models' own "
                                                      "thresholds flag).")] = None,
) -> None:
    """The nightly job on the bundled day: train if needed, batch-score the transcripts, flag customers at risk with
    reasons and actions, write flagged.csv and summary.html, and print the top ten."""
    from carelens.data.synthetic import sample_dir
    from carelens.inference.api import Scorer, per_customer
    from carelens.inference.batch import PREDICTIONS, read_parts
    from carelens.inference.summary import nightly_summary
    from carelens.models.registry import Registry
    from carelens.models.transcript import MODEL_NAME

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    store = Registry(registry)
    reports = train_all(store, out) if retrain or not all(store.versions(n) for n in ("churn", "retaliation",
                                                                                     MODEL_NAME)) else {}
    scorer = Scorer.load(store)
    day = sample_dir()
    features = scored_features(day / "transcripts.jsonl", out / "scores", store, [day / "interactions.parquet"])
    scores = read_parts(out / "scores", PREDICTIONS)
    contacts = scorer.contact_table(day / "interactions.parquet", transcript_features=features).merge(
        scores[["contact_id", "churn_risk", "retaliation_risk"]], on="contact_id")
    predicted = per_customer(scores)
    flagged = scorer.flag_at_risk(day / "interactions.parquet", transcript_features=features, top_k=top_k)
    flagged.assign(reasons=flagged["reasons"].str.join("; ")).to_csv(out / "flagged.csv", index=False)
    facts = [{"item": "day", "value": f"{day} ({len(predicted):,} customers, {len(features):,} conversations)"},
             {"item": "models", "value": ", ".join(f"{n} {v}" for n, v in scorer.versions.items())},
             {"item": "flagged", "value": f"{len(flagged):,} customers"}]
    (out / "summary.html").write_text(nightly_summary(predicted, flagged, contacts, facts), encoding="utf-8")
    console.print(top_table(flagged))
    console.print(day_check(day, contacts))
    for name, report in reports.items():
        console.print(f"{name} report: {report}")
    console.print(f"flagged: {out / 'flagged.csv'}   summary: {out / 'summary.html'}   registry: {store.root}   "
                  f"elapsed: {time.perf_counter() - started:.0f} s", soft_wrap=True)


def day_check(day: Path, contacts) -> str:
    """How well tonight's churn risks rank the bundled day's known outcomes (labels the models never saw)."""
    from sklearn.metrics import roc_auc_score

    from carelens.data.readers import read_labels
    labelled = contacts.merge(read_labels(day / "labels.parquet"), on="contact_id")
    return (f"bundled day, never trained on: churn ROC-AUC {roc_auc_score(labelled['churned'], labelled['churn_risk']):.3f}"
            f" over {len(labelled):,} contacts")
