"""The nightly job: the same list as the API and the service, every stage once, resumable after SIGKILL anywhere,
capacity, drift against the training profile, and failures a scheduler sees."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carelens.data.synthetic import GeneratorParams, generate, sample_dir, write_synthetic
from carelens.inference.api import Scorer
from carelens.inference.cli import app
from carelens.inference.nightly.layout import FLAGGED_CSV, FLAGGED_PARQUET, MANIFEST, PREDICTIONS, SUMMARY
from carelens.inference.nightly.run import run_nightly
from carelens.inference.nightly.storage import read_parts
from carelens.inference.reasons import measured_features, reason_candidates, reason_typicals
from carelens.inference.selection import FLAG_COLUMNS
from carelens.inference.service import ServiceSettings, create_app

REPO = Path(__file__).resolve().parents[1]


def nightly(day_dir: Path, out: Path, registry: Path, **options) -> dict:
    return run_nightly([day_dir / "transcripts.jsonl"], [day_dir / "interactions.parquet"], out, registry,
                       show_progress_bar=False, **options)


def assert_same_flags(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["customer_id"].tolist() == expected["customer_id"].tolist()
    assert got["contact_id"].tolist() == expected["contact_id"].tolist()
    assert got["action"].tolist() == expected["action"].tolist()
    assert got["retaliation_type"].tolist() == expected["retaliation_type"].tolist()
    assert [list(r) for r in got["reasons"]] == [list(r) for r in expected["reasons"]]
    np.testing.assert_allclose(got[["churn_risk", "retaliation_risk", "risk"]].to_numpy(float),
                               expected[["churn_risk", "retaliation_risk", "risk"]].to_numpy(float), atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(registry_with_models, tmp_path_factory):
    """One uninterrupted nightly run over the test day, in units of 7 conversations / contacts."""
    out = tmp_path_factory.mktemp("nightly") / "run"
    manifest = nightly(registry_with_models.day_dir, out, registry_with_models.root, chunk_size=7)
    return out, manifest


def test_nightly_writes_the_list_summary_and_a_balanced_manifest(uninterrupted, day):
    out, manifest = uninterrupted
    flagged = pd.read_parquet(out / FLAGGED_PARQUET)
    assert list(flagged.columns) == FLAG_COLUMNS and len(flagged) == manifest["flagged"] > 0
    assert flagged["risk"].is_monotonic_decreasing
    assert pd.read_csv(out / FLAGGED_CSV)["customer_id"].astype(str).tolist() == flagged["customer_id"].tolist()
    assert "Is tonight&#x27;s data like the training data?" in (out / SUMMARY).read_text() or \
        "Is tonight's data like the training data?" in (out / SUMMARY).read_text()
    stages = manifest["stages"]
    contacts, conversations = len(day.interactions), len(day.conversations)
    assert stages["features"] == {"in": conversations, "out": conversations, "dead": 0}
    assert stages["predictions"] == {"in": contacts, "out": contacts, "dead": 0}
    assert stages["flags"]["in"] == contacts and stages["flags"]["customers"] == day.interactions["customer_id"].nunique()
    assert manifest["balanced"] and manifest["failures"] == []
    assert set(manifest["timings_s"]) == {"plan", "load", "features", "predictions", "flags", "summary"}
    assert json.loads((out / MANIFEST).read_text())["flagged"] == manifest["flagged"]
    assert manifest["flagged_by_model_alone"]["churn"] >= 0 and manifest["rule"] == "each model's own decision threshold"


def test_api_service_and_nightly_give_the_same_list(uninterrupted, scorer, registry_with_models):
    out, _ = uninterrupted
    folder = registry_with_models.day_dir
    from_api = scorer.flag_at_risk(folder / "interactions.parquet", folder / "transcripts.jsonl")
    assert_same_flags(pd.read_parquet(out / FLAGGED_PARQUET), from_api)
    client = TestClient(create_app(scorer, ServiceSettings(max_body_bytes=10_000_000, max_batch=1_000)))
    interactions = pd.read_parquet(folder / "interactions.parquet")
    body = {"interactions": json.loads(interactions.to_json(orient="records", date_format="iso")),
            "transcripts": [json.loads(line) for line in (folder / "transcripts.jsonl").read_text().splitlines()]}
    answer = client.post("/v1/flag", json=body)
    assert answer.status_code == 200, answer.text
    assert_same_flags(pd.DataFrame(answer.json()["customers"]), from_api)


def test_capacity_flags_the_k_riskiest_and_the_summary_says_so(registry_with_models, tmp_path, uninterrupted):
    manifest = nightly(registry_with_models.day_dir, tmp_path / "cap", registry_with_models.root, capacity=5)
    flagged = pd.read_parquet(tmp_path / "cap" / FLAGGED_PARQUET)
    everyone = read_parts(tmp_path / "cap", PREDICTIONS)
    riskiest = everyone.assign(risk=everyone[["churn_risk", "retaliation_risk"]].max(axis=1)) \
        .groupby("customer_id")["risk"].max().nlargest(5)
    assert len(flagged) == 5 and set(flagged["customer_id"]) == set(riskiest.index)
    assert manifest["rule"] == "capacity: the 5 riskiest customers"
    assert "capacity: the 5 riskiest customers" in (tmp_path / "cap" / SUMMARY).read_text()


def test_each_stage_runs_once_one_encoder_load_one_validation_one_prediction_per_contact(
        registry_with_models, tmp_path, monkeypatch):
    import carelens.inference.nightly.predictions as predictions
    import carelens.models.transcript as transcript
    from carelens.models.tabular import RiskModel
    loads, validations, rows = [], [], {"churn": 0}
    pretrained, check_table, predict_proba = transcript._pretrained, predictions.check_table, RiskModel.predict_proba
    monkeypatch.setattr(transcript, "_pretrained", lambda *a, **k: loads.append(a) or pretrained(*a, **k))
    monkeypatch.setattr(predictions, "check_table", lambda raw, *a, **k: validations.append(a[1]) or check_table(raw, *a, **k))

    def counted(self, X):
        if self.negative_class_ is False or self.negative_class_ == np.False_:
            rows["churn"] += len(X)
        return predict_proba(self, X)
    monkeypatch.setattr(RiskModel, "predict_proba", counted)
    folder = registry_with_models.day_dir
    manifest = nightly(folder, tmp_path / "run", registry_with_models.root, chunk_size=1_000)
    scorer = Scorer.load(registry_with_models.root, load_encoder=False)
    flagged = pd.read_parquet(tmp_path / "run" / FLAGGED_PARQUET)
    contacts = manifest["stages"]["predictions"]["out"]
    # Reasons measure a push only where it can make a reason: a feature a reason can name, with a risky value.
    typical = reason_typicals(scorer.profile["typical"])
    riskiest = read_parts(tmp_path / "run", PREDICTIONS).set_index("contact_id").loc[flagged["contact_id"]]
    pushed = int(reason_candidates(riskiest, typical, measured_features(riskiest, typical)).sum())
    assert len(loads) == 1
    assert validations == [str((folder / "interactions.parquet").resolve())]
    assert 0 < pushed < len(flagged) * len(measured_features(riskiest, typical))
    assert rows["churn"] == contacts + pushed


def test_a_day_with_longer_waits_warns_that_answer_time_drifted(registry_with_models, tmp_path):
    shifted = generate(300, seed=31, params=GeneratorParams(mean_answer_time_s=120.0))
    write_synthetic(shifted, tmp_path / "day")
    manifest = nightly(tmp_path / "day", tmp_path / "run", registry_with_models.root)
    drifted = {row["feature"] for row in manifest["drift"] if row["shifted"]}
    assert "answer_time_s" in drifted
    # One line for the night's drift, naming the features that moved most, first among the warnings it ranks with.
    [line] = [w for w in manifest["warnings"] if w.startswith("drift:")]
    assert "answer_time_s" in line and "PSI above 0.2" in line
    assert "answer_time_s" in (tmp_path / "run" / SUMMARY).read_text().split("drift:", 1)[1].split("</li>")[0]


def test_the_bundled_day_raises_no_drift_warning(registry_with_models, tmp_path):
    manifest = nightly(sample_dir(), tmp_path / "run", registry_with_models.root)
    assert len(manifest["drift"]) > 20 and [row["feature"] for row in manifest["drift"] if row["shifted"]] == []
    assert not any("PSI" in w or "flagged" in w for w in manifest["warnings"])


def test_an_interactions_file_rejected_whole_fails_the_run_with_the_reason(registry_with_models, tmp_path):
    folder = registry_with_models.day_dir
    pd.read_parquet(folder / "interactions.parquet").drop(columns="channel").to_csv(tmp_path / "bad.csv", index=False)
    result = CliRunner().invoke(app, ["nightly", "--transcripts", str(folder / "transcripts.jsonl"), "--interactions",
                                      str(folder / "interactions.parquet"), "--interactions", str(tmp_path / "bad.csv"),
                                      "--registry", str(registry_with_models.root), "--out", str(tmp_path / "run"),
                                      "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "failed:" in result.output and "bad.csv" in result.output and "channel" in result.output
    assert (tmp_path / "run" / FLAGGED_PARQUET).is_file()


# -- no silent wrong answers ------------------------------------------------------------------------------------------

def test_tabular_models_record_the_transcript_model_that_scored_their_features(scorer):
    assert scorer.metadata["churn"]["transcript_model"] == scorer.metadata["retaliation"]["transcript_model"] == "v1"


def test_a_newer_transcript_model_is_not_silently_paired_with_models_trained_on_another(registry_with_models,
                                                                                         tmp_path):
    import shutil

    from tiny_encoder import tiny_encoder

    from carelens.models.registry import RegistryError
    from carelens.models.transcript import TranscriptModel, publish
    root = tmp_path / "registry"
    shutil.copytree(registry_with_models.root, root)
    publish(TranscriptModel.from_encoder(tiny_encoder(tmp_path / "other", seed=5), max_length=32), root, {})
    with pytest.raises(RegistryError, match=r"churn v1 on transcripts v1, retaliation v1 on transcripts v1\) than the "
                                            r"one loaded \(transcripts v2\).*Retrain churn and retaliation"):
        Scorer.load(root)
    together = Scorer.load(root, {"churn": "v1", "retaliation": "v1", "transcripts": "v1"})
    assert together.versions["transcripts"] == "v1" and together.warnings == []
    forced = Scorer.load(root, {"churn": "v1", "retaliation": "v1", "transcripts": "v2"})
    assert any("loaded anyway: the versions were pinned" in w for w in forced.warnings)
    result = CliRunner().invoke(app, ["nightly", "--transcripts", str(registry_with_models.day_dir / "transcripts.jsonl"),
                                      "--interactions", str(registry_with_models.day_dir / "interactions.parquet"),
                                      "--registry", str(root), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2 and "Retrain churn and retaliation" in " ".join(result.output.split())


def test_flagging_without_conversations_says_so_and_strict_refuses(scorer, day):
    from carelens.inference.contacts import MissingConversations
    answered = int((~day.interactions["abandoned"].astype(bool)).sum())
    without = scorer.flag_at_risk(day.interactions)
    assert f"{answered:,} of {answered:,} answered contacts have no conversation features" in without.attrs["warnings"][-1]
    assert scorer.flag_at_risk(day.interactions, day.conversations).attrs["warnings"] == []
    with pytest.raises(MissingConversations, match="answered contacts have no conversation features"):
        scorer.flag_at_risk(day.interactions, strict=True)
    client = TestClient(create_app(scorer, ServiceSettings(max_body_bytes=10_000_000, max_batch=1_000)))
    body = {"interactions": json.loads(day.interactions.to_json(orient="records", date_format="iso"))}
    answer = client.post("/v1/flag", json=body)
    assert answer.status_code == 200 and "answered contacts have no conversation features" in answer.json()["warnings"][0]
    strict = client.post("/v1/flag", json={**body, "strict": True})
    assert strict.status_code == 422 and "no conversation features" in strict.json()["detail"]


def test_abcd_chats_are_scored_not_dead_lettered_whole(registry_with_models, tmp_path):
    from carelens.inference.nightly.layout import DEAD_LETTER
    from carelens.inference.nightly.run import score_batch
    chats = [{"convo_id": 7, "original": [["customer", "my order is late"], ["action", "pull-up order"],
                                          ["agent", "sorry to hear that, let me help"]]},
             {"convo_id": 8, "original": "not a list"},
             {"convo_id": 9, "original": [["agent", "hi"], ["customer", "thanks"]]}]
    (tmp_path / "chats.json").write_text(json.dumps(chats), encoding="utf-8")
    manifest = score_batch([tmp_path / "chats.json"], tmp_path / "out", registry_with_models.root, chunk_size=2,
                           show_progress_bar=False)
    assert manifest["by_input"]["transcripts"] == {"in": 3, "out": 2, "dead": 1}
    assert read_parts(tmp_path / "out")["conversation_id"].tolist() == ["7", "9"]
    [dead] = [json.loads(line) for line in (tmp_path / "out" / DEAD_LETTER).read_text().splitlines()]
    assert dead["entry"] == 2 and "original" in dead["reason"] and json.loads(dead["record"])["convo_id"] == 8


def test_only_the_toolkits_own_errors_become_exit_code_2(tmp_path):
    import typer

    from carelens.data.errors import UsageError
    from carelens.data.terminal import user_errors
    with pytest.raises(typer.Exit) as ended, user_errors():
        raise UsageError("bad option")
    assert ended.value.exit_code == 2
    with pytest.raises(KeyError), user_errors():  # an internal bug keeps its traceback
        raise KeyError("bug")


# -- quiet nights, rejected inputs, stale outputs ---------------------------------------------------------------------

def nightly_command(day_dir: Path, registry: Path, out: Path, interactions: list[Path], *options: str):
    """`carelens nightly` over the day's transcripts and the given interactions files."""
    return CliRunner().invoke(app, ["nightly", "--transcripts", str(day_dir / "transcripts.jsonl"),
                                    *[a for path in interactions for a in ("--interactions", str(path))],
                                    "--registry", str(registry), "--out", str(out), "--no-progress", *options])


