"""The manifest: counts per stage that must add up, failures by input, what ran, and the digests of what it dates."""
from __future__ import annotations

import json
import time
from importlib.metadata import version as package_version
from typing import Optional

from carelens.data.redaction import redacted
from carelens.inference.api import Scorer
from carelens.inference.contacts import join_lines
from carelens.inference.nightly.flags import ranked_warnings
from carelens.inference.nightly.layout import (
    DEAD_LETTER, FEATURES, FLAGGED_CSV, FLAGGED_PARQUET, MANIFEST, PREDICTIONS, SUMMARY,
)
from carelens.inference.nightly.plan import Run
from carelens.inference.nightly.report import dropped_records, run_joins
from carelens.inference.nightly.storage import gathered_dead_letters, now, parquet_rows_in, write_text
from carelens.models.registry import file_sha256


def _stage_counts(run: Run, table_counts: dict, dead: list[tuple[str, dict]]) -> dict[str, dict]:
    """in / out / dead records of the scoring stages: transcripts → features, interactions → predictions."""
    dropped = {what: sum(1 for kind, _ in dead if kind == what) for what in ("transcript", "contact")}
    kinds = {"transcripts": {"in": sum(f.records for f in run.inputs), "out": parquet_rows_in(run.out / FEATURES),
                             "dead": dropped["transcript"]}}
    if run.tables:
        kinds["interactions"] = {"in": sum(c["records"] for c in table_counts.values()),
                                 "out": parquet_rows_in(run.out / PREDICTIONS), "dead": dropped["contact"]}
    return kinds


def failures(run: Run, table_counts: dict) -> list[dict]:
    """Every input a stage produced nothing for, or rejected whole, with the reason: a scheduler must see these."""
    found = []
    for index, planned in enumerate(run.inputs):
        if planned.rejected or not parquet_rows_in(run.out / FEATURES, f"t{index:04d}-"):
            found.append({"source": planned.path, "stage": "features",
                          "reason": planned.rejected or f"none of its {planned.records:,} conversations could be "
                                                         f"scored (see {DEAD_LETTER})"})
    for index, path in enumerate(run.plan["interactions"]):
        counts = table_counts.get(path, {})
        if "rejected" in counts or not parquet_rows_in(run.out / PREDICTIONS, f"i{index:04d}-"):
            found.append({"source": path, "stage": "predictions",
                          "reason": counts.get("rejected") or f"none of its {counts.get('records', 0):,} rows could be "
                                                              f"predicted (see {DEAD_LETTER})"})
    return found


def _unjoined(joins: Optional[dict]) -> list[dict]:
    """A failure when transcripts were read and contacts scored but not one transcript matched a contact: a night
    scored on contact data alone must not pass a scheduler as done."""
    if not joins or not joins["transcripts"] or not joins["contacts"] or joins["matched"]:
        return []
    return [{"source": "transcripts", "stage": "predictions",
             "reason": f"none of the {joins['transcripts']:,} transcripts matched a contact ({join_lines(joins)[0]}); "
                       f"name the field that holds the contacts' contact_id with --key contact_id=FIELD"}]


def scoring_manifest(run: Run, table_counts: dict, scored_units: int) -> dict:
    """The manifest of the scoring stages: the dead letters gathered, counted, in = out + dead checked for each kind
    of input (RuntimeError when not); `carelens score` writes it as it is, the nightly job with its later stages."""
    dead = gathered_dead_letters(run.out)
    kinds = _stage_counts(run, table_counts, dead)
    counts = {key: sum(k[key] for k in kinds.values()) for key in ("in", "out", "dead")}
    rejected = [{"source": f.path, "reason": f.rejected} for f in run.inputs if f.rejected] + \
               [{"source": p, "reason": c["rejected"]} for p, c in table_counts.items() if "rejected" in c]
    joins = run_joins(run.out, dead, run.keys) if run.tables else None
    found = [*failures(run, table_counts), *_unjoined(joins)]
    if run.redact:  # a reason can quote what it refused
        for entry in (*rejected, *found):
            entry["reason"] = redacted(entry["reason"])
    manifest = {"carelens": package_version("carelens"), "engine": run.spec.engine, "started_at": run.started,
                "ended_at": now(), "elapsed_s": round(time.perf_counter() - run.clock, 3), "models": run.plan["models"],
                "runtime": run.plan["runtime"], "runtime_choice": run.runtime_choice, "warnings": run.warnings,
                "chunk_size": run.plan["chunk_size"], "inputs": run.plan["inputs"],
                "interactions": [{"path": p, "sha256": h, **table_counts.get(p, {})}
                                 for p, h in zip(run.plan["interactions"], run.plan["interaction_hashes"])],
                "rejected_inputs": rejected, "failures": found, "counts": counts,
                "joins": joins, "dropped": dropped_records(dead),
                "by_input": kinds, "units": {"scored_now": scored_units, "already_done": run.already},
                "outputs": {"features": FEATURES, "predictions": PREDICTIONS if run.tables else None,
                            "dead_letter": DEAD_LETTER},
                "balanced": all(k["in"] == k["out"] + k["dead"] for k in kinds.values())}
    if not manifest["balanced"]:
        raise RuntimeError(f"{run.out / MANIFEST}: records do not add up ({json.dumps(kinds)}); in must equal out + dead")
    return manifest


def nightly_manifest(run: Run, scored_manifest: dict, flags: dict, scorer: Scorer, timings: dict) -> dict:
    """The scoring manifest with the later stages: counts and in = out + dead per stage, the rule, per-model flag
    counts, drift, the expected performance of each model's flags, warnings, timings per stage."""
    kinds = scored_manifest["by_input"]
    planned = len(run.inputs) + len(run.tables)
    rejected = len(scored_manifest["rejected_inputs"])
    stages = {"plan": {"in": planned, "out": planned - rejected, "dead": rejected},
              "features": kinds["transcripts"], "predictions": kinds["interactions"], "flags": flags["counts"]}
    manifest = {**scored_manifest, "ended_at": now(), "elapsed_s": round(time.perf_counter() - run.clock, 3),
                "stages": stages,
                "balanced": all(s["in"] == s["out"] + s["dead"] for s in stages.values()),
                "rule": flags["rule"], "flagged": flags["counts"]["flagged"], "flagged_by_model_alone": flags["alone"],
                "drift": [{k: row[k] for k in ("feature", "psi", "shifted") if k in row} for row in flags["drift"]],
                "expected_performance": flags.get("expected_performance", []),
                "warnings": ranked_warnings(run, scorer, flags),
                "timings_s": timings,
                "outputs": {**scored_manifest["outputs"], "flagged": [FLAGGED_PARQUET, FLAGGED_CSV], "summary": SUMMARY},
                # What this manifest dates: a file whose digest differs is not this run's.
                "output_sha256": {name: file_sha256(run.out / name) for name in (FLAGGED_PARQUET, FLAGGED_CSV,
                                                                                  SUMMARY, DEAD_LETTER)}}
    return manifest


def write_manifest(run: Run, manifest: dict) -> dict:
    """Write the manifest last, atomically: what it dates is all on disk before it. Returns it."""
    write_text(json.dumps(manifest, indent=2, default=str), run.out / MANIFEST)
    return manifest
