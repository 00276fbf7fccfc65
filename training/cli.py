"""The `carelens train`, `carelens evaluate` and `carelens export` commands: how a data scientist makes and judges models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from carelens.data.errors import UsageError
from carelens.data.options import SEED_RANGE, EncoderFlags, RegistryOption, flag, with_option_groups
from carelens.data.terminal import console, error_console, rows_table, tagged, user_errors, warn
from carelens.models.names import TABULAR_MODELS
from carelens.training.flags import (
    ComputeFlags, PathsOption, PublishFlags, ScheduleFlags, SwitchFlags, TableFlags, TranscriptDataFlags,
)

train_app = typer.Typer(help="Train a model and publish it to the registry.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Score labelled data a model never saw and print its metrics.", no_args_is_help=True)
label_app = typer.Typer(help="Pick turns for a person to label, to adapt the transcript model to your own text.",
                        no_args_is_help=True)

JsonOption = Annotated[bool, flag("--json", help="Print one JSON object instead of tables.")]
VersionOption = Annotated[str, typer.Option("--version", help="Model version, e.g. v3, or latest.")]


def _registry(path: Optional[Path]):
    from carelens.models.registry import Registry
    return Registry(path)


def figures_tables(figures: dict) -> list[Table]:
    """Rich tables of held-out metrics and, when present, the learner selection, the spread over split seeds, the
    per-seed-group rates and each feature group's effect on ROC-AUC."""
    from carelens.training.report import (
        comparison_rows, feature_group_rows, feature_group_title, metric_rows, selection_rows, spread_rows,
    )
    tables = [rows_table(metric_rows(figures["metrics"]), "held-out metrics")]
    if figures.get("selection"):
        tables.append(rows_table(selection_rows(figures), "learner selection (cross-validated on the training rows)"))
    if figures.get("spread"):
        tables.append(rows_table(spread_rows(figures), f"held-out figures over {len(figures['spread']['seeds'])} "
                                                       f"split seeds"))
    if "seed_groups" in figures:
        groups = figures["seed_groups"]
        recovered = groups.get("gap_recovered")
        title = "per seed group" + (f" (care-effectiveness gap recovered: {recovered:.0%})" if recovered else "")
        tables.append(rows_table([{"seed group": r["group"], "rows": r["rows"],
                                   f"observed {groups['outcome']}": r["observed"],
                                   f"predicted {groups['outcome']}": r["predicted"]} for r in groups["rows"]], title))
    if "feature_groups" in figures:
        tables.append(rows_table(feature_group_rows(figures), feature_group_title(figures)))
    if "without_added_features" in figures:
        tables.append(rows_table(comparison_rows(figures), "with vs without the added features"))
    return tables


def train_command(name: str):
    """The `carelens train <name>` command for one tabular model."""
    @with_option_groups
    def train(
        table: TableFlags,
        features: Annotated[Optional[str], typer.Option(help="Comma-separated feature columns (default: all others, "
                                                             "or the contract's features).")] = None,
        categorical: Annotated[Optional[str], typer.Option(help="Comma-separated categorical columns (default: "
                                                                "detected from types).")] = None,
        goal: Annotated[str, typer.Option(help="Threshold goal: f1, recall:0.8 or top-k:500 (contacts a day).")] = "f1",
        seed: Annotated[int, typer.Option(**SEED_RANGE, help="Seed of the published model's split, folds and "
                                                             "learner.")] = 0,
        learner: Annotated[str, typer.Option(help="auto (chosen by cross-validation), or force one of "
                                                  "logistic, boosting, forest, extra-trees.")] = "auto",
        spread_seeds: Annotated[int, typer.Option(min=1, help="Split seeds (seed, seed+1, ...) whose held-out "
                                                              "figures give the mean and std reported.")] = 5,
        publish: PublishFlags = PublishFlags(),
    ) -> None:
        from carelens.training.report import copied_report
        from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular
        task = TASKS[name]
        with user_errors():
            registry = publish.checked_registry()
            with console.status(f"Reading {table.data}"):
                labelled = load_labelled(table.data, task, table.labels, table.target, features, categorical,
                                         table.features_from or ())
            console.print(f"{len(labelled.frame):,} labelled rows, {len(labelled.features)} features, "
                          f"target '{labelled.target}'")
            with console.status(f"Training the {name} model (80/20 split, seeds {seed}..{seed + spread_seeds - 1})"):
                trained = train_tabular(labelled, task, goal=goal, seed=seed, learner=learner,
                                        spread_seeds=spread_seeds)
            with console.status("Writing the report and publishing"):
                artifact = publish_tabular(trained, registry)
        copy = copied_report(artifact.path, publish.runs / name / artifact.version / "report.html")
        for figures in figures_tables(trained.metadata):
            console.print(figures)
        console.print(f"learner {trained.model.learner_}; threshold {trained.model.threshold_:.4f} for goal {goal}; "
                      f"published {name} "
                      f"{artifact.version} to {artifact.path}", soft_wrap=True)
        console.print(f"report: {copy}", soft_wrap=True)
    train.__doc__ = f"Train the {name} model on labelled data and publish it to the registry."
    return train


