"""Evaluate a static inference program or a saved inference model: exact top-1 / top-5."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from clsact.data.loader import BatchLoader
from clsact.metrics import TopK
from clsact.modelio import model_paths

log = logging.getLogger(__name__)


def evaluate_program(exe, program, input_name: str, fetch_target, loader: BatchLoader,
                     epoch: int = 0) -> dict[str, Any]:
    """Run ``program`` over one pass of ``loader``; returns top1, top5, samples, the counts
    behind them (correct1, correct5), bad_images and seconds.

    Raises:
        DataError: too many unreadable images (the loader's policy).
        ModelError: the model's output does not match the labels.
    """
    counter = TopK()
    bad_before = loader.bad_total
    start = time.perf_counter()
    for batch in loader.epoch(epoch):
        (scores,) = exe.run(program, feed={input_name: batch.images}, fetch_list=[fetch_target])
        counter.update(scores, batch.labels)
    out: dict[str, Any] = counter.result()
    out["correct1"], out["correct5"] = counter.correct1, counter.correct5
    out["bad_images"] = loader.bad_total - bad_before
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def load_inference_model(exe, model_dir: Path, model_filename: str, params_filename: str):
    """``paddle.static.load_inference_model`` by path prefix when the file names allow it
    (the file-name form logs a deprecation warning on every call)."""
    import paddle

    stem = model_filename.removesuffix(".pdmodel")
    if model_filename.endswith(".pdmodel") and params_filename == f"{stem}.pdiparams":
        return paddle.static.load_inference_model(str(model_dir / stem), exe)
    return paddle.static.load_inference_model(str(model_dir), exe, model_filename=model_filename,
                                              params_filename=params_filename)


def evaluate_model_dir(model_dir: str | Path, loader: BatchLoader, *,
                       model_filename: str = "inference.pdmodel",
                       params_filename: str = "inference.pdiparams",
                       input_name: str | None = None) -> dict[str, Any]:
    """Load a saved inference model into its own scope and evaluate it.

    Raises:
        ModelError: the model files are missing or ``input_name`` is not an input.
        DataError: see :func:`evaluate_program`.
    """
    import paddle

    from clsact.modelio import inspect_model

    model_file, _ = model_paths(model_dir, model_filename, params_filename)
    info = inspect_model(model_file, input_name)
    paddle.enable_static()
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.framework._current_expected_place())
    with paddle.static.scope_guard(scope):
        program, _feeds, fetches = load_inference_model(exe, Path(model_dir), model_filename,
                                                        params_filename)
        result = evaluate_program(exe, program, info.input_name, fetches[0], loader)
    log.info("evaluated %s: top1=%.4f top5=%.4f on %d images", model_dir, result["top1"],
             result["top5"], result["samples"])
    return result
