"""How the features stage runs its pending units: one after another in this process, or on Ray."""
from __future__ import annotations

from typing import Optional, Sequence

from tqdm.auto import tqdm

from carelens.inference.nightly.features import score_unit
from carelens.inference.nightly.layout import FEATURES, FEATURES_SCHEMA
from carelens.inference.nightly.plan import Run
from carelens.inference.nightly.ray_engine import run_ray
from carelens.inference.nightly.storage import commit_unit
from carelens.inference.nightly.units import Unit
from carelens.models.scoring import TranscriptPipeline, load_scoring_pipeline
from carelens.models.transcript import MODEL_NAME


def _run_local(units: Sequence[Unit], pipeline: TranscriptPipeline, run: Run) -> None:
    """Score the units one after another in this process; memory holds one unit at a time."""
    # disable=None: no bar when the terminal is not a terminal (a scheduler's log), where it would be noise.
    with tqdm(total=sum(u.records for u in units), unit="conv", desc="scoring", smoothing=0.1,
              disable=None if run.spec.show_progress_bar else True) as bar:
        for unit in units:
            features, dead = score_unit(pipeline, unit, run.redact, run.keys)
            commit_unit(run.out, FEATURES, unit.key, features, dead, FEATURES_SCHEMA)
            bar.update(unit.records)


def scored_units(run: Run, pipeline: Optional[TranscriptPipeline] = None) -> int:
    """The transcript-features stage: every pending unit scored and committed on the run's engine; how many units
    were scored. The local engine uses `pipeline` or loads the transcript model once as the run scores; the Ray
    engine's actors load it once each."""
    pending, spec = run.pending, run.spec
    if pending and spec.engine == "ray":
        run_ray(pending, run)
    elif pending:
        pipeline = pipeline or load_scoring_pipeline(run.store, run.models[MODEL_NAME], run.scoring)[0]
        _run_local(pending, pipeline, run)
    return len(pending)