def assert_empty_list_summary_and_manifest(out: Path, manifest: dict) -> None:
    assert len(pd.read_parquet(out / FLAGGED_PARQUET)) == 0
    assert list(pd.read_parquet(out / FLAGGED_PARQUET).columns) == FLAG_COLUMNS
    assert list(pd.read_csv(out / FLAGGED_CSV).columns) == FLAG_COLUMNS and len(pd.read_csv(out / FLAGGED_CSV)) == 0
    assert "Nobody was flagged tonight" in (out / SUMMARY).read_text()
    assert manifest["flagged"] == 0 and manifest["balanced"]


@pytest.mark.parametrize("rule", [["--capacity", "0"], ["--threshold", "1"]])
def test_a_quiet_night_writes_an_empty_list_a_summary_that_says_so_and_exits_0(registry_with_models, tmp_path, rule):
    result = nightly_command(registry_with_models.day_dir, registry_with_models.root, tmp_path / "run",
                             [registry_with_models.day_dir / "interactions.parquet"], *rule)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert_empty_list_summary_and_manifest(tmp_path / "run", manifest)
    assert manifest["failures"] == [] and "flagged 0 customers" in result.output


@pytest.mark.parametrize("broken, reason", [
    (lambda frame: frame.drop(columns="channel"), "missing column(s) channel"),
    (lambda frame: frame.assign(answer_time_s="-3"), "none of its 60 rows could be predicted"),
])
def test_a_night_whose_only_interactions_give_nothing_fails_with_the_reason_and_still_writes_its_outputs(
        registry_with_models, tmp_path, broken, reason):
    bad = tmp_path / "bad.csv"
    broken(pd.read_parquet(registry_with_models.day_dir / "interactions.parquet")).to_csv(bad, index=False)
    result = nightly_command(registry_with_models.day_dir, registry_with_models.root, tmp_path / "run", [bad])
    assert result.exit_code == 1, result.output
    assert "carelens score` first" not in result.output
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert [(f["stage"], Path(f["source"]).name) for f in manifest["failures"]] == [("predictions", "bad.csv")]
    assert reason in manifest["failures"][0]["reason"]
    assert_empty_list_summary_and_manifest(tmp_path / "run", manifest)


