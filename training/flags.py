"""The option groups the training commands share: the labelled table, where a model is published, a transcript training run."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.options import SEED_RANGE, ProgressOption, flag

PathsOption = Optional[list[Path]]


@dataclass(frozen=True)
class TableFlags:
    """The labelled table a tabular model is trained or evaluated on: data, labels, target and joined features."""

    data: Annotated[Path, typer.Option("--data", help="A generator output directory, an interactions file (with "
                                                      "--labels), or any CSV/Parquet holding the --target column.")]
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Contract labels file joined on contact_id.")] = None
    target: Annotated[Optional[str], typer.Option("--target", help="Label column (default: churned / "
                                                                   "retaliation).")] = None
    features_from: Annotated[PathsOption, typer.Option(
        "--features-from", help="Table keyed by contact_id or customer_id whose numeric columns join as features "
                                "(repeatable).")] = None


@dataclass(frozen=True)
class PublishFlags:
    """Where a trained model is published, and where a copy of its report goes."""

    out: Annotated[Optional[Path], typer.Option("--out", "--registry", help="Registry to publish to (default "
                                                                            "$CARELENS_REGISTRY or ./registry).")] = None
    runs: Annotated[Path, typer.Option(help="Where a copy of the HTML report goes.")] = Path("runs")

    def checked_registry(self):
        """The registry to publish to, once it and the folder for the report's copy (`--runs`) are known to be
        folders or absent: checked before training, since a model trained for nowhere would be lost, and a report
        copied nowhere ends a run that did publish in a traceback."""
        from carelens.data.paths import output_folder
        from carelens.models.registry import Registry
        store = Registry(self.out)
        output_folder(store.root)
        output_folder(self.runs, "--runs")
        return store


@dataclass(frozen=True)
class ComputeFlags:
    """How a transcript training run uses the machine: its seed, torch threads, time budget and progress bars."""

    seed: Annotated[int, typer.Option(**SEED_RANGE, help="Seed for the splits, batches and initialisation.")] = 13
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2
    time_budget: Annotated[Optional[float], typer.Option(help="finetune: minutes after which training stops at the "
                                                              "next step and keeps its best validated state.")] = None
    progress: ProgressOption = True

    def options(self) -> dict:
        """The flags as keyword arguments of the training `Options`."""
        return {"seed": self.seed, "threads": self.threads, "time_budget_minutes": self.time_budget,
                "show_progress_bar": self.progress}


@dataclass(frozen=True)
class ScheduleFlags:
    """How long and in what steps the transcript model trains: epochs, learning rate, window, batch and repeats."""

    epochs: Annotated[int, typer.Option(help="finetune: passes over the sentiment data.")] = 3
    lr: Annotated[float, typer.Option(help="finetune: peak AdamW learning rate.")] = 8e-5
    max_length: Annotated[int, typer.Option(help="Encoder window in tokens; longer turns are windowed when "
                                                 "scored.")] = 256
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per training batch.")] = 32
    empathy_repeats: Annotated[int, typer.Option(help="finetune: passes over the empathy data per epoch (it is a "
                                                      "fifth the size of the sentiment data).")] = 4

    def options(self) -> dict:
        """The flags as keyword arguments of the training `Options`."""
        return asdict(self)


@dataclass(frozen=True)
class SwitchFlags:
    """The transcript model's training switches, each an ablation: class weights, decision weights, pairs, the
    floor, rationales and balanced sampling."""

    class_weights: Annotated[bool, flag(help="Balance classes in the loss (raises macro-F1).")] = True
    decision_weights: Annotated[bool, flag(
        help="Name empathy levels by the calibrated probabilities times per-level weights chosen on validation "
             "macro-F1 (and report the plain argmax beside it). Off by default: it needs a larger validation split "
             "than EPITOME's to carry over.")] = False
    pair: Annotated[bool, flag(help="Read empathy from (customer turn, agent turn) pairs; the default reads the agent "
                                    "turn alone, which did better on EPITOME's validation and test splits.")] = False
    stack_floor: Annotated[bool, flag(help="Pool each head with a TF-IDF + logistic regression floor at the share "
                                           "chosen on validation log-loss (saved with the model).")] = True
    rationales: Annotated[bool, flag(help="finetune: learn EPITOME's rationale spans (which reply tokens show each "
                                          "mechanism) as an auxiliary token-level task.")] = False
    balanced_sampling: Annotated[bool, flag(help="finetune: draw empathy rows class-balanced (rare levels more often) "
                                                 "instead of weighting the loss.")] = False

    def options(self) -> dict:
        """The flags as keyword arguments of the training `Options` (`--pair` is its `pair_encoding`)."""
        switches = asdict(self)
        switches["pair_encoding"] = switches.pop("pair")
        return switches


@dataclass(frozen=True)
class TranscriptDataFlags:
    """What the transcript model learns from: public sentiment and empathy sets, contract transcripts, own labels."""

    sentiment_data: Annotated[PathsOption, typer.Option(help="Airline-tweet CSV (text, label) or a directory of them; "
                                                             "repeatable.")] = None
    empathy_data: Annotated[PathsOption, typer.Option(help="EPITOME CSV (seeker_post, response_post, level) or a "
                                                           "directory of them; repeatable.")] = None
    transcripts: Annotated[PathsOption, typer.Option(help="Contract transcripts (JSONL) whose turns carry sentiment / "
                                                          "empathy labels; repeatable.")] = None
    labels: Annotated[PathsOption, typer.Option(help="A filled-in `carelens label suggest` CSV; repeatable.")] = None

    def paths(self) -> list[Path]:
        """Every file or folder given, labels last."""
        return [*(self.sentiment_data or ()), *(self.empathy_data or ()), *(self.transcripts or ()),
                *(self.labels or ())]
