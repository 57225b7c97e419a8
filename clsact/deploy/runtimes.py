"""The runtimes a classification model can be served with, as clsact measures them.

Each :class:`Runtime` says whether it can run a given model here (``skip_reason``: one line,
or None) and loads it as a :class:`Predictor` (a function from an NCHW float32 batch to the
scores) with a number of CPU threads.

* ``paddle-cpu``: Paddle Inference on CPU with oneDNN, fp32 kernels (a quantized model runs its
  quantize/dequantize ops in fp32: what a QAT model costs served naively);
* ``paddle-cpu-int8``: Paddle Inference with oneDNN int8, enabled only for the op types whose
  weights the QAT quantized (quantizing more, e.g. pool2d or elementwise_mul, has cost other
  ACT users accuracy and speed); a model without quantized weights is skipped;
* ``onnxruntime``: ONNX Runtime's CPU provider on the model's *serving ONNX* (:func:`serving_onnx`:
  the export of paddle2onnx 1.x with ``deploy_backend="onnxruntime"``; paddle2onnx 2.x
  dropped quantized export);
* ``openvino``: OpenVINO's CPU plugin on the model without its observer pairs
  (:func:`openvino_model`), with an f32 precision hint; on a CPU without VNNI its int8 ops
  split so that no sum saturates (:mod:`clsact.deploy.saturation`);
* ``openvino-bf16``: OpenVINO with a bf16 hint, for an fp32 model on a CPU with bf16 (AVX512_BF16
  or AMX): the baseline deployment a user of such a CPU would pick;
* ``paddle-gpu`` and ``paddle-gpu-trt-int8``: Paddle Inference on a GPU (TensorRT int8 for a
  quantized model), skipped when no GPU is visible or the build has no CUDA/TensorRT.

``Runtime.form`` names the file a runtime serves from: ``clsact compress`` publishes the
serving ONNX and OpenVINO's copy beside the Paddle model (``model/inference.onnx``,
``model/inference.openvino.pdmodel``, which reads ``model/inference.pdiparams``).

ONNX Runtime, paddle2onnx and OpenVINO come with ``pip install 'clsact[deploy]'``; without
them those runtimes are skipped with that line. A model a converter rejects is skipped too
(:class:`RuntimeSkip`), with the converter's first line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsact.errors import ModelError

Predictor = Callable[[np.ndarray], np.ndarray]
DEPLOY_EXTRA = "pip install 'clsact[deploy]'"


class RuntimeSkip(Exception):
    """This runtime cannot run this model here (the message says why, in one line)."""


QDQ_OPS = ("quantize_linear", "dequantize_linear")
# ``onnx_format: false`` (paddleslim's older format): activations through a fake quantize
# op, int8-valued weights, and the op's *output* dequantized with the weight scales
_OLD_DEQUANT = ("fake_channel_wise_dequantize_max_abs", "fake_dequantize_max_abs")


def int8_op_indices(block) -> set[int]:
    """Indices (in ``block.ops``) of the ops whose weights are stored quantized, in either
    format QAT saves: consumers of a ``dequantize_linear`` of a parameter (``onnx_format:
    true``), or producers of a ``fake_*dequantize_max_abs`` input (``onnx_format: false``)."""
    dequantized_weights = {op.output("Y")[0] for op in block.ops
                           if op.type == "dequantize_linear"
                           and block.var(op.input("X")[0]).persistable}
    old_dequantized = {op.input("X")[0] for op in block.ops if op.type in _OLD_DEQUANT}
    out = set()
    for i, op in enumerate(block.ops):
        if op.type in QDQ_OPS or op.type in _OLD_DEQUANT or op.type.startswith("fake_"):
            continue
        inputs = {name for slot in op.input_names for name in op.input(slot)}
        outputs = {name for slot in op.output_names for name in op.output(slot)}
        if inputs & dequantized_weights or outputs & old_dequantized:
            out.add(i)
    return out


def quantized_op_types(model_file: str | Path) -> list[str]:
    """The op types whose weights the model holds quantized (QAT's ``quantize_op_types``
    that occur in the model, :func:`int8_op_indices`). Empty for an fp32 model.

    Raises:
        ModelError: the file is not a Paddle program.
    """
    from clsact.modelio import load_program

    block = load_program(model_file).global_block()
    return sorted({block.ops[i].type for i in int8_op_indices(block)})


@dataclass(frozen=True)
class ModelFiles:
    """An inference model on local disk, with what the runtimes need to know about it."""

    model_file: Path
    params_file: Path
    quantized_ops: tuple[str, ...]

    @classmethod
    def of(cls, model_dir: str | Path, model_filename: str = "inference.pdmodel",
           params_filename: str = "inference.pdiparams") -> ModelFiles:
        """Locate and inspect the model in ``model_dir``.

        Raises:
            ModelError: a file is missing or not a Paddle program.
        """
        from clsact.modelio import model_paths

        model, params = model_paths(model_dir, model_filename, params_filename)
        return cls(model, params, tuple(quantized_op_types(model)))

    @property
    def quantized(self) -> bool:
        """Whether the model holds quantized weights."""
        return bool(self.quantized_ops)


@contextmanager
def _quiet_native() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null while native code runs: Paddle Inference's IR
    passes print a summary per pass (oneDNN int8: a dozen coloured lines per predictor)
    whatever glog is told, and paddle2onnx prints its progress to stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in saved:
        os.dup2(devnull, fd)
    try:
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _gpu_count() -> int:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return 0
    return int(paddle.device.cuda.device_count())


def _paddle_predictor(files: ModelFiles, threads: int, *, int8: bool = False,
                      gpu: bool = False, trt_int8: bool = False) -> Predictor:
    from paddle import inference as pi

    config = pi.Config(str(files.model_file), str(files.params_file))
    config.disable_glog_info()
    config.switch_ir_optim(True)
    if gpu:
        config.enable_use_gpu(256, 0)
        if trt_int8:
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=64,
                                          min_subgraph_size=3,
                                          precision_mode=pi.PrecisionType.Int8,
                                          use_static=False, use_calib_mode=False)
    else:
        config.disable_gpu()
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(threads)
        if int8:
            config.enable_mkldnn_int8(set(files.quantized_ops))
    try:
        with _quiet_native():
            predictor = pi.create_predictor(config)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Paddle Inference cannot load {files.model_file}: {first}") from None
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    out = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch: np.ndarray) -> np.ndarray:
        inp.reshape(list(batch.shape))
        inp.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        predictor.run()
        return out.copy_to_cpu()

    return run


def first_line(exc: BaseException) -> str:
    """The telling line of an error's message (at most 300 characters), or its type: the
    first, or with native runtimes' "Exception from file:line" / "Check ... failed at"
    preambles, the last line of the message."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    if not lines:
        return type(exc).__name__
    noise = ("Exception from ", "Check '", "FrontEnd API failed")
    telling = [x for x in lines if not x.startswith(noise)]
    return (telling[-1] if lines[0].startswith(noise) and telling else lines[0])[:300]


