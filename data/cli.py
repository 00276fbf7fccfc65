"""The `carelens generate` command: write a synthetic data set and show how its marginals match the evidence."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from carelens.data.options import SEED_RANGE, flag

if TYPE_CHECKING:
    import pandas as pd


def generate_command(
    customers: Annotated[int, typer.Option("--customers", "-n", min=1,
                                           help="How many customers (one labelled contact each).")] = 10_000,
    seed: Annotated[int, typer.Option(**SEED_RANGE,
                                      help="Random seed; the same seed always writes the same files.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder to write the tables and transcripts into.")] = Path("synthetic"),
    start: Annotated[str, typer.Option(help="First day of the month the contacts fall in (UTC).")] = "2026-11-01",
    transcripts: Annotated[bool, flag(help="Also write transcripts.jsonl (skip it for large benchmarks).")] = True,
) -> None:
    """Write interactions, labels, hidden truth and transcripts, then print the files and the observed marginals."""
    # Imported here so that `carelens --help` does not pay for scipy and pyarrow.
    from carelens.data.paths import output_folder
    from carelens.data.synthetic import generate, marginals, write_synthetic
    from carelens.data.terminal import console, user_errors

    with user_errors():
        output_folder(out)
    data = generate(customers, seed=seed, start=start, transcripts=transcripts)
    written = write_synthetic(data, out)
    console.print(files_table(written, f"Wrote {customers:,} customers (seed {seed})"))
    console.print(marginals_table(marginals(data)))


def files_table(written: dict[str, Path], title: str) -> Table:
    """The files written, with their sizes, as a rich table."""
    table = Table(title=title)
    table.add_column("file")
    table.add_column("size", justify="right")
    for path in written.values():
        table.add_row(str(path), f"{path.stat().st_size / 1024:,.0f} KiB")
    return table


def marginals_table(frame: pd.DataFrame) -> Table:
    """The marginals (measure, target, observed) as a rich table: seconds as numbers, shares as percentages."""
    table = Table(title="Marginals: evidence vs this sample")
    table.add_column("measure")
    table.add_column("target", justify="right")
    table.add_column("observed", justify="right")
    for measure, target, observed in frame.itertuples(index=False):
        style = "{:.1f}" if measure.endswith("(s)") else "{:.1%}"
        table.add_row(measure, style.format(target), style.format(observed))
    return table
