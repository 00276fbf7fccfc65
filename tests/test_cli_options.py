"""The command line's shared options: groups declared once, choices listed and enforced, flags shown as flags."""
import re
import sys
from dataclasses import dataclass
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from carelens.data.options import with_option_groups
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
    assert "<auto|torch|onnx>" in text and "<fp32|int8|fp16|bf16>" in text


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


@dataclass(frozen=True)
class Pair:
    left: Annotated[int, typer.Option(min=1, help="The left one.")] = 1
    right: Annotated[Optional[str], typer.Option(help="The right one.")] = None


def test_an_option_group_is_spread_into_options_and_handed_back_as_one_instance():
    seen = {}

    @with_option_groups
    def command(name: Annotated[str, typer.Option()], pair: Pair = Pair(), loud: bool = False) -> None:
        seen.update(name=name, pair=pair, loud=loud)
    single = typer.Typer()
    single.command()(command)
    result = CliRunner().invoke(single, ["--left", "3", "--name", "n", "--loud"])
    assert result.exit_code == 0, result.output
    assert seen == {"name": "n", "pair": Pair(3, None), "loud": True}
    assert CliRunner().invoke(single, ["--name", "n", "--left", "0"]).exit_code == 2  # the group's range holds
    assert CliRunner().invoke(single, ["--left", "3"]).exit_code == 2  # and the command's own required option
    assert "The right one." in CliRunner().invoke(single, ["--help"], env={"COLUMNS": "200"}).output


def test_a_command_whose_groups_repeat_an_option_is_refused_when_declared():
    with pytest.raises(TypeError, match="repeat left"):
        @with_option_groups
        def command(left: int = 0, pair: Pair = Pair()) -> None:
            pass


SCORING_OPTIONS = ("--runtime", "--precision", "--device", "--threads", "--token-budget", "--cache-entries")
RUN_OPTIONS = ("--transcripts", "--out", "--registry", "--version", "--engine", "--format", "--chunk-size",
               "--ray-address", "--workers", "--restart", "--progress", "--redact", "--verbose")


@pytest.mark.parametrize("command, options", [(["score"], SCORING_OPTIONS + RUN_OPTIONS),
                                              (["nightly"], SCORING_OPTIONS + RUN_OPTIONS),
                                              (["serve"], SCORING_OPTIONS), (["featurize"], SCORING_OPTIONS),
                                              (["evaluate", "transcripts"], SCORING_OPTIONS[:-1])])
def test_the_shared_groups_give_each_command_every_option_of_the_group(command, options):
    listed = {word for word in help_text(command).split() if word.startswith("--")}
    assert set(options) <= listed


@pytest.mark.parametrize("command", SCORING_COMMANDS)
@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--token-budget", "15")])
def test_the_shared_scoring_ranges_hold_in_every_command(command, option, value):
    result = CliRunner().invoke(app, [*command, option, value], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
