"""The `carelens demo` command: a synthetic history → models (trained when the registry has none) → `carelens nightly` on the bundled day."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.options import RegistryOption, flag
from carelens.data.terminal import console
from carelens.models.names import TABULAR_MODELS

HISTORY_CUSTOMERS = 8_000
HISTORY_SEED = 1
#: Rated sentences the demo's quick starter learns from (`make starter` builds the better one from all 23,702).
STARTER_ROWS = 5_000
PRINTED = 10


def history_dir(out: Path) -> Path:
    """A labelled history of synthetic customers and transcripts to train on, generated once per output folder."""
    from carelens.data.synthetic import generate, write_synthetic
    history = out / "history"
    if not (history / "labels.parquet").is_file():
        with console.status(f"Generating {HISTORY_CUSTOMERS:,} customers of labelled history (seed {HISTORY_SEED})"):
            write_synthetic(generate(HISTORY_CUSTOMERS, seed=HISTORY_SEED), history)
    return history


def trained_transcripts(registry, out: Path):
    """The quick starter (heads on the frozen encoder, STARTER_ROWS of the permissively licensed rated sentences, the
    mechanism rules for empathy), published; (its version, the path of its report copy)."""
    from carelens.training.report import copied_report
    from carelens.training.starter import build_starter, starter_options
    from carelens.training.transcripts import publish_trained
    with console.status(f"Building the starter transcript model from {STARTER_ROWS:,} rated sentences (MIT)"):
        trained = build_starter(starter_options(mode="heads", show_progress_bar=False), rows=STARTER_ROWS,
                                log=lambda message: None)
        artifact = publish_trained(trained, registry.root)
    test = trained.metrics["test"]
    console.print(f"published the starter transcripts {artifact.version} (public-permissive text only): macro-F1 on "
                  f"its held-out rated sentences and rule-labelled replies " +
                  ", ".join(f"{head} {test[head]['macro_f1']:.3f}" for head in test if test[head].get("n")))
    return artifact.version, copied_report(artifact.path, out / "reports" / "transcripts.html")


def history_features(history: Path, registry, out: Path, version: str) -> Path:
    """Conversation features of every history transcript, scored through the batch scorer by the model just
    published, loaded back with the default runtime (the one the nightly job scores with, so that the tabular models
    learn features on the scale they will be served), written with the version that scored them."""
    from carelens.inference.nightly.run import score_batch
    from carelens.inference.nightly.storage import read_parts
    from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS, write_features
    from carelens.models.transcript import MODEL_NAME
    scores = out / "history-scores"
    manifest = score_batch([history / "transcripts.jsonl"], scores, registry.root, version={MODEL_NAME: version},
                           restart=True, show_progress_bar=False)
    counts = manifest["counts"]
    console.print(f"batch-scored the history: in {counts['in']:,} = out {counts['out']:,} + dead {counts['dead']:,} "
                  f"in {manifest['elapsed_s']:.1f} s")
    return write_features(read_parts(scores, columns=[*KEYS, *FEATURE_COLUMNS]),
                          history / "transcript_features.parquet", version)


def fitted_drivers(history: Path, registry, version: str) -> None:
    """The call drivers of the history's opening turns, published beside the transcript model whose embeddings they
    cluster (the number chosen by silhouette)."""
    from carelens.data.adapters import read_conversations
    from carelens.models.scoring import load_scoring_pipeline
    from carelens.training.drivers import fit_drivers, publish_drivers
    transcripts = history / "transcripts.jsonl"
    with console.status("Finding the call drivers of the history's opening turns"):
        pipeline, _ = load_scoring_pipeline(registry, version)
        model, found = fit_drivers(pipeline, read_conversations(transcripts), version)
        artifact = publish_drivers(model, found, registry, str(transcripts))
    console.print(f"published drivers {artifact.version}: {found['drivers']} call drivers of the history, e.g. "
                  f"{'; '.join(model.names[:3])}", soft_wrap=True)


def trained_tabular(name: str, history: Path, features: Path, registry, out: Path) -> Path:
    """Train and publish one tabular model with the transcript features; the path of its report copy under `out`."""
    from carelens.training.report import copied_report
    from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular
    task = TASKS[name]
    with console.status(f"Training the {name} model on {history} with and without transcript features"):
        # One split seed and one refit (all transcript features together): the demo shows the job end to end within
        # minutes; `carelens train` reports the spread over five seeds and what each feature group is worth.
        trained = train_tabular(load_labelled(history, task, features_from=[features]), task, spread_seeds=1,
                                each_group=False)
        artifact = publish_tabular(trained, registry)
    with_, without = trained.metadata["metrics"], trained.metadata["without_added_features"]["metrics"]
    console.print(f"published {name} {artifact.version}: held-out ROC-AUC {with_['roc_auc']:.3f} with transcript "
                  f"features, {without['roc_auc']:.3f} without")
    return copied_report(artifact.path, out / "reports" / f"{name}.html")


def trained_satisfaction(history: Path, features: Path, registry) -> None:
    """The inferred-satisfaction model on the history's surveyed contacts, published."""
    from carelens.training.satisfaction import publish_satisfaction, train_satisfaction
    from carelens.training.tabular import TASKS, load_labelled
    with console.status("Training the inferred-satisfaction model on the surveyed contacts"):
        model, metadata = train_satisfaction(load_labelled(history, TASKS["churn"], features_from=[features]))
        artifact = publish_satisfaction(model, metadata, registry)
    with_, alone = metadata["metrics"], metadata["baseline"]["metrics"]
    console.print(f"published satisfaction {artifact.version}: held-out Spearman {with_['spearman']:.3f} with "
                  f"transcript features, {alone['spearman']:.3f} without")


