"""Where a served model spends its time, per op, and in which precision: the answer to
"why is my int8 model not faster than fp32?".

* :func:`paddle_census`: the model's compute ops by type, and how many of them take a
  quantized (dequantized) weight or input, read from the program itself;
* :func:`onnxruntime_ops`: ONNX Runtime's own per-node profile of the paddle2onnx export
  (``QLinearConv`` is an int8 kernel, ``Conv`` fp32, ``QuantizeLinear``/``DequantizeLinear``
  the conversions between them, ``Transpose`` the NCHW<->NHWC layout changes int8 kernels
  add);
* :func:`openvino_ops`: OpenVINO's performance counters (its ``exec_type`` names the kernel
  and precision, e.g. ``jit_avx2_1x1_I8`` or ``brgconv_avx2_dw_f32``).

Each profile is a list of :class:`OpTime` rows with a ``kind``: ``int8`` (an int8 kernel),
``fp32``, ``qdq`` (quantize/dequantize conversions), or ``layout`` (reorders, transposes);
:func:`split` sums them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clsact.deploy.runtimes import (
    ModelFiles,
    RuntimeSkip,
    _missing,
    int8_op_indices,
    openvino_compiled,
    ort_session,
)

KINDS = ("int8", "fp32", "qdq", "layout")
_COMPUTE = ("conv2d", "depthwise_conv2d", "conv2d_transpose", "mul", "matmul", "matmul_v2",
            "hard_swish", "hard_sigmoid", "swish", "relu", "relu6", "sigmoid",
            "elementwise_add", "elementwise_mul", "pool2d", "batch_norm", "softmax")


@dataclass(frozen=True)
class OpTime:
    """Time per inference spent in one op type on one kernel."""

    op: str
    kernel: str
    kind: str  # one of KINDS
    ms: float  # per inference
    nodes: int


def paddle_census(model_file: str | Path) -> dict[str, dict[str, int]]:
    """``{op type: {"ops": n, "int8_weights": m, "qdq_inputs": k}}`` for the compute ops of a
    Paddle model, plus ``{"quantize_linear": {"ops": q}}``: ``int8_weights`` counts the ops
    whose weight is stored quantized (what an int8 kernel can run), ``qdq_inputs`` those fed
    through a quantize/dequantize pair on an activation (paddleslim's ``onnx_format`` export
    puts one on every op's output to carry its scale: a runtime that follows QDQ literally
    converts there).

    Raises:
        ModelError: the file is not a Paddle program.
    """
    from clsact.modelio import load_program

    block = load_program(model_file).global_block()
    int8 = int8_op_indices(block)
    activations = {op.output("Y")[0] for op in block.ops if op.type == "dequantize_linear"
                   and not block.var(op.input("X")[0]).persistable}
    activations |= {op.output("Out")[0] for op in block.ops  # onnx_format: false
                    if op.type == "fake_quantize_moving_average_abs_max"}
    out: dict[str, dict[str, int]] = {}
    for i, op in enumerate(block.ops):
        if op.type in ("quantize_linear", "fake_quantize_moving_average_abs_max"):
            out.setdefault("quantize_linear", {"ops": 0})["ops"] += 1
        if op.type not in _COMPUTE:
            continue
        names = [name for slot in op.input_names for name in op.input(slot)]
        row = out.setdefault(op.type, {"ops": 0, "int8_weights": 0, "qdq_inputs": 0})
        row["ops"] += 1
        row["int8_weights"] += i in int8
        row["qdq_inputs"] += any(n in activations for n in names)
    return out


def _ort_kind(op: str) -> str:
    if op.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")):
        return "int8"
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return "qdq"
    if op in ("Transpose", "ReorderInput", "ReorderOutput"):
        return "layout"
    return "fp32"


def _ov_kind(node_type: str, exec_type: str) -> str:
    if node_type == "FakeQuantize":
        return "qdq"
    if node_type in ("Reorder", "Transpose"):
        return "layout"
    low = exec_type.lower()
    return "int8" if low.endswith(("_i8", "_u8")) else "fp32"


def _rows(times: Counter, nodes: Counter, runs: int, kind_of) -> list[OpTime]:
    return sorted((OpTime(op, kernel, kind_of(op, kernel), ms / runs, nodes[(op, kernel)])
                   for (op, kernel), ms in times.items()), key=lambda r: -r.ms)


def onnxruntime_ops(files: ModelFiles, threads: int = 1, runs: int = 20,
                    batch: int = 1, img_size: int = 224) -> list[OpTime]:
    """ONNX Runtime's per-node profile of the model, summed per op type over ``runs``
    inferences (after one warm-up), in ms per inference.

    Raises:
        RuntimeSkip: onnxruntime/paddle2onnx missing, or the model cannot be exported/loaded.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeSkip("onnxruntime is not installed (pip install 'clsact[deploy]')")
    x = np.random.default_rng(0).random((batch, 3, img_size, img_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="clsact-ort-profile-") as tmp:
        session = ort_session(files, threads, profile_prefix=os.path.join(tmp, "ort"))
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return _ort_rows(events, runs + 1)


def _ort_rows(events: list[dict[str, Any]], runs: int) -> list[OpTime]:
    """Sum ONNX Runtime profile events (``cat == "Node"``, ``*_kernel_time``) per op type."""
    times: Counter = Counter()
    nodes: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e["args"]["op_name"]
            key = (op, e["args"].get("provider", "CPUExecutionProvider").replace(
                "ExecutionProvider", ""))
            times[key] += e["dur"] / 1000.0
            nodes[key] += 1
    nodes = Counter({k: round(v / runs) for k, v in nodes.items()})
    return _rows(times, nodes, runs, lambda op, _k: _ort_kind(op))


def openvino_ops(files: ModelFiles, threads: int = 1, runs: int = 20,
                 batch: int = 1, img_size: int = 224, precision: str = "f32") -> list[OpTime]:
    """OpenVINO's performance counters for the model (its serving ONNX), summed
    per node type and kernel over ``runs`` inferences after one warm-up, in ms per inference.

    Raises:
        RuntimeSkip: openvino missing, or it cannot read/compile the model.
    """
    if _missing("openvino"):
        raise RuntimeSkip("openvino is not installed")
    x = np.random.default_rng(0).random((batch, 3, img_size, img_size), dtype=np.float32)
    compiled = openvino_compiled(files, threads, precision, PERF_COUNT=True)
    request = compiled.create_infer_request()
    request.infer({0: x})
    times: Counter = Counter()
    nodes: Counter = Counter()
    for _ in range(runs):
        request.infer({0: x})
        for info in request.get_profiling_info():  # counters of the last inference
            if info.status == info.Status.EXECUTED:
                key = (info.node_type, info.exec_type)
                times[key] += info.real_time.total_seconds() * 1000.0
                nodes[key] += 1
    nodes = Counter({k: round(v / runs) for k, v in nodes.items()})
    return _rows(times, nodes, runs, _ov_kind)


def split(rows: list[OpTime]) -> dict[str, float]:
    """ms per inference by kind (every kind of :data:`KINDS`, 0.0 when absent)."""
    out = dict.fromkeys(KINDS, 0.0)
    for r in rows:
        out[r.kind] += r.ms
    return out


def format_ops(title: str, rows: list[OpTime], top: int = 12) -> str:
    """A table of the ``top`` most expensive rows, then the split by kind."""
    total = sum(r.ms for r in rows) or 1.0
    lines = [title, f"  {'op':<22} {'kernel':<26} {'kind':<6} {'ms':>7} {'share':>6} "
                    f"{'nodes':>5}"]
    lines += [f"  {r.op:<22} {r.kernel:<26} {r.kind:<6} {r.ms:7.2f} {100 * r.ms / total:5.1f}% "
              f"{r.nodes:5d}" for r in rows[:top]]
    parts = split(rows)
    lines.append("  by kind: " + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)"
                                           for k, v in parts.items()))
    return "\n".join(lines)


