"""Rewrites of a QAT model's quantize/dequantize pairs for the runtimes that serve it.

paddleslim's ``onnx_format: true`` save puts two kinds of ``quantize_linear`` ->
``dequantize_linear`` pairs in the model:

* **real** pairs on the inputs (activations and weights) of the ops QAT quantized: training
  computed through them, so every runtime must apply them;
* **observer** pairs (attribute ``only_observer: True``) on the outputs of most ops: they only
  *record* a scale (for TensorRT and oneDNN int8, which requantize there), and Paddle's kernels
  treat them as identity. A runtime that applies them quantizes tensors training never
  quantized.

OpenVINO's Paddle front end (2026.4) ignores ``only_observer`` and makes a ``FakeQuantize`` of
every pair, so it serves an observer-free copy (:func:`strip_observers`). oneDNN int8 needs the
observer scales and keeps the model as saved, and so does paddle2onnx's ONNX Runtime export
(it keeps a convolution int8 only where its output has a scale). ONNX Runtime fuses a QDQ
convolution into an int8 ``QLinearConv`` on x86 only with uint8 activations, converting int8
pairs itself only where the quantize has one consumer: :func:`uint8_activations` rewrites the
activation pairs from int8 (zero point 0) to uint8 (zero point 128), which is exact; ``make
bench`` measures whether it pays on the CPU at hand (a lever, not the served form: on an
AVX-512 VNNI + AMX Xeon it made 62 ``QLinearConv`` of 47 and ran 0.89x as fast). On a CPU
without VNNI ONNX Runtime's fused uint8 kernels sum in saturating 16-bit pairs (see
:mod:`clsact.deploy.saturation`), so there the fused result is not the QDQ model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsact import compat
from clsact.errors import ModelError

QUANTIZE, DEQUANTIZE = "quantize_linear", "dequantize_linear"


def is_observer(op) -> bool:
    """Whether a Paddle op is half of an observer pair (``only_observer: True``)."""
    return (op.type in (QUANTIZE, DEQUANTIZE) and op.has_attr("only_observer")
            and bool(op.attr("only_observer")))


@dataclass(frozen=True)
class Census:
    """How many quantize pairs of each kind a program holds."""

    real: int
    observer: int


def census(program) -> Census:
    """The program's ``quantize_linear`` ops, split into real and observer ones."""
    ops = [op for block in program.blocks for op in block.ops if op.type == QUANTIZE]
    observers = sum(is_observer(op) for op in ops)
    return Census(len(ops) - observers, observers)


def strip_observers(program) -> int:
    """Remove every observer pair from ``program`` (in place); returns how many pairs.

    Readers of a pair's output are renamed to the pair's input, in program order: a name can
    be written twice (once by a real pair, later by an observer copy), so a rename holds
    only until the name is written again by an op that stays.

    Raises:
        ModelError: an observer op is not part of a quantize -> dequantize pair.
    """
    stripped = 0
    for block in program.blocks:
        rename: dict[str, str] = {}
        remove: list[int] = []
        pending: dict[str, str] = {}  # observer quantize output -> its input
        for i, op in enumerate(block.ops):
            for slot in op.input_names:
                for name in op.input(slot):
                    if name in rename:
                        compat.rename_op_input(op, name, rename[name])
            if is_observer(op):
                src, out = op.input("X")[0], op.output("Y")[0]
                if op.type == QUANTIZE:
                    pending[out] = src
                elif src in pending:
                    rename[out] = pending.pop(src)
                    stripped += 1
                else:
                    raise ModelError(f"observer {op.type} op {i} reads {src}, which no observer "
                                     "quantize_linear wrote: not a quantize/dequantize pair")
                remove.append(i)
                continue
            for slot in op.output_names:
                for name in op.output(slot):
                    rename.pop(name, None)
        if pending:
            raise ModelError(f"{len(pending)} observer quantize_linear op(s) without their "
                             f"dequantize_linear (e.g. {next(iter(pending))})")
        compat.remove_ops(block, remove)
    return stripped


def rewritten_copy(model_file: Path, params_file: Path, out_dir: Path, rewrite
                   ) -> tuple[Path, Path]:
    """A copy of the model in ``out_dir`` (same file names) with ``rewrite(program)`` applied
    (e.g. :func:`strip_observers`); the parameters are linked, not
    copied: no variable is removed, so their order in the params file still holds. Returns
    (model file, params file).

    Raises:
        ModelError: the model is not a Paddle program, or its pairs are malformed.
    """
    import os

    from clsact.modelio import load_program

    program = load_program(model_file)
    rewrite(program)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, params = out_dir / model_file.name, out_dir / params_file.name
    model.write_bytes(program.desc.serialize_to_string())
    if params.exists() or params.is_symlink():
        params.unlink()
    os.symlink(params_file.resolve(), params)
    return model, params


# ---- ONNX -------------------------------------------------------------------------------

def uint8_activations(model_bytes: bytes) -> tuple[bytes, int]:
    """The ONNX model with every activation QuantizeLinear/DequantizeLinear (its input not
    an initializer) moved from int8 with zero point 0 to uint8 with zero point 128; returns
    the new bytes and how many nodes changed. Exact: ``clip(round(x/s), -128, 127) + 128 ==
    clip(round(x/s) + 128, 0, 255)`` and the dequantize subtracts the same 128.

    A Q/DQ pair whose zero point is not an int8 zero is left alone. Each rewritten node gets
    its own uint8 zero point (weights may share the int8 one).

    Raises:
        ModelError: the bytes are not an ONNX model.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(f"not an ONNX model: {exc}") from None
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def int8_zero(node) -> bool:
        zp = _constant(node.input[2] if len(node.input) > 2 else "", inits, consts)
        return zp is not None and zp.dtype == np.int8 and not np.any(zp)

    changed = 0
    new_inits = []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if q.input[0] in inits or not int8_zero(q):  # weights stay int8 (symmetric)
            continue
        pair = readers.get(q.output[0], [])
        if not pair or any(n.op_type != "DequantizeLinear" or not int8_zero(n) for n in pair):
            continue
        for node in (q, *pair):
            shape = _constant(node.input[2], inits, consts).shape
            name = f"{node.name or node.output[0]}.zero_point_u8"
            new_inits.append(numpy_helper.from_array(np.full(shape, 128, np.uint8), name))
            node.input[2] = name
            changed += 1
    graph.initializer.extend(new_inits)
    return model.SerializeToString(), changed


def _constant(name: str, inits: dict, consts: dict) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` node output, or None."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    if name in consts:
        return numpy_helper.to_array(consts[name].attribute[0].t)
    return None
