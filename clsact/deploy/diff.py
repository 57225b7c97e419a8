"""``clsact bench --diff``: where a runtime's intermediate tensors first part from Paddle's.

The reference is the model as QAT evaluated it: the saved program run by Paddle's static
executor (its plain CPU kernels; quantize/dequantize pairs computed as in training, observer
pairs as identity), every intermediate variable fetched. The serving ONNX applies the
observer pairs (ONNX Runtime's int8 kernels need their output scales), so a served model
parts a little from the first observed tensor on; a wrong scale or zero point parts by far
more, and the served accuracy's paired test tells whether the parting matters.
Each runtime gets the same images and gives every tensor that keeps a Paddle variable's name
(ONNX Runtime: all at once, as extra outputs; OpenVINO: from the model cut after each).
Tensors are compared in program order; the error is in units of the tensor's quantization
step (its ``quantize_linear`` scale / 127) where a quantizer reads it, else relative to the
tensor's largest magnitude.
A tensor *parts* when its mean absolute error exceeds :data:`STEPS` steps (or
:data:`RELATIVE`): where two runtimes compute the same graph, the quantizers' roundings flip
on a few elements (ties broken by last-bit differences), which moves the maximum by a step
or more but the mean by little; a wrong scale, zero point, or a tensor quantized that
training did not quantize moves the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsact.errors import ModelError

STEPS = 0.1       # mean error, in steps of the tensor's quantizer
RELATIVE = 0.002  # mean error, of the tensor's largest magnitude (no quantizer)


@dataclass(frozen=True)
class TensorDiff:
    """One intermediate tensor compared with Paddle's."""

    index: int          # position in program order
    name: str
    op: str             # the Paddle op that wrote it
    max_abs: float
    mean_abs: float
    unit: float         # the quantization step, or the reference's largest magnitude
    quantized: bool     # whether ``unit`` is a quantization step

    @property
    def error(self) -> float:
        """The mean error in units (steps, or a fraction of the largest magnitude)."""
        return self.mean_abs / self.unit if self.unit > 0 else float(self.mean_abs > 0)

    @property
    def parts(self) -> bool:
        """Whether this tensor is beyond the tolerance."""
        return self.error > (STEPS if self.quantized else RELATIVE)


def producers(program) -> list[tuple[str, str]]:
    """(variable, op type) of every non-persistable variable the ops write, in program order
    (first write; feed/fetch and quantize/dequantize outputs left out: they are compared
    where the next op reads them)."""
    block = program.global_block()
    seen: set[str] = set()
    out = []
    for op in block.ops:
        if op.type in ("feed", "fetch", "quantize_linear", "dequantize_linear"):
            continue
        for slot in op.output_names:
            for name in op.output(slot):
                if name in seen or not block.has_var(name) or block.var(name).persistable:
                    continue
                seen.add(name)
                out.append((name, op.type))
    return out


def quant_steps(program, params: dict[str, np.ndarray]) -> dict[str, float]:
    """Per tensor read by a per-tensor ``quantize_linear`` (real or observer): its step."""
    out = {}
    for op in program.global_block().ops:
        if op.type != "quantize_linear":
            continue
        scale = params.get(op.input("Scale")[0])
        if scale is not None and scale.size == 1:
            bits = op.attr("bit_length") if op.has_attr("bit_length") else 8
            out.setdefault(op.input("X")[0], float(scale.reshape(())) / (2 ** (bits - 1) - 1))
    return out


