"""The summary stage: summary.html, tonight's facts, flagged customers, risk and drift for a supervisor."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from carelens.data.html import Shown, figure_html, html_report, plot_label, shown, table_html
from carelens.inference.agents import MEASURES, agent_scorecard
from carelens.inference.api import Scorer
from carelens.inference.drivers import GROWTH_RATIO, driver_report
from carelens.inference.nightly.flags import Tonight, committed_predictions, ranked_warnings
from carelens.inference.contacts import join_lines
from carelens.inference.nightly.layout import DEAD_LETTER, FLAGGED_CSV, FLAGGED_PARQUET, SUMMARY
from carelens.inference.nightly.plan import Run
from carelens.inference.nightly.report import counted
from carelens.inference.nightly.storage import commit_stage, finished_stage, write_text
from carelens.inference.reasons import evidence_text
from carelens.models.conversation_features import AGENT
from carelens.models.drift import MIN_DRIFT_ROWS, PSI_WARNING

#: Flagged customers listed in the summary, riskiest first: enough for a night's work, few enough that the page opens
#: at once (all of them are in flagged.csv).
LISTED_AT_MOST = 2_000


#: Shifted features whose two distributions are drawn (every feature's PSI is in the table).
DRAWN_SHIFTS = 6


#: A quiet night is a normal night: the summary says so instead of showing an empty table.
NOBODY_FLAGGED = "Nobody was flagged tonight: no customer met the rule above, so flagged.csv holds no rows."


def _risk_figure(predicted: pd.DataFrame) -> Figure:
    """Histograms of churn and retaliation risk over every customer scored."""
    fig = Figure(figsize=(10, 3.5))
    for axes, column in zip(fig.subplots(1, 2), ("churn_risk", "retaliation_risk")):
        axes.hist(predicted[column], bins=np.linspace(0, 1, 41))
        axes.set(xlabel=column.replace("_", " "), ylabel="customers", title=column.replace("_", " ").capitalize())
    return fig


def _empathy_figure(table: pd.DataFrame) -> Figure:
    """Agent empathy of each answered contact against its churn risk."""
    fig = Figure(figsize=(6, 4))
    axes = fig.subplots()
    axes.scatter(table["agent_empathy_mean"], table["churn_risk"], s=8, alpha=0.5)
    axes.set(xlabel="agent empathy (mean over the agent's turns)", ylabel="churn risk", title="Empathy vs churn risk")
    return fig


def _types_figure(flagged: pd.DataFrame) -> Figure:
    """How many flagged customers get each action (from the likeliest retaliation type)."""
    counts = flagged["action"].value_counts()
    fig = Figure(figsize=(6, 3))
    axes = fig.subplots()
    axes.barh(counts.index[::-1], counts.to_numpy()[::-1])
    axes.set(xlabel="flagged customers", title="Actions for tonight's flags")
    return fig


def _flagged_rows(flagged: pd.DataFrame) -> list[dict]:
    """Flagged customers as table rows, reasons joined into one cell and the turns they stand on into another."""
    return [{"customer": r.customer_id, "churn risk": r.churn_risk, "retaliation risk": r.retaliation_risk,
             "retaliation type": r.retaliation_type, "action": r.action, "reasons": "; ".join(r.reasons),
             "from the conversation": evidence_text(r.evidence), "agent": r.agent_id if isinstance(r.agent_id, str)
             else ""} for r in flagged.itertuples()]


def _flagged_section(flagged: pd.DataFrame) -> str:
    """The flagged customers, riskiest first, in a table the supervisor sorts and filters; the riskiest
    LISTED_AT_MOST of a longer list."""
    if not len(flagged):
        return f"<p>{NOBODY_FLAGGED}</p>"
    listed = (f"{counted(len(flagged), 'flagged customer')}, riskiest first." if len(flagged) <= LISTED_AT_MOST else
              f"The {LISTED_AT_MOST:,} riskiest of {len(flagged):,} flagged customers, riskiest first; {FLAGGED_CSV} "
              f"holds all of them.")
    return (f"<p>{listed} Click a column's heading to sort by it; type in the box to keep the rows that hold the "
            f"text.</p>" + table_html(_flagged_rows(flagged.head(LISTED_AT_MOST)), sortable=True, filterable=True))


def _agent_rows(card: pd.DataFrame) -> list[dict]:
    """The agents' scorecard as table rows, most empathic first: each measure with its 90% interval."""
    rows = []
    for agent in card.to_dict("records"):
        measures = {name.replace("_", " "): Shown(f"{agent[name]:.2f} ({agent[f'{name}_low']:.2f}–"
                                                  f"{agent[f'{name}_high']:.2f})", agent[name])
                    for name in MEASURES if name in agent}
        rows.append({"rank": agent.get("empathy_rank", ""), "agent": agent[AGENT], "contacts": agent["contacts"],
                     **measures, "customers flagged": Shown(f"{agent['flagged_share']:.0%}", agent["flagged_share"]),
                     **({"mood shift": round(agent["sentiment_shift"], 3)} if "sentiment_shift" in agent else {}),
                     "coaching": agent["coaching"]})
    return rows


