"""The `carelens` command line: one entry point that gathers the data, training and inference commands.

Heavy libraries (torch, transformers, ray) are imported inside the commands that need them, so that
`carelens --help` and light commands start in well under a second.
"""
from __future__ import annotations

from importlib.metadata import version as package_version
from typing import Annotated

import typer

from carelens.data.cli import generate_command
from carelens.data.options import flag
from carelens.inference.supervisor_commands import agents_command, drivers_command
from carelens.inference.demo import demo
from carelens.inference.featurize import featurize_command
from carelens.inference.predict import predict_app
from carelens.inference.score import nightly_command, score_command
from carelens.inference.serve import serve_command
from carelens.training.cli import evaluate_app, export_command, label_app, train_app

app = typer.Typer(name="carelens", help="Which customers are we about to lose or anger, and why.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


def print_version(asked: bool) -> None:
    """`carelens --version`: the installed package's version, then exit (each command's `--version` is a model's)."""
    if asked:
        typer.echo(f"carelens {package_version('carelens')}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, flag("--version", callback=print_version, is_eager=True,
                                       help="Print the installed CareLens version and exit.")] = False) -> None:
    """Which customers are we about to lose or anger, and why."""


app.command("generate", help="Write seed-calibrated synthetic customers, contacts, labels and transcripts.")(generate_command)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(predict_app, name="predict")
app.add_typer(label_app, name="label")
app.command("export")(export_command)
app.command("featurize")(featurize_command)
app.command("nightly")(nightly_command)
app.command("score")(score_command)
app.command("serve")(serve_command)
app.command("agents")(agents_command)
app.command("drivers")(drivers_command)
app.command("demo")(demo)
