"""The `carelens agents` and `carelens drivers` commands: agent scorecards and call drivers over one or more nights' runs, on the terminal and as CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carelens.data.options import RegistryOption, flag

RunsArgument = Annotated[list[Path], typer.Argument(help="Output folders of `carelens nightly` (one night, or several "
                                                         "for a window of nights).")]
OutOption = Annotated[Optional[Path], typer.Option(help="Write the whole table to this CSV file.")]

#: Scorecard columns the terminal shows, and how each value is written (every column is in the CSV).
SHOWN = {"empathy_rank": ("rank", "{}"), "agent_id": ("agent", "{}"), "contacts": ("contacts", "{:,}"),
         "empathy": ("empathy (90% interval)", "{:.2f}"), "flagged_share": ("flagged", "{:.0%}"),
         "sentiment_shift": ("mood shift", "{:+.2f}"), "churn_rate": ("churn", "{:.0%}"),
         "retaliation_rate": ("retaliation", "{:.0%}"), "coaching": ("coaching", "{}")}


def _cells(row: dict, columns: list[str]) -> list[str]:
    """A scorecard row as the terminal shows it (empathy with its interval, a missing value as a dash)."""
    cells = []
    for column in columns:
        value = row[column]
        cell = "—" if value is None or value != value else SHOWN[column][1].format(value)
        if column == "empathy" and cell != "—":
            cell += f" ({row['empathy_low']:.2f}–{row['empathy_high']:.2f})"
        cells.append(cell)
    return cells


def written_or_exit(table, out: Optional[Path], empty: str) -> None:
    """Exit 1 saying `empty` (what the runs lack and how to get it) when the table has no row; else write it to `out`
    as CSV when given."""
    from carelens.data.spreadsheet import write_csv
    from carelens.data.terminal import console
    if table.empty:
        console.print(empty, highlight=False)
        raise typer.Exit(1)
    if out:
        write_csv(table, out)


def agents_command(
    runs: RunsArgument,
    labels: Annotated[Optional[Path], typer.Option(help="Labels (contact_id, churned, retaliation) of those "
                                                        "contacts, for churn and retaliation per agent.")] = None,
    out: OutOption = None,
    redact: Annotated[bool, flag(help="Mask personal data in the quoted turns.")] = False,
    top: Annotated[int, typer.Option(min=0, help="Agents printed on the terminal.")] = 20,
) -> None:
    """Agent scorecards: per agent, contacts, empathy and each EPITOME mechanism (shrunk toward the centre's mean, so
    an agent seen on few contacts is not ranked on luck, with a 90% interval), their customers' mood shift and share
    flagged, churn and retaliation with --labels, and coaching hints quoting the agent's own turns."""
    from rich.table import Table

    from carelens.data.readers import read_labels
    from carelens.data.terminal import console, user_errors
    from carelens.inference.agents import agent_scorecard, run_contacts
    with user_errors():
        contacts, flagged = run_contacts(runs)
        card = agent_scorecard(contacts, flagged, read_labels(labels) if labels else None, redact)
    written_or_exit(card, out, "No contact of these runs names its agent: give the interactions (or transcripts) an "
                               "agent_id column to get scorecards.")
    columns = [c for c in SHOWN if c in card.columns]
    # The agents to coach first are the least empathic: the terminal shows those; the CSV holds every agent.
    shown = card.iloc[::-1].head(top)
    table = Table(*(SHOWN[c][0] for c in columns),
                  title=f"The {len(shown)} least empathic of {len(card):,} agents ({int(card['contacts'].sum()):,} "
                        f"contacts), to coach first")
    for row in shown.to_dict("records"):
        table.add_row(*_cells(row, columns))
    console.print(table)
    if out:
        console.print(f"scorecard: {out}", highlight=False)


def drivers_command(
    runs: RunsArgument,
    registry: RegistryOption = None,
    out: OutOption = None,
) -> None:
    """Call drivers over one or more nights: per driver, contacts and share, its share of the training period (from
    the registry's drivers model) and whether it grew beyond chance, the share of its customers flagged, their mean
    risk and mood. The drivers come from `carelens train drivers`; the nightly job assigns them as it scores."""
    import json

    from carelens.data.terminal import console, rows_table, user_errors
    from carelens.inference.agents import run_contacts
    from carelens.inference.drivers import driver_report
    from carelens.inference.nightly.layout import MANIFEST
    from carelens.models.drivers import drivers_for
    from carelens.models.registry import Registry
    from carelens.models.transcript import MODEL_NAME
    with user_errors():
        contacts, flagged = run_contacts(runs)
        version = json.loads((runs[-1] / MANIFEST).read_text(encoding="utf-8"))["models"].get(MODEL_NAME)
        report = driver_report(contacts, flagged, drivers_for(Registry(registry), version) if version else None)
    written_or_exit(report, out, "No conversation of these runs has a call driver: fit drivers on history with "
                                 "`carelens train drivers`, then score the nights again.")
    console.print(rows_table(report.to_dict("records"), f"{len(report):,} call drivers over "
                                                        f"{int(report['contacts'].sum()):,} conversations, largest first"))
    if out:
        console.print(f"drivers: {out}", highlight=False)
