"""The `carelens score` command: the nightly batch scorer over transcript and interaction files."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Engine(str, Enum):
    """Where the scoring runs: this process, or Ray Data actors (local Ray, or a cluster with --ray-address)."""

    local = "local"
    ray = "ray"


def score_command(
    transcripts: Annotated[list[str], typer.Option(help="Transcripts: JSON Lines or long-form Parquet files, globs "
                                                        "(quoted) or directories; repeat the option for more.")],
    out: Annotated[Path, typer.Option(help="Output folder: features/ and predictions/ parts, dead_letter.jsonl, "
                                           "_manifest.json. Re-running the same command resumes.")],
    interactions: Annotated[Optional[list[str]], typer.Option(
        help="Interactions (CSV or Parquet, globs or directories): also write per-contact churn and retaliation "
             "predictions with the transcript features joined on contact_id.")] = None,
    registry: Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                          "./registry).")] = None,
    version: Annotated[str, typer.Option(help="Model version for every model, e.g. v2, or latest (resolved once, "
                                              "at the start).")] = "latest",
    engine: Annotated[Engine, typer.Option(help="local (this process) or ray (Ray Data actors).")] = Engine.local,
    chunk_size: Annotated[int, typer.Option(min=1, help="Records per unit: what memory holds, and what one part "
                                                        "file holds.")] = 1_000,
    batch_size: Annotated[int, typer.Option(min=1, help="Turns per encoder batch.")] = 64,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads (local engine).")] = 2,
    ray_address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster (e.g. ray://head:10001); "
                                                            "default: start a local Ray instance.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray actors, each loading the model once (default: "
                                                               "one per CPU).")] = None,
    cache_entries: Annotated[Optional[int], typer.Option(
        min=0, help="Recent encodings each scoring process remembers, so repeated greetings and stock replies are "
                    "encoded once (about 1.6 kB each for MiniLM; default 50,000); 0 turns it off.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard what --out holds from an earlier run instead of "
                                               "resuming.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (conversations/s and ETA).")] = True,
) -> None:
    """Score transcripts (and, with --interactions, contacts) in bounded chunks. Every input record ends up either in
    a Parquet part or in dead_letter.jsonl with its reason; the manifest records in = out + dead."""
    import torch

    from carelens.inference.batch import score_batch
    from carelens.models.transcript import SCORING_CACHE_ENTRIES
    from carelens.data.terminal import console, error_console, user_errors
    torch.set_num_threads(threads)
    with user_errors():
        manifest = score_batch(transcripts, out, registry, version, interactions or (), engine.value, chunk_size,
                               batch_size, restart, progress, ray_address, workers,
                               SCORING_CACHE_ENTRIES if cache_entries is None else cache_entries)
    for rejected in manifest["rejected_inputs"]:
        error_console.print(f"[bold yellow]skipped:[/] {rejected['source']}: {rejected['reason']}", highlight=False,
                            soft_wrap=True)
    counts = manifest["counts"]
    console.print(f"{json.dumps(manifest['by_input'])}\nin {counts['in']:,} = out {counts['out']:,} + dead "
                  f"{counts['dead']:,} in {manifest['elapsed_s']:.1f} s; manifest: {out / '_manifest.json'}",
                  highlight=False, soft_wrap=True)
