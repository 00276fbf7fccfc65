"""The `carelens featurize` command: transcripts in, one row of conversation features per conversation out."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def read_conversations(path: Path) -> list:
    """Conversations from contract JSONL / long-form Parquet, or from an ABCD JSON file (a list of records)."""
    from carelens.data.adapters import read_abcd
    from carelens.data.readers import read_transcripts
    return read_abcd(path) if path.suffix.lower() == ".json" else read_transcripts(path)


def featurize_command(
    transcripts: Annotated[Path, typer.Option(help="Transcripts: contract JSONL, long-form Parquet or ABCD JSON.")],
    out: Annotated[Path, typer.Option(help="Features file to write (.parquet or .csv), keyed by contact_id.")],
    registry: Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                          "./registry).")] = None,
    version: Annotated[str, typer.Option(help="Transcript model version, e.g. v2, or latest.")] = "latest",
    batch_size: Annotated[int, typer.Option(help="Turns per encoder batch.")] = 32,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Score every turn with the transcript model and write the conversation features the churn and retaliation
    models take (`carelens train churn --features-from FILE`)."""
    import torch

    from carelens.data.terminal import console, user_errors, warn
    from carelens.models.conversation_features import write_features
    from carelens.models.transcript import (
        SCORING_CACHE_ENTRIES, load_transcript_model, training_text_warning, transcript_features,
    )
    torch.set_num_threads(threads)
    with user_errors():
        model, metadata = load_transcript_model(registry, version, SCORING_CACHE_ENTRIES)
        warning = training_text_warning(metadata)
        if warning:
            warn(warning)
        features = transcript_features(model, read_conversations(transcripts), batch_size, show_progress_bar=progress)
    if out.suffix.lower() == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        features.to_csv(out, index=False)
        warn(f"{out}: a CSV cannot record which transcript model scored it; models trained on it cannot be checked "
             f"against the transcript model they are served with (write .parquet to keep that lineage)")
    else:
        write_features(features, out, metadata["version"])
    console.print(f"wrote features of {len(features):,} conversations (transcripts {metadata['version']}) to {out}")
