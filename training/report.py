"""The HTML report of a tabular risk model: curves, calibration, risk histogram, importances and metric tables."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from carelens.data.html import figure_html, html_report, plot_label, table_html
from carelens.training.metrics import ECE_BINS

#: Rows scored for permutation importance: enough for a stable ranking, few enough for seconds.
IMPORTANCE_ROWS = 2000


def curves_figure(positive: np.ndarray, risk: np.ndarray) -> Figure:
    """ROC and precision-recall curves side by side."""
    fig = Figure(figsize=(10, 4))
    roc_axes, pr_axes = fig.subplots(1, 2)
    false_positive, true_positive, _ = roc_curve(positive, risk)
    roc_axes.plot(false_positive, true_positive, label=f"AUC {roc_auc_score(positive, risk):.3f}")
    roc_axes.plot([0, 1], [0, 1], "--", color="grey")
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    roc_axes.legend(loc="lower right")
    precision, recall, _ = precision_recall_curve(positive, risk)
    pr_axes.plot(recall, precision)
    pr_axes.axhline(positive.mean(), ls="--", color="grey", label="base rate")
    pr_axes.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    pr_axes.legend(loc="upper right")
    return fig


def calibration_figure(positive: np.ndarray, risk: np.ndarray) -> Figure:
    """Observed rate against mean predicted probability in equal-width bins (the diagonal is perfect)."""
    observed, predicted = calibration_curve(positive, risk, n_bins=ECE_BINS, strategy="uniform")
    fig = Figure(figsize=(5, 4.5))
    axes = fig.subplots()
    axes.plot([0, 1], [0, 1], "--", color="grey")
    axes.plot(predicted, observed, "o-")
    axes.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    return fig


def histogram_figure(labels: np.ndarray, risk: np.ndarray, threshold: float) -> Figure:
    """The risk score's distribution for each true class, with the decision threshold marked."""
    fig = Figure(figsize=(7, 4))
    axes = fig.subplots()
    for value in sorted(set(labels.tolist()), key=str):
        axes.hist(risk[labels == value], bins=40, range=(0, 1), alpha=0.5, density=True, label=plot_label(value))
    axes.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    axes.set(xlabel="risk score", ylabel="density", title="Scores by true class")
    axes.legend(title="true class")
    return fig


def importance_rows(model, frame: pd.DataFrame, positive: np.ndarray, seed: int) -> list[dict]:
    """Permutation importance (drop in ROC-AUC of the risk) per feature on a subsample, largest first."""
    rows = np.random.default_rng(seed).permutation(len(frame))[:IMPORTANCE_ROWS]
    features = list(model.feature_names_in_)
    # Each of these small predictions opens an OpenMP region per tree; one thread avoids spin-waiting on a busy
    # machine, which made this step 35 times slower while another process held the cores.
    with threadpool_limits(1):
        result = permutation_importance(
            model, frame.iloc[rows][features], positive[rows], n_repeats=5, random_state=seed, n_jobs=1,
            scoring=lambda estimator, X, y: roc_auc_score(y, estimator.risk(X)))
    order = np.argsort(-result.importances_mean)
    return [{"feature": features[i], "ROC-AUC drop": float(result.importances_mean[i]),
             "std": float(result.importances_std[i])} for i in order]


def importance_figure(rows: Sequence[dict]) -> Figure:
    """Horizontal bars of permutation importance, the most important on top."""
    fig = Figure(figsize=(7, 0.3 * len(rows) + 1.2))
    axes = fig.subplots()
    axes.barh([plot_label(r["feature"]) for r in rows][::-1], [r["ROC-AUC drop"] for r in rows][::-1],
              xerr=[r["std"] for r in rows][::-1])
    axes.set(xlabel="drop in ROC-AUC when shuffled", title="Permutation importance")
    return fig


def metric_rows(metrics: dict) -> list[dict]:
    """A metrics dict as (metric, value) rows; per-class F1 is spread into one row per class."""
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if not isinstance(v, dict)]
    rows += [{"metric": f"F1 {c}", "value": v} for c, v in metrics.get("f1_per_class", {}).items()]
    return rows


def summary_rows(metadata: dict) -> list[dict]:
    """The facts about data and training worth seeing beside the metrics."""
    keys = ("task", "version", "source", "target", "classes", "negative_class", "goal", "threshold", "flag_rate",
            "learner", "learner_requested", "calibration", "training_seconds", "seed", "training_data_fingerprint",
            "created_at")
    split = {f"{part} rows": n for part, n in metadata.get("split", {}).items()}
    features = ", ".join(f"{f['name']} ({f['kind']})" for f in metadata.get("features", []))
    return [{"item": k, "value": metadata[k]} for k in keys if k in metadata] + \
        [{"item": k, "value": v} for k, v in split.items()] + [{"item": "features", "value": features}]