def reference(model_file: Path, params_file: Path, images: np.ndarray,
              names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Paddle's static executor on ``images``: (every variable of ``names`` it computes,
    the persistable parameters by name).

    Raises:
        ModelError: Paddle cannot load or run the model.
    """
    import paddle

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    try:
        with paddle.static.scope_guard(scope):
            stem = model_file.with_suffix("")
            if params_file == stem.with_suffix(".pdiparams") and model_file.suffix == ".pdmodel":
                program, feeds, _ = paddle.static.load_inference_model(str(stem), exe)
            else:
                program, feeds, _ = paddle.static.load_inference_model(
                    str(model_file.parent), exe, model_filename=model_file.name,
                    params_filename=params_file.name)
            values = exe.run(program, feed={feeds[0]: images}, fetch_list=names,
                             return_numpy=True)
            params = {v.name: np.array(scope.find_var(v.name).get_tensor())
                      for v in program.list_vars() if v.persistable
                      and scope.find_var(v.name) is not None
                      and v.type == paddle.base.core.VarDesc.VarType.LOD_TENSOR}
    except Exception as exc:  # the executor raises many types
        raise ModelError(f"Paddle cannot run {model_file}: {str(exc).splitlines()[0]}") from None
    return dict(zip(names, values, strict=True)), params


Probe = Callable[[list[str]], dict[str, np.ndarray]]
"""A runtime on fixed images: the values of the named tensors it has (missing names left
out)."""


FOLDED = ("batch_norm", "elementwise_add")  # what converters fold into a convolution


def folded_aliases(program, produced: set[str]) -> dict[str, str]:
    """Runtime tensor name -> the Paddle variable it holds, where a converter folded a
    ``batch_norm`` or a bias ``elementwise_add`` into the convolution before it (paddle2onnx
    does): the convolution's output name then carries the later values, and the folded op's
    output is gone."""
    block = program.global_block()
    source: dict[str, str] = {}
    for op in block.ops:
        if op.type in ("quantize_linear", "dequantize_linear"):
            x = op.input("X")[0]
            source[op.output("Y")[0]] = source.get(x, x)
    constant = {v.name for v in program.list_vars() if v.persistable}
    for op in block.ops:  # e.g. a bias reshaped for broadcasting
        ins = [n for slot in op.input_names for n in op.input(slot)]
        if op.type != "feed" and ins and all(n in constant for n in ins):
            constant.update(n for slot in op.output_names for n in op.output(slot))
    out: dict[str, str] = {}
    for op in block.ops:
        if op.type not in FOLDED:
            continue
        if op.type == "elementwise_add" and op.input("Y")[0] not in constant:
            continue
        x = op.input("X")[0]
        y = op.output("Y" if op.type == "batch_norm" else "Out")[0]
        src = source.get(x, x)
        src = next((k for k, v in out.items() if v == src), src)  # conv -> add -> norm
        if y not in produced and src in produced:
            out[src] = y
    return out


def compare(program, ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
            steps: dict[str, float], aliases: dict[str, str] | None = None) -> list[TensorDiff]:
    """The tensors both sides computed, compared in program order (``aliases``: runtime
    name -> the Paddle variable it holds)."""
    got = {(aliases or {}).get(k, k): v for k, v in got.items()
           if k not in set((aliases or {}).values())}
    out = []
    for i, (name, op) in enumerate(producers(program)):
        if name not in got or name not in ref:
            continue
        a, b = np.asarray(ref[name], np.float64), np.asarray(got[name], np.float64)
        if a.shape != b.shape:
            if a.size != b.size:
                continue
            b = b.reshape(a.shape)
        err = np.abs(a - b)
        step = steps.get(name)
        unit = step if step else float(np.max(np.abs(a))) if a.size else 0.0
        out.append(TensorDiff(i, name, op, float(err.max()) if a.size else 0.0,
                              float(err.mean()) if a.size else 0.0, unit, step is not None))
    return out


def search(program, ref: dict[str, np.ndarray], probe: Probe, names: list[str],
           steps: dict[str, float], aliases: dict[str, str], coarse: int = 12
           ) -> list[TensorDiff]:
    """Compare a runtime that is probed a tensor at a time: ``coarse`` tensors evenly
    spread first, then every tensor up to the first coarse one that parts."""
    inverse = {v: k for k, v in aliases.items()}
    wanted = [n for n in names if n in ref and n not in aliases]

    def probed(chunk: list[str]) -> list[TensorDiff]:
        got = probe([inverse.get(n, n) for n in chunk])
        return compare(program, ref, got, steps, aliases)

    stride = max(1, len(wanted) // coarse)
    picks = wanted[stride - 1::stride]
    rough = probed(picks)
    first = first_parting(rough)
    if first is None:
        return rough
    end = wanted.index(first.name)
    start = wanted.index(picks[picks.index(first.name) - 1]) + 1 if picks.index(first.name) \
        else 0
    fine = probed(wanted[start:end])
    return sorted({d.index: d for d in rough + fine}.values(), key=lambda d: d.index)


def first_parting(diffs: list[TensorDiff]) -> TensorDiff | None:
    """The first tensor beyond the tolerance, or None."""
    return next((d for d in diffs if d.parts), None)


def format_diff(runtime: str, diffs: list[TensorDiff], compared_of: int, top: int = 8) -> str:
    """Lines for one runtime: the first tensor that parts, and the next ones around it."""
    first = first_parting(diffs)
    head = f"{runtime}: {len(diffs)} of {compared_of} tensors compared"
    if not compared_of:
        head = f"{runtime}: {len(diffs)} tensors compared"
    if first is None:
        worst = max(diffs, key=lambda d: d.error, default=None)
        return head + (f"; none parts (largest: {_describe(worst)})" if worst else "")
    at = diffs.index(first)
    lines = [head + f"; first parts at {_describe(first)}"]
    lines += [f"    {'*' if d.parts else ' '} #{d.index:<4d} {d.op:<22s} {d.name:<40s} "
              f"{_units(d)}" for d in diffs[max(0, at - 2): at + top]]
    return "\n".join(lines)


def _units(d: TensorDiff) -> str:
    if d.quantized:
        return (f"mean error {d.error:.3f} steps, max {d.max_abs / d.unit:.1f} steps "
                f"(step {d.unit:.3g})")
    return f"mean error {100 * d.error:.3f}% of max|x|, max {d.max_abs:.3g}"


def _describe(d: TensorDiff) -> str:
    return f"#{d.index} {d.op} -> {d.name} ({_units(d)})"


def ort_probe(onnx_bytes: bytes, images: np.ndarray) -> tuple[Probe, set[str]]:
    """ONNX Runtime (1 thread) on ``onnx_bytes`` with every node output made a graph output
    (ONNX Runtime then does not fuse across them, but computes each as the graph says), and
    the names the graph produces.

    Raises:
        ModelError: the bytes are not an ONNX model ONNX Runtime can load.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(onnx_bytes)
    produced = {o for n in model.graph.node for o in n.output if n.op_type != "Constant"}
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(produced - existing))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        values = dict(zip(outputs, session.run(None, {session.get_inputs()[0].name: images}),
                          strict=True))
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot run the probed model: {exc}") from None
    return (lambda names: {n: values[n] for n in names if n in values}), produced


