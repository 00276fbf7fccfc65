"""How a transcript model's encoder runs one batch: torch (fp32, int8 dynamic quantisation, bf16, fp16 on CUDA) or
ONNX Runtime (fp32, static int8) on the ONNX exports published with the model."""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional, Protocol

import numpy as np
import torch
from torch import nn

from carelens.data.errors import UsageError
from carelens.data.options import PRECISIONS, RUNTIMES

#: What scores when a precision is asked for without a runtime, and what `auto` falls back to: ONNX Runtime at fp32.
#: A model published without an ONNX export falls back to torch at the same precision.
DEFAULT_RUNTIME, DEFAULT_PRECISION = "onnx", "fp32"
ONNX_DIRECTORY = "onnx"
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def onnx_file(directory: Path, precision: str) -> Path:
    """Where a saved model keeps its ONNX export at a precision."""
    return Path(directory) / ONNX_DIRECTORY / f"encoder.{precision}.onnx"


def checked_choice(runtime: str, precision: str, device: str = "cpu") -> None:
    """UsageError unless the runtime, precision and device go together."""
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS[runtime]:
        raise UsageError(f"--precision {precision!r} with --runtime {runtime}: expected one of "
                         f"{', '.join(PRECISIONS[runtime])}")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: expected cpu or cuda[:N]")
    if device.startswith("cuda") and runtime == "onnx":
        raise UsageError("--device cuda runs the torch runtime (fp32, fp16 or bf16); the ONNX export is for CPUs")
    if device.startswith("cuda") and precision == "int8":
        raise UsageError("int8 dynamic quantisation runs on CPUs only; on --device cuda use fp16 or bf16")
    if device == "cpu" and precision == "fp16":
        raise UsageError("--precision fp16 needs --device cuda; on a CPU use fp32, bf16 or int8")


def configure_threads(threads: Optional[int]) -> int:
    """The intra-op threads one scoring process uses (default: every core it may run on), set for torch; the
    tokenizer's own thread pool is turned off so that it never competes with the encoder's."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or available
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(threads)
    return threads


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token vectors a mask keeps (sentence-transformers' pooling for MiniLM), summed in fp32 even
    when the encoder runs in half precision."""
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class PooledEncoder(nn.Module):
    """The encoder followed by mean pooling over the attention mask: what every runtime computes, and what is
    exported to ONNX (so the pooling runs inside the graph)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return mean_pooled(self.encoder(**inputs).last_hidden_state, attention_mask)


class Runtime(Protocol):
    """Pooled encodings [rows, hidden] (float32) of one padded batch of numpy arrays."""
    name: str
    precision: str

    def pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


class TorchRuntime:
    """The encoder in PyTorch: as trained (fp32), with its linear layers quantised to int8 per output channel
    (dynamic quantisation, CPU), or in fp16/bf16 on a CUDA device."""
    name = "torch"

    def __init__(self, encoder: nn.Module, precision: str = "fp32", device: str = "cpu"):
        checked_choice(self.name, precision, device)
        self.precision, self.device = precision, torch.device(device)
        module = PooledEncoder(encoder).eval()
        if precision == "int8":
            with warnings.catch_warnings():  # torch.ao's note that eager quantisation moves to torchao
                warnings.simplefilter("ignore")
                module = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(module), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                    dtype=torch.qint8)
        elif precision in _HALF:
            module = copy.deepcopy(module).to(self.device, _HALF[precision])
        elif self.device.type != "cpu":
            module = copy.deepcopy(module).to(self.device)
        self.module = module

    def pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.items()}
            return self.module(**inputs).float().cpu().numpy()


class OnnxRuntime:
    """The encoder's ONNX export (fp32, or statically quantised to int8) in ONNX Runtime on the CPU."""
    name = "onnx"

    def __init__(self, path: Path, precision: str, threads: Optional[int] = None):
        import onnxruntime as ort

        checked_choice(self.name, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.precision = precision
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: v for k, v in batch.items() if k in self.inputs})[0]


