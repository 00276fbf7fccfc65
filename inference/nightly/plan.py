"""The plan stage: inputs hashed and cut into units, model versions resolved once, the plan recorded in the run folder."""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from carelens.data.paths import output_folder
from carelens.data.readers import TABLE_SUFFIXES, check_long_form_keys
from carelens.inference.nightly.layout import (
    FEATURES, FLAGGED_CSV, FLAGGED_PARQUET, PLAN, PREDICTIONS, STAGES, SUMMARY, RunConflict,
)
from carelens.inference.nightly.spec import RunSpec
from carelens.inference.nightly.storage import (
    discarded_run, done_keys, now, removed_leftovers, run_folder_lock, write_text,
)
from carelens.inference.nightly.units import (
    InputFile, Unit, expanded_inputs, file_stamp, planned_file, transcript_files,
)
from carelens.models.names import TABULAR_MODELS
from carelens.models.registry import Registry, file_sha256
from carelens.models.scoring import ScoringOptions
from carelens.models.transcript import MODEL_NAME


def _checked_plan(out: Path, plan: dict) -> int:
    """Start or resume the run recorded in `out`: RunConflict when `out` holds a run of another plan. Returns how many
    units were already done."""
    recorded = out / PLAN
    if recorded.is_file():
        differing = _plan_differences(json.loads(recorded.read_text()), plan)
        if differing:
            raise RunConflict(f"{out}: holds a run with other {', '.join(differing)}; resuming it would mix two runs. "
                              f"Choose another --out, or pass --restart to discard it")
    out.mkdir(parents=True, exist_ok=True)
    removed_leftovers(out)
    write_text(json.dumps(plan, indent=2), recorded)
    return len(done_keys(out, FEATURES)) + len(done_keys(out, PREDICTIONS))


def _plan_differences(before: dict, plan: dict) -> list[str]:
    """What a recorded plan has other than this one, in words: a model is compared by its content, so another model
    published under the same version name (another registry's churn v1) is another model."""
    differing = [k for k in plan if k != "model_sha256" and before.get(k) != plan[k]]
    recorded = before.get("model_sha256") or {}
    changed = [f"{name} {plan['models'][name]}" for name, digest in plan["model_sha256"].items()
               if recorded.get(name) != digest]
    if changed and "models" not in differing:
        differing.append(f"models ({', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} in content)")
    return differing


@dataclass
class Run:
    """A batch run under way: its folder, the inputs cut into units, the model versions resolved once, its clock."""

    spec: RunSpec
    out: Path
    store: Registry
    inputs: list[InputFile]
    tables: list[Path]
    models: dict
    pinned: bool
    plan: dict
    already: int
    #: (size, modification time) of each interactions file before the plan hashed it.
    table_stamps: list = field(default_factory=list)
    #: How the transcript model scores, its runtime and precision resolved once for every loader of the run.
    scoring: ScoringOptions = ScoringOptions()
    #: What the user should know about how the run scores (a runtime that fell back).
    warnings: list = field(default_factory=list)
    #: Why the transcript model scores with the plan's runtime: `auto`'s measurements, or the options given.
    runtime_choice: dict = field(default_factory=dict)
    started: str = field(default_factory=now)
    clock: float = field(default_factory=time.perf_counter)
    #: Holds the lock on `out` (`run_folder_lock`) until the run ends: `with planned_run(...) as run:`.
    lock: ExitStack = field(default_factory=ExitStack, repr=False)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc_info) -> None:
        self.lock.close()

    @property
    def redact(self) -> bool:
        return self.plan["redact"]

    @property
    def keys(self) -> dict:
        return self.plan["keys"]

    @property
    def pending(self) -> list[Unit]:
        """The transcript units whose features part is not yet committed."""
        done = done_keys(self.out, FEATURES)
        return [u for f in self.inputs for u in f.units if u.key not in done]


def planned_run(spec: RunSpec) -> Run:
    """The first stage: inputs expanded (each a regular file, refused by path before any is read), `out` locked for
    the run (it ends with the Run: `with planned_run(...) as run:`), inputs hashed and cut into units, model versions
    resolved, and the plan recorded in `out` (RunConflict when another run is writing into `out`, or `out` holds a run
    of another plan; `restart` discards an earlier run before anything is hashed). Models are part of the plan by
    their content, so another model under the same version name is another plan; so is `redact`, so a run is never
    resumed half masked, and the runtime and precision the transcript model scores with (a run is never resumed with
    features scored two ways)."""
    out, store = output_folder(spec.out), Registry(spec.registry)
    files = transcript_files(spec.transcripts, spec.format)
    tables = expanded_inputs(spec.interactions, TABLE_SUFFIXES) if spec.interactions else []
    with run_folder_lock(out) as lock:  # released here only when planning fails; the Run holds it from then on
        if spec.restart:
            discarded_run(out)
        wanted = dict(spec.version) if isinstance(spec.version, Mapping) else {}
        table_stamps = [file_stamp(p) for p in tables]
        names = (MODEL_NAME, *TABULAR_MODELS) if tables else (MODEL_NAME,)
        models = {name: store.resolve(name, wanted.get(name, "latest") if wanted else spec.version) for name in names}
        inputs = [planned_file(path, index, spec.chunk_size, spec.format) for index, path in enumerate(files)]
        for planned in inputs:
            if planned.kind == "parquet":
                check_long_form_keys(spec.keys, planned.path)
        resolved = spec.scoring.resolved(store.directory(MODEL_NAME, models[MODEL_NAME]))
        plan = {"inputs": [f.summary() for f in inputs], "interactions": [str(p) for p in tables],
                "interaction_hashes": [file_sha256(p) for p in tables], "models": models,
                "model_sha256": {name: store.content_sha256(name, v) for name, v in models.items()},
                "chunk_size": spec.chunk_size, "redact": spec.redact, "keys": spec.keys,
                "runtime": f"{resolved.runtime} {resolved.precision}"}
        already = _checked_plan(out, plan)
        return Run(spec, out, store, inputs, tables, models, bool(wanted), plan, already, table_stamps,
                   replace(spec.scoring, runtime=resolved.runtime, precision=resolved.precision),
                   warnings=[resolved.warning] if resolved.warning else [], lock=lock.pop_all(),
                   runtime_choice=resolved.choice.record() if resolved.choice else {"why": "as the scoring options say"})


def check_no_nightly_outputs(out: Path) -> None:
    """RunConflict when `out` holds what the nightly job writes after scoring: the scoring stages alone would write
    their own manifest, which dates neither the list nor the summary left beside it, so a stale list would look as
    if no run had made it, or a finished night would lose the manifest that vouches for its list."""
    found = [name for name in (FLAGGED_CSV, FLAGGED_PARQUET, SUMMARY, STAGES) if (out / name).exists()]
    if found:
        raise RunConflict(f"{out}: holds a nightly run ({', '.join(found)}); scoring alone would rewrite its manifest "
                          f"without them. Run `carelens nightly` with the same options to resume it, choose another "
                          f"--out, or pass --restart to discard it")