def test_a_contact_in_two_interactions_files_or_two_chunks_is_predicted_once(registry_with_models, tmp_path):
    from carelens.inference.nightly.layout import DEAD_LETTER
    interactions = pd.read_parquet(registry_with_models.day_dir / "interactions.parquet")
    first, second = tmp_path / "a.parquet", tmp_path / "b.csv"
    # Row 20 of a.parquet repeats row 1's contact (another chunk of the same file); b.csv repeats three contacts of
    # a.parquet under other customers.
    pd.concat([interactions, interactions.head(1)], ignore_index=True).to_parquet(first)
    interactions.head(3).assign(customer_id=["x1", "x2", "x3"]).to_csv(second, index=False)
    manifest = run_nightly([registry_with_models.day_dir / "transcripts.jsonl"], [first, second], tmp_path / "run",
                           registry_with_models.root, chunk_size=7, show_progress_bar=False)
    contacts = len(interactions)
    assert manifest["stages"]["predictions"] == {"in": contacts + 4, "out": contacts, "dead": 4}
    predicted = read_parts(tmp_path / "run", PREDICTIONS)
    assert predicted["contact_id"].is_unique and not predicted["customer_id"].isin(["x1", "x2", "x3"]).any()
    dead = [json.loads(line) for line in (tmp_path / "run" / DEAD_LETTER).read_text().splitlines()]
    assert sorted((Path(d["source"]).name, d["row"]) for d in dead) == \
        [("a.parquet", contacts + 1), ("b.csv", 2), ("b.csv", 3), ("b.csv", 4)]
    assert all("column 'contact_id': duplicate value" in d["reason"] for d in dead)
    assert all(str(first.resolve()) in d["reason"] for d in dead if d["source"].endswith("b.csv"))


