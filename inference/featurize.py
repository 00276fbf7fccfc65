"""The `carelens featurize` command: transcripts in, one row of conversation features per conversation out."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carelens.data.options import KeysOption, ProgressOption, RegistryOption, ScoringFlags, with_option_groups


def written_features(features, out: Path, version: str) -> Path:
    """`out`, holding the conversation features as CSV or as Parquet (which records the transcript model version that
    scored them), by its suffix."""
    from carelens.data.spreadsheet import write_csv
    from carelens.models.conversation_features import write_features
    if out.suffix.lower() != ".csv":
        return write_features(features, out, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(features, out)


@with_option_groups
def featurize_command(
    transcripts: Annotated[Path, typer.Option(help="Transcripts: contract JSONL, long-form Parquet or ABCD JSON.")],
    out: Annotated[Path, typer.Option(help="Features file to write (.parquet or .csv), keyed by contact_id.")],
    registry: RegistryOption = None,
    version: Annotated[str, typer.Option(help="Transcript model version, e.g. v2, or latest.")] = "latest",
    key: KeysOption = None,
    scoring: ScoringFlags = ScoringFlags(),
    progress: ProgressOption = True,
) -> None:
    """Score every turn with the transcript model and write the conversation features the churn and retaliation
    models take (`carelens train churn --features-from FILE`)."""
    from carelens.data.adapters import read_conversations
    from carelens.data.paths import output_file
    from carelens.data.readers import parsed_keys
    from carelens.data.terminal import console, user_errors, warn
    from carelens.models.scoring import ScoringOptions, load_scoring_pipeline, transcript_features
    from carelens.models.transcript import training_text_warning
    with user_errors():
        output_file(out)
        pipeline, metadata = load_scoring_pipeline(registry, version, ScoringOptions(**scoring.given()))
        for warning in (training_text_warning(metadata), metadata.get("runtime_warning")):
            if warning:
                warn(warning)
        conversations = read_conversations(transcripts, parsed_keys(key or []))
        features = transcript_features(pipeline, conversations, show_progress_bar=progress)
    written_features(features, out, metadata["version"])
    if out.suffix.lower() == ".csv":
        warn(f"{out}: a CSV cannot record which transcript model scored it; models trained on it cannot be checked "
             f"against the transcript model they are served with (write .parquet to keep that lineage)")
    console.print(f"wrote features of {len(features):,} conversations (transcripts {metadata['version']}) to {out}")