def openvino_probe(files, images: np.ndarray, precision: str = "f32"
                   ) -> tuple[Probe, set[str]]:
    """OpenVINO CPU (1 thread) on the program it serves (:func:`openvino_read`: without
    the observer pairs, its int8 ops split where their sums would saturate), each
    tensor read from a model cut after it
    (its only output: a tensor that is both an output and an input of later ops makes
    OpenVINO 2026.4's low-precision passes compute the later ops wrongly), and the names
    the model has.

    Raises:
        ModelError: OpenVINO cannot read the model, or its pairs are malformed.
    """
    import openvino as ov

    from clsact.deploy.runtimes import openvino_config, openvino_read

    core = ov.Core()
    try:
        model = openvino_read(files)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"OpenVINO cannot read the probed model: {exc}") from None
    ports = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Result", "Constant", "Parameter"):
            for port in op.outputs():
                for name in port.get_names():
                    ports.setdefault(name, port)

    def run(names: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            if name not in ports:
                continue
            cut = ov.Model([ports[name]], model.get_parameters(), "probe")
            try:
                compiled = core.compile_model(cut, "CPU", openvino_config(1, precision))
            except Exception as exc:
                raise ModelError(f"OpenVINO cannot compile the model cut at {name}: "
                                 f"{exc}") from None
            out[name] = np.array(compiled.create_infer_request().infer({0: images})[0],
                                 copy=True)
        return out

    return run, set(ports)


DIFF_RUNTIMES = ("onnxruntime", "openvino")


def run_diff(files, images: np.ndarray, runtimes: tuple[str, ...] = DIFF_RUNTIMES,
             onnx_model: bytes | None = None) -> dict[str, list[TensorDiff] | str]:
    """Each runtime's tensors on ``images`` against Paddle's, from the form it serves (ONNX
    Runtime: the serving ONNX, or ``onnx_model``; OpenVINO: its observer-free program); a
    runtime that cannot run here gives its skip line instead.

    Raises:
        ModelError: Paddle cannot run the model.
    """
    from clsact.deploy.runtimes import RUNTIMES, RuntimeSkip, serving_onnx
    from clsact.modelio import load_program

    images = np.ascontiguousarray(images, dtype=np.float32)
    program = load_program(files.model_file)
    names = [n for n, _ in producers(program)]
    ref, params = reference(files.model_file, files.params_file, images, names)
    steps = quant_steps(program, params)
    out: dict[str, list[TensorDiff] | str] = {}
    for key in runtimes:
        rt = next(r for r in RUNTIMES if r.key == key)
        reason = rt.skip_reason(files)
        if reason is None and key == "onnxruntime":
            try:
                onnx_bytes = serving_onnx(files) if onnx_model is None else onnx_model
            except RuntimeSkip as exc:
                reason = str(exc)
        if reason is not None:
            out[key] = f"skipped: {reason}"
            continue
        if key == "onnxruntime":
            probe, produced = ort_probe(onnx_bytes, images)
            out[key] = compare(program, ref, probe(list(produced)), steps,
                               folded_aliases(program, produced))
        else:
            probe, produced = openvino_probe(files, images, rt.precision)
            out[key] = search(program, ref, probe, names, steps,
                              folded_aliases(program, produced))
    return out


def format_report(model: str, result: dict[str, list[TensorDiff] | str], tensors: int = 0,
                  notes: dict[str, str | None] | None = None) -> str:
    """The ``--diff`` section of one model (``notes``: per runtime, what it did to the
    model here, :meth:`Runtime.note`)."""
    lines = [f"{model}: intermediate tensors against Paddle's executor (the QAT evaluation's "
             f"arithmetic); a tensor parts beyond a mean "
             f"error of {STEPS} quantization steps, or {100 * RELATIVE:.1f}% of its largest "
             "magnitude where no quantizer reads it"]
    for key, diffs in result.items():
        lines.append("  " + (f"{key}: {diffs}" if isinstance(diffs, str) else
                             format_diff(key, diffs, tensors).replace("\n", "\n  ")))
        note = (notes or {}).get(key)
        if note and not isinstance(diffs, str):
            lines.append(f"    ({note})")
    return "\n".join(lines)


def to_json(result: dict[str, list[TensorDiff] | str]) -> dict[str, object]:
    """JSON form: per runtime, the first tensor that parts (or None) and every comparison."""
    from dataclasses import asdict

    out: dict[str, object] = {}
    for key, diffs in result.items():
        if isinstance(diffs, str):
            out[key] = {"skipped": diffs}
            continue
        first = first_parting(diffs)
        out[key] = {"first_parting": asdict(first) if first else None,
                    "tensors": [{**asdict(d), "error": d.error} for d in diffs]}
    return out
