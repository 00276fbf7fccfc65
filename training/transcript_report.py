"""The HTML report of a transcript model: each head beside the TF-IDF floor, confusion matrices, F1 and calibration."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from carelens.data.contracts import LEVEL_NAMES, SENTIMENTS
from carelens.training.report import figure_html, html_report, table_html

#: The issue's targets: sentiment on the airline tweets; empathy at the published RoBERTa-base macro-F1.
TARGETS = {"sentiment": {"accuracy": 0.85, "macro_f1": 0.80}, "emotional_reactions": {"macro_f1": 0.745},
           "interpretations": {"macro_f1": 0.626}, "explorations": {"macro_f1": 0.726}}


def _labels(head: str) -> tuple[str, ...]:
    return SENTIMENTS if head == "sentiment" else LEVEL_NAMES


def summary_rows(metrics: dict, floor: dict) -> list[dict]:
    """Per head: the model's and the floor's accuracy and macro-F1, the target, and whether it is met."""
    rows = []
    for head, measured in metrics.items():
        if not measured.get("n"):
            continue
        base, target = floor.get(head, {}), TARGETS.get(head, {})
        rows.append({"head": head, "rows": measured["n"], "accuracy": measured["accuracy"],
                     "macro-F1": measured["macro_f1"], "floor accuracy": base.get("accuracy"),
                     "floor macro-F1": base.get("macro_f1"), "target macro-F1": target.get("macro_f1"),
                     "beats floor": "yes" if base.get("n") and measured["macro_f1"] > base["macro_f1"] else "no",
                     "meets target": "yes" if all(measured[k] >= v for k, v in target.items()) else "no",
                     "ECE": measured["ece"]})
    return rows


def per_class_rows(metrics: dict, floor: dict) -> list[dict]:
    """Per head and class: the model's F1 beside the floor's."""
    return [{"head": head, "class": label, "F1": f1, "floor F1": floor.get(head, {}).get("per_class_f1", {}).get(label)}
            for head, measured in metrics.items() if measured.get("n")
            for label, f1 in measured["per_class_f1"].items()]


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


def transcript_report(metrics: dict, floor: dict, metadata: dict) -> str:
    """The whole HTML page for test-split metrics, the floor on the same rows, and the training record."""
    options = metadata.get("options", {})
    sections = [
        ("Test split: model beside the floor", table_html(summary_rows(metrics, floor))),
        ("Per-class F1", table_html(per_class_rows(metrics, floor))),
        ("Confusion matrices", figure_html(confusion_figure(metrics))),
        ("Calibration", figure_html(calibration_figure(metrics))),
        ("Training", table_html([{"option": k, "value": v} for k, v in options.items()] +
                                [{"option": f"rows {task}", "value": str(sizes)}
                                 for task, sizes in metadata.get("rows", {}).items()])),
    ]
    plain = metadata.get("metrics", {}).get("test_plain_argmax")
    if plain:
        sections.insert(1, ("Ablation: the same test split with plain argmax (no decision weights)",
                            table_html(summary_rows(plain, floor))))
    if metadata.get("history"):
        sections.append(("Validation during fine-tuning", table_html(metadata["history"])))
    return html_report(f"Transcript model ({options.get('mode', '?')} mode)", sections)
