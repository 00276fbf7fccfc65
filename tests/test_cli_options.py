"""The command line's shared options: choices listed in help and enforced by the parser, flags shown as flags."""
import re
import sys

import pytest
from typer.testing import CliRunner

from carelens.inference.cli import app

SCORING_COMMANDS = (["score"], ["nightly"], ["serve"], ["featurize"], ["evaluate", "transcripts"])


def help_text(command: list[str]) -> str:
    """The command's help, on a console wide enough that no row wraps."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", SCORING_COMMANDS)
def test_help_lists_the_runtimes_and_precisions(command):
    text = help_text(command)
    assert "<torch|onnx>" in text and "<fp32|int8|fp16|bf16>" in text


@pytest.mark.parametrize("option, value, choices", [("--runtime", "tensorrt", "'torch', 'onnx'"),
                                                    ("--precision", "fp64", "'fp32', 'int8', 'fp16', 'bf16'")])
def test_the_parser_refuses_a_value_outside_the_choices_and_names_them(option, value, choices):
    result = CliRunner().invoke(app, ["serve", option, value], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output and choices in " ".join(result.output.split())


@pytest.mark.parametrize("command", [["nightly"], ["serve"], ["train", "transcripts"], ["evaluate", "churn"],
                                     ["generate"]])
def test_help_shows_boolean_options_as_flags_without_a_value(command):
    # Typer's own --help is the one option whose row still reads <bool>.
    with_a_value = [line for line in help_text(command).splitlines() if "<bool>" in line]
    assert [line for line in with_a_value if "--help" not in line] == []


def test_nightly_help_shows_its_flags_and_their_negations():
    rows = {line.split()[1]: line.split()[2:4] for line in help_text(["nightly"]).splitlines()
            if line.startswith("│") and len(line.split()) > 3 and line.split()[1].startswith("--")}
    for name in ("strict", "restart", "progress", "redact"):
        assert rows[f"--{name}"][0] == f"--no-{name}" and rows[f"--{name}"][1] != "<bool>"


@pytest.mark.parametrize("model", ["churn", "retaliation", "transcripts"])
def test_evaluate_takes_no_out_option_that_would_name_the_registry(model, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", model, "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "No such option: --out" in result.output


@pytest.mark.parametrize("command", [["train", "churn"], ["train", "transcripts"], ["train", "starter"]])
def test_training_publishes_to_out_or_its_synonym_registry(command):
    assert "--out,--registry" in help_text(command)


@pytest.mark.parametrize("command", [["score"], ["nightly", "--interactions", "contacts.parquet"]])
def test_the_ray_engine_without_ray_is_a_usage_error_naming_the_extra(command, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as where Ray is not installed
    (tmp_path / "t.jsonl").write_text('{"conversation_id": "a", "customer_id": "c", "turns": []}\n')
    result = CliRunner().invoke(app, [*command, "--transcripts", str(tmp_path / "t.jsonl"), "--out",
                                      str(tmp_path / "out"), "--engine", "ray", "--no-progress"])
    assert result.exit_code == 2
    assert "the Ray engine needs Ray: pip install 'carelens[ray]'" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["serve"], ["featurize"], ["evaluate", "transcripts"], ["train", "transcripts"]])
def test_help_of_a_command_that_never_runs_ray_does_not_mention_it(command):
    assert not re.search(r"\bray\b", help_text(command), flags=re.IGNORECASE)


@pytest.mark.parametrize("command", [["score"], ["nightly"]])
def test_the_commands_that_run_ray_offer_verbose_for_its_own_lines(command):
    text = help_text(command)
    assert "--verbose" in text and "--engine" in text and "--ray-address" in text
