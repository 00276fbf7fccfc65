"""The `carelens nightly` and `carelens score` commands: the nightly job, and its scoring stages alone."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.options import KeysOption, RegistryOption, ScoringFlags, VersionsOption, flag, with_option_groups

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


@dataclass(frozen=True)
class RunFlags:
    """The options `score` and `nightly` share: what to read and where to write, which models, on which engine, and
    how the run goes (resumed or restarted, with a progress bar, redacted)."""

    transcripts: Annotated[list[str], typer.Option(
        help="Transcripts: JSON Lines, long-form Parquet or ABCD JSON files, globs (quoted) or directories; repeat the "
             "option for more.")]
    out: Annotated[Path, typer.Option(help="Output folder. Re-running the same command resumes.")]
    registry: RegistryOption = None
    version: VersionsOption = "latest"
    engine: Annotated[Engine, typer.Option(help="local (this process) or ray (Ray Data actors).")] = Engine.local
    format: Annotated[Format, typer.Option("--format", help="Transcript format: auto (by suffix), jsonl, parquet or "
                                                            "abcd.")] = Format.auto
    key: KeysOption = None
    chunk_size: Annotated[int, typer.Option(min=1, help="Records per unit: what memory holds, and what one part file "
                                                        "holds.")] = 1_000
    ray_address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster (e.g. ray://head:10001); default: "
                                                            "start a local Ray instance.")] = None
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray actors, each loading the model once and given "
                                                               "--threads CPUs, one by default (default: as many as "
                                                               "the CPUs allow).")] = None
    restart: Annotated[bool, flag(help="Discard what --out holds from an earlier run instead of resuming.")] = False
    progress: Annotated[bool, flag(help="Show a progress bar (conversations/s and ETA).")] = True
    redact: Annotated[bool, flag(help="Mask e-mail addresses, phone numbers, card and order/account numbers in "
                                      "transcript text ([EMAIL], [PHONE], [CARD], [ORDER]) before scoring and in "
                                      "every output, dead letters included.")] = False
    verbose: Annotated[bool, flag(help="With --engine ray: show Ray's own log lines (start-up, Ray Data's plan and "
                                       "notes) and its workers' output on the terminal.")] = False

    def run_keywords(self, scoring: ScoringFlags) -> dict:
        """The run as keyword arguments of `score_batch` / `run_nightly`, scoring as `scoring` says."""
        from carelens.data.readers import parsed_keys
        from carelens.inference.api import parse_versions
        from carelens.models.scoring import ScoringOptions
        return {"keys": parsed_keys(self.key or []), "transcripts": self.transcripts, "out": self.out, "registry": self.registry,
                "version": parse_versions(self.version), "engine": self.engine.value, "format": self.format.value,
                "chunk_size": self.chunk_size, "ray_address": self.ray_address, "workers": self.workers,
                "restart": self.restart, "show_progress_bar": self.progress, "redact": self.redact,
                "verbose": self.verbose, "scoring": ScoringOptions(**scoring.given())}


def told_first(manifest: dict, out: Path) -> None:
    """What a person must read first, on the terminal: how the transcripts met the contacts, the records dropped and
    why, then the warnings, most consequential first."""
    from carelens.data.terminal import console, warn
    from carelens.inference.nightly.report import first_lines
    for line in first_lines(manifest, out):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    for warning in manifest.get("warnings", []):
        warn(warning)


def reported(manifest: dict, out: Path) -> None:
    """Counts and failures on the terminal; exit code 1 when an input produced nothing."""
    from carelens.data.terminal import console, error_console, tagged
    from carelens.inference.nightly.layout import MANIFEST
    counts = manifest["counts"]
    # Records of every input together, then each kind's own sum, so that "in 6" reads as 3 transcripts and 3 contacts.
    kinds = "; ".join(f"{'contacts' if kind == 'interactions' else kind} {c['in']:,} = {c['out']:,} + {c['dead']:,}"
                      for kind, c in manifest["by_input"].items())
    console.print(f"records: in {counts['in']:,} = out {counts['out']:,} + dead {counts['dead']:,} ({kinds}) in "
                  f"{manifest['elapsed_s']:.1f} s; manifest: {out / MANIFEST}", highlight=False, soft_wrap=True)
    for failure in manifest["failures"]:
        error_console.print(tagged("failed:", "bold red",
                                     f"{failure['stage']}: {failure['source']}: {failure['reason']}"),
                            highlight=False, soft_wrap=True)
    if manifest["failures"]:
        raise typer.Exit(INCOMPLETE)


@with_option_groups
def score_command(
    run: RunFlags,
    interactions: Annotated[Optional[list[str]], typer.Option(
        help="Interactions (CSV or Parquet, globs or directories): also write per-contact churn and retaliation "
             "predictions with the transcript features joined on contact_id.")] = None,
    scoring: ScoringFlags = ScoringFlags(),
) -> None:
    """The scoring stages of the nightly job alone: transcripts (and, with --interactions, contacts) in bounded
    chunks into features/ and predictions/ parts. Every input record ends up in a part or in dead_letter.jsonl with its
    reason; the manifest records in = out + dead. Exit code 1 when an input produced nothing, 2 on bad input."""
    from carelens.data.terminal import user_errors
    from carelens.inference.nightly.run import score_batch
    with user_errors():
        manifest = score_batch(interactions=interactions or (), **run.run_keywords(scoring))
    told_first(manifest, run.out)
    reported(manifest, run.out)


@with_option_groups
def nightly_command(
    interactions: Annotated[list[str], typer.Option(help="The day's interactions (CSV or Parquet, globs or "
                                                         "directories); repeat the option for more.")],
    run: RunFlags,
    capacity: Annotated[Optional[int], typer.Option(min=0, help="Flag the K riskiest customers (the calls the centre "
                                                                "can make tomorrow).")] = None,
    threshold: Annotated[Optional[float], typer.Option(min=0, max=1, help="Flag customers whose risk is at least "
                                                                          "P.")] = None,
    strict: Annotated[bool, flag(help="Fail instead of warning when answered contacts have no "
                                      "conversation features.")] = False,
    scoring: ScoringFlags = ScoringFlags(),
    top: Annotated[int, typer.Option(min=0, help="Flagged customers printed on the terminal.")] = 10,
) -> None:
    """The nightly job: the day's transcripts and contacts → conversation features → per-contact predictions →
    flagged customers with reasons and actions (flagged.parquet, flagged.csv) → summary.html → _manifest.json.
    Without --capacity or --threshold, each model's own threshold decides. Re-running resumes where a killed run
    stopped. Exit code 1 when an input produced nothing, 2 on bad input."""
    import pandas as pd

    from carelens.data.terminal import console, user_errors
    from carelens.inference.nightly.layout import FLAGGED_PARQUET, SUMMARY
    from carelens.inference.nightly.report import counted
    from carelens.inference.nightly.run import run_nightly
    with user_errors():
        manifest = run_nightly(interactions=interactions, capacity=capacity, threshold=threshold, strict=strict,
                               **run.run_keywords(scoring))
    told_first(manifest, run.out)
    console.print(f"{manifest['rule']}: flagged {counted(manifest['flagged'], 'customer')}; summary: "
                  f"{run.out / SUMMARY}", highlight=False, soft_wrap=True)
    if top and manifest["flagged"]:
        console.print(top_table(pd.read_parquet(run.out / FLAGGED_PARQUET), top))
    reported(manifest, run.out)


def top_table(flagged, count: int):
    """The riskiest flagged customers as a terminal table."""
    from rich.table import Table
    shown = min(count, len(flagged))
    table = Table("customer", "churn", "retaliation", "type", "action", "why",
                  title=f"The {shown} riskiest of {len(flagged):,} flagged tonight" if shown < len(flagged) else
                  f"The {shown} flagged tonight, riskiest first")
    for row in flagged.head(count).itertuples():
        table.add_row(row.customer_id, f"{row.churn_risk:.2f}", f"{row.retaliation_risk:.2f}", row.retaliation_type,
                      row.action, "; ".join(row.reasons))
    return table
