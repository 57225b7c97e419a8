"""A run's progress where a user can read it without the logs: ``<save-dir>/_progress.json``.

Rank 0 writes it (beside ``_checkpoint/``, in the same store: local or S3) when the phase
changes (preparing, baseline evaluation, training stage i of n, final evaluation,
publishing, published, failed) and, while training, at most every
:data:`EVERY_SECONDS` seconds: the step of the stage and its planned steps, the measured
rate and the training ETA, the last evaluation's top-1 and when the last checkpoint was
written. ``clsact status`` reads it (:func:`read`, :func:`describe`). Writing it is best
effort: a failed write is one warning and the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from clsact.storage import Store

log = logging.getLogger(__name__)
FILE = "_progress.json"
EVERY_SECONDS = 30.0
PUBLISHED, FAILED = "published", "failed"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Progress:
    """Rank 0's ``progress.json`` (``store`` None: another rank, nothing is written)."""

    def __init__(self, store: Store | None, run_id: str, every: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.every = every
        self.clock = clock
        self.data: dict[str, Any] = {"run_id": run_id, "phase": "preparing",
                                     "started_at": _now()}
        self._written_at: float | None = None
        self._stage_start: tuple[float, int] | None = None   # (clock, step) of this process
        self._warned = False

    def phase(self, name: str, **fields: Any) -> None:
        """A new phase (written at once); ``fields`` are added to the record."""
        self.data.update(phase=name, **fields)
        self._write()

    def stage(self, index: int, count: int, name: str, steps: int, done: int) -> None:
        """Training stage ``index`` (0-based) of ``count`` starts (or resumes at ``done``)."""
        self._stage_start = (self.clock(), done)
        self.phase("training", stage={"index": index + 1, "count": count, "name": name},
                   step=done, steps=steps, eta_seconds=None, steps_per_second=None)

    def step(self, step: int, top1: float | None = None,
             checkpoint_at: str | None = None) -> None:
        """Training reached ``step`` of the stage; written when :attr:`every` has passed."""
        self.data["step"] = step
        if top1 is not None:
            self.data["last_eval"] = {"step": step, "top1": round(top1, 6)}
        if checkpoint_at:
            self.data["checkpoint_at"] = checkpoint_at
        if self._stage_start is not None:
            since, first = self._stage_start
            elapsed = self.clock() - since
            if step > first and elapsed > 0:
                rate = (step - first) / elapsed
                self.data["steps_per_second"] = round(rate, 4)
                self.data["eta_seconds"] = round(max(self.data["steps"] - step, 0) / rate, 1)
        if self._written_at is None or self.clock() - self._written_at >= self.every:
            self._write()

    def evaluated(self, step: int, top1: float) -> None:
        """An evaluation during training (kept for the next write)."""
        self.data["last_eval"] = {"step": step, "top1": round(top1, 6)}

    def discard(self) -> None:
        """Delete the record (a failed run that gives its save dir back); best effort."""
        if self.store is not None:
            try:
                self.store.delete(FILE)
            except Exception as exc:  # noqa: BLE001 - the claim's release matters more
                log.warning("could not delete %s: %s", self.store.describe(FILE), exc)

    def _write(self) -> None:
        self._written_at = self.clock()
        if self.store is None:
            return
        self.data["updated_at"] = _now()
        try:
            self.store.put_bytes(FILE, (json.dumps(self.data) + "\n").encode())
        except Exception as exc:  # noqa: BLE001 - progress must never stop a run
            if not self._warned:
                log.warning("could not write %s (progress is also in the log): %s",
                            self.store.describe(FILE), exc)
                self._warned = True


def read(store: Store) -> dict[str, Any] | None:
    """The progress record of the run in ``store``, None when there is none yet.

    Raises:
        StorageError: the store cannot be read (credentials, network).
    """
    try:
        data = json.loads(store.read_bytes(FILE))
    except FileNotFoundError:
        return None
    except ValueError:
        return None   # half written by an older, non-atomic store: next time
    return data if isinstance(data, dict) else None


def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "?"
    try:
        secs = int((now - datetime.fromisoformat(stamp)).total_seconds())
    except ValueError:
        return "?"
    return duration(max(secs, 0)) + " ago"


def duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``7300`` -> ``2h01m``."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def describe(data: dict[str, Any], now: datetime | None = None) -> list[str]:
    """The progress record as ``clsact status`` prints it, one fact per line."""
    now = now or datetime.now(timezone.utc)
    lines = [f"phase:      {data.get('phase')} (updated {_ago(data.get('updated_at'), now)})"]
    stage = data.get("stage")
    if stage and data.get("phase") == "training":
        lines.append(f"stage:      {stage['index']} of {stage['count']} ({stage['name']})")
    if data.get("phase") == "training" and data.get("steps"):
        eta = data.get("eta_seconds")
        rate = data.get("steps_per_second")
        lines.append(f"step:       {data.get('step')} of {data['steps']}"
                     + (f", {rate:g} steps/s, training ETA {duration(eta)}"
                        if eta is not None and rate else ""))
    if data.get("last_eval"):
        e = data["last_eval"]
        lines.append(f"last eval:  top-1 {e['top1']:.4f} at step {e['step']}")
    if data.get("checkpoint_at"):
        lines.append(f"checkpoint: {_ago(data['checkpoint_at'], now)}")
    if data.get("error"):
        lines.append(f"error:      {data['error']}")
    return lines
