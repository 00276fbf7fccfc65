"""The `carelens demo` job: bundled day of data → models (trained when the registry has none) → metrics and reports."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()
HISTORY_CUSTOMERS = 20_000
HISTORY_SEED = 1


def history_dir(out: Path) -> Path:
    """A labelled history of synthetic customers to train on, generated once per output folder."""
    from carelens.data.synthetic import generate, write_synthetic
    history = out / "history"
    if not (history / "labels.parquet").is_file():
        with console.status(f"Generating {HISTORY_CUSTOMERS:,} customers of labelled history (seed {HISTORY_SEED})"):
            write_synthetic(generate(HISTORY_CUSTOMERS, seed=HISTORY_SEED), history)
    return history


def trained_tabular(name: str, history: Path, registry, out: Path) -> Path:
    """Train and publish one tabular model on the history; the path of its report copy under `out`."""
    from carelens.training.report import copied_report
    from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular
    task = TASKS[name]
    with console.status(f"Training the {name} model on {history}"):
        trained = train_tabular(load_labelled(history, task), task)
        artifact = publish_tabular(trained, registry)
    console.print(f"published {name} {artifact.version} → {artifact.path}")
    return copied_report(artifact.path, out / "reports" / f"{name}.html")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the history, reports and outputs.")] = Path("runs/demo"),
    registry: Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or ./registry).")] = None,
    retrain: Annotated[bool, typer.Option(help="Train new versions even when the registry already has models.")] = True,
) -> None:
    """Run the main job end to end on the bundled sample: train, publish, judge on unseen days, report."""
    from carelens.data.synthetic import sample_dir
    from carelens.models.registry import Registry
    from carelens.training.cli import figures_tables
    from carelens.training.evaluate import evaluate_tabular

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    store = Registry(registry)
    history = history_dir(out)
    reports = {}
    for name in ("churn", "retaliation"):
        if retrain or not store.versions(name):
            reports[name] = trained_tabular(name, history, store, out)
    day = sample_dir()
    for name in ("churn", "retaliation"):
        result = evaluate_tabular(store, name, day)
        console.rule(f"{name} {result['version']} on the bundled day ({day.name}, never trained on)")
        for table in figures_tables(result):
            console.print(table)
    console.rule("done")
    for name, report in reports.items():
        console.print(f"{name} report: {report}")
    console.print(f"registry: {store.root}   elapsed: {time.perf_counter() - started:.0f} s")
