"""``clsact bench``: models measured through every runtime that can serve them here.

For each model and runtime: latency (p50/p90 after warm-up, :mod:`clsact.deploy.latency`) at
each batch size and thread count, and, given a validation set, the exact top-1/top-5 of the
model *as served* (int8 kernels and converters can lose accuracy the QAT evaluation inside
Paddle's training graph never saw). Each runtime's top-1 hits are paired with those of Paddle
Inference's fp32 kernels on the same model (``paddle-cpu``: the model's own arithmetic, the
QAT evaluation's for a quantized model): a runtime is flagged when it loses significantly more
images than it gains (exact McNemar test, :func:`mcnemar_p` < :data:`ALPHA`), not on a fixed
margin, which flags noise on a small set and misses real losses on a large one. Runtimes that
cannot run a model here give one "skipped: why" line.
"""

from __future__ import annotations

import logging
import math
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
from clsact.storage.s3session import S3Settings

log = logging.getLogger(__name__)
ALPHA = 0.05      # significance of the paired test
REFERENCE = "paddle-cpu"


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
    form: str | None = None  # the file the runtime served the model from
    paired: dict[str, Any] | None = None  # against the reference runtime's hits
    note: str | None = None  # what the runtime did to the model here (Runtime.note)

    def best(self, batch: int) -> dict[str, Any] | None:
        """The fastest latency entry at ``batch`` (any thread count)."""
        rows = [x for x in self.latency if x["batch"] == batch]
        return min(rows, key=lambda x: x["p50_ms"]) if rows else None


def top_k(predict: Predictor, batches: Iterable) -> tuple[dict[str, Any], np.ndarray]:
    """Exact top-1/top-5 of ``predict`` over loader batches (``images``, ``labels``), and
    which images it gets right at top-1 (a bool per image, in order).

    Raises:
        ModelError: the outputs do not match the labels.
    """
    counter = TopK()
    hits = []
    for batch in batches:
        hits.append(counter.update(predict(batch.images), batch.labels))
    return counter.result(), np.concatenate(hits) if hits else np.zeros(0, bool)


def mcnemar_p(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value of ``lost`` images one side alone gets right against
    ``gained`` the other alone does (a binomial test of the discordant pairs at 1/2).

    Raises:
        ValueError: a count is negative.
    """
    if lost < 0 or gained < 0:
        raise ValueError("counts must be >= 0")
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(hits: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The paired comparison of a runtime's top-1 hits with the reference's.

    Raises:
        ValueError: the two cover different numbers of images.
    """
    if hits.shape != reference.shape:
        raise ValueError(f"{hits.size} predictions against {reference.size} of the reference")
    lost, gained = int((reference & ~hits).sum()), int((~reference & hits).sum())
    return {"reference": REFERENCE, "images": int(hits.size), "lost": lost, "gained": gained,
            "p_value": round(mcnemar_p(lost, gained), 6)}


def accuracy_flag(pair: dict[str, Any] | None) -> str | None:
    """The warning when a runtime loses significantly more images than it gains."""
    if not pair or pair["lost"] <= pair["gained"] or pair["p_value"] >= ALPHA:
        return None
    return (f"gets {pair['lost']} images wrong that {pair['reference']} gets right and only "
            f"{pair['gained']} the other way, of {pair['images']} (exact McNemar p = "
            f"{pair['p_value']:.2g} < {ALPHA}): it does not serve the model as trained")


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
    hits: dict[str, np.ndarray] = {}
    drift: dict[str, str] = {}
    for rt in runtimes:
        if rt.drift:
            drift[rt.key] = rt.drift
        m = Measurement(name, rt.key, rt.label, "measured", reference_top1=reference_top1,
                        form=rt.form)
        out.append(m)
        reason = rt.skip_reason(files)
        if reason is not None:
            m.status, m.reason = "skipped", reason
            log.info("%s on %s: skipped: %s", name, rt.key, reason)
            continue
        m.note = rt.note(files)
        try:
            predict = _measure(m, rt, files, img_size, batches, threads, budget_s, rng)
            if val_batches is not None:
                m.accuracy, hits[rt.key] = top_k(predict, val_batches())
        except RuntimeSkip as exc:
            m.status, m.reason, m.latency = "skipped", str(exc), []
            log.info("%s on %s: skipped: %s", name, rt.key, exc)
        except (ClsactError, RuntimeError, ValueError, OSError) as exc:
            # one runtime failing on a model is a finding, not a reason to lose the others
            m.status, m.reason, m.accuracy = "failed", _first_line(exc), None
            log.warning("%s on %s: FAILED: %s", name, rt.key, m.reason)
    if val_batches is not None and hits:
        _pair_with_reference(out, hits, drift, files, val_batches, max(threads))
    return out


def _pair_with_reference(results: list[Measurement], hits: dict[str, np.ndarray],
                         drift: dict[str, str], files: ModelFiles,
                         val_batches: Callable[[], Iterable], threads: int) -> None:
    """Pair every runtime's hits with the reference runtime's (run for accuracy only when it
    was not among the runtimes measured) and flag the significant losses, with the runtime's
    known ``drift`` as the reason."""
    if REFERENCE not in hits:
        reference = next(r for r in RUNTIMES if r.key == REFERENCE)
        try:
            hits[REFERENCE] = top_k(reference.load(files, threads), val_batches())[1]
        except (ClsactError, RuntimeError, ValueError, OSError) as exc:
            log.warning("%s: no paired reference (%s could not run: %s)", results[0].model,
                        REFERENCE, _first_line(exc))
            return
    for m in results:
        if m.runtime in hits and m.runtime != REFERENCE:
            m.paired = paired(hits[m.runtime], hits[REFERENCE])
            m.flag = accuracy_flag(m.paired)
            if m.flag and m.runtime in drift:
                m.flag += f"; why: {drift[m.runtime]}"


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


def _paired_cell(m: Measurement) -> str:
    if m.runtime == REFERENCE and m.accuracy:
        return "(reference)"
    p = m.paired
    return f"-{p['lost']}/+{p['gained']}, p={p['p_value']:.2g}" if p else ""


def _ms(entry: dict[str, Any] | None, key: str) -> str:
    return "-" if entry is None else f"{entry[key]:.2f}"


def format_table(results: list[Measurement]) -> str:
    """One line per model, runtime, batch and thread count; skips as one line each."""
    head = ("model", "runtime", "batch", "threads", "p50 ms", "p90 ms", "images/s", "top-1",
            "top-5", f"vs {REFERENCE}: lost/gained, p")
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
                         f"{100 * acc['top5']:.2f}" if acc and i == 0 else "",
                         _paired_cell(m) if i == 0 else ""))
        if m.note:
            notes.append(f"{m.model} / {m.runtime}: {m.note}")
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


def local_model(location: str, scratch: Path, names: tuple[str, str],
                s3: S3Settings | None = None) -> Path:
    """A local directory with the model files of ``location`` (S3, reached with ``s3``:
    downloaded to scratch).

    Raises:
        StorageError: the location is malformed, unreachable or lacks the files.
    """
    from clsact import storage

    return storage.input_dir(location, "--model-dir", list(names), scratch, s3)