def exported_inputs(tokenizer) -> list[str]:
    """The encoder inputs the export takes: those the tokenizer produces, in the encoder's argument order."""
    return [name for name in ENCODER_INPUTS if name in tokenizer.model_input_names or name == "attention_mask"]


#: Operators whose output keeps a long tail (GELU's): a MatMul that reads one stays in float when the rest is quantised,
#: since one scale per tensor for it cost the most accuracy (of the encoder's MatMul groups, the feed-forward output
#: projection alone moved the most probabilities).
_LONG_TAILED = {"Erf", "Tanh", "Gelu", "FastGelu", "BiasGelu"}


def _reads_long_tail(node, producers: dict, depth: int = 4) -> bool:
    """Whether a node's first input comes from a GELU within `depth` producers (exported: Erf, Add, Mul, Mul)."""
    frontier = [node.input[0]]
    for _ in range(depth):
        nodes = [producers[name] for name in frontier if name in producers]
        if any(n.op_type in _LONG_TAILED for n in nodes):
            return True
        frontier = [name for n in nodes for name in n.input]
    return False


def float_matmuls(model) -> list[str]:
    """The MatMul nodes static quantisation leaves in float: those of two activations (attention's scores and weighted
    sum, whose ranges change with every input) and those reading a GELU's output. Layer norms, softmax, GELU and
    residual adds are not MatMuls, so they stay in float too (Hugging Face Optimum's guidance for BERT encoders)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    return [node.name for node in model.graph.node if node.op_type == "MatMul"
            and (not any(name in weights for name in node.input) or _reads_long_tail(node, producers))]


def write_static_int8(fp32: Path, int8: Path, calibration: Iterable[dict[str, np.ndarray]]) -> None:
    """The fp32 export with its weight MatMuls quantised statically: int8 weights per output channel, uint8
    activations with one scale and zero point per tensor fixed from `calibration` batches (min–max), so that a turn's
    encoding never depends on the turns batched beside it (dynamic quantisation measures each batch's range), and in
    ONNX Runtime's QDQ form, which it runs on integer (VNNI / AMX) kernels."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Constant folding and shape inference first, as ONNX Runtime advises for static quantisation (the symbolic
        # shape pass cannot follow the dynamic windows, and is not needed for MatMuls).
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], nodes_to_exclude=float_matmuls(onnx.load(str(prepared))),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def write_onnx_exports(encoder: nn.Module, tokenizer, directory: Path,
                       calibration: Iterable[dict[str, np.ndarray]]) -> dict[str, str]:
    """The encoder (with its pooling) exported to ONNX at fp32, and that graph statically quantised to int8 with
    activation ranges from the `calibration` batches (padded encoder inputs of held-out text; `write_static_int8`),
    under `directory/onnx/`; returns the file of each precision, relative to `directory`."""
    names = exported_inputs(tokenizer)
    example = {name: torch.ones((2, 8), dtype=torch.long) if name != "token_type_ids"
               else torch.zeros((2, 8), dtype=torch.long) for name in names}
    fp32, int8 = onnx_file(directory, "fp32"), onnx_file(directory, "int8")
    fp32.parent.mkdir(parents=True, exist_ok=True)
    module = PooledEncoder(encoder).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript tracer's notes on Python branches in the encoder
        torch.onnx.export(module, tuple(example[name] for name in names), str(fp32), input_names=names,
                          output_names=["pooled"], opset_version=17, dynamo=False,
                          dynamic_axes={**{name: {0: "rows", 1: "tokens"} for name in names}, "pooled": {0: "rows"}})
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs its progress and hints at INFO/WARNING
    try:
        write_static_int8(fp32, int8, ({k: v for k, v in batch.items() if k in names} for batch in calibration))
    finally:
        logging.getLogger().setLevel(quiet)
    return {precision: path.relative_to(directory).as_posix() for precision, path in (("fp32", fp32), ("int8", int8))}
