"""How a transcript model's figures are shown: its HTML report (each head beside the TF-IDF floor, with intervals,
per-class figures, confusion, calibration and its worst mistakes) and the tables `carelens evaluate transcripts` prints."""
from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from carelens.data.contracts import LEVEL_NAMES, SENTIMENTS
from carelens.training.bootstrap import LEVEL, RESAMPLES, SEED
from carelens.training.report import figure_html, html_report, table_html

#: The targets: sentiment above the published fine-tuned BERT on the airline tweets; empathy above EPITOME's model.
TARGETS = {"sentiment": {"accuracy": 0.87, "macro_f1": 0.83}, "emotional_reactions": {"macro_f1": 0.76},
           "interpretations": {"macro_f1": 0.64}, "explorations": {"macro_f1": 0.74}}
#: Characters of an example's text shown in a table; the JSON output keeps the whole text.
SHOWN_CHARACTERS = 280
INTERVALS_NOTE = (f"Intervals: {LEVEL:.0%} percentile bootstrap over the rows ({RESAMPLES} resamples, seed {SEED}). "
                  f"A difference smaller than the spread is no difference.")
#: How the tables head an interval column, e.g. "macro-F1 95% CI".
CI = f"{LEVEL:.0%} CI"
HIDDEN_TEXT = "text hidden: contract transcripts may hold customers' words"


def _labels(head: str) -> tuple[str, ...]:
    return SENTIMENTS if head == "sentiment" else LEVEL_NAMES


def interval_text(interval: Sequence[float]) -> str:
    """An interval as `lo–hi` to 3 places: its ends are uncertain in the second, and it fits a narrow terminal."""
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


def figure_columns(measured: dict) -> dict:
    """One head's rows, accuracy and macro-F1 each beside its interval, and calibration error."""
    intervals = measured["intervals"]
    return {"rows": measured["n"], "accuracy": measured["accuracy"],
            f"accuracy {CI}": interval_text(intervals["accuracy"]), "macro-F1": measured["macro_f1"],
            f"macro-F1 {CI}": interval_text(intervals["macro_f1"]), "ECE": measured["ece"]}


def summary_rows(metrics: dict, floor: dict) -> list[dict]:
    """Per head: the model's figures with their intervals, the floor's accuracy and macro-F1, the target, and whether
    it is met."""
    rows = []
    for head, measured in metrics.items():
        if not measured.get("n"):
            continue
        base, target = floor.get(head, {}), TARGETS.get(head, {})
        rows.append({"head": head, **figure_columns(measured), "floor accuracy": base.get("accuracy"),
                     "floor macro-F1": base.get("macro_f1"), "target macro-F1": target.get("macro_f1"),
                     "beats floor": "yes" if base.get("n") and measured["macro_f1"] > base["macro_f1"] else "no",
                     "meets target": "yes" if all(measured[k] >= v for k, v in target.items()) else "no"})
    return rows


def class_rows(measured: dict, floor: Optional[dict] = None) -> list[dict]:
    """Per class of one head: precision, recall, F1 beside its interval, support, and the floor's F1 when given."""
    return [{"class": label, "precision": scores["precision"], "recall": scores["recall"], "F1": scores["f1"],
             f"F1 {CI}": interval_text(measured["intervals"]["f1"][label]), "support": scores["support"],
             **({"floor F1": floor.get("per_class_f1", {}).get(label)} if floor is not None else {})}
            for label, scores in measured["per_class"].items()]


def per_class_rows(metrics: dict, floor: dict) -> list[dict]:
    """Per head and class: the model's precision, recall and F1 beside the floor's F1."""
    return [{"head": head, **row} for head, measured in metrics.items() if measured.get("n")
            for row in class_rows(measured, floor.get(head, {}))]


def confusion_rows(measured: dict) -> list[dict]:
    """One head's confusion matrix as rows: one per true class, a column of counts per predicted class."""
    labels = list(measured["per_class"])
    return [{"true \\ predicted": truth, **dict(zip(labels, counts))}
            for truth, counts in zip(labels, measured["confusion"])]


def _clipped(text: str) -> str:
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 1] + "…"


def example_rows(examples: list[dict]) -> list[dict]:
    """Most confidently wrong rows (`confidently_wrong`) for a table, long texts clipped."""
    return [{key: _clipped(value) if key in ("context", "text") else value for key, value in row.items()}
            for row in examples]


def examples_title(head: str, examples: list[dict]) -> str:
    """The heading of a head's most confidently wrong rows, saying why their text is missing when it is."""
    return f"{head}: most confidently wrong" + ("" if not examples or "text" in examples[0] else f" ({HIDDEN_TEXT})")


