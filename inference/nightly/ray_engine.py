"""The Ray engine: units scored by Ray Data actors that each load the transcript model once, committed as the local engine commits them."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from carelens.data.errors import UsageError
from carelens.inference.nightly.features import score_unit
from carelens.inference.nightly.layout import FEATURES, FEATURES_SCHEMA
from carelens.inference.nightly.storage import commit_unit
from carelens.inference.nightly.units import Unit
from carelens.models.scoring import ScoringOptions, load_scoring_pipeline

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

    def __init__(self, registry: str, version: str, scoring: dict, redact: bool):
        from carelens.models.scoring import ScoringOptions
        self.pipeline, _ = load_scoring_pipeline(registry, version, ScoringOptions(**scoring))
        self.redact = redact

    def __call__(self, units: pd.DataFrame) -> pa.Table:
        return pa.concat_tables([_staged_rows(unit["key"], *score_unit(self.pipeline, Unit(**unit), self.redact))
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


def run_ray(units: Sequence[Unit], registry: Path, version: str, out: Path, scoring: ScoringOptions,
            address: Optional[str] = None, workers: Optional[int] = None, show_progress_bar: bool = True,
            redact: bool = False) -> None:
    """Score the units with Ray Data on a local Ray instance (default) or the cluster at `address`. Each actor
    holds one CPU and runs its encoder on one intra-op thread (`scoring.threads` unset), so that actors do not
    oversubscribe the cores; with `scoring.threads`, each actor holds that many CPUs and threads."""
    import ray

    if scoring.device != "cpu":
        raise UsageError("the Ray engine runs actors on CPUs; score on a GPU with --engine local --device cuda")
    per_actor = scoring.threads or 1
    started_here = not ray.is_initialized()
    if started_here:
        local_actors = workers or max(1, (os.cpu_count() or 1) // per_actor)
        ray.init(address=address, num_cpus=None if address else local_actors * per_actor, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = show_progress_bar
        actors = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // per_actor)
        # One unit in flight per actor: by default an actor that is ready first queues several units, and with a
        # few large units two actors scored no faster than one (the second was still loading the model).
        pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
        staging = out / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        dataset = ray.data.from_items([asdict(u) for u in units], override_num_blocks=len(units))
        scored = dataset.map_batches(_UnitScorer, batch_size=1, batch_format="pandas", compute=pool, num_cpus=per_actor,
                                     fn_constructor_kwargs={"registry": str(registry.resolve()), "version": version,
                                                            "scoring": {**asdict(scoring), "threads": per_actor},
                                                            "redact": redact})
        scored.write_parquet(str(staging.resolve()), partition_cols=[UNIT_COLUMN])
        committed = _committed_staging(staging, out)
        if committed != len(units):
            raise RuntimeError(f"Ray returned {committed} of {len(units)} units; re-run to resume the rest")
        shutil.rmtree(staging)
    finally:
        if started_here:
            ray.shutdown()