def train_all(store, out: Path) -> dict[str, Path]:
    """Transcript model and the call drivers on its embeddings, then churn, retaliation and satisfaction on its
    features: the report of each (satisfaction's figures are printed)."""
    history = history_dir(out)
    version, report = trained_transcripts(store, out)
    fitted_drivers(history, store, version)
    features = history_features(history, store, out, version)
    reports = {"transcripts": report}
    for name in TABULAR_MODELS:
        reports[name] = trained_tabular(name, history, features, store, out)
    trained_satisfaction(history, features, store)
    return reports


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the history, reports and tonight's run.")] = Path("runs/demo"),
    registry: RegistryOption = None,
    retrain: Annotated[bool, flag(help="Train new versions even when the registry already has models.")] = False,
    capacity: Annotated[Optional[int], typer.Option(min=0, help="Flag this many customers (default: whom the models' "
                                                                "own thresholds flag).")] = None,
) -> None:
    """The nightly job on the bundled day: train on a synthetic history when the registry has no models, then
    `carelens nightly` on the bundled day (out/tonight: flagged.csv, summary.html, the manifest), and the top ten."""
    import pandas as pd

    from carelens.data.synthetic import sample_dir
    from carelens.data.terminal import user_errors
    from carelens.inference.nightly.layout import FLAGGED_CSV, FLAGGED_PARQUET, PREDICTIONS, SUMMARY
    from carelens.inference.nightly.run import run_nightly
    from carelens.inference.nightly.storage import read_parts
    from carelens.inference.score import told_first, top_table
    from carelens.models.registry import Registry
    from carelens.models.transcript import MODEL_NAME

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    store = Registry(registry)
    with user_errors():
        models = (*TABULAR_MODELS, MODEL_NAME)
        reports = train_all(store, out) if retrain or not all(store.versions(n) for n in models) else {}
        day, tonight = sample_dir(), out / "tonight"
        manifest = run_nightly([day / "transcripts.jsonl"], [day / "interactions.parquet"], tonight, store.root,
                               capacity=capacity, restart=True, show_progress_bar=False)
    told_first(manifest, tonight)
    console.print(top_table(pd.read_parquet(tonight / FLAGGED_PARQUET), PRINTED))
    console.print(day_check(day, read_parts(tonight, PREDICTIONS, ["contact_id", "churn_risk"])))
    for name, report in reports.items():
        console.print(f"{name} report: {report}")
    console.print(f"{manifest['rule']}: flagged {manifest['flagged']:,} of {manifest['stages']['flags']['customers']:,} "
                  f"customers: {tonight / FLAGGED_CSV}   summary: {tonight / SUMMARY}   registry: {store.root}   "
                  f"elapsed: {time.perf_counter() - started:.0f} s", soft_wrap=True)


def day_check(day: Path, contacts) -> str:
    """How well tonight's churn risks rank the bundled day's known outcomes (labels the models never saw)."""
    from sklearn.metrics import roc_auc_score

    from carelens.data.readers import read_labels
    labelled = contacts.merge(read_labels(day / "labels.parquet"), on="contact_id")
    return (f"bundled day, never trained on: churn ROC-AUC {roc_auc_score(labelled['churned'], labelled['churn_risk']):.3f}"
            f" over {len(labelled):,} contacts")