def evaluation_tables(metrics: dict) -> list[tuple[str, list[dict]]]:
    """(title, rows) of every table `carelens evaluate transcripts` prints: the heads' figures with their intervals,
    then per head its per-class figures, confusion matrix and most confidently wrong rows."""
    measured = {head: figures for head, figures in metrics.items() if figures.get("n")}
    tables = [("per head", [{"head": head, **figure_columns(figures)} for head, figures in measured.items()])]
    for head, figures in measured.items():
        tables += [(f"{head}: per class", class_rows(figures)),
                   (f"{head}: confusion matrix", confusion_rows(figures))]
        if figures["confidently_wrong"]:
            tables.append((examples_title(head, figures["confidently_wrong"]),
                           example_rows(figures["confidently_wrong"])))
    return tables


def confusion_figure(metrics: dict) -> Figure:
    """One confusion matrix (rows: truth, columns: prediction) per head."""
    heads = [h for h, m in metrics.items() if m.get("n")]
    fig = Figure(figsize=(4 * len(heads), 3.8))
    for axes, head in zip(np.atleast_1d(fig.subplots(1, len(heads))), heads):
        matrix = np.asarray(metrics[head]["confusion"])
        axes.imshow(matrix, cmap="Blues")
        labels = _labels(head)
        axes.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
                 xlabel="predicted", ylabel="true", title=head.replace("_", " "))
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
    return fig


def calibration_figure(metrics: dict) -> Figure:
    """Top-label reliability: accuracy against mean confidence per bin, one line per head (the diagonal is ideal)."""
    fig = Figure(figsize=(5, 4.5))
    axes = fig.subplots()
    axes.plot([0, 1], [0, 1], "--", color="grey")
    for head, measured in metrics.items():
        if measured.get("n"):
            bins = measured["reliability"]
            axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                      label=f"{head} (ECE {measured['ece']:.3f})")
    axes.set(xlabel="confidence (top class)", ylabel="accuracy", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left", fontsize="small")
    return fig


def examples_html(examples: dict[str, list[dict]]) -> str:
    """Per head, a table of its most confidently wrong test rows."""
    return "".join(f"<h3>{html.escape(examples_title(head, rows))}</h3>" +
                   (table_html(example_rows(rows)) if rows else "<p>No wrong predictions.</p>")
                   for head, rows in examples.items())


def stacking_rows(metadata: dict) -> list[dict]:
    """Per head: the floor's share in the pool, the model's and the pool's test macro-F1, and their paired
    difference with its 95% interval (no difference unless the interval excludes 0)."""
    metrics = metadata["metrics"]
    return [{"head": head, "floor share": share, "model macro-F1": metrics["test_model_alone"][head]["macro_f1"],
             "pooled macro-F1": metrics["test_stacked"][head]["macro_f1"],
             "difference": metrics["stacked_minus_model"][head]["difference"],
             CI: interval_text(metrics["stacked_minus_model"][head]["interval"]),
             "verdict": "differs" if metrics["stacked_minus_model"][head]["differs"] else "no difference"}
            for head, share in metadata.get("stacking_shares", {}).items() if head in metrics["stacked_minus_model"]]


def transcript_report(metrics: dict, floor: dict, metadata: dict, examples: Optional[dict] = None) -> str:
    """The whole HTML page for test-split metrics, the floor on the same rows, the most confidently wrong test rows
    (`head_examples`) and the training record."""
    options = metadata.get("options", {})
    sections = [
        ("Test split: model beside the floor",
         table_html(summary_rows(metrics, floor)) + f"<p>{html.escape(INTERVALS_NOTE)}</p>"),
        ("Per-class precision, recall and F1", table_html(per_class_rows(metrics, floor))),
        ("Confusion matrices", figure_html(confusion_figure(metrics))),
        ("Calibration", figure_html(calibration_figure(metrics))),
        ("Training", table_html([{"option": k, "value": v} for k, v in options.items()] +
                                [{"option": f"rows {task}", "value": str(sizes)}
                                 for task, sizes in metadata.get("rows", {}).items()])),
    ]
    if examples:
        sections.insert(4, ("Most confidently wrong test examples", examples_html(examples)))
    plain = metadata.get("metrics", {}).get("test_plain_argmax")
    if plain:
        sections.insert(1, ("Ablation: the same test split with plain argmax (no decision weights)",
                            table_html(summary_rows(plain, floor))))
    stacked = metadata.get("metrics", {}).get("test_stacked")
    if stacked:
        sections.insert(1, ("Ablation: pooled with the TF-IDF floor (its share chosen on validation log-loss)",
                            table_html(stacking_rows(metadata))))
    if metadata.get("history"):
        sections.append(("Validation during fine-tuning", table_html(metadata["history"])))
    return html_report(f"Transcript model ({options.get('mode', '?')} mode)", sections)
