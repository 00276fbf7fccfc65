"""Faults during a run: SIGKILL at seeded random points of every stage, a full disk, inputs that change, vanish or
are truncated. After each, a re-run gives every record exactly once and the outputs of an uninterrupted run.
`CARELENS_KILL_POINTS` sets the kill points per stage (default 1; `make fuzz`: 5)."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_nightly import assert_same_flags, nightly

from carelens.inference.nightly.layout import DEAD_LETTER, FEATURES, FLAGGED_PARQUET, MANIFEST, PREDICTIONS, RunConflict

REPO = Path(__file__).resolve().parents[1]
KILL_POINTS = int(os.environ.get("CARELENS_KILL_POINTS", 1))
CHUNK = 7
NIGHTLY_STAGES = ("plan", "load", "features", "predictions", "flags", "summary", "manifest")

# A run in a subprocess with every atomic commit instrumented: events are numbered in order (`enter` a commit, its
# temporary file `torn` half-written or `written` whole, then `committed` by rename; `start` of a nightly stage).
# argv: the run as JSON ({"job", "day", "out", "registry", "kill_at", "trace", "act_at", "act", "file_limit"}).
HOOKED_RUN = r"""
import contextlib, json, os, resource, signal, sys
from pathlib import Path
import carelens.inference.nightly.flags as flags, carelens.inference.nightly.run as nightly
import carelens.inference.nightly.storage as storage
from carelens.inference.cli import app
job = json.loads(sys.argv[1])
count, stage = [0], ["plan"]
def event(kind, target=None, temporary=None):
    count[0] += 1
    if job.get("trace"):
        with open(job["trace"], "a") as trace:
            trace.write(json.dumps({"n": count[0], "kind": kind, "stage": stage[0], "target": str(target)}) + "\n")
    if count[0] == job.get("act_at"):
        what, path = job["act"]
        Path(path).unlink() if what == "delete" else Path(path).write_text(Path(path).read_text() + "\n" + "{}\n")
    if count[0] == job.get("kill_at"):
        if kind == "torn":
            os.truncate(temporary, os.path.getsize(temporary) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
original_commit, original_timed, original_manifest = storage.atomic_path, nightly.timed, nightly.nightly_manifest
@contextlib.contextmanager
def atomic_path(target):
    event("enter", target)
    with original_commit(target) as temporary:
        yield temporary
        event("torn", target, temporary)
        event("written", target, temporary)
    event("committed", target)
@contextlib.contextmanager
def timed(timings, name):
    stage[0] = name
    event("start")
    with original_timed(timings, name):
        yield
def manifest(*args, **kwargs):
    stage[0] = "manifest"
    event("start")
    return original_manifest(*args, **kwargs)
storage.atomic_path = flags.atomic_path = atomic_path
nightly.timed, nightly.nightly_manifest = timed, manifest
if job.get("file_limit"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, a write fails with EFBIG as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_limit"], job["file_limit"]))
day = Path(job["day"])
app([job["job"], "--transcripts", str(day / "transcripts.jsonl"), "--interactions", str(day / "interactions.parquet"),
     "--out", job["out"], "--registry", job["registry"], "--chunk-size", str(job.get("chunk", 7)), "--no-progress"])
"""


def hooked_run(**job) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HOOKED_RUN, json.dumps(job, default=str)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def reference(registry_with_models, tmp_path_factory):
    """An uninterrupted nightly run of the test day, and the numbered events of the same run (traced)."""
    folder = tmp_path_factory.mktemp("reference")
    traced = hooked_run(job="nightly", day=registry_with_models.day_dir, out=folder / "traced",
                        registry=registry_with_models.root, trace=folder / "trace.jsonl")
    assert traced.returncode == 0, traced.stderr[-3000:]
    events = [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]
    return folder / "traced", events


def kill_points(events: list[dict], stage: str, count: int) -> list[int]:
    """`count` event numbers of a stage, drawn with a seed per stage (so a failure names a point that reproduces)."""
    numbers = [e["n"] for e in events if e["stage"] == stage]
    return sorted(random.Random(f"kill-{stage}").sample(numbers, min(count, len(numbers))))


def assert_same_outputs(out: Path, expected: Path) -> None:
    """The flagged list, the part files, the dead letters and the manifest's counts of an uninterrupted run; no
    temporary file left behind."""
    assert_same_flags(pd.read_parquet(out / FLAGGED_PARQUET), pd.read_parquet(expected / FLAGGED_PARQUET))
    for folder in (FEATURES, PREDICTIONS):
        assert sorted(p.name for p in (out / folder).glob("*.parquet")) == \
            sorted(p.name for p in (expected / folder).glob("*.parquet"))
        keys = ["source", "line"] if folder == FEATURES else ["contact_id"]
        got = pd.concat([pq.read_table(p).to_pandas() for p in sorted((out / folder).glob("*.parquet"))])
        assert not got.duplicated(keys).any()
    assert (out / DEAD_LETTER).read_text() == (expected / DEAD_LETTER).read_text()
    got, want = json.loads((out / MANIFEST).read_text()), json.loads((expected / MANIFEST).read_text())
    assert got["stages"] == want["stages"] and got["balanced"]
    assert not [p for p in out.rglob("*.tmp-*")]


# The default run kills the three stages that write the most; `make fuzz` (and `-m slow`) kills every stage.
@pytest.mark.parametrize("stage", [stage if stage in ("features", "predictions", "flags") else
                                   pytest.param(stage, marks=pytest.mark.slow) for stage in NIGHTLY_STAGES])
def test_a_nightly_run_killed_at_random_points_of_each_stage_resumes_to_the_same_outputs(
        stage, registry_with_models, reference, tmp_path):
    expected, events = reference
    points = kill_points(events, stage, KILL_POINTS)
    assert points, f"no event in stage {stage}"
    for point in points:
        out = tmp_path / f"killed-at-{point}"
        killed = hooked_run(job="nightly", day=registry_with_models.day_dir, out=out,
                            registry=registry_with_models.root, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, f"event {point}: {killed.stderr[-2000:]}"
        nightly(registry_with_models.day_dir, out, registry_with_models.root, chunk_size=CHUNK)
        assert_same_outputs(out, expected)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_the_batch_scorer_killed_at_a_random_point_resumes_with_every_record_once(registry_with_models, reference,
                                                                                   tmp_path, seed):
    _, events = reference
    first_run = [e["n"] for e in events if e["stage"] in ("plan", "features", "predictions")]
    point = random.Random(f"score-{seed}").choice(first_run)
    out = tmp_path / "score"
    killed = hooked_run(job="score", day=registry_with_models.day_dir, out=out, registry=registry_with_models.root,
                        kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = hooked_run(job="score", day=registry_with_models.day_dir, out=out, registry=registry_with_models.root)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    manifest = json.loads((out / MANIFEST).read_text())
    day = registry_with_models.day
    assert manifest["balanced"] and manifest["by_input"]["transcripts"]["in"] == len(day.conversations)
    contacts = pd.concat([pq.read_table(p).to_pandas() for p in (out / PREDICTIONS).glob("*.parquet")])
    assert sorted(contacts["contact_id"]) == sorted(day.interactions["contact_id"])


def test_a_full_disk_ends_with_a_clear_message_and_a_rerun_finishes(registry_with_models, reference, tmp_path):
    expected, _ = reference
    out = tmp_path / "full"
    full = hooked_run(job="nightly", day=registry_with_models.day_dir, out=out, registry=registry_with_models.root,
                      file_limit=4_000)
    assert full.returncode == 1, full.stderr[-2000:]
    assert "cannot be written" in full.stderr and "free space and re-run" in full.stderr
    assert "Traceback" not in full.stderr
    for part in out.rglob("*.parquet"):
        pq.read_table(part)  # every part left behind is whole
    assert not [p for p in out.rglob("*.tmp-*")]
    nightly(registry_with_models.day_dir, out, registry_with_models.root, chunk_size=CHUNK)
    assert_same_outputs(out, expected)


def copied_day(registry_with_models, folder: Path) -> Path:
    """The test day's files copied, so a test may change them."""
    folder.mkdir()
    for name in ("transcripts.jsonl", "interactions.parquet"):
        (folder / name).write_bytes((registry_with_models.day_dir / name).read_bytes())
    return folder


@pytest.mark.parametrize("act", [pytest.param("append", marks=pytest.mark.slow), "delete"])
def test_an_input_that_changes_or_vanishes_mid_run_stops_the_run_and_a_restart_scores_it_as_it_is(
        registry_with_models, reference, tmp_path, act):
    _, events = reference
    day = copied_day(registry_with_models, tmp_path / "day")
    first_part = next(e["n"] for e in events if e["kind"] == "committed" and "/features/" in e["target"])
    victim = day / ("transcripts.jsonl" if act == "append" else "interactions.parquet")
    out = tmp_path / "run"
    changed = hooked_run(job="nightly", day=day, out=out, registry=registry_with_models.root, act_at=first_part,
                         act=[act, victim])
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert str(victim) in changed.stderr and ("changed after the run was planned" in changed.stderr or
                                              "disappeared after the run was planned" in changed.stderr)
    if act == "delete":  # the same file put back: the run resumes as if nothing happened
        victim.write_bytes((registry_with_models.day_dir / victim.name).read_bytes())
        nightly(day, out, registry_with_models.root, chunk_size=CHUNK)
        assert_same_outputs(out, reference[0])
        return
    with pytest.raises(RunConflict, match="--restart"):
        nightly(day, out, registry_with_models.root, chunk_size=CHUNK)
    manifest = nightly(day, out, registry_with_models.root, chunk_size=CHUNK, restart=True)
    assert manifest["balanced"] and manifest["stages"]["features"] == {
        "in": len(registry_with_models.day.conversations) + 1, "out": len(registry_with_models.day.conversations),
        "dead": 1}


def test_truncated_parquet_inputs_are_named_as_failures_and_the_rest_is_scored(registry_with_models, tmp_path):
    day = copied_day(registry_with_models, tmp_path / "day")
    long_form = tmp_path / "long.parquet"
    pd.DataFrame({"conversation_id": ["a", "a"], "turn_index": [0, 1], "speaker": ["customer", "agent"],
                  "text": ["my bag is lost", "sorry"], "customer_id": ["c", "c"]}).to_parquet(long_form)
    long_form.write_bytes(long_form.read_bytes()[: long_form.stat().st_size // 2])
    truncated = day / "more_interactions.parquet"
    truncated.write_bytes((day / "interactions.parquet").read_bytes()[:3000])
    from carelens.inference.nightly.run import run_nightly
    manifest = run_nightly([day / "transcripts.jsonl", long_form], [day / "interactions.parquet", truncated],
                           tmp_path / "run", registry_with_models.root, chunk_size=CHUNK, show_progress_bar=False)
    failed = {f["source"]: f["reason"] for f in manifest["failures"]}
    assert set(failed) == {str(long_form.resolve()), str(truncated.resolve())}
    assert all("cannot be read" in reason for reason in failed.values())
    assert manifest["balanced"] and manifest["stages"]["features"]["out"] == len(registry_with_models.day.conversations)
