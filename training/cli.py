"""The `carelens train`, `carelens evaluate` and `carelens export` commands: how a data scientist makes and judges models."""
from __future__ import annotations

import typer

train_app = typer.Typer(help="Train a model and publish it to the registry.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Score labelled data a model never saw and print its metrics.", no_args_is_help=True)
