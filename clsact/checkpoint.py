"""Checkpoints that let a preempted run resume instead of starting over.

At every ACT evaluation (when the ranks' states are equal) rank 0 writes the student's
training state — the same variables the ranks average: weights, optimizer accumulators, BN
and quantizer state — to ``<save-dir>/_checkpoint/`` (local or S3): first
``state-<step>.npz``, then ``progress.json`` naming it with its sha256 (the marker), then
the previous state file is deleted. A run restarted with the same ``--run-id`` loads it:

* weights and optimizer state from the last evaluation (ACT keeps no other: steps after it
  are redone),
* ``TrainConfig.train_iter`` reduced by the steps done, a scheduler's position restored
  (``last_epoch``), the data order continued at the same epoch and batch,
* ``metrics.json`` says so (``resumed``), and the checkpoint is deleted once the run is
  published.

What is not restored: ACT's "best model so far" (the final model is the best evaluated
after the restart) and the random state of augmentations, which is a pure function of
(seed, epoch, sample) anyway.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clsact.storage import Store

log = logging.getLogger(__name__)
DIR = "_checkpoint"
PROGRESS = f"{DIR}/progress.json"


@dataclass
class Checkpoint:
    """A run's training state after ``steps`` steps."""

    run_id: str
    steps: int
    evaluations: list[float] = field(default_factory=list)
    state: dict[str, np.ndarray] = field(default_factory=dict)


def save(store: Store, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` under ``store``'s ``_checkpoint/`` (state first, marker last).

    Raises:
        StorageError: a write failed (the previous checkpoint stays valid).
    """
    buf = io.BytesIO()
    np.savez(buf, **ckpt.state)
    data = buf.getvalue()
    name = f"{DIR}/state-{ckpt.steps:09d}.npz"
    old = _read_progress(store)
    store.put_bytes(name, data)
    progress = {"run_id": ckpt.run_id, "steps": ckpt.steps, "evaluations": ckpt.evaluations,
                "state": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    store.put_bytes(PROGRESS, (json.dumps(progress) + "\n").encode())
    if old and old.get("state") not in (None, name):
        store.delete(old["state"])
    log.info("checkpoint after %d steps: %s (%.1f MB)", ckpt.steps, store.describe(name),
             len(data) / 2**20)


def _read_progress(store: Store) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(PROGRESS))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        log.warning("ignoring unreadable %s: %s", store.describe(PROGRESS), exc)
        return None


def load(store: Store, run_id: str) -> Checkpoint | None:
    """The checkpoint of run ``run_id`` in ``store``, or None (none, another run's, or
    damaged — each logged).

    Raises:
        StorageError: the store cannot be read.
    """
    progress = _read_progress(store)
    if progress is None:
        return None
    if progress.get("run_id") != run_id:
        log.warning("%s holds a checkpoint of run %s, not %s: starting from the beginning "
                    "(pass --run-id %s to resume it)", store.describe(DIR),
                    progress.get("run_id"), run_id, progress.get("run_id"))
        return None
    try:
        data = store.read_bytes(progress["state"])
    except FileNotFoundError:
        log.warning("checkpoint state %s is missing: starting from the beginning",
                    progress["state"])
        return None
    if hashlib.sha256(data).hexdigest() != progress.get("sha256"):
        log.warning("checkpoint state %s is damaged (sha256): starting from the beginning",
                    progress["state"])
        return None
    with np.load(io.BytesIO(data)) as npz:
        state = {name: npz[name] for name in npz.files}
    return Checkpoint(run_id, int(progress["steps"]), list(progress.get("evaluations", [])),
                      state)


def clear(store: Store) -> None:
    """Delete the checkpoint files (best effort; after a successful publish)."""
    try:
        for rel, _size in store.list(DIR):
            store.delete(rel)
    except Exception as exc:  # noqa: BLE001 - a leftover checkpoint is harmless
        log.warning("could not delete the checkpoint in %s: %s", store.describe(DIR), exc)


def resume_config(train: dict[str, Any], steps: int) -> None:
    """Shift ``TrainConfig`` (in place) so that ACT runs only the remaining steps, with a
    learning-rate scheduler continuing where it was."""
    if train.get("train_iter"):
        train["train_iter"] = max(1, int(train["train_iter"]) - steps)
    lr = train.get("learning_rate")
    if isinstance(lr, dict):
        lr["last_epoch"] = steps - 1
