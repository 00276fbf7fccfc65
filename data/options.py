"""Command-line options shared across layers: the transcript scoring options with their choices, and the seed's range."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

#: What a `--seed` may be: NumPy's and scikit-learn's random states take 32-bit unsigned integers, and a seed outside
#: them failed in a traceback deep in training (after the data was read), not as a usage error.
SEED_RANGE = {"min": 0, "max": 2 ** 32 - 1}

#: The encoder runtimes and the precisions each runs: what `--runtime` and `--precision` offer, and what
#: `carelens.models.runtimes` checks a runtime, precision and device against.
RUNTIMES = ("torch", "onnx")
PRECISIONS = {"torch": ("fp32", "int8", "fp16", "bf16"), "onnx": ("fp32", "int8")}
#: Every precision some runtime runs, in the order listed.
ANY_PRECISION = tuple(dict.fromkeys(p for runtime in RUNTIMES for p in PRECISIONS[runtime]))

RuntimeOption = Annotated[Optional[Literal[RUNTIMES]], typer.Option(
    help="Encoder runtime: onnx (ONNX Runtime on the export published with the model; the default on a CPU) or "
         "torch.")]
PrecisionOption = Annotated[Optional[Literal[ANY_PRECISION]], typer.Option(
    help="fp32 (default on a CPU), int8 (faster; a turn's score then depends on the turns batched with it), bf16 "
         "(torch), fp16 (torch on --device cuda, the default there).")]
DeviceOption = Annotated[str, typer.Option(help="cpu, or cuda[:N] (torch runtime).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    min=1, help="Intra-op threads of each scoring process (default: every core it may use).")]
TokenBudgetOption = Annotated[Optional[int], typer.Option(
    min=16, help="Padded tokens per encoder batch: length-sorted turns are packed up to it (default 2,048).")]
RegistryOption = Annotated[Optional[Path], typer.Option(help="Registry directory (default $CARELENS_REGISTRY or "
                                                             "./registry).")]
VersionsOption = Annotated[str, typer.Option(
    help="Model versions, resolved once at the start: latest, one version for every model (v2), or pinned per model "
         "(churn=v2,retaliation=v2,transcripts=v1).")]
CacheOption = Annotated[Optional[int], typer.Option(
    min=0, help="Recent encodings each scoring process remembers, so repeated greetings and stock replies are encoded "
                "once (about 1.7 kB each for MiniLM; default 10,000); 0 turns it off.")]


def flag(*names: str, **settings):
    """A boolean option that help shows as a flag: its names alone, without a `<bool>` value to give."""
    return typer.Option(*names, metavar="", **settings)


def scoring_option_values(runtime: Optional[str], precision: Optional[str], device: str, threads: Optional[int],
                          token_budget: Optional[int], cache_entries: Optional[int]) -> dict:
    """The options as keyword arguments of `carelens.models.scoring.ScoringOptions` (unset sizes: its defaults)."""
    sizes = {"token_budget": token_budget, "cache_entries": cache_entries}
    return {"runtime": runtime, "precision": precision, "device": device, "threads": threads,
            **{name: value for name, value in sizes.items() if value is not None}}