def selection_rows(metadata: dict) -> list[dict]:
    """Every candidate learner's cross-validated figures on the training rows, the chosen one marked."""
    return [{"candidate": c["candidate"], "chosen": "yes" if c["candidate"] == metadata["learner"] else "",
             "CV ROC-AUC": c["roc_auc_folds"]["mean"], "± std (folds)": c["roc_auc_folds"]["std"],
             "CV log-loss": c["log_loss"], "calibration": c["calibration"], "rows": c["rows"], "folds": c["folds"],
             "seconds": c["seconds"]} for c in metadata.get("selection", [])]


def spread_rows(metadata: dict) -> list[dict]:
    """Held-out figures per split seed, then their mean and standard deviation across the seeds."""
    spread = metadata["spread"]
    return [*spread["rows"], {"seed": "mean", "learner": "", **spread["mean"]},
            {"seed": "std", "learner": "", **spread["std"]}]


COMPARED = ("roc_auc", "pr_auc", "brier", "ece", "macro_f1")


def comparison_rows(metadata: dict) -> list[dict]:
    """Held-out figures of the model with the features joined from other tables against the same model without."""
    without = metadata["without_added_features"]
    pairs = [(m, without["metrics"].get(m), metadata["metrics"].get(m)) for m in COMPARED]
    if "seed_groups" in metadata:
        pairs.append(("seed gap recovered", without["seed_groups"]["gap_recovered"],
                      metadata["seed_groups"]["gap_recovered"]))
    return [{"figure": name, "without": before, "with": after,
             "difference": after - before if before is not None and after is not None else None}
            for name, before, after in pairs if before is not None or after is not None] + \
        [{"figure": "features added", "without": "", "with": ", ".join(without["added"]), "difference": ""}]


def feature_group_rows(metadata: dict) -> list[dict]:
    """Per feature group: the held-out ROC-AUC of the model refitted without it, the difference the group makes
    (with − without) and its bootstrap interval."""
    effects = metadata["feature_groups"]
    return [{"group": r["group"], "ROC-AUC without": r["roc_auc_without"],
             "difference (with − without)": r["difference"],
             f"{effects['level']:.0%} interval": f"[{r['lower']:+.4f}, {r['upper']:+.4f}]",
             "interval excludes 0": "yes" if r["differs"] else "no", "features": ", ".join(r["features"])}
            for r in effects["rows"]]


def feature_group_title(metadata: dict) -> str:
    """What the feature-group table measures and how, in one heading."""
    effects = metadata["feature_groups"]
    return (f"Effect of each feature group on held-out ROC-AUC ({effects['roc_auc']:.4f} with every group): the "
            f"{effects['learner']} learner refitted without the group on the same split, paired bootstrap interval "
            f"over {effects['test_rows']:,} held-out rows ({effects['resamples']:,} resamples, seed "
            f"{effects['seed']}); a group that others overlap shows little effect")


def tabular_report(model, frame: pd.DataFrame, labels: np.ndarray, metadata: dict) -> str:
    """The report of a risk model on held-out rows: curves, calibration, scores, importance and tables."""
    labels = np.asarray(labels)
    positive = labels != model.negative_class_
    risk = model.risk(frame)
    importance = importance_rows(model, frame, positive, metadata.get("seed", 0))
    seeds = len(metadata.get("spread", {}).get("seeds", []))
    sections = [
        ("Metrics on held-out rows", table_html(metric_rows(metadata["metrics"]))),
        (f"Held-out figures across {seeds} split seeds (a difference smaller than the std is no difference)",
         table_html(spread_rows(metadata)) if seeds else "<p>one split seed only</p>"),
        ("Learner selection (cross-validation on the training rows; the simplest within one standard error of the "
         "best is chosen)", table_html(selection_rows(metadata))),
        ("ROC and precision-recall", figure_html(curves_figure(positive, risk))),
        ("Calibration", figure_html(calibration_figure(positive, risk))),
        ("Score distribution", figure_html(histogram_figure(labels, risk, model.threshold_))),
        ("Permutation feature importance", figure_html(importance_figure(importance)) + table_html(importance)),
    ]
    if "seed_groups" in metadata:
        outcome = metadata["seed_groups"]["outcome"]
        sections.append((f"Seed groups: observed vs predicted {outcome}", table_html(metadata["seed_groups"]["rows"])))
    if "feature_groups" in metadata:
        sections.append((feature_group_title(metadata), table_html(feature_group_rows(metadata))))
    if "without_added_features" in metadata:
        sections.append(("With vs without the added features", table_html(comparison_rows(metadata))))
    sections.append(("Data and training", table_html(summary_rows(metadata))))
    return html_report(f"CareLens {metadata.get('task', 'risk')} model", sections)


def copied_report(artifact_dir: Path, destination: Path) -> Path:
    """A copy of an artifact's report.html at `destination` (parents created), where a person will look for it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact_dir / "report.html", destination)
    return destination
