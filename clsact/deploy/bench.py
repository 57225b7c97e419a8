"""``clsact bench``: models measured through every runtime that can serve them here.

For each model and runtime: latency (p50/p90 after warm-up, :mod:`clsact.deploy.latency`) at
each batch size and thread count, and, given a validation set, the exact top-1/top-5 of the
model *as served* (int8 kernels and converters can lose accuracy the QAT evaluation inside
Paddle's training graph never saw). A runtime more than :data:`ACCURACY_FLAG` below the
model's reference top-1 (the run's own figure) is flagged. Runtimes that cannot run a model
here give one "skipped: why" line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clsact.deploy.latency import measure
from clsact.deploy.runtimes import (
    RUNTIMES,
    ModelFiles,
    Predictor,
    Runtime,
    RuntimeSkip,
)
from clsact.deploy.runtimes import (
    first_line as _first_line,
)
from clsact.errors import ClsactError, ModelError
from clsact.metrics import TopK

log = logging.getLogger(__name__)
ACCURACY_FLAG = 0.005  # half a point of top-1


@dataclass
class Measurement:
    """One model through one runtime."""

    model: str
    runtime: str
    label: str
    status: str  # "measured", "skipped" (cannot run here) or "failed" (broke while running)
    reason: str | None = None
    latency: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, Any] | None = None
    reference_top1: float | None = None
    flag: str | None = None

    def best(self, batch: int) -> dict[str, Any] | None:
        """The fastest latency entry at ``batch`` (any thread count)."""
        rows = [x for x in self.latency if x["batch"] == batch]
        return min(rows, key=lambda x: x["p50_ms"]) if rows else None


def top_k(predict: Predictor, batches: Iterable) -> dict[str, Any]:
    """Exact top-1/top-5 of ``predict`` over loader batches (``images``, ``labels``).

    Raises:
        ModelError: the outputs do not match the labels.
    """
    counter = TopK()
    for batch in batches:
        counter.update(predict(batch.images), batch.labels)
    return counter.result()


def accuracy_flag(top1: float, reference: float | None) -> str | None:
    """The warning when ``top1`` is more than :data:`ACCURACY_FLAG` below ``reference``."""
    if reference is None or top1 >= reference - ACCURACY_FLAG - 1e-12:
        return None
    return (f"top-1 {100 * top1:.2f}% is {100 * (reference - top1):.2f} points below the "
            f"reference {100 * reference:.2f}%: this runtime loses accuracy")


def bench_model(name: str, files: ModelFiles, img_size: int, *,
                runtimes: Iterable[Runtime] = RUNTIMES, batches: tuple[int, ...] = (1, 32),
                threads: tuple[int, ...] = (1,), budget_s: float = 10.0,
                val_batches: Callable[[], Iterable] | None = None,
                reference_top1: float | None = None, seed: int = 0) -> list[Measurement]:
    """Measure one model through ``runtimes``.

    ``val_batches`` (optional) gives a fresh pass over the validation set for the accuracy
    through each runtime (run with the most threads).

    A runtime that cannot run the model here is ``skipped``; one that breaks on it is
    ``failed``, with the first line of its error (the other runtimes are still measured).
    """
    rng = np.random.default_rng(seed)
    out = []
    for rt in runtimes:
        m = Measurement(name, rt.key, rt.label, "measured", reference_top1=reference_top1)
        out.append(m)
        reason = rt.skip_reason(files)
        if reason is not None:
            m.status, m.reason = "skipped", reason
            log.info("%s on %s: skipped: %s", name, rt.key, reason)
            continue
        try:
            predict = _measure(m, rt, files, img_size, batches, threads, budget_s, rng)
            if val_batches is not None:
                m.accuracy = top_k(predict, val_batches())
                m.flag = accuracy_flag(m.accuracy["top1"], reference_top1)
        except RuntimeSkip as exc:
            m.status, m.reason, m.latency = "skipped", str(exc), []
            log.info("%s on %s: skipped: %s", name, rt.key, exc)
        except (ClsactError, RuntimeError, ValueError, OSError) as exc:
            # one runtime failing on a model is a finding, not a reason to lose the others
            m.status, m.reason, m.accuracy = "failed", _first_line(exc), None
            log.warning("%s on %s: FAILED: %s", name, rt.key, m.reason)
    return out


def _measure(m: Measurement, rt: Runtime, files: ModelFiles, img_size: int,
             batches: tuple[int, ...], threads: tuple[int, ...], budget_s: float,
             rng: np.random.Generator) -> Predictor:
    """Latency of ``rt`` at each thread count and batch size into ``m``; returns the
    predictor with the most threads (for the accuracy pass)."""
    name = m.model
    kept = None
    for n_threads in threads:
        predict = rt.load(files, n_threads)
        if n_threads == max(threads):
            kept = predict
        for batch in batches:
            x = rng.random((batch, 3, img_size, img_size), dtype=np.float32)
            _check_output(predict(x), batch, rt, files)
            lat = measure(lambda x=x, predict=predict: predict(x), batch, budget_s=budget_s)
            m.latency.append({**lat.to_dict(), "threads": n_threads})
            log.info("%s on %s: batch %d, %d thread(s): p50 %.2f ms", name, rt.key, batch,
                     n_threads, lat.p50_ms)
    assert kept is not None
    return kept


def _check_output(scores: np.ndarray, batch: int, rt: Runtime, files: ModelFiles) -> None:
    if scores.shape[0] != batch:
        raise ModelError(f"{rt.label} returned {scores.shape[0]} rows for {batch} images "
                         f"from {files.model_file}")
    if not np.isfinite(scores).all():
        raise ModelError(f"{rt.label} returned non-finite scores from {files.model_file}")


def _ms(entry: dict[str, Any] | None, key: str) -> str:
    return "-" if entry is None else f"{entry[key]:.2f}"


def format_table(results: list[Measurement]) -> str:
    """One line per model, runtime, batch and thread count; skips as one line each."""
    head = ("model", "runtime", "batch", "threads", "p50 ms", "p90 ms", "images/s", "top-1",
            "top-5")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for m in results:
        if m.status != "measured":
            notes.append(f"{m.model} / {m.runtime}: "
                         f"{'skipped' if m.status == 'skipped' else 'FAILED'}: {m.reason}")
            continue
        acc = m.accuracy or {}
        for i, e in enumerate(m.latency):
            rows.append((m.model, m.runtime, str(e["batch"]), str(e["threads"]),
                         _ms(e, "p50_ms"), _ms(e, "p90_ms"), f"{e['images_per_second']:.1f}",
                         f"{100 * acc['top1']:.2f}" if acc and i == 0 else "",
                         f"{100 * acc['top5']:.2f}" if acc and i == 0 else ""))
        if m.flag:
            notes.append(f"{m.model} / {m.runtime}: FLAGGED: {m.flag}")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in [head, *rows]]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines + notes)


def to_json(results: list[Measurement]) -> list[dict[str, Any]]:
    """JSON-ready form of the measurements."""
    from dataclasses import asdict

    return [asdict(m) for m in results]


def local_model(location: str, scratch: Path, names: tuple[str, str]) -> Path:
    """A local directory with the model files of ``location`` (S3: downloaded to scratch).

    Raises:
        StorageError: the location is malformed, unreachable or lacks the files.
    """
    from clsact import storage

    return storage.input_dir(location, "--model-dir", list(names), scratch)
