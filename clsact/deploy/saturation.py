"""Int8 saturation on CPUs without VNNI, and the exact split that removes it.

Without an int8 dot-product instruction (AVX512_VNNI or AVX_VNNI), oneDNN's x86 int8
convolutions multiply unsigned 8-bit activations by signed 8-bit weights with ``vpmaddubsw``,
which adds two neighbouring products in a *saturating* 16-bit lane: ``255 * 127 * 2 = 64770``
does not fit in 32767. OpenVINO's CPU plugin (2026.4) feeds a signed activation to such a
kernel shifted by 128 (a compensation term restores the zero point), so an int8
convolution whose input can be negative — an image, a residual stream, a hardswish output —
clips sums on these CPUs and parts from the arithmetic QAT trained (measured on an AMD EPYC
with AVX2 only: the small test net's first convolution off by up to 36 quantization steps,
the same model within a tenth of a step on AVX-512 VNNI). oneDNN's own int8 primitives
(Paddle's ``paddle-cpu-int8``) halve the weights' scale for a signed input there instead, a
different rounding.

:func:`split_int8_convolutions` rewrites an OpenVINO model so that no sum can saturate and
nothing else changes: each int8 convolution ``conv(x, q * s)`` becomes
``conv(x, a * s) + conv(x, b * s)`` with ``a = floor(q / 2)`` and ``b = q - a``, both within
``[-64, 64]``, where ``255 * 64 * 2 = 32640`` fits; integer sums of integer products are the
same. Depthwise convolutions are left whole: oneDNN's int8 depthwise kernels multiply in 32
bits (measured: a depthwise convolution with ±127 weights on signed inputs is as exact whole
as split, a plain one is off by tens of quantization steps, after a ReLU too). It costs a
second convolution each (``docs/deploy.md`` has what it cost MobileNetV3_large on the AMD
EPYC); ``make bench`` measures the whole form as a lever.
"""

from __future__ import annotations

import numpy as np

INT8_OPS = ("Convolution", "GroupConvolution", "MatMul")
# the ops OpenVINO's Paddle front end puts between an int8 weight constant and its
# convolution (convert, zero point, scale, a reshape for group convolutions)
_CHAIN = ("Convert", "Subtract", "Multiply", "Reshape", "Unsqueeze", "Transpose")
HALF = 64  # |a|, |b| <= 64: 255 * 64 * 2 fits in a signed 16-bit lane


def _weight_chain(conv) -> list | None:
    """The nodes from ``conv``'s weight input down to its int8 constant (constant last), or
    None where the weights are not an int8 constant dequantized by :data:`_CHAIN` ops with
    a zero point of 0 (QAT's weights are symmetric)."""
    chain = []
    node = conv.input(1).get_source_output().get_node()
    while node.get_type_name() in _CHAIN:
        chain.append(node)
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant" or str(node.get_element_type()) != "<Type: 'int8_t'>":
        return None
    for sub in (n for n in chain if n.get_type_name() == "Subtract"):
        zero_point = _constant(sub.input(1).get_source_output().get_node())
        if zero_point is None or np.any(zero_point):  # a + b would subtract it twice
            return None
    return [*chain, node]


def _constant(node) -> np.ndarray | None:
    """The value of a constant seen through converts and reshapes, or None."""
    while node.get_type_name() in ("Convert", "Reshape", "Unsqueeze"):
        node = node.input(0).get_source_output().get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _rebuild(chain: list, values: np.ndarray):
    """The weight chain with its constant replaced by ``values`` (int8): a new output."""
    import openvino.opset13 as ops

    out = ops.constant(values.astype(np.int8)).output(0)
    for node in reversed(chain[:-1]):
        kind = node.get_type_name()
        rest = [node.input(i).get_source_output() for i in range(1, node.get_input_size())]
        if kind == "Convert":
            out = ops.convert(out, node.get_output_element_type(0)).output(0)
        elif kind == "Subtract":
            out = ops.subtract(out, rest[0]).output(0)
        elif kind == "Multiply":
            out = ops.multiply(out, rest[0]).output(0)
        elif kind == "Reshape":
            out = ops.reshape(out, rest[0], node.get_special_zero()).output(0)
        elif kind == "Transpose":
            out = ops.transpose(out, rest[0]).output(0)
        else:  # Unsqueeze
            out = ops.unsqueeze(out, rest[0]).output(0)
    return out


def _depthwise(op) -> bool:
    """Whether ``op`` is a depthwise convolution (one input and one output channel per
    group): oneDNN's int8 depthwise kernels multiply in 32 bits and do not saturate."""
    if op.get_type_name() != "GroupConvolution":
        return False
    shape = op.input(1).get_partial_shape()  # [groups, out per group, in per group, ...]
    return shape.rank.is_static and shape[1] == 1 and shape[2] == 1


def _like(op, x, weights):
    """A copy of the convolution or matmul ``op`` reading ``x`` and ``weights``."""
    import openvino.opset13 as ops

    kind = op.get_type_name()
    if kind == "MatMul":
        attrs = op.get_attributes()
        return ops.matmul(x, weights, attrs["transpose_a"], attrs["transpose_b"])
    make = ops.convolution if kind == "Convolution" else ops.group_convolution
    return make(x, weights, op.get_strides(), op.get_pads_begin(), op.get_pads_end(),
                op.get_dilations())


def split_int8_convolutions(model, depthwise: bool = False) -> int:
    """Split each int8 convolution and matmul of an OpenVINO ``model`` (in place) whose
    weights reach beyond ±64 into two whose weights do not, summed: exact in integer
    arithmetic, and no longer saturating on a CPU without VNNI. Depthwise convolutions are
    left whole (they do not saturate) unless ``depthwise``. Returns how many were split.
    """
    import openvino.opset13 as ops

    split = 0
    for conv in [op for op in model.get_ordered_ops() if op.get_type_name() in INT8_OPS]:
        if _depthwise(conv) and not depthwise:
            continue
        chain = _weight_chain(conv)
        if chain is None:
            continue
        q = chain[-1].get_data().astype(np.int16)
        if np.abs(q).max() <= HALF:
            continue
        a = np.floor_divide(q, 2)
        x = conv.input(0).get_source_output()
        halves = [_like(conv, x, _rebuild(chain, w)) for w in (a, q - a)]
        total = ops.add(halves[0], halves[1])
        total.output(0).set_names(conv.output(0).get_names())
        total.set_friendly_name(conv.get_friendly_name())
        for target in conv.output(0).get_target_inputs():
            target.replace_source_output(total.output(0))
        split += 1
    model.validate_nodes_and_infer_types()
    return split
