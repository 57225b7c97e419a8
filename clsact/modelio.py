"""Inference-model files: locate, copy, inspect (input name/shape, classes), count quant ops."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clsact.errors import ModelError

QUANT_OP_TYPES = frozenset({
    "quantize_linear", "dequantize_linear",
    "fake_quantize_abs_max", "fake_quantize_moving_average_abs_max",
    "fake_channel_wise_quantize_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
    "fake_channel_wise_quantize_dequantize_abs_max", "fake_dequantize_max_abs",
    "fake_channel_wise_dequantize_max_abs",
})


@dataclass(frozen=True)
class ModelInfo:
    """What clsact needs to know about a classification inference model."""

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    num_classes: int | None


def model_paths(model_dir: str | Path, model_filename: str,
                params_filename: str) -> tuple[Path, Path]:
    """The model and params files of an inference model directory.

    Raises:
        ModelError: either file is missing (the message lists what the directory holds).
    """
    d = Path(model_dir)
    model, params = d / model_filename, d / params_filename
    for p, key in ((model, "model_filename"), (params, "params_filename")):
        if not p.is_file():
            found = sorted(x.name for x in d.iterdir()) if d.is_dir() else []
            hint = f"; it holds: {', '.join(found[:10])}" if found else ""
            raise ModelError(f"model file {p} does not exist (Global.{key}){hint}")
    return model, params


def copy_model(model_dir: str | Path, dest: str | Path, model_filename: str,
               params_filename: str) -> Path:
    """Copy the two model files into ``dest`` (ACT rewrites its input model in place).

    Raises:
        ModelError: see :func:`model_paths`.
    """
    model, params = model_paths(model_dir, model_filename, params_filename)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model, out / model_filename)
    shutil.copy2(params, out / params_filename)
    return out


def load_program(model_file: str | Path):
    """Parse a ``.pdmodel`` file into a static ``paddle.static.Program``.

    Raises:
        ModelError: the file is not a Paddle program.
    """
    import paddle

    paddle.enable_static()  # parsing a program desc needs static mode
    try:
        return paddle.static.Program.parse_from_string(Path(model_file).read_bytes())
    except Exception as exc:  # paddle raises many types for a corrupt protobuf
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{model_file} is not a Paddle inference model: {why}") from None


def inspect_model(model_file: str | Path, input_name: str | None = None) -> ModelInfo:
    """Input name and shape, output name and number of classes of an inference model.

    Raises:
        ModelError: the program has no single image input (or ``input_name`` is not one of
            its inputs), or no output.
    """
    program = load_program(model_file)
    block = program.global_block()
    feeds = [op.output("Out")[0] for op in block.ops if op.type == "feed"]
    fetches = [op.input("X")[0] for op in block.ops if op.type == "fetch"]
    if not feeds or not fetches:
        raise ModelError(f"{model_file}: no feed/fetch ops; save the model with "
                         "paddle.jit.save or paddle.static.save_inference_model")
    if input_name is not None and input_name not in feeds:
        raise ModelError(f"{model_file}: Global.input_name {input_name!r} is not an input of the "
                         f"model; its inputs: {', '.join(feeds)} (or leave input_name unset)")
    if input_name is None:
        if len(feeds) != 1:
            raise ModelError(f"{model_file}: {len(feeds)} inputs ({', '.join(feeds)}); set "
                             "Global.input_name to the image input")
        input_name = feeds[0]
    shape = tuple(block.var(input_name).shape)
    if len(shape) != 4:
        raise ModelError(f"{model_file}: input {input_name!r} has shape {list(shape)}; expected "
                         "an NCHW image batch [-1, 3, H, W]")
    out_shape = block.var(fetches[0]).shape
    classes = int(out_shape[-1]) if out_shape and out_shape[-1] > 0 else None
    return ModelInfo(input_name, shape, fetches[0], classes)


def count_ops(model_file: str | Path, types: frozenset[str] = QUANT_OP_TYPES) -> int:
    """How many ops of ``types`` (default: quantize/dequantize ops) the model holds."""
    program = load_program(model_file)
    return sum(1 for block in program.blocks for op in block.ops if op.type in types)
