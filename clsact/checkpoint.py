"""Checkpoints that let a preempted run resume instead of starting over.

Rank 0 writes the student's training state — the variables the ranks average: weights,
optimizer accumulators, BN and quantizer state — to ``<save-dir>/_checkpoint/`` (local or
S3) at every ACT evaluation and, between evaluations, every
``Global.checkpoint_every_steps`` steps and/or ``Global.checkpoint_every_minutes`` minutes
(at a point where every rank holds the same state). The state is copied synchronously and
uploaded by a background thread (:class:`Checkpointer`), so a slow store never stalls the
other ranks' collectives; a failed upload is a warning, and the next checkpoint tries again.
Files: ``state-<stage>-<step>.npz``, then ``progress.json`` naming it with its sha256 (the
marker), then the previous state file is deleted. A chain of stages (pruning, then QAT:
:mod:`clsact.strategy`) keeps each finished stage's model in ``stage-<i>/`` with its sha256
(:func:`save_stage`), and the marker then names the next stage at step 0: a restart starts
there with that model (:func:`load_stage_model`).

A run restarted with the same ``--run-id`` loads it (:func:`load`) only when the
:func:`fingerprint` of what determines training — the resolved config, the world size, the
data lists and the model files — is the one the checkpoint was made with; any difference is
refused with one line naming it. Then: weights and optimizer state, ``TrainConfig.train_iter``
reduced by the steps done, the scheduler's position, the data order continued at the same
epoch and batch; ``metrics.json`` says so (``resumed``), and the checkpoint is deleted once
the run is published.

Not restored: ACT's "best model so far" (the final model is the best evaluated after the
restart) and the random state of augmentations, which is a pure function of (seed, epoch,
sample) anyway.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from clsact.errors import ClsactError, StorageError
from clsact.storage import Store
from clsact.storage.publish import check_claim, sha256_file

log = logging.getLogger(__name__)
DIR = "_checkpoint"
PROGRESS = f"{DIR}/progress.json"
# Global keys that do not change what training computes (where things are, how fast they
# are read, how failures are handled): left out of the fingerprint.
NEUTRAL_GLOBAL = ("model_dir", "data_dir", "output_dir", "scratch_dir", "s3_endpoint",
                  "s3_max_attempts", "io_threads", "num_workers", "collective_timeout",
                  "checkpoint", "checkpoint_every_steps", "checkpoint_every_minutes", "device",
                  "report", "report_budget", "report_timeout")
NEUTRAL_TRAIN = ("logging_iter",)


@dataclass
class Checkpoint:
    """A run's training state after ``steps`` steps."""

    run_id: str
    steps: int
    evaluations: list[float] = field(default_factory=list)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None  # the learning-rate guard's state (clsact.guard)
    stage: int = 0  # the stage of a chain (clsact.strategy.plan) this state belongs to
    stages_done: list[dict[str, Any]] = field(default_factory=list)  # finished stages


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in value:
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _digest(items) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(repr(item).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint(data: dict[str, Any], world: int, samples: dict[str, list],
                model_files: list[Path]) -> dict[str, Any]:
    """What determines a run's training, comparable between a checkpoint and a restart.

    ``data`` is the validated config before clsact adapts it to the run (LR scaling,
    evaluation cadence); ``samples`` maps a list's name to its samples (path and label
    of each, in order); ``model_files`` are the input model's files.
    """
    cfg = copy.deepcopy(data)
    cfg.pop("Gate", None)  # read after the run, by the gate
    for key in NEUTRAL_GLOBAL:
        cfg.get("Global", {}).pop(key, None)
    for key in NEUTRAL_TRAIN:
        (cfg.get("TrainConfig") or {}).pop(key, None)
    flat: dict[str, Any] = {}
    _flatten(cfg, "", flat)
    return {"config": {k: flat[k] for k in sorted(flat)}, "world_size": world,
            "data": {name: _digest((s.path, s.label) for s in items)
                     for name, items in sorted(samples.items())},
            "model": _digest(sha256_file(p) for p in model_files)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    out = []
    if old.get("world_size") != new.get("world_size"):
        out.append(f"world size {old.get('world_size')} -> {new.get('world_size')} ranks")
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
            out.append(f"{key} {old_cfg.get(key, '<unset>')!r} -> {new_cfg.get(key, '<unset>')!r}")
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for name in sorted(set(old_data) | set(new_data)):
        if old_data.get(name) != new_data.get(name):
            out.append(f"the samples of {name}")
    if old.get("model") != new.get("model"):
        out.append("the model files")
    return out


def encode(ckpt: Checkpoint) -> tuple[bytes, dict[str, Any]]:
    """The state file's bytes and the progress record naming it."""
    buf = io.BytesIO()
    np.savez(buf, **ckpt.state)
    data = buf.getvalue()
    progress = {"run_id": ckpt.run_id, "steps": ckpt.steps, "evaluations": ckpt.evaluations,
                "state": f"{DIR}/state-{ckpt.stage}-{ckpt.steps:09d}.npz",
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "fingerprint": ckpt.fingerprint, "guard": ckpt.guard, "stage": ckpt.stage,
                "stages_done": ckpt.stages_done}
    return data, progress


def stage_dir(stage: int) -> str:
    """Where the model a finished stage produced is kept (under the save dir)."""
    return f"{DIR}/stage-{stage}"


def save_stage(store: Store, run_id: str, stage: int, model_dir: Path, files: list[str],
               record: dict[str, Any], done: list[dict[str, Any]],
               fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Keep the model stage ``stage`` produced (files first, with their sha256) and mark the
    run as at the start of the next stage (the marker last): a restart continues there.
    Returns ``record`` with the kept files' sha256.

    Raises:
        StorageError: a write failed (the previous checkpoint stays valid).
    """
    old = _read_progress(store)
    sums = {}
    for name in files:
        store.put_file(model_dir / name, f"{stage_dir(stage)}/{name}")
        sums[name] = sha256_file(model_dir / name)
    kept = {**record, "files": sums}
    progress = {"run_id": run_id, "steps": 0, "evaluations": [], "state": None,
                "fingerprint": fingerprint, "guard": None, "stage": stage + 1,
                "stages_done": [*done, kept]}
    store.put_bytes(PROGRESS, (json.dumps(progress) + "\n").encode())
    if old and old.get("run_id") == run_id and old.get("state"):
        store.delete(old["state"])
    log.info("stage %d done: its model is kept in %s; a restart continues with stage %d",
             stage + 1, store.describe(stage_dir(stage)), stage + 2)
    return kept


def load_stage_model(store: Store, ckpt: Checkpoint, dest: Path) -> Path:
    """Download the model the stage before ``ckpt.stage`` produced into ``dest``.

    Raises:
        ClsactError: a file is missing or does not match its recorded sha256.
        StorageError: the store cannot be read.
    """
    stage = ckpt.stage - 1
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in ckpt.stages_done[stage]["files"].items():
        try:
            store.get_file(f"{stage_dir(stage)}/{name}", dest / name)
        except FileNotFoundError:
            raise ClsactError(f"the checkpoint's stage {stage + 1} model file "
                              f"{store.describe(stage_dir(stage))}/{name} is missing: start "
                              "over with --overwrite") from None
        if sha256_file(dest / name) != digest:
            raise ClsactError(f"the checkpoint's stage {stage + 1} model file {name} is "
                              "damaged (sha256): start over with --overwrite")
    return dest


def save(store: Store, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` under ``store``'s ``_checkpoint/`` (state first, marker last).

    Raises:
        StorageError: a write failed (the previous checkpoint stays valid).
    """
    data, progress = encode(ckpt)
    old = _read_progress(store)
    store.put_bytes(progress["state"], data)
    store.put_bytes(PROGRESS, (json.dumps(progress) + "\n").encode())
    if old and old.get("run_id") == ckpt.run_id \
            and old.get("state") not in (None, progress["state"]):
        store.delete(old["state"])  # never another run's state file
    log.info("checkpoint after %d steps: %s (%.1f MB)", ckpt.steps,
             store.describe(progress["state"]), len(data) / 2**20)


def _read_progress(store: Store) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(PROGRESS))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        log.warning("ignoring unreadable %s: %s", store.describe(PROGRESS), exc)
        return None


def load(store: Store, run_id: str, expected: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint of run ``run_id`` in ``store``, or None (none, another run's, or
    damaged — each logged).

    Raises:
        ClsactError: the checkpoint was made with another config, world size, data or model
            than ``expected`` (its fingerprint): continuing it would silently train
            something else.
        StorageError: the store cannot be read.
    """
    progress = _read_progress(store)
    if progress is None:
        return None
    if progress.get("run_id") != run_id:
        log.warning("%s holds a checkpoint of run %s, not %s: starting from the beginning",
                    store.describe(DIR), progress.get("run_id"), run_id)
        return None
    changed = differences(progress.get("fingerprint") or {}, expected)
    if changed:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4
                                          else "")
        raise ClsactError(
            f"the checkpoint of run {run_id} in {store.describe(DIR)} was made with other "
            f"settings ({shown}): resume with the settings it was made with, or start over "
            "with --overwrite (discards it) or another --save-dir")
    stage, done = int(progress.get("stage", 0)), list(progress.get("stages_done") or [])
    if progress.get("state") is None:  # between two stages of a chain
        return Checkpoint(run_id, 0, [], {}, progress.get("fingerprint") or {}, None, stage,
                          done)
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
                      state, progress.get("fingerprint") or {}, progress.get("guard"), stage,
                      done)


def clear(store: Store) -> None:
    """Delete the checkpoint files (best effort; after a successful publish)."""
    try:
        for rel, _size in store.list(DIR):
            store.delete(rel)
    except Exception as exc:  # noqa: BLE001 - a leftover checkpoint is harmless
        log.warning("could not delete the checkpoint in %s: %s", store.describe(DIR), exc)


POLL_STEPS = 10


class Checkpointer:
    """Writes checkpoints in the background at a cadence (rank 0 only).

    :meth:`due` says whether the cadence asks for one after ``step`` steps; :meth:`write`
    snapshots nothing itself (the caller hands a copied state) and uploads on a thread,
    skipping a checkpoint while the previous one is still uploading. Upload failures are
    logged as warnings; :meth:`close` waits for the last upload.
    """

    def __init__(self, store: Store | None, every_steps: int | None = None,
                 every_minutes: float | None = None, clock=time.monotonic) -> None:
        self.store = store
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.clock = clock
        self.last_step = 0
        self.last_time = clock()
        self.written = 0
        self.last_at: str | None = None   # when the last checkpoint was written (UTC, ISO)
        self.failed = 0
        self.skipped = 0
        self.lost = False  # another run took the save dir over: stop checkpointing
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether this process writes checkpoints."""
        return self.store is not None

    def due(self, step: int) -> bool:
        """Whether the cadence wants a checkpoint after ``step`` steps."""
        if not self.enabled or step <= self.last_step:
            return False
        if self.every_steps and step - self.last_step >= self.every_steps:
            return True
        return bool(self.every_seconds and self.clock() - self.last_time >= self.every_seconds)

    def new_stage(self) -> None:
        """Count steps from 0 again: the next stage of a chain starts its own loop."""
        self.last_step, self.last_time = 0, self.clock()

    @property
    def poll_steps(self) -> int:
        """How often, in steps, ranks that average their statistics only at agreed points
        (``Global.rank_sync: gradients``) ask rank 0 whether a checkpoint is due: every
        ``every_steps`` steps when that is under 10, else every 10 steps (a small broadcast
        each time), so a checkpoint between evaluations falls at most 9 steps late."""
        return max(1, min(self.every_steps or POLL_STEPS, POLL_STEPS))

    def busy(self) -> bool:
        """An upload is still running."""
        return self._thread is not None and self._thread.is_alive()

    def write(self, ckpt: Checkpoint) -> bool:
        """Upload ``ckpt`` in the background; False when skipped (an upload is running)."""
        if not self.enabled or self.lost:
            return False
        if self.busy():
            self.skipped += 1
            log.warning("checkpoint after %d steps skipped: the previous one is still "
                        "uploading", ckpt.steps)
            return False
        self.last_step, self.last_time = ckpt.steps, self.clock()
        self._thread = threading.Thread(target=self._upload, args=(ckpt,),
                                        name="clsact-checkpoint", daemon=True)
        self._thread.start()
        return True

    def _upload(self, ckpt: Checkpoint) -> None:
        try:
            check_claim(self.store, ckpt.run_id)
        except StorageError as exc:
            self.lost = True
            log.warning("checkpoint after %d steps not written, and no more will be: %s",
                        ckpt.steps, exc)
            return
        try:
            save(self.store, ckpt)
            self.written += 1
            self.last_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not end the run
            self.failed += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("checkpoint after %d steps failed (%s); the run goes on and the next "
                        "checkpoint tries again", ckpt.steps, first[:300])

    def close(self) -> None:
        """Wait for the running upload, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def summary(self) -> dict[str, int]:
        """Counts for ``metrics.json``."""
        return {"written": self.written, "failed": self.failed, "skipped_busy": self.skipped,
                "claim_lost": self.lost}
