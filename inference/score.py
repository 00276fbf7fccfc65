"""The `carelens nightly` and `carelens score` commands: the nightly job, and its scoring stages alone."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.options import (
    CacheOption, DeviceOption, PrecisionOption, RegistryOption, RuntimeOption, ThreadsOption, TokenBudgetOption,
    VersionsOption, flag, scoring_option_values,
)

#: Exit code when the run finished but some input produced nothing (bad input itself exits 2).
INCOMPLETE = 1


class Engine(str, Enum):
    """Where the scoring runs: this process, or Ray Data actors (local Ray, or a cluster with --ray-address)."""

    local = "local"
    ray = "ray"


class Format(str, Enum):
    """The transcript files' format: by suffix (.jsonl, .parquet, .json = ABCD), or as named."""

    auto = "auto"
    jsonl = "jsonl"
    parquet = "parquet"
    abcd = "abcd"


TranscriptsOption = Annotated[list[str], typer.Option(
    help="Transcripts: JSON Lines, long-form Parquet or ABCD JSON files, globs (quoted) or directories; repeat the "
         "option for more.")]
OutOption = Annotated[Path, typer.Option(help="Output folder. Re-running the same command resumes.")]
EngineOption = Annotated[Engine, typer.Option(help="local (this process) or ray (Ray Data actors).")]
FormatOption = Annotated[Format, typer.Option("--format", help="Transcript format: auto (by suffix), jsonl, parquet "
                                                               "or abcd.")]
ChunkOption = Annotated[int, typer.Option(min=1, help="Records per unit: what memory holds, and what one part file "
                                                      "holds.")]
AddressOption = Annotated[Optional[str], typer.Option(help="An existing Ray cluster (e.g. ray://head:10001); default: "
                                                           "start a local Ray instance.")]
WorkersOption = Annotated[Optional[int], typer.Option(min=1, help="Ray actors, each loading the model once and given "
                                                                  "--threads CPUs, one by default (default: as many "
                                                                  "as the CPUs allow).")]
VerboseOption = Annotated[bool, flag(help="With --engine ray: show Ray's own log lines (start-up, Ray Data's plan and "
                                          "notes) and its workers' output on the terminal.")]
RestartOption = Annotated[bool, flag(help="Discard what --out holds from an earlier run instead of resuming.")]
ProgressOption = Annotated[bool, flag(help="Show a progress bar (conversations/s and ETA).")]
RedactOption = Annotated[bool, flag(help="Mask e-mail addresses, phone numbers, card and order/account numbers "
                                         "in transcript text ([EMAIL], [PHONE], [CARD], [ORDER]) before "
                                         "scoring and in every output, dead letters included.")]


def run_options(registry, version, engine, chunk_size, restart, progress, ray_address, workers, format, redact,
                verbose, scoring: dict) -> dict:
    """The options `score` and `nightly` share, as keyword arguments of `score_batch` / `run_nightly`."""
    from carelens.inference.api import parse_versions
    from carelens.models.scoring import ScoringOptions
    return {"registry": registry, "version": parse_versions(version), "engine": engine.value,
            "chunk_size": chunk_size, "restart": restart, "show_progress_bar": progress, "ray_address": ray_address,
            "workers": workers, "format": format.value, "redact": redact, "verbose": verbose,
            "scoring": ScoringOptions(**scoring)}


def reported(manifest: dict, out: Path) -> None:
    """Counts, warnings and failures on the terminal; exit code 1 when an input produced nothing."""
    from carelens.data.terminal import console, error_console, tagged, warn
    for warning in manifest.get("warnings", []):
        warn(warning)
    counts = manifest["counts"]
    console.print(f"{json.dumps(manifest.get('stages', manifest['by_input']))}\nin {counts['in']:,} = out "
                  f"{counts['out']:,} + dead {counts['dead']:,} in {manifest['elapsed_s']:.1f} s; manifest: "
                  f"{out / '_manifest.json'}", highlight=False, soft_wrap=True)
    for failure in manifest["failures"]:
        error_console.print(tagged("failed:", "bold red",
                                     f"{failure['stage']}: {failure['source']}: {failure['reason']}"),
                            highlight=False, soft_wrap=True)
    if manifest["failures"]:
        raise typer.Exit(INCOMPLETE)