def _agents_section(card: pd.DataFrame) -> str:
    """The agents' scorecard, or what it needs when no contact names its agent."""
    if card.empty:
        return ("<p>No contact tonight names its agent: add an agent_id column to the interactions (or the "
                "transcripts) to get a scorecard per agent.</p>")
    return (f"<p>{len(card):,} agents. Each measure is shrunk toward the centre's mean (so an agent seen on few "
            f"contacts is not ranked on luck), with its 90% interval; `carelens agents` scores a window of nights."
            f"</p>" + table_html(_agent_rows(card), sortable=True, filterable=True))


def drift_figure(row: dict) -> Figure:
    """The training and tonight's share of rows per bin (or category) of one feature, side by side."""
    bins = list(dict.fromkeys([*row["training"], *row["tonight"]]))
    positions = np.arange(len(bins))
    fig = Figure(figsize=(8, 3))
    axes = fig.subplots()
    axes.bar(positions - 0.2, [row["training"].get(b, 0.0) for b in bins], width=0.4, label="training")
    axes.bar(positions + 0.2, [row["tonight"].get(b, 0.0) for b in bins], width=0.4, label="tonight")
    axes.set_xticks(positions, [plot_label(b) for b in bins], rotation=30, ha="right", fontsize=8)
    axes.set(ylabel="share of contacts", title=f"{plot_label(row['feature'])}: PSI {row['psi']:.2f}")
    axes.legend()
    return fig


def _drift_section(drift: list[dict], contacts: int) -> str:
    """Every feature's and score's PSI against the training profile, and the distributions of those that shifted."""
    if contacts < MIN_DRIFT_ROWS:
        return (f"<p>Not measured: {contacts:,} contacts tonight, and the population stability index on fewer than "
                f"{MIN_DRIFT_ROWS} contacts is noise.</p>")
    if not drift:
        return "<p>The models carry no training profile to compare with; retrain them to get this section.</p>"
    shifted = [row for row in drift if row["shifted"] or row.get("share_shifted")]
    verdict = (f"<p><strong>{len(shifted)} shift(s)</strong>: PSI above {PSI_WARNING} or a flagged share outside half "
               f"to twice the training share. Consider retraining on recent data.</p>" if shifted else
               f"<p>No feature or score moved beyond PSI {PSI_WARNING}: tonight looks like the training data.</p>")
    rows = [{"feature or score": r["feature"], "PSI": round(r["psi"], 4), "shifted": "yes" if r["shifted"] else "",
             **({"flagged share tonight / at training": f"{r['flagged_share']:.1%} / {r['training_flagged_share']:.1%}"}
                if "flagged_share" in r else {})} for r in drift]
    figures = "".join(figure_html(drift_figure(r)) for r in shifted[:DRAWN_SHIFTS])
    return verdict + figures + table_html(rows)


def _percent(share: Optional[float]) -> str:
    """'41.2%', or an empty cell for a figure that could not be estimated."""
    return "" if share is None else f"{share:.1%}"


