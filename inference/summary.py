"""The nightly summary: risk distribution, the top flagged customers and why, empathy vs churn risk, retaliation types."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from carelens.data.html import figure_html, html_report, table_html

#: Flagged customers listed in the summary (all of them are in flagged.csv).
TOP_LISTED = 25


def risk_figure(predicted: pd.DataFrame) -> Figure:
    """Histograms of churn and retaliation risk over every customer scored."""
    fig = Figure(figsize=(10, 3.5))
    for axes, column in zip(fig.subplots(1, 2), ("churn_risk", "retaliation_risk")):
        axes.hist(predicted[column], bins=np.linspace(0, 1, 41))
        axes.set(xlabel=column.replace("_", " "), ylabel="customers", title=column.replace("_", " ").capitalize())
    return fig


def empathy_figure(table: pd.DataFrame) -> Figure:
    """Agent empathy of each answered contact against its churn risk."""
    fig = Figure(figsize=(6, 4))
    axes = fig.subplots()
    axes.scatter(table["agent_empathy_mean"], table["churn_risk"], s=8, alpha=0.5)
    axes.set(xlabel="agent empathy (mean over the agent's turns)", ylabel="churn risk", title="Empathy vs churn risk")
    return fig


def types_figure(flagged: pd.DataFrame) -> Figure:
    """How many flagged customers get each action (from the likeliest retaliation type)."""
    counts = flagged["action"].value_counts()
    fig = Figure(figsize=(6, 3))
    axes = fig.subplots()
    axes.barh(counts.index[::-1], counts.to_numpy()[::-1])
    axes.set(xlabel="flagged customers", title="Actions for tonight's flags")
    return fig


def flagged_rows(flagged: pd.DataFrame, limit: int = TOP_LISTED) -> list[dict]:
    """The riskiest flagged customers as table rows, reasons joined into one cell."""
    return [{"customer": r.customer_id, "churn risk": round(r.churn_risk, 3),
             "retaliation risk": round(r.retaliation_risk, 3), "retaliation type": r.retaliation_type,
             "action": r.action, "reasons": "; ".join(r.reasons)} for r in flagged.head(limit).itertuples()]


def nightly_summary(predicted: pd.DataFrame, flagged: pd.DataFrame, contacts: pd.DataFrame, facts: list[dict]) -> str:
    """The HTML page a supervisor opens in the morning."""
    sections = [("Tonight's run", table_html(facts)),
                (f"Top {min(TOP_LISTED, len(flagged))} of {len(flagged)} flagged customers",
                 table_html(flagged_rows(flagged))),
                ("Risk distribution", figure_html(risk_figure(predicted))),
                ("Actions", figure_html(types_figure(flagged)) if len(flagged) else "<p>No customer flagged.</p>")]
    if "agent_empathy_mean" in contacts.columns and contacts["agent_empathy_mean"].notna().any():
        sections.append(("Agent empathy vs churn risk", figure_html(empathy_figure(contacts))))
    return html_report("CareLens: customers at risk", sections)