def score_command(
    transcripts: TranscriptsOption,
    out: OutOption,
    interactions: Annotated[Optional[list[str]], typer.Option(
        help="Interactions (CSV or Parquet, globs or directories): also write per-contact churn and retaliation "
             "predictions with the transcript features joined on contact_id.")] = None,
    registry: RegistryOption = None,
    version: VersionsOption = "latest",
    engine: EngineOption = Engine.local,
    format: FormatOption = Format.auto,
    chunk_size: ChunkOption = 1_000,
    runtime: RuntimeOption = None,
    precision: PrecisionOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    token_budget: TokenBudgetOption = None,
    cache_entries: CacheOption = None,
    ray_address: AddressOption = None,
    workers: WorkersOption = None,
    restart: RestartOption = False,
    progress: ProgressOption = True,
    redact: RedactOption = False,
    verbose: VerboseOption = False,
) -> None:
    """The scoring stages of the nightly job alone: transcripts (and, with --interactions, contacts) in bounded
    chunks into features/ and predictions/ parts. Every input record ends up in a part or in dead_letter.jsonl with its
    reason; the manifest records in = out + dead. Exit code 1 when an input produced nothing, 2 on bad input."""
    from carelens.data.terminal import user_errors
    from carelens.inference.nightly.run import score_batch
    with user_errors():
        manifest = score_batch(transcripts, out, interactions=interactions or (),
                               **run_options(registry, version, engine, chunk_size, restart, progress, ray_address,
                                             workers, format, redact, verbose,
                                             scoring_option_values(runtime, precision, device, threads, token_budget,
                                                                   cache_entries)))
    reported(manifest, out)


def nightly_command(
    transcripts: TranscriptsOption,
    interactions: Annotated[list[str], typer.Option(help="The day's interactions (CSV or Parquet, globs or "
                                                         "directories); repeat the option for more.")],
    out: OutOption,
    registry: RegistryOption = None,
    version: VersionsOption = "latest",
    capacity: Annotated[Optional[int], typer.Option(min=0, help="Flag the K riskiest customers (the calls the centre "
                                                                "can make tomorrow).")] = None,
    threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Flag customers whose risk is at least "
                                                                          "P.")] = None,
    engine: EngineOption = Engine.local,
    format: FormatOption = Format.auto,
    strict: Annotated[bool, flag(help="Fail instead of warning when answered contacts have no "
                                      "conversation features.")] = False,
    chunk_size: ChunkOption = 1_000,
    runtime: RuntimeOption = None,
    precision: PrecisionOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    token_budget: TokenBudgetOption = None,
    cache_entries: CacheOption = None,
    ray_address: AddressOption = None,
    workers: WorkersOption = None,
    restart: RestartOption = False,
    progress: ProgressOption = True,
    redact: RedactOption = False,
    verbose: VerboseOption = False,
    top: Annotated[int, typer.Option(min=0, help="Flagged customers printed on the terminal.")] = 10,
) -> None:
    """The nightly job: the day's transcripts and contacts → conversation features → per-contact predictions →
    flagged customers with reasons and actions (flagged.parquet, flagged.csv) → summary.html → _manifest.json.
    Without --capacity or --threshold, each model's own threshold decides. Re-running resumes where a killed run
    stopped. Exit code 1 when an input produced nothing, 2 on bad input."""
    import pandas as pd

    from carelens.data.terminal import console, user_errors
    from carelens.inference.nightly.layout import FLAGGED_PARQUET, SUMMARY
    from carelens.inference.nightly.run import run_nightly
    with user_errors():
        manifest = run_nightly(transcripts, interactions, out, capacity=capacity, threshold=threshold, strict=strict,
                               **run_options(registry, version, engine, chunk_size, restart, progress, ray_address,
                                             workers, format, redact, verbose,
                                             scoring_option_values(runtime, precision, device, threads, token_budget,
                                                                   cache_entries)))
    flagged = pd.read_parquet(out / FLAGGED_PARQUET)
    console.print(top_table(flagged, top))
    console.print(f"{manifest['rule']}: flagged {manifest['flagged']:,} customers; summary: {out / SUMMARY}",
                  highlight=False, soft_wrap=True)
    reported(manifest, out)


def top_table(flagged, count: int):
    """The riskiest flagged customers as a terminal table."""
    from rich.table import Table
    table = Table("customer", "churn", "retaliation", "type", "action", "why", title=f"Top {count} at risk tonight")
    for row in flagged.head(count).itertuples():
        table.add_row(row.customer_id, f"{row.churn_risk:.2f}", f"{row.retaliation_risk:.2f}", row.retaliation_type,
                      row.action, "; ".join(row.reasons))
    return table
