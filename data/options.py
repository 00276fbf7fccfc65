"""Command-line options shared across layers: option groups declared once, the scoring options, flags, the seed's range."""
from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional, get_type_hints

import typer

#: What a `--seed` may be: NumPy's and scikit-learn's random states take 32-bit unsigned integers, and a seed outside
#: them failed in a traceback deep in training (after the data was read), not as a usage error.
SEED_RANGE = {"min": 0, "max": 2 ** 32 - 1}

#: The encoder runtimes and the precisions each runs: what `--runtime` and `--precision` offer, and what
#: `carelens.models.runtimes` checks a runtime, precision and device against. `auto` chooses runtime and precision.
RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = {"auto": (), "torch": ("fp32", "int8", "fp16", "bf16"), "onnx": ("fp32", "int8")}
#: Every precision some runtime runs, in the order listed.
ANY_PRECISION = tuple(dict.fromkeys(p for runtime in RUNTIMES for p in PRECISIONS[runtime]))

RegistryOption = Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                             "./registry).")]
VersionsOption = Annotated[str, typer.Option(
    help="Model versions, resolved once at the start: latest, one version for every model (v2), or pinned per model "
         "as NAME=VERSION pairs joined by commas, e.g. churn=v2,transcripts=v1.")]

KeysOption = Annotated[Optional[list[str]], typer.Option(
    "--key", metavar="KEY=FIELD",
    help="Read a transcript key from another field of each record, e.g. contact_id=call_id; a dotted FIELD names a "
         "nested field. Repeat for more keys. ABCD chats: conversation_id, customer_id and contact_id default to "
         "convo_id.")]


def flag(*names: str, **settings):
    """A boolean option that help shows as a flag: its names alone, without a `<bool>` value to give."""
    return typer.Option(*names, metavar="", **settings)


ProgressOption = Annotated[bool, flag(help="Show progress bars.")]


@dataclass(frozen=True)
class EncoderFlags:
    """How a command runs the transcript model's encoder: runtime, precision, device, threads and token budget."""

    runtime: Annotated[Optional[Literal[RUNTIMES]], typer.Option(
        help="Encoder runtime: auto (the default on a CPU: the fastest runtime whose scores do not depend on the batch "
             "and stayed within the model's validated accuracy, measured on first load and remembered per CPU), onnx "
             "(ONNX Runtime on the exports published with the model) or torch.")] = None
    precision: Annotated[Optional[Literal[ANY_PRECISION]], typer.Option(
        help="fp32 (with --runtime onnx or torch: the default), int8 (onnx: static, calibrated at publishing; torch: "
             "dynamic, a turn's score then depends on the turns batched with it), bf16 (torch), fp16 (torch on "
             "--device cuda, the default there).")] = None
    device: Annotated[str, typer.Option(help="cpu, or cuda[:N] (torch runtime).")] = "cpu"
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="Intra-op threads of each scoring process (default: every core it may use).")] = None
    token_budget: Annotated[Optional[int], typer.Option(
        min=16, help="Padded tokens per encoder batch: length-sorted turns are packed up to it (default 2,048).")] = None

    def given(self) -> dict:
        """The options given, as keyword arguments of `carelens.models.scoring.ScoringOptions` (those left unset: its
        defaults)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ScoringFlags(EncoderFlags):
    """The scoring options of every command that scores transcripts: the encoder's, and its encoding cache."""

    cache_entries: Annotated[Optional[int], typer.Option(
        min=0, help="Recent encodings each scoring process remembers, so repeated greetings and stock replies are "
                    "encoded once (about 1.7 kB each for MiniLM; default 10,000); 0 turns it off.")] = None


def keyword(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    """A keyword-only parameter: an option to Typer, in any order, with or without a default."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def group_parameters(group: type) -> list[inspect.Parameter]:
    """The fields of an option group (a dataclass whose fields are `Annotated` Typer options) as keyword parameters."""
    hints = get_type_hints(group, include_extras=True)
    return [keyword(f.name, hints[f.name], inspect.Parameter.empty if f.default is MISSING else f.default)
            for f in fields(group)]


def with_option_groups(command: Callable) -> Callable:
    """The command as Typer sees it: each parameter typed by an option group (a dataclass of `Annotated` options)
    spread into the group's options, and the command called with one instance of the group for that parameter, so that
    options several commands share are declared once. Typer reads the signature this sets (`__signature__`)."""
    hints = get_type_hints(command, include_extras=True)
    groups = {name: hint for name, hint in hints.items() if is_dataclass(hint)}
    parameters = [spread for own in inspect.signature(command).parameters.values()
                  for spread in (group_parameters(groups[own.name]) if own.name in groups
                                 else [keyword(own.name, hints.get(own.name, own.annotation), own.default)])]
    names = [p.name for p in parameters]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TypeError(f"{command.__qualname__}: option groups repeat {', '.join(repeated)}")

    @functools.wraps(command)
    def grouped(**values):
        for name, group in groups.items():
            values[name] = group(**{f.name: values.pop(f.name) for f in fields(group)})
        return command(**values)
    grouped.__signature__ = inspect.Signature(parameters)
    grouped.__annotations__ = {p.name: p.annotation for p in parameters}
    return grouped
