"""Each faster CPU runtime's held-out figures beside fp32's, recorded at publishing: what `--runtime auto` may choose."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from carelens.models.runtime_choice import ACCURACY_BOUNDS
from carelens.models.scoring import TranscriptPipeline, runtime_for
from carelens.models.transcript import TranscriptModel
from carelens.training.calibration import split_metrics
from carelens.training.splits import Data, head_texts

#: The runtimes measured against torch fp32 (the runtime training evaluates with).
ALTERNATIVES = (("onnx", "fp32"), ("onnx", "int8"), ("torch", "bf16"))
REFERENCE = ("torch", "fp32")


def held_out_texts(data: Data, split: str = "validation") -> list[str]:
    """Every head's texts of a held-out split, each once: what the static int8 export is calibrated on."""
    return list(dict.fromkeys(text for head in ("sentiment", "empathy") for text in head_texts(data, split, head)))


def in_points(metrics: dict) -> dict:
    """Sentiment accuracy and each empathy mechanism's macro-F1, in points, for the heads with labelled rows."""
    figures = {head: round(100 * m["accuracy" if head == "sentiment" else "macro_f1"], 2) for head, m in metrics.items()
               if m.get("n")}
    return {"sentiment_accuracy": figures.pop("sentiment", None), "empathy_macro_f1": figures}


def changes(figures: dict, reference: dict) -> dict:
    """How far a runtime's figures are from the reference's (points), and whether within `ACCURACY_BOUNDS`."""
    sentiment = (None if figures["sentiment_accuracy"] is None
                 else round(abs(figures["sentiment_accuracy"] - reference["sentiment_accuracy"]), 2))
    empathy = [abs(value - reference["empathy_macro_f1"][head]) for head, value in figures["empathy_macro_f1"].items()]
    worst = round(max(empathy), 2) if empathy else None
    within = ((sentiment is None or sentiment <= ACCURACY_BOUNDS["sentiment_accuracy"])
              and (worst is None or worst <= ACCURACY_BOUNDS["empathy_macro_f1"]))
    return {"sentiment_accuracy_change": sentiment, "worst_empathy_macro_f1_change": worst, "within_bounds": within}


def runtime_accuracy(model: TranscriptModel, data: Data, exports: Path, split: str = "test",
                     threads: Optional[int] = None) -> dict:
    """Per runtime ('onnx int8', …): its figures on the held-out split, how far they are from torch fp32's on the
    same rows, and whether that is within the bounds `auto` allows."""
    def figures(runtime: str, precision: str) -> dict:
        pipeline = TranscriptPipeline(model, runtime_for(model, exports, runtime, precision, threads=threads))
        return in_points(split_metrics(pipeline, data, split))

    reference = figures(*REFERENCE)
    records = {" ".join(REFERENCE): {**reference, "split": split}}
    for runtime, precision in ALTERNATIVES:
        measured = figures(runtime, precision)
        records[f"{runtime} {precision}"] = {**measured, **changes(measured, reference)}
    return records