def evaluate_command(name: str):
    """The `carelens evaluate <name>` command for one tabular model."""
    @with_option_groups
    def evaluate(
        table: TableFlags,
        registry: RegistryOption = None,
        version: VersionOption = "latest",
        as_json: JsonOption = False,
    ) -> None:
        from carelens.training.evaluate import evaluate_tabular
        with user_errors():
            result = evaluate_tabular(_registry(registry), name, table.data, table.labels, table.target, version,
                                      table.features_from or ())
        if result["warning"]:
            warn(result["warning"])
        if as_json:
            typer.echo(json.dumps(result))
            return
        console.print(f"{name} {result['version']} on {result['data']} (threshold {result['threshold']:.4f}, "
                      f"goal {result['goal']})")
        for figures in figures_tables(result):
            console.print(figures)
    evaluate.__doc__ = f"Score labelled data the {name} model never saw and print its metrics."
    return evaluate


for _name in TABULAR_MODELS:
    train_app.command(_name)(train_command(_name))
    evaluate_app.command(_name)(evaluate_command(_name))


def export_command(
    model: Annotated[str, typer.Argument(help="Model name in the registry: churn or retaliation.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    registry: RegistryOption = None,
    version: VersionOption = "latest",
    format: Annotated[str, typer.Option("--format", help="Export format; joblib is the one offered.")] = "joblib",
) -> None:
    """Write a verified registry model as a joblib file for serving stacks that load scikit-learn models."""
    import joblib

    from carelens.data.paths import output_file
    from carelens.models.tabular import load_tabular
    if format != "joblib":
        error_console.print(tagged("error:", "bold red", f"format {format!r} is not offered; expected joblib"))
        raise typer.Exit(2)
    with user_errors():
        output_file(out)
        loaded, metadata = load_tabular(_registry(registry), model, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(loaded, out)
    warn("a joblib file runs code when it is loaded: load it only from a source you trust, and keep its checksum "
         "beside it.")
    console.print(f"wrote {model} {metadata['version']} to {out}")


@train_app.command("transcripts")
@with_option_groups
def train_transcripts_command(
    mode: Annotated[str, typer.Option(help="heads: frozen encoder, calibrated linear heads (minutes); finetune: "
                                           "multi-task fine-tuning of encoder and heads.")] = "heads",
    encoder: Annotated[Optional[Path], typer.Option(help="Hugging Face checkpoint directory (default: the packaged "
                                                         "all-MiniLM-L6-v2).")] = None,
    data: TranscriptDataFlags = TranscriptDataFlags(),
    schedule: ScheduleFlags = ScheduleFlags(),
    switches: SwitchFlags = SwitchFlags(),
    compute: ComputeFlags = ComputeFlags(),
    start_from: Annotated[Optional[str], typer.Option("--from", help="Adapt this published transcript model "
                                                                      "version (e.g. the starter, v1) instead of "
                                                                      "fresh heads.")] = None,
    publish: PublishFlags = PublishFlags(),
) -> None:
    """Train the transcript model (sentiment and empathy heads) and publish it beside its TF-IDF floor; `--from` a
    published version adapts that model (the starter, say) to your own labels (`carelens label suggest`)."""
    from carelens.data.adapters import check_suggested
    from carelens.training import Options, publish_trained, train_transcripts
    options = Options(mode=mode, **schedule.options(), **switches.options(), **compute.options())
    with user_errors():
        if not data.paths():
            raise UsageError("no training data: pass --sentiment-data, --empathy-data, --transcripts or --labels")
        for path in data.labels or ():
            check_suggested(path)
        publish.checked_registry()
        start = adapted_start(publish.out, start_from, options) if start_from else None
        trained = train_transcripts(data.paths(), options, encoder, log=console.print, start=start)
        artifact = publish_trained(trained, publish.out)
    print_published(trained, artifact, publish.runs)


def adapted_start(registry: Optional[Path], version: str, options):
    """The published transcript model to adapt (`--from`), its windows and pairing kept as it was trained."""
    from carelens.models.transcript import load_transcript_model
    model, metadata = load_transcript_model(registry, version)
    model.extra["adapted_from"] = metadata["version"]
    options.max_length, options.pair_encoding = model.max_length, model.pairs
    return model


def print_published(trained, artifact, runs: Path) -> None:
    """The test-split tables of a published transcript model, where it went and where its report is."""
    from carelens.training.report import copied_report
    from carelens.training.transcript_report import stacking_rows, summary_rows
    copy = copied_report(artifact.path, runs / "transcripts" / artifact.version / "report.html")
    console.print(rows_table(summary_rows(trained.metrics["test"], trained.floor), "test split (never trained on)"))
    if "test_plain_argmax" in trained.metrics:
        console.print(rows_table(summary_rows(trained.metrics["test_plain_argmax"], trained.floor),
                                 "ablation: test split, plain argmax (no decision weights)"))
    console.print(rows_table(stacking_rows({"metrics": trained.metrics, **trained.details}),
                             "ablation: test split, pooled with the floor"))
    console.print(f"published transcripts {artifact.version} to {artifact.path} in "
                  f"{trained.details['seconds']['total']:.0f} s; report: {copy}", soft_wrap=True)


@train_app.command("starter")
@with_option_groups
def train_starter_command(
    mode: Annotated[str, typer.Option(help="heads: calibrated linear heads on the frozen encoder (minutes; what "
                                           "`make demo` builds); finetune: the encoder fine-tuned on the rated "
                                           "sentences too (`make starter`, better).")] = "heads",
    sources: Annotated[Optional[Path], typer.Option(help="Folder of the pinned source archives; fetched from the "
                                                         "package index when absent (default $CARELENS_SOURCES or "
                                                         "~/.cache/carelens/sources).")] = None,
    epochs: Annotated[int, typer.Option(help="finetune: passes over the rated sentences.")] = 2,
    lr: Annotated[float, typer.Option(help="finetune: peak AdamW learning rate.")] = 5e-5,
    rows: Annotated[Optional[int], typer.Option(min=100, help="Learn from this many of the rated sentences (drawn "
                                                              "with the seed; default all 23,702).")] = None,
    compute: ComputeFlags = ComputeFlags(),
    publish: PublishFlags = PublishFlags(),
) -> None:
    """Build the starter transcript model from permissively licensed text only (VADER's MIT-licensed rated sentences,
    CareLens' own empathy rules and prototypes) and publish it: real conversations read sensibly from day one."""
    from carelens.training.starter import build_starter, starter_options
    from carelens.training.transcripts import publish_trained
    options = starter_options(mode=mode, epochs=epochs, lr=lr, **compute.options())
    with user_errors():
        publish.checked_registry()
        trained = build_starter(options, sources, log=console.print, rows=rows)
        artifact = publish_trained(trained, publish.out)
    print_published(trained, artifact, publish.runs)


@evaluate_app.command("transcripts")
@with_option_groups
def evaluate_transcripts_command(
    registry: RegistryOption = None,
    version: VersionOption = "latest",
    sentiment_data: Annotated[PathsOption, typer.Option(help="Labelled sentiment file (airline-tweet CSV or contract "
                                                             "transcripts); repeatable.")] = None,
    empathy_data: Annotated[PathsOption, typer.Option(help="Labelled empathy file (EPITOME CSV or contract "
                                                           "transcripts); repeatable.")] = None,
    encoder: EncoderFlags = EncoderFlags(),
    as_json: JsonOption = False,
) -> None:
    """Score labelled files with a published transcript model: per head, accuracy and macro-F1 with 95% bootstrap
    intervals, per-class precision/recall/F1, the confusion matrix and the most confidently wrong rows (their text
    for the public CSVs only), through the runtime chosen as for scoring."""
    from carelens.models.scoring import ScoringOptions, load_scoring_pipeline
    from carelens.models.transcript import training_text_warning
    from carelens.training.transcript_report import INTERVALS_NOTE, evaluation_tables
    from carelens.training.transcript_evaluation import evaluate_files
    with user_errors():
        options = ScoringOptions(**encoder.given(), cache_entries=0)
        pipeline, metadata = load_scoring_pipeline(registry, version, options)
        for warning in (training_text_warning(metadata), metadata.get("runtime_warning")):
            if warning:
                warn(warning)
        metrics = evaluate_files(pipeline, [*(sentiment_data or ()), *(empathy_data or ())],
                                 show_progress_bar=not as_json)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    console.print(f"transcripts {metadata['version']} ({pipeline.description}). {INTERVALS_NOTE}", soft_wrap=True)
    for title, rows in evaluation_tables(metrics):
        console.print(rows_table(rows, title))


@train_app.command("satisfaction")
@with_option_groups
def train_satisfaction_command(
    table: TableFlags,
    learner: Annotated[str, typer.Option(help="logistic (as ranked as boosting, better calibrated, 100x quicker to "
                                              "load and score), or auto, boosting, forest, extra-trees.")] = "logistic",
    seed: Annotated[int, typer.Option(**SEED_RANGE, help="Seed of the split and the learner.")] = 0,
    publish: PublishFlags = PublishFlags(),
) -> None:
    """Train the inferred-satisfaction model on the contacts that answered the survey (`csat`): every feature but the
    survey itself, conversation features joined with --features-from. Measured on held-out surveyed contacts beside
    the same learner on the operational features alone; the nightly job then writes `inferred_csat` for every
    contact, and scorecards and drivers show it."""
    from carelens.training.satisfaction import publish_satisfaction, train_satisfaction
    from carelens.training.tabular import TASKS, load_labelled
    with user_errors():
        store = publish.checked_registry()
        data = load_labelled(table.data, TASKS["churn"], table.labels, table.target, features_from=table.features_from)
        model, metadata = train_satisfaction(data, seed, learner)
        artifact = publish_satisfaction(model, metadata, store)
    rows = [{"features": name, **{k: figures["metrics"][k] for k in ("spearman", "mae", "calibration_error")}}
            for name, figures in (("all", metadata), ("operational only", metadata["baseline"]))]
    console.print(rows_table(rows, f"held-out surveyed contacts ({metadata['metrics']['rows']:,}), {metadata['learner']}"))
    console.print(f"published satisfaction {artifact.version} to {artifact.path}", soft_wrap=True)


@train_app.command("drivers")
def train_drivers_command(
    transcripts: Annotated[list[Path], typer.Option(help="History's transcripts (JSON Lines, long-form Parquet or "
                                                         "ABCD JSON); repeatable.")],
    registry: RegistryOption = None,
    version: Annotated[str, typer.Option(help="Transcript model version whose encoder embeds the openings (the "
                                              "nightly job must score with the same one).")] = "latest",
    drivers: Annotated[Optional[int], typer.Option(min=2, help="Number of drivers (default: chosen by silhouette "
                                                               "among 4-40).")] = None,
    seed: Annotated[int, typer.Option(**SEED_RANGE, help="Seed of the clustering.")] = 0,
) -> None:
    """Find the call drivers of history: the customer's opening turns embedded by the transcript model's encoder,
    clustered (k-means; the number of drivers chosen by silhouette unless given), each driver named by its most
    distinctive terms (class-based TF-IDF). Published as the `drivers` model: the nightly job then assigns each
    conversation its driver from the encoding it already computes."""
    from carelens.data.adapters import read_conversations
    from carelens.models.scoring import load_scoring_pipeline
    from carelens.training.drivers import DRIVER_COUNTS, fit_drivers, publish_drivers
    with user_errors():
        pipeline, metadata = load_scoring_pipeline(registry, version)
        conversations = [c for path in transcripts for c in read_conversations(path)]
        model, found = fit_drivers(pipeline, conversations, metadata["version"],
                                   [drivers] if drivers else DRIVER_COUNTS, seed)
        artifact = publish_drivers(model, found, _registry(registry), ", ".join(map(str, transcripts)))
    console.print(rows_table([{"driver": name, "share of history": f"{share:.1%}"}
                              for name, share in zip(model.names, model.training_share)],
                             f"{len(model.names)} drivers of {found['conversations']:,} conversations"))
    console.print(f"published drivers {artifact.version} (on transcripts {metadata['version']}'s embeddings) to "
                  f"{artifact.path}", soft_wrap=True)


@label_app.command("suggest")
def suggest_command(
    transcripts: Annotated[list[Path], typer.Option(help="Transcripts to pick from (JSON Lines, long-form Parquet or "
                                                         "ABCD JSON); repeatable.")],
    out: Annotated[Path, typer.Option(help="CSV to write for a person to fill in.")],
    n: Annotated[int, typer.Option(min=1, help="Turns to pick.")] = 300,
    registry: RegistryOption = None,
    version: Annotated[str, typer.Option(help="Transcript model version whose doubts pick the turns.")] = "latest",
    seed: Annotated[int, typer.Option(**SEED_RANGE, help="Seed of the clustering that spreads the picks.")] = 0,
) -> None:
    """Write the turns the current transcript model is least sure of, spread over the kinds of turns, as a CSV to fill
    in: customer turns get a `sentiment` (negative / neutral / positive), agent turns a level 0 / 1 / 2 for each
    empathy mechanism. Then `carelens train transcripts --from VERSION --labels FILE` adapts the model to them."""
    from carelens.data.adapters import read_conversations
    from carelens.data.paths import output_file
    from carelens.data.spreadsheet import write_csv
    from carelens.models.scoring import load_scoring_pipeline
    from carelens.training.label import LABEL_COLUMNS, suggested_turns
    with user_errors():
        # `--labels` reads the file back as CSV only: refused before the model scores a turn, not after.
        if output_file(out).suffix.lower() != ".csv":
            raise UsageError(f"--out {out}: unknown file type '{out.suffix}', expected .csv (a file to fill in, then "
                             f"`--labels`)")
        pipeline, metadata = load_scoring_pipeline(registry, version)
        conversations = [c for path in transcripts for c in read_conversations(path)]
        chosen = suggested_turns(pipeline, conversations, n, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(chosen, out)
    console.print(f"wrote {len(chosen):,} turns to label ({(chosen['speaker'] == 'customer').sum():,} customer, "
                  f"{(chosen['speaker'] == 'agent').sum():,} agent) to {out}, picked by transcripts "
                  f"{metadata['version']}; fill in {', '.join(LABEL_COLUMNS)}, then `carelens train transcripts "
                  f"--from {metadata['version']} --labels {out}`", soft_wrap=True)