def _spread(held_out: float, spread: Sequence[float]) -> str:
    """'64.1% (58.0%–70.2%)'."""
    return f"{held_out:.1%} ({spread[0]:.1%}–{spread[1]:.1%})"


def _performance_section(estimates: Sequence[dict], contacts: int) -> str:
    """Each model's expected precision and recall of tonight's flags beside the held-out figures at training, and
    whether both are within the training spread."""
    if contacts < MIN_DRIFT_ROWS:
        return (f"<p>Not estimated: {contacts:,} contacts tonight, and precision on fewer than {MIN_DRIFT_ROWS} "
                f"is noise.</p>")
    if not estimates:
        return ("<p>The models record no held-out precision and recall to compare with; retrain them to get this "
                "table.</p>")
    rows = [{"model": e["model"], "flagged tonight": e["flagged"],
             "expected precision": _percent(e["expected_precision"]),
             "held-out expected precision (spread)": _spread(e["held_out_expected_precision"], e["precision_spread"]),
             "held-out precision": _percent(e["held_out_precision"]),
             "expected recall": _percent(e["expected_recall"]),
             "held-out expected recall (spread)": _spread(e["held_out_expected_recall"], e["recall_spread"]),
             "held-out recall": _percent(e["held_out_recall"]),
             "within spread?": "yes" if e["within_spread"] else "no"} for e in estimates]
    return ("<p>Estimated from the calibrated risks, without labels: expected precision is the mean risk of the "
            "contacts a model flagged, expected recall their share of all tonight's risk. Each is compared with the "
            "same estimate on the held-out rows at training; the spread is where it lands on most nights of "
            "tonight's size when the flags are as good as then. The held-out figures are those the labels gave.</p>"
            + table_html(rows))


def _dropped_section(dropped: list[dict]) -> str:
    """The records dropped tonight by kind: how many, the first few with their reason, where all of them are."""
    rows = [{"dropped": f"{kind['count']:,} {kind['what']}(s)", "field": kind["field"],
             "first": "; ".join(kind["first"])} for kind in dropped]
    return f"<p>Every dropped record is in {DEAD_LETTER} with its reason.</p>" + table_html(rows)


def _drivers_section(report: pd.DataFrame) -> str:
    """The call drivers of tonight's conversations, those that grew against the training period named first."""
    if report.empty:
        return ("<p>No call drivers: fit them on history with `carelens train drivers` to see why customers "
                "contacted you, and which reasons grew tonight.</p>")
    grown = report[report["grew"]]["driver"].tolist() if "grew" in report.columns else []
    verdict = (f"<p><strong>Grew tonight</strong> (at least {GROWTH_RATIO:g}× the training share, beyond chance): "
               f"{shown(', '.join(grown))}.</p>" if grown else "<p>No driver grew beyond chance against the training "
                                                             "period.</p>")
    rows = [{"driver": r["driver"], "contacts": r["contacts"], "share tonight": Shown(f"{r['share']:.1%}", r["share"]),
             **({"share at training": Shown(f"{r['training_share']:.1%}", r["training_share"]),
                 "grew": "yes" if r["grew"] else ""} if "training_share" in r else {}),
             "customers flagged": Shown(f"{r['flagged_share']:.0%}", r["flagged_share"]),
             "mean risk": round(r["mean_risk"], 3),
             **({"mood": round(r["sentiment"], 3)} if pd.notna(r.get("sentiment")) else {})}
            for r in report.to_dict("records")]
    return verdict + table_html(rows, sortable=True)


@dataclass
class SummaryPage:
    """What summary.html shows: every customer's riskiest contact, the flagged list, every contact's prediction,
    tonight's facts, drift, warnings, dropped records, the agents' scorecard, the call drivers and the expected
    performance of the flags."""

    customers: pd.DataFrame
    flagged: pd.DataFrame
    contacts: pd.DataFrame
    facts: list[dict]
    drift: Sequence[dict] = ()
    warnings: Sequence[str] = ()
    dropped: Sequence[dict] = ()
    agents: pd.DataFrame = field(default_factory=pd.DataFrame)
    drivers: pd.DataFrame = field(default_factory=pd.DataFrame)
    performance: Sequence[dict] = ()