def to_json(rows: list[OpTime]) -> list[dict[str, Any]]:
    """JSON-ready rows."""
    return [asdict(r) for r in rows]


def where_time_goes(files: ModelFiles, img_size: int = 224) -> dict[str, Any]:
    """The model's op census and its per-op profiles through ONNX Runtime and OpenVINO at
    batch 1, one thread (a runtime that cannot run it: its reason, as a string).

    Raises:
        ModelError: the model file is not a Paddle program.
    """
    from clsact.deploy.runtimes import RUNTIMES

    out: dict = {"census": paddle_census(files.model_file)}
    bf16 = next(r for r in RUNTIMES if r.key == "openvino-bf16").skip_reason(files) is None
    for key, fn in (("onnxruntime", onnxruntime_ops), ("openvino", openvino_ops),
                    ("openvino-bf16", functools.partial(openvino_ops, precision="bf16"))):
        if key == "openvino-bf16" and not bf16:
            continue
        try:
            out[key] = to_json(fn(files, img_size=img_size))
        except RuntimeSkip as exc:
            out[key] = f"skipped: {exc}"
    return out


def format_anatomy(anatomy: dict[str, dict[str, Any]]) -> str:
    """:func:`where_time_goes` of each model (by name), as tables."""
    lines = []
    for model, parts in anatomy.items():
        census = parts["census"]
        q = census.get("quantize_linear", {}).get("ops", 0)
        lines.append(f"{model}: " + ", ".join(
            f"{op} {row['ops']}" + (f" ({row['int8_weights']} int8)" if row.get("int8_weights")
                                    else "") for op, row in census.items()
            if op != "quantize_linear") + f"; quantize_linear {q}")
        for key in ("onnxruntime", "openvino", "openvino-bf16"):
            if key not in parts:
                continue
            rows = parts[key]
            if isinstance(rows, str):
                lines.append(f"  {key}: {rows}")
                continue
            lines.append(format_ops(f"  {key}, {model} (batch 1, 1 thread):",
                                    [OpTime(**r) for r in rows]))
    return "\n".join(lines)
