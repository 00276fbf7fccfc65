"""The nightly job and the batch scorer as lists of the same stages: plan, features, predictions, then flags, summary and manifest."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from carelens.data.errors import UsageError
from carelens.inference.nightly.engines import scored_units
from carelens.inference.nightly.flags import flags_stage
from carelens.inference.nightly.layout import PathLike
from carelens.inference.nightly.manifest import nightly_manifest, scoring_manifest, write_manifest
from carelens.inference.nightly.plan import check_no_nightly_outputs, planned_run
from carelens.inference.nightly.predictions import predict_contacts, tabular_scorer
from carelens.inference.nightly.spec import RunSpec
from carelens.inference.nightly.summary import summary_stage
from carelens.inference.selection import checked_selection


def score_batch(transcripts: Sequence[PathLike], out: PathLike, registry: Optional[PathLike] = None,
                **options) -> dict:
    """Score transcript files (JSON Lines, long-form Parquet or ABCD JSON; paths, globs or directories) into `out`:
    Parquet parts of conversation features, with `interactions` also per-contact predictions, every bad record in
    dead_letter.jsonl, and `_manifest.json`. Re-running resumes. `options` are those of `RunSpec` (version,
    interactions, engine, chunk_size, restart, format, redact, scoring, show_progress_bar, ray_address, workers).
    The first stages of `carelens nightly`. Returns the manifest (its `failures` name every input that produced
    nothing or was rejected); raises when in != out + dead."""
    return scored_run(RunSpec(tuple(transcripts), out, registry, **options))


def scored_run(spec: RunSpec) -> dict:
    """The scoring stages of `spec` (plan, features, predictions) and their manifest, written; returns it."""
    with planned_run(spec) as run:
        check_no_nightly_outputs(run.out)
        scorer = tabular_scorer(run)
        scored = scored_units(run)
        table_counts = predict_contacts(scorer, run) if scorer else {}
        return write_manifest(run, scoring_manifest(run, table_counts, scored))


@contextmanager
def timed(timings: dict, stage: str) -> Iterator[None]:
    """Record how long the block took under `stage`, in seconds."""
    clock = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - clock, 3)


def run_nightly(transcripts: Sequence[PathLike], interactions: Sequence[PathLike], out: PathLike,
                registry: Optional[PathLike] = None, **options) -> dict:
    """Run (or resume) the nightly job into `out`; returns the manifest. `options` are those of `RunSpec`: flags the
    `capacity` riskiest customers, or those at risk >= `threshold`, or (neither) those either model's own threshold
    flags. The manifest's `failures` name every input a stage produced nothing for; with `strict`, answered contacts
    without conversation features fail the run (MissingConversations) instead of warning; with `redact`, personal
    data in transcript text is masked before scoring and in every output."""
    return nightly(RunSpec(tuple(transcripts), out, registry, interactions=tuple(interactions), **options))


def nightly(spec: RunSpec) -> dict:
    """The nightly job of `spec`, stage after stage, each timed; the manifest, written last."""
    checked_selection(spec.capacity, spec.threshold)
    if not spec.interactions:
        raise UsageError("the nightly job needs the day's interactions (--interactions) to flag customers")
    timings: dict[str, float] = {}
    with timed(timings, "plan"):
        run = planned_run(spec)
    with run:
        with timed(timings, "load"):
            scorer = tabular_scorer(run, load_encoder=spec.engine == "local" and bool(run.pending))
        with timed(timings, "features"):
            scored = scored_units(run, scorer.transcripts)
            # The encoder's night is over: its weights, runtime and cache go back before the day's predictions are
            # read whole for flagging, so that the job's peak does not grow with the day.
            scorer.release_encoder()
        with timed(timings, "predictions"):
            table_counts = predict_contacts(scorer, run)
        scored_manifest = scoring_manifest(run, table_counts, scored)
        with timed(timings, "flags"):
            flags, tonight = flags_stage(run, scorer, scored_manifest["joins"])
        with timed(timings, "summary"):
            summary_stage(run, scorer, flags, tonight, scored_manifest)
        return write_manifest(run, nightly_manifest(run, scored_manifest, flags, scorer, timings))