def _missing(*modules: str) -> str | None:
    """The first of ``modules`` that cannot be imported, or None."""
    import importlib.util

    return next((m for m in modules if importlib.util.find_spec(m) is None), None)


_ONNX: dict[tuple[Path, bool], bytes] = {}
SERVING_ONNX = "inference.onnx"
OPENVINO_MODEL = "inference.openvino.pdmodel"
_OPENVINO: dict[Path, Path] = {}


def onnx_bytes(model_file: Path, params_file: Path, timeout: float = 600.0) -> bytes:
    """The ONNX bytes of the model (opset 13, ``deploy_backend="onnxruntime"``), converted
    by paddle2onnx in a child process (:mod:`clsact.deploy.onnx_export`): a crash there
    becomes a :class:`RuntimeSkip`.

    Raises:
        RuntimeSkip: paddle2onnx is 2.x, rejects the model, crashes or times out.
    """
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clsact-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            proc = subprocess.run([sys.executable, "-m", "clsact.deploy.onnx_export",
                                   str(model_file), str(params_file), str(out)],
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeSkip(f"paddle2onnx did not finish converting the model within "
                              f"{timeout:.0f} s") from None
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise RuntimeSkip(f"paddle2onnx crashed ({name}) converting the model "
                              "(a model it does not support)")
        if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
            raise RuntimeSkip(lines[-1][:300] if lines else "paddle2onnx produced no model")
        return out.read_bytes()


def serving_onnx(files: ModelFiles, observers: bool = True) -> bytes:
    """The ONNX the onnxruntime runtime serves (cached per file): the model exported by
    paddle2onnx 1.x in a child process (:mod:`clsact.deploy.onnx_export`), observer pairs
    kept: paddle2onnx's ONNX Runtime export keeps a convolution int8 only where its output
    has a scale, and otherwise makes it fp32 and drops its input's quantization
    (``observers=False``: that copy, a lever ``make bench`` measures).

    Raises:
        RuntimeSkip: paddle2onnx is 2.x, cannot export this model, or crashes on it.
        ModelError: the model's quantize pairs are malformed.
    """
    key = (files.model_file, observers)
    if key not in _ONNX:
        import tempfile

        from clsact.deploy import qdq

        if observers:
            _ONNX[key] = onnx_bytes(files.model_file, files.params_file)
        else:
            with tempfile.TemporaryDirectory(prefix="clsact-serving-") as tmp:
                _ONNX[key] = onnx_bytes(*qdq.rewritten_copy(
                    files.model_file, files.params_file, Path(tmp), qdq.strip_observers))
    return _ONNX[key]


def openvino_model(files: ModelFiles) -> Path:
    """The program OpenVINO serves (cached per file, in a temporary directory): the model
    without its observer pairs (:func:`clsact.deploy.qdq.strip_observers`; OpenVINO's Paddle
    front end would make a ``FakeQuantize`` of each, quantizing tensors training never
    quantized). It reads the model's own parameters file.

    Raises:
        ModelError: the model is not a Paddle program or its pairs are malformed.
    """
    if files.model_file not in _OPENVINO:
        import atexit
        import shutil
        import tempfile

        from clsact.deploy import qdq

        tmp = Path(tempfile.mkdtemp(prefix="clsact-openvino-"))
        atexit.register(shutil.rmtree, tmp, True)
        _OPENVINO[files.model_file] = qdq.rewritten_copy(
            files.model_file, files.params_file, tmp, qdq.strip_observers)[0]
    return _OPENVINO[files.model_file]


def ort_session(files: ModelFiles, threads: int, profile_prefix: str | None = None,
                model: bytes | None = None):
    """An ONNX Runtime CPU session of the model's :func:`serving_onnx` (or of ``model``) with
    ``threads`` intra-op threads (``profile_prefix``: with ORT's per-node profiling into that
    prefix).

    Raises:
        RuntimeSkip: the model cannot be exported or ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(model if model is not None else serving_onnx(files), opts,
                                    providers=["CPUExecutionProvider"])
    except RuntimeSkip:
        raise
    except Exception as exc:
        raise RuntimeSkip(f"ONNX Runtime cannot load the exported model: "
                          f"{first_line(exc)}") from None


def _ort_predictor(files: ModelFiles, threads: int, model: bytes | None = None) -> Predictor:
    session = ort_session(files, threads, model=model)
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return run


def openvino_config(threads: int, precision: str = "f32", **extra: object) -> dict[str, object]:
    """OpenVINO CPU plugin settings for a measurement with ``threads`` threads.

    The precision hint is explicit: without it OpenVINO runs an fp32 model in bf16 on a CPU
    with AVX512_BF16 or AMX (its default there), and the "fp32" row would be bf16, with bf16's
    accuracy. ``precision="bf16"`` asks for bf16 (honoured only where the CPU has it).
    """
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision, **extra}


SPLIT_NOTE = ("int8 convolutions and matmuls each split into two with 7-bit weights (exact): "
              "without VNNI (this CPU's, or oneDNN capped below it) whole ones sum products "
              "in saturating 16-bit pairs (clsact.deploy.saturation)")


def split_int8_here() -> bool:
    """Whether OpenVINO's int8 ops are split here (:mod:`clsact.deploy.saturation`): on a
    CPU without VNNI (or with oneDNN capped below it), where whole ones sum in saturating
    16-bit pairs."""
    from clsact.deploy.machine import int8_dot_product

    return not int8_dot_product()


def openvino_read(files: ModelFiles, model: bytes | Path | None = None,
                  split: bool | None = None):
    """The OpenVINO model of :func:`openvino_model` with the model's parameters, or of
    ``model`` (ONNX bytes, or a ``.pdmodel`` path with its own parameters), its int8 ops
    split where ``split`` (None: :func:`split_int8_here`).

    Raises:
        ModelError: the observer-free copy cannot be made.
        Exception: OpenVINO's own, where it cannot read the model.
    """
    import openvino as ov

    from clsact.deploy.saturation import split_int8_convolutions

    core = ov.Core()
    if model is None:
        read = core.read_model(str(openvino_model(files)), str(files.params_file))
    elif isinstance(model, Path):
        read = core.read_model(str(model))
    else:
        read = core.read_model(model, ov.Tensor(np.empty(0, np.uint8)))
    if split_int8_here() if split is None else split:
        split_int8_convolutions(read)
    return read


def openvino_compiled(files: ModelFiles, threads: int, precision: str = "f32",
                      model: bytes | Path | None = None, shape: tuple[int, ...] | None = None,
                      split: bool | None = None, **extra: object):
    """The model compiled by OpenVINO for the CPU (:func:`openvino_read`); with ``shape``,
    for that input shape only.

    Raises:
        RuntimeSkip: OpenVINO cannot read or compile the model, or its observer-free copy
            cannot be made.
    """
    import openvino as ov

    core = ov.Core()
    try:
        read = openvino_read(files, model, split)
        if shape is not None:
            read.reshape({read.inputs[0]: ov.PartialShape(list(shape))})
        return core.compile_model(read, "CPU", openvino_config(threads, precision, **extra))
    except Exception as exc:  # the observer-free copy's ModelError too: a skip, as before
        raise RuntimeSkip(f"OpenVINO cannot read the model: {first_line(exc)}") from None


def _openvino_predictor(files: ModelFiles, threads: int, precision: str = "f32",
                        model: bytes | Path | None = None, split: bool | None = None
                        ) -> Predictor:
    """OpenVINO compiled once per input shape: one compiled model fed batches of changing
    sizes (2026.4, CPU plugin, a QAT model) returns wrong scores after the shape changes
    (323 of the demo's 359 images wrong at batch 1 after one call at batch 359, none from a
    model compiled for batch 1; ``tests/test_serving.py``)."""
    openvino_compiled(files, threads, precision, model, split=split)  # unreadable: fail here
    requests: dict[tuple[int, ...], object] = {}

    def run(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.shape not in requests:
            requests[x.shape] = openvino_compiled(files, threads, precision, model, x.shape,
                                                  split).create_infer_request()
        request = requests[x.shape]
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return run


@dataclass(frozen=True)
class Runtime:
    """One way of serving a model."""

    key: str
    label: str
    device: str  # "cpu" or "gpu"
    int8: bool   # runs int8 kernels (for a quantized model only)
    gpu: bool = False
    engine: str = "paddle"  # paddle, onnxruntime or openvino
    precision: str = "f32"  # what it computes what is not int8 in: f32 or bf16
    drift: str | None = None  # why it may not compute what training computed, if it may not

    @property
    def form(self) -> str:
        """The file this runtime serves the model from (in a published run's ``model/``)."""
        return {"onnxruntime": SERVING_ONNX, "openvino": OPENVINO_MODEL}.get(
            self.engine, "inference.pdmodel")

    def skip_reason(self, files: ModelFiles) -> str | None:
        """Why this runtime cannot run ``files`` here (None: it can, unless loading it
        raises :class:`RuntimeSkip`)."""
        if self.int8 and not files.quantized:
            return "not a quantized model (no quantized weights): int8 kernels do not apply"
        if self.precision == "bf16":
            from clsact.deploy.machine import has_bf16

            if files.quantized:
                return "a quantized model: the bf16 row is a deployment of the fp32 model"
            if not has_bf16():
                return "this CPU has no bf16 (AVX512_BF16 or AMX): OpenVINO would run f32"
        needs = {"onnxruntime": ("onnxruntime", "paddle2onnx"),
                 "openvino": ("openvino",)}.get(self.engine, ())
        missing = _missing(*needs)
        if missing:
            return f"{missing} is not installed ({DEPLOY_EXTRA})"
        if self.gpu:
            try:
                gpus = _gpu_count()
            except Exception as exc:  # a CUDA build without a driver raises here
                return f"no usable GPU ({type(exc).__name__})"
            if gpus == 0:
                return "no GPU visible to this process (or a CPU-only Paddle build)"
        return None

    def note(self, files: ModelFiles) -> str | None:
        """What this runtime does to ``files`` here that a reader of its figures should
        know, or None."""
        if self.engine == "openvino" and files.quantized and split_int8_here():
            return SPLIT_NOTE
        return None

    def load(self, files: ModelFiles, threads: int) -> Predictor:
        """The predictor of ``files`` on this runtime with ``threads`` CPU threads.

        Raises:
            RuntimeSkip: a converter or runtime rejects the model.
            ModelError: Paddle Inference cannot load the model.
        """
        if self.engine == "onnxruntime":
            return _ort_predictor(files, threads)
        if self.engine == "openvino":
            return _openvino_predictor(files, threads, self.precision)
        return _paddle_predictor(files, threads, int8=self.int8 and not self.gpu,
                                 gpu=self.gpu, trt_int8=self.gpu and self.int8)


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("paddle-cpu", "Paddle Inference CPU (oneDNN fp32)", "cpu", int8=False),
    Runtime("paddle-cpu-int8", "Paddle Inference CPU (oneDNN int8)", "cpu", int8=True),
    Runtime("onnxruntime", "ONNX Runtime CPU", "cpu", int8=False, engine="onnxruntime",
            drift="paddle2onnx's ONNX Runtime export quantizes the outputs QAT only observed "
                  "(it needs their scales for int8 convolutions; without them it drops the "
                  "inputs' quantization instead): serve this model with openvino"),
    Runtime("openvino", "OpenVINO CPU (f32)", "cpu", int8=False, engine="openvino"),
    Runtime("openvino-bf16", "OpenVINO CPU (bf16)", "cpu", int8=False, engine="openvino",
            precision="bf16"),
    Runtime("paddle-gpu", "Paddle Inference GPU", "gpu", int8=False, gpu=True),
    Runtime("paddle-gpu-trt-int8", "Paddle Inference GPU + TensorRT int8", "gpu", int8=True,
            gpu=True),
)
