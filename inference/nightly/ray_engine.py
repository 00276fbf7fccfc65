"""The Ray engine: units scored by Ray Data actors that each load the transcript model once, committed as the local engine commits them."""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from carelens.data.errors import UsageError
from carelens.inference.nightly.features import score_unit
from carelens.inference.nightly.layout import FEATURES, FEATURES_SCHEMA
from carelens.inference.nightly.plan import Run
from carelens.inference.nightly.storage import commit_unit
from carelens.inference.nightly.units import Unit
from carelens.models.scoring import load_scoring_pipeline
from carelens.models.transcript import MODEL_NAME

STAGING = ".ray-staging"
UNIT_COLUMN = "unit"
DEAD_COLUMN = "dead_letter"


#: Typed explicitly: Ray would otherwise pickle text columns that hold nulls.
STAGED_SCHEMA = FEATURES_SCHEMA.append(pa.field(DEAD_COLUMN, pa.string())).append(pa.field(UNIT_COLUMN, pa.string()))


def _staged_rows(key: str, features: pd.DataFrame, dead: Sequence[dict]) -> pa.Table:
    """One unit's scores as rows of one table: feature rows, then one row per dead letter (its JSON in DEAD_COLUMN)."""
    dead_rows = pd.DataFrame({DEAD_COLUMN: [json.dumps(entry, ensure_ascii=False) for entry in dead]},
                             columns=[*FEATURES_SCHEMA.names, DEAD_COLUMN])
    rows = pd.concat([features.assign(**{DEAD_COLUMN: None}), dead_rows], ignore_index=True)
    return pa.Table.from_pandas(rows.assign(**{UNIT_COLUMN: key}), schema=STAGED_SCHEMA, preserve_index=False)


class _UnitScorer:
    """A Ray Data actor: loads the published transcript model once, then scores each batch of units it is given."""

    def __init__(self, registry: str, version: str, scoring: dict, redact: bool, keys: dict):
        from carelens.models.scoring import ScoringOptions
        self.pipeline, _ = load_scoring_pipeline(registry, version, ScoringOptions(**scoring))
        self.redact, self.keys = redact, keys

    def __call__(self, units: pd.DataFrame) -> pa.Table:
        return pa.concat_tables([_staged_rows(unit["key"], *score_unit(self.pipeline, Unit(**unit), self.redact,
                                                                       self.keys))
                                 for unit in units.to_dict("records")])


def _committed_staging(staging: Path, out: Path) -> int:
    """Each staged unit committed as a features part with its dead letters; how many units."""
    units = sorted(staging.glob(f"{UNIT_COLUMN}=*"))
    for folder in units:
        rows = pq.read_table(sorted(folder.rglob("*.parquet"))).to_pandas()
        dead = rows[DEAD_COLUMN].notna()
        features = rows.loc[~dead, FEATURES_SCHEMA.names].astype({"line": "int64"}).sort_values("line", kind="stable")
        letters = [json.loads(text) for text in rows.loc[dead, DEAD_COLUMN]]
        commit_unit(out, FEATURES, folder.name.split("=", 1)[1], features, letters, FEATURES_SCHEMA)
    return len(units)


@contextmanager
def ray_logs_quieted() -> Iterator[None]:
    """Ray's own Python log lines below errors kept off the terminal while the block runs: the driver's (start-up
    notes such as token authentication) and Ray Data's console (its execution plan and notes; its log files in the
    Ray session folder keep them)."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its console handler)
    quieted = [logging.getLogger("ray"),
               *(h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console")]
    levels = [each.level for each in quieted]
    for each in quieted:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(quieted, levels):
            each.setLevel(level)


@contextmanager
def ray_session(address: Optional[str], cpus: int, workers_output: bool) -> Iterator[None]:
    """Ray while the block runs: the running instance, else one started here (on the cluster at `address`, or locally
    with `cpus` CPUs; its workers' output on this terminal with `workers_output`) and shut down after it."""
    import ray
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
             log_to_driver=workers_output, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_ray(units: Sequence[Unit], run: Run) -> None:
    """Score the units of the run with Ray Data on a local Ray instance (default) or the cluster at
    `spec.ray_address`. Each actor holds one CPU and runs its encoder on one intra-op thread (`scoring.threads`
    unset), so that actors do not oversubscribe the cores; with `scoring.threads`, each actor holds that many CPUs and
    threads. Ray's own log lines and its workers' output stay off the terminal unless `spec.verbose`."""
    if run.scoring.device != "cpu":
        raise UsageError("the Ray engine runs actors on CPUs; score on a GPU with --engine local --device cuda")
    spec, per_actor = run.spec, run.scoring.threads or 1
    local_actors = spec.workers or max(1, (os.cpu_count() or 1) // per_actor)
    with nullcontext() if spec.verbose else ray_logs_quieted(), \
            ray_session(spec.ray_address, local_actors * per_actor, workers_output=spec.verbose):
        staging = staged_scores(units, run, per_actor)
        committed = _committed_staging(staging, run.out)
        if committed != len(units):
            raise RuntimeError(f"Ray returned {committed} of {len(units)} units; re-run to resume the rest")
        shutil.rmtree(staging)


def staged_scores(units: Sequence[Unit], run: Run, per_actor: int) -> Path:
    """The staging folder under the run's `out`, holding each unit's scores as Ray Data actors wrote them."""
    import ray
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = run.spec.show_progress_bar
    actors = run.spec.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // per_actor)
    # One unit in flight per actor: by default an actor that is ready first queues several units, and with a
    # few large units two actors scored no faster than one (the second was still loading the model).
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
    staging = run.out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    dataset = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
    scored = dataset.map_batches(_UnitScorer, batch_size=1, batch_format="pandas", compute=pool, num_cpus=per_actor,
                                 fn_constructor_kwargs={"registry": str(run.store.root.resolve()),
                                                        "version": run.models[MODEL_NAME],
                                                        "scoring": {**asdict(run.scoring), "threads": per_actor},
                                                        "redact": run.redact, "keys": run.keys})
    scored.write_parquet(str(staging.resolve()), partition_cols=[UNIT_COLUMN])
    return staging