def nightly_summary(page: SummaryPage) -> str:
    """The HTML page a supervisor opens in the morning."""
    customers, flagged, contacts, facts = page.customers, page.flagged, page.contacts, page.facts
    warnings, dropped = page.warnings, page.dropped
    sections = [("Tonight's run", table_html(facts))]
    if warnings:
        sections.append(("Warnings", "<ul>" + "".join(f"<li>{shown(w)}</li>" for w in warnings) + "</ul>"))
    if dropped:
        sections.append(("Dropped records", _dropped_section(dropped)))
    sections += [("Flagged customers", _flagged_section(flagged)),
                 ("Risk distribution", figure_html(_risk_figure(customers)))]
    if len(flagged):
        sections.append(("Actions", figure_html(_types_figure(flagged))))
    sections += [("Call drivers", _drivers_section(page.drivers)), ("Agents", _agents_section(page.agents))]
    if "agent_empathy_mean" in contacts.columns and contacts["agent_empathy_mean"].notna().any():
        sections.append(("Agent empathy vs churn risk", figure_html(_empathy_figure(contacts))))
    sections.append(("Is tonight's data like the training data?",
                     _drift_section(list(page.drift), len(contacts)) if len(contacts) else
                     "<p>No contact was predicted tonight: there is nothing to compare with the training data.</p>"))
    sections.append(("Are tonight's flags as good as at training?",
                     _performance_section(page.performance, len(contacts))))
    return html_report("CareLens: customers at risk", sections)


def _write_summary(run: Run, scorer: Scorer, flags: dict, tonight: Tonight, scored: dict) -> dict:
    """summary.html: tonight's facts (the run's start, how the transcripts met the contacts) and rule, warnings,
    dropped records, the flagged customers and why, risk distributions, actions, empathy vs risk, and whether
    tonight's data looks like the training data."""
    predictions, customers, flagged = tonight
    joins = scored["joins"]
    facts = [{"item": "run started", "value": run.started},
             *({"item": line.split(": ", 1)[0], "value": line.split(": ", 1)[1]} for line in
               (join_lines(joins) if joins else [])),
             {"item": "models", "value": ", ".join(f"{n} {v}" for n, v in scorer.versions.items())},
             {"item": "contacts scored",
              "value": f"{len(predictions):,} ({counted(flags['counts']['customers'], 'customer')})"},
             {"item": "rule", "value": flags["rule"]},
             {"item": "flagged", "value": counted(len(flagged), "customer")},
             *({"item": f"{name} model alone would flag", "value": counted(count, "customer")}
               for name, count in flags["alone"].items())]
    page = nightly_summary(SummaryPage(
        customers, flagged, predictions, facts, flags["drift"], ranked_warnings(run, scorer, flags), scored["dropped"],
        agent_scorecard(predictions, flagged["customer_id"], redact=run.redact),
        driver_report(predictions, flagged["customer_id"], scorer.drivers), flags.get("expected_performance", [])))
    write_text(page, run.out / SUMMARY)
    return {"path": str(run.out / SUMMARY)}


def summary_stage(run: Run, scorer: Scorer, flags: dict, tonight: Optional[Tonight], scored: dict) -> None:
    """Write summary.html and its marker, unless the marker says it is done under the same rule. An uninterrupted
    run hands tonight's tables on in memory; a resumed one reads back what the earlier stages committed. `scored` is
    the scoring stages' manifest (how the transcripts met the contacts, what was dropped)."""
    if finished_stage(run.out, "summary", run.spec.flag_key) is not None:
        return
    if tonight is None:
        tonight = Tonight(*committed_predictions(run.out, scorer), pd.read_parquet(run.out / FLAGGED_PARQUET))
    commit_stage(run.out, "summary", run.spec.flag_key, _write_summary(run, scorer, flags, tonight, scored))
