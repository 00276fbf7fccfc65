"""The batch scorer: exact features, dead letters with reasons, in = out + dead, resuming after SIGKILL, engines agree."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelens.data.readers import write_transcripts
from carelens.data.synthetic import generate
from carelens.inference.contacts import PREDICTION_COLUMNS
from carelens.inference.nightly.layout import DEAD_LETTER, MANIFEST, RunConflict
from carelens.inference.nightly.run import score_batch
from carelens.inference.nightly.storage import read_parts
from carelens.inference.nightly.units import jsonl_plan, jsonl_records
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS

BAD_LINES = [
    ('{"conversation_id": "cut", "customer_id"', "line {n}: not valid JSON"),
    ('{"conversation_id": "bot", "customer_id": "c1", "turns": [{"speaker": "bot", "text": "hi"}]}',
     "line {n}, column 'turns.0.speaker'"),
    ('{"conversation_id": "t", "customer_id": "c2", "turns": [{"speaker": "agent", "text": "hi", "start_s": "soon"}]}',
     "line {n}, column 'turns.0.start_s'"),
    ('{"conversation_id": "s", "customer_id": "c3", "turns": "hello"}', "line {n}, column 'turns'"),
    ('["a", "list"]', "line {n}: expected a JSON object"),
]


def score(inputs, out, registry, **options):
    return score_batch(inputs, out, registry, show_progress_bar=False, **options)


def assert_features_equal(got: pd.DataFrame, expected: pd.DataFrame, tolerance: float = 1e-6):
    pd.testing.assert_frame_equal(got[KEYS].reset_index(drop=True), expected[KEYS].reset_index(drop=True),
                                  check_dtype=False)
    np.testing.assert_allclose(got[FEATURE_COLUMNS].to_numpy(float), expected[FEATURE_COLUMNS].to_numpy(float),
                               atol=tolerance, rtol=0)


@pytest.fixture
def mixed_inputs(tmp_path, day):
    """A transcripts file with bad lines among good ones (and a blank line), an empty file, and a file that is not
    JSON at all."""
    good = day.conversations
    lines = [json.dumps(c) for c in good[:20]] + [""] + [bad for bad, _ in BAD_LINES] + \
        [json.dumps(c) for c in good[20:]]
    (tmp_path / "day.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "binary.jsonl").write_bytes(b"PAR1\x00\x15\xff\xfe garbage\n\x00\x01 more\n")
    return tmp_path


def test_every_record_is_scored_or_dead_lettered_and_the_run_goes_on(mixed_inputs, registry_with_models, scorer,
                                                                     day, tmp_path):
    manifest = score([mixed_inputs / "*.jsonl"], tmp_path / "out", registry_with_models.root, chunk_size=7)
    good = len(day.conversations)
    assert manifest["by_input"]["transcripts"] == {"in": good + len(BAD_LINES) + 2, "out": good,
                                                   "dead": len(BAD_LINES) + 2}
    assert manifest["balanced"] and manifest["counts"]["in"] == manifest["counts"]["out"] + manifest["counts"]["dead"]
    assert manifest["rejected_inputs"] == [{"source": str((mixed_inputs / "empty.jsonl").resolve()),
                                            "reason": "the file is empty: no conversations"}]
    dead = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER).read_text().splitlines()]
    by_line = {(Path(d["source"]).name, d["line"]): d for d in dead}
    for k, (text, where) in enumerate(BAD_LINES):
        entry = by_line[("day.jsonl", 22 + k)]
        assert where.format(n=22 + k) in entry["reason"] and entry["record"] == text
    assert {by_line[("binary.jsonl", n)]["reason"].split(": ", 2)[-1][:14] for n in (1, 2)} == {"not valid JSON"}
    features = read_parts(tmp_path / "out")
    assert_features_equal(features, scorer.score_transcripts(day.conversations), tolerance=1e-5)
    assert features["line"].tolist() == [*range(1, 21), *range(22 + len(BAD_LINES), 22 + len(BAD_LINES) + good - 20)]


def test_manifest_names_inputs_with_sizes_hashes_and_models(registry_with_models, tmp_path):
    source = registry_with_models.day_dir / "transcripts.jsonl"
    manifest = json.loads(json.dumps(score([source], tmp_path / "out", registry_with_models.root)))
    assert manifest == json.loads((tmp_path / "out" / MANIFEST).read_text())
    [described] = manifest["inputs"]
    assert described["bytes"] == source.stat().st_size and len(described["sha256"]) == 64
    assert manifest["models"] == {"transcripts": "v1"} and manifest["started_at"] <= manifest["ended_at"]


def test_a_rerun_skips_finished_units_and_clears_a_killed_runs_leftovers(registry_with_models, tmp_path):
    source, out = registry_with_models.day_dir / "transcripts.jsonl", tmp_path / "out"
    first = score([source], out, registry_with_models.root, chunk_size=10)
    before = read_parts(out)
    (out / "features" / ".t0000-c000009.parquet.tmp-123").write_bytes(b"half a part")
    (out / "features" / "t0000-c000002.parquet").unlink()
    again = score([source], out, registry_with_models.root, chunk_size=10)
    assert again["units"] == {"scored_now": 1, "already_done": first["units"]["scored_now"] - 1}
    assert not list(out.rglob("*.tmp-*"))
    pd.testing.assert_frame_equal(read_parts(out), before)


def test_resuming_a_run_over_changed_inputs_or_chunking_is_refused(registry_with_models, tmp_path):
    source, out = tmp_path / "day.jsonl", tmp_path / "out"
    source.write_bytes((registry_with_models.day_dir / "transcripts.jsonl").read_bytes())
    score([source], out, registry_with_models.root)
    with pytest.raises(RunConflict, match="holds a run with other chunk_size.*--restart"):
        score([source], out, registry_with_models.root, chunk_size=3)
    source.write_text(source.read_text().splitlines()[0] + "\n")
    with pytest.raises(RunConflict, match="other inputs"):
        score([source], out, registry_with_models.root)
    assert score([source], out, registry_with_models.root, restart=True)["counts"] == {"in": 1, "out": 1, "dead": 0}


@pytest.mark.slow  # tests/test_faults.py kills the batch scorer at a random point in the default run
def test_a_run_killed_midway_and_rerun_scores_every_conversation_exactly_once(registry_with_models, tmp_path):
    conversations = generate(125, seed=5).conversations
    source, out = write_transcripts(conversations, tmp_path / "many.jsonl"), tmp_path / "out"
    command = [str(Path(sys.executable).parent / "carelens"), "score", "--transcripts", str(source), "--out", str(out),
               "--registry", str(registry_with_models.root), "--chunk-size", "2", "--threads", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "features").glob("*.parquet"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    parts_when_killed = len(list((out / "features").glob("*.parquet")))
    assert 5 <= parts_when_killed < len(conversations) / 2, "the run was not killed midway"
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["units"]["already_done"] >= parts_when_killed
    features = read_parts(out)
    assert sorted(features["conversation_id"]) == sorted(c["conversation_id"] for c in conversations)
    assert manifest["counts"] == {"in": len(conversations), "out": len(conversations), "dead": 0}


def test_long_form_parquet_gives_the_features_of_the_same_conversations_in_json_lines(registry_with_models, day,
                                                                                      tmp_path):
    rows = [{"conversation_id": c["conversation_id"], "customer_id": c["customer_id"], "contact_id": c["contact_id"],
             "turn_index": i, "speaker": t["speaker"], "text": t["text"]}
            for c in day.conversations for i, t in enumerate(c["turns"])]
    # Small row groups, so that units start and end inside row groups.
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "long.parquet", row_group_size=17)
    plain = [{**c, "turns": [{"speaker": t["speaker"], "text": t["text"]} for t in c["turns"]]}
             for c in day.conversations]
    write_transcripts(plain, tmp_path / "plain.jsonl")
    long = score([tmp_path / "long.parquet"], tmp_path / "long", registry_with_models.root, chunk_size=4)
    score([tmp_path / "plain.jsonl"], tmp_path / "plain", registry_with_models.root, chunk_size=4)
    assert long["counts"]["out"] == len(day.conversations)
    assert_features_equal(read_parts(tmp_path / "long"), read_parts(tmp_path / "plain"))


def test_interactions_get_the_scorers_predictions_and_bad_rows_are_dead_lettered(registry_with_models, scorer, day,
                                                                                 tmp_path):
    interactions = day.interactions.astype({"answer_time_s": object})
    interactions.loc[3, "answer_time_s"] = -4.0
    interactions.to_csv(tmp_path / "contacts.csv", index=False)
    manifest = score([registry_with_models.day_dir / "transcripts.jsonl"], tmp_path / "out",
                     registry_with_models.root, interactions=[tmp_path / "contacts.csv"], chunk_size=25)
    assert manifest["by_input"]["interactions"] == {"in": len(interactions), "out": len(interactions) - 1, "dead": 1}
    [dead] = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER).read_text().splitlines()]
    assert dead["row"] == 5 and "column 'answer_time_s': got '-4.0', expected a finite number >= 0" in dead["reason"]
    predicted = read_parts(tmp_path / "out", "predictions", PREDICTION_COLUMNS)
    good = day.interactions.drop(index=3)
    expected = scorer.contact_predictions(scorer.contact_table(good, day.conversations))
    pd.testing.assert_frame_equal(predicted, expected[PREDICTION_COLUMNS].reset_index(drop=True), check_dtype=False,
                                  atol=1e-6)


def test_a_bad_row_does_not_make_a_later_good_row_of_its_contact_a_duplicate(registry_with_models, scorer, day,
                                                                             tmp_path):
    bad = day.interactions.iloc[[3]].astype({"answer_time_s": object}).assign(answer_time_s="soon")
    # The bad row, then the same contact's good row, in one chunk: the good one is the contact's only valid row.
    table = pd.concat([day.interactions.iloc[:3], bad, day.interactions.iloc[3:]], ignore_index=True)
    table.to_csv(tmp_path / "contacts.csv", index=False)
    manifest = score([registry_with_models.day_dir / "transcripts.jsonl"], tmp_path / "out",
                     registry_with_models.root, interactions=[tmp_path / "contacts.csv"], chunk_size=25)
    assert manifest["by_input"]["interactions"] == {"in": len(table), "out": len(day.interactions), "dead": 1}
    [dead] = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER).read_text().splitlines()]
    assert dead["row"] == 5 and "column 'answer_time_s': got 'soon'" in dead["reason"], dead
    predicted = read_parts(tmp_path / "out", "predictions", PREDICTION_COLUMNS)
    assert predicted["contact_id"].tolist() == day.interactions["contact_id"].tolist()


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.sampled_from(["{}", "", "  ", '{"a": 1}', "x" * 3, "é"]), max_size=40),
       chunk_size=st.integers(1, 9))
def test_units_cover_every_non_blank_line_once_with_its_number(tmp_path_factory, lines, chunk_size):
    path = tmp_path_factory.mktemp("plan") / "lines.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    planned = jsonl_plan(path, 0, chunk_size)
    read = [record for unit in planned.units for record in jsonl_records(unit)]
    assert read == [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    assert [u.records for u in planned.units] == [len(list(jsonl_records(u))) for u in planned.units]
    assert all(0 < u.records <= chunk_size for u in planned.units) and planned.records == len(read)


@pytest.mark.slow  # Ray's start-up is most of its 20-27 s; `make bench` runs it
def test_ray_and_local_engines_agree_on_400_conversations(registry_with_models, tmp_path):
    ray = pytest.importorskip("ray")
    conversations = generate(450, seed=8).conversations[:400]
    source = write_transcripts(conversations, tmp_path / "thousand.jsonl")
    with open(source, "a", encoding="utf-8") as handle:
        handle.write("not json\n")
    local = score([source], tmp_path / "local", registry_with_models.root, chunk_size=50)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = score([source], tmp_path / "ray", registry_with_models.root, chunk_size=50, engine="ray")
    finally:
        ray.shutdown()
    assert local["counts"] == remote["counts"] == {"in": 401, "out": 400, "dead": 1}
    assert (tmp_path / "local" / DEAD_LETTER).read_text() == (tmp_path / "ray" / DEAD_LETTER).read_text()
    assert_features_equal(read_parts(tmp_path / "ray"), read_parts(tmp_path / "local"), tolerance=1e-6)
    assert not (tmp_path / "ray" / ".ray-staging").exists()


def test_ray_log_lines_below_errors_stay_off_the_terminal_while_quieted():
    pytest.importorskip("ray.data")
    import logging

    from carelens.inference.nightly.ray_engine import ray_logs_quieted
    console = next(h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console")
    before = (logging.getLogger("ray").level, console.level)
    with ray_logs_quieted():
        assert (logging.getLogger("ray").level, console.level) == (logging.ERROR, logging.ERROR)
    assert (logging.getLogger("ray").level, console.level) == before


def test_the_command_says_which_input_matched_nothing_and_exits_2(registry_with_models, tmp_path):
    from typer.testing import CliRunner

    from carelens.inference.cli import app
    result = CliRunner().invoke(app, ["score", "--transcripts", str(tmp_path / "calls-*.jsonl"), "--out",
                                      str(tmp_path / "out"), "--registry", str(registry_with_models.root)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'calls-*.jsonl'}: no input file matches" in " ".join(result.output.split())


def test_the_command_prints_the_counts_and_fails_on_a_file_that_gave_nothing(registry_with_models, tmp_path):
    from typer.testing import CliRunner

    from carelens.inference.cli import app
    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = CliRunner().invoke(app, ["score", "--transcripts", str(registry_with_models.day_dir / "transcripts.jsonl"),
                                      "--transcripts", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out"),
                                      "--registry", str(registry_with_models.root), "--no-progress"])
    # The rest is scored, but a scheduler must see that one input produced nothing.
    assert result.exit_code == 1, result.output
    conversations = len(registry_with_models.day.conversations)
    text = " ".join(result.output.split())
    assert f"in {conversations} = out {conversations} + dead 0" in text
    assert "failed: features:" in text and "empty.jsonl: the file is empty: no conversations" in text


def test_a_conversation_that_fails_to_score_is_dead_lettered_and_its_unit_still_scores(registry_with_models, day,
                                                                                       tmp_path, monkeypatch):
    import carelens.inference.nightly.features as features
    real = features.transcript_features

    def failing_on_poison(model, conversations, *args, **kwargs):
        if any(c.conversation_id == "poison" for c in conversations):
            raise RuntimeError("the encoder choked")
        return real(model, conversations, *args, **kwargs)

    monkeypatch.setattr(features, "transcript_features", failing_on_poison)
    poisoned = [*day.conversations[:3], {**day.conversations[3], "conversation_id": "poison"}, *day.conversations[4:8]]
    source = write_transcripts(poisoned, tmp_path / "poisoned.jsonl")
    manifest = score([source], tmp_path / "out", registry_with_models.root, chunk_size=100)
    assert manifest["counts"] == {"in": 8, "out": 7, "dead": 1}
    [dead] = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER).read_text().splitlines()]
    assert dead["line"] == 4 and dead["reason"] == "scoring failed: RuntimeError: the encoder choked"
    assert read_parts(tmp_path / "out")["line"].tolist() == [1, 2, 3, 5, 6, 7, 8]
    write_transcripts([poisoned[3]], source)
    with pytest.raises(RuntimeError, match="every conversation of the batch failed to score"):
        score([source], tmp_path / "again", registry_with_models.root)


def latin_named_folder(tmp_path: Path, source: Path) -> Path:
    """A folder holding a copy of `source` as good<suffix>, and another named café in Latin-1 (not UTF-8) bytes."""
    import os
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / f"good{source.suffix}").write_bytes(source.read_bytes())
    Path(os.fsdecode(bytes(latin) + b"/caf\xe9" + source.suffix.encode())).write_bytes(source.read_bytes())
    return latin


def special_inputs(tmp_path: Path, source: Path) -> dict:
    """Inputs that are not plain files, as the option would name them → the path the refusal must name; files in
    folders carry the suffix of `source`."""
    import os
    suffix = source.suffix
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    (folder / f"nested{suffix}").mkdir(parents=True)
    os.mkfifo(folder / f"queue{suffix}")
    return {str(fifo): str(fifo), "/dev/zero": "/dev/zero", str(tmp_path / "fol*"): str(folder),
            str(folder): str(folder / f"queue{suffix}")}


@pytest.mark.parametrize("option", ["--transcripts", "--interactions"])
def test_inputs_that_are_not_plain_files_are_refused_by_path_before_anything_is_read(registry_with_models, tmp_path,
                                                                                     option, time_limit):
    from typer.testing import CliRunner

    from carelens.inference.cli import app
    day = registry_with_models.day_dir
    source = {"--transcripts": day / "transcripts.jsonl", "--interactions": tmp_path / "day.csv"}[option]
    pd.read_parquet(day / "interactions.parquet").to_csv(tmp_path / "day.csv", index=False)
    refused = special_inputs(tmp_path, source)
    if option == "--interactions":  # a transcripts file under such a name is rejected alone (see the test below)
        latin = latin_named_folder(tmp_path, source)
        refused[str(latin)] = f"{latin}/caf\\xe9{source.suffix}"
    for number, (given, named) in enumerate(refused.items()):
        other = {"--transcripts": ["--interactions", str(day / "interactions.parquet")],
                 "--interactions": ["--transcripts", str(day / "transcripts.jsonl")]}[option]
        with time_limit(60):
            result = CliRunner().invoke(app, ["score", option, given, *other, "--out", str(tmp_path / f"out{number}"),
                                              "--registry", str(registry_with_models.root), "--no-progress"])
        assert result.exit_code == 2, (given, result.output)
        assert f"{named}:" in " ".join(result.output.split()) and "expected a regular file" in result.output, \
            (given, result.output)
        assert not (tmp_path / f"out{number}").exists()


def test_a_transcripts_file_whose_name_is_not_utf8_is_rejected_alone_and_the_rest_is_scored(registry_with_models,
                                                                                            tmp_path):
    from typer.testing import CliRunner

    from carelens.inference.cli import app
    day, out = registry_with_models.day_dir, tmp_path / "out"
    latin = latin_named_folder(tmp_path, day / "transcripts.jsonl")
    result = CliRunner().invoke(app, ["score", "--transcripts", str(latin), "--out", str(out), "--registry",
                                      str(registry_with_models.root), "--no-progress"])
    assert result.exit_code == 1, result.output  # done, but incomplete
    manifest = json.loads((out / MANIFEST).read_text())
    [failure] = manifest["failures"]
    assert failure["source"] == f"{latin}/caf\\xe9.jsonl" and "the file name is not valid UTF-8" in failure["reason"]
    assert f"{latin}/caf\\xe9.jsonl: the file name is not valid UTF-8" in " ".join(result.output.split())
    assert manifest["by_input"]["transcripts"]["out"] == len(registry_with_models.day.conversations)
    assert set(read_parts(out)["source"]) == {str(latin / "good.jsonl")}


def test_an_out_that_is_a_file_is_refused_and_left_alone(registry_with_models, tmp_path):
    from typer.testing import CliRunner

    from carelens.inference.cli import app
    out, day = tmp_path / "notes.txt", registry_with_models.day_dir
    out.write_text("mine")
    for command in (["score"], ["nightly", "--interactions", str(day / "interactions.parquet")]):
        result = CliRunner().invoke(app, [*command, "--transcripts", str(day / "transcripts.jsonl"), "--out", str(out),
                                          "--registry", str(registry_with_models.root), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert f"--out {out}: is a file; expected a folder" in " ".join(result.output.split())
    assert out.read_text() == "mine"


def test_a_rerun_deletes_only_its_own_temporary_files(registry_with_models, tmp_path):
    source, out = registry_with_models.day_dir / "transcripts.jsonl", tmp_path / "out"
    mine = [out / "backup.tmp-2024.csv", out / "notes" / "draft.tmp-1", out / ".flagged.csv.tmp-x",
            out / "features" / "t0000-c000000.parquet.tmp-9", out / ".report.html.tmp-12"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own")
    leftover = out / "features" / ".t0000-c000001.parquet.tmp-4242"
    leftover.write_bytes(b"half a part")
    score([source], out, registry_with_models.root, chunk_size=10)
    assert not leftover.exists()
    assert all(path.read_text() == "the user's own" for path in mine)
    score([source], out, registry_with_models.root, chunk_size=10, restart=True)
    assert all(path.read_text() == "the user's own" for path in mine)