def test_a_restart_removes_the_previous_runs_outputs_before_it_plans(registry_with_models, tmp_path, monkeypatch):
    import carelens.inference.nightly.run as nightly_module
    out = tmp_path / "run"
    nightly(registry_with_models.day_dir, out, registry_with_models.root)
    (out / "my notes.txt").write_text("the user's own")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(nightly_module, "tabular_scorer", killed)
    with pytest.raises(KeyboardInterrupt):
        nightly(registry_with_models.day_dir, out, registry_with_models.root, restart=True)
    assert not [p.name for p in out.iterdir() if p.name in (FLAGGED_CSV, FLAGGED_PARQUET, SUMMARY, MANIFEST)]
    assert not list((out / PREDICTIONS).glob("*.parquet")) and (out / "my notes.txt").read_text() == "the user's own"


def test_outputs_are_dated_by_their_manifest_and_a_rerun_with_another_rule_drops_them_first(
        registry_with_models, tmp_path, monkeypatch):
    import hashlib

    import carelens.inference.nightly.run as nightly_module
    from carelens.inference.nightly.layout import DEAD_LETTER
    out = tmp_path / "run"
    manifest = nightly(registry_with_models.day_dir, out, registry_with_models.root, capacity=5)
    assert {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in (FLAGGED_PARQUET, FLAGGED_CSV, SUMMARY, DEAD_LETTER)} == manifest["output_sha256"]
    assert manifest["started_at"] in (out / SUMMARY).read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(nightly_module, "summary_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        nightly(registry_with_models.day_dir, out, registry_with_models.root, capacity=8)
    assert not (out / MANIFEST).exists() and not (out / SUMMARY).exists()
    monkeypatch.undo()
    again = nightly(registry_with_models.day_dir, out, registry_with_models.root, capacity=8)
    assert again["flagged"] == 8 and "the 8 riskiest" in (out / SUMMARY).read_text()


def test_the_same_out_with_another_model_under_the_same_version_name_is_refused(registry_with_models, tmp_path):
    import shutil

    from carelens.inference.nightly.layout import RunConflict
    from carelens.models.registry import METADATA, write_checksums
    out, other = tmp_path / "run", tmp_path / "registry"
    nightly(registry_with_models.day_dir, out, registry_with_models.root)
    shutil.copytree(registry_with_models.root, other)
    churn = other / "churn" / "v1"
    (churn / METADATA).write_text(json.dumps({**json.loads((churn / METADATA).read_text()), "note": "retrained"}))
    (churn / "SHA256SUMS").unlink()
    write_checksums(churn)
    with pytest.raises(RunConflict, match=r"holds a run with other models.*churn v1 differs in content"):
        nightly(registry_with_models.day_dir, out, other)
    result = nightly_command(registry_with_models.day_dir, other, out,
                             [registry_with_models.day_dir / "interactions.parquet"])
    assert result.exit_code == 2 and "churn v1 differs in content" in " ".join(result.output.split())


#: Another run holding an output folder, in a process of its own, until its stdin closes.
HOLDS_THE_FOLDER = """import sys
from pathlib import Path
from carelens.inference.nightly.storage import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_run_into_a_folder_another_run_is_writing_into_is_refused_naming_the_folder_and_that_run(
        registry_with_models, tmp_path):
    day, out = registry_with_models.day_dir, tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", HOLDS_THE_FOLDER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        for command in (["score"], ["nightly", "--interactions", str(day / "interactions.parquet")]):
            result = CliRunner().invoke(app, [*command, "--transcripts", str(day / "transcripts.jsonl"), "--out",
                                              str(out), "--registry", str(registry_with_models.root), "--no-progress"])
            shown = " ".join(result.output.split())
            assert result.exit_code == 2, result.output
            assert f"{out}: another run is writing into this folder (pid {other.pid}," in shown, shown
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        other.stdin.close()
        other.wait(timeout=60)
    assert nightly_command(day, registry_with_models.root, out, [day / "interactions.parquet"]).exit_code == 0


def test_score_into_a_folder_holding_a_nightly_run_is_refused_and_leaves_its_manifest(uninterrupted,
                                                                                     registry_with_models):
    out, _ = uninterrupted
    day, before = registry_with_models.day_dir, (out / MANIFEST).read_bytes()
    result = CliRunner().invoke(app, ["score", "--transcripts", str(day / "transcripts.jsonl"), "--interactions",
                                      str(day / "interactions.parquet"), "--chunk-size", "7", "--out", str(out),
                                      "--registry", str(registry_with_models.root), "--no-progress"])
    shown = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"{out}: holds a nightly run ({FLAGGED_CSV}, {FLAGGED_PARQUET}, {SUMMARY}, _stages)" in shown, shown
    assert (out / MANIFEST).read_bytes() == before
