"""The run's `_progress.json` (clsact.progress): what is written when, and how `clsact status`
shows it."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from clsact import progress, storage


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_phases_are_written_at_once_and_steps_at_most_every_interval(tmp_path):
    store = storage.open_store(str(tmp_path / "run"), "save dir")
    clock = Clock()
    p = progress.Progress(store, "r1", every=30.0, clock=clock)
    p.phase("preparing")
    assert progress.read(store)["phase"] == "preparing"
    p.stage(0, 2, "prune_dis", steps=100, done=10)      # resumed at step 10
    assert progress.read(store)["step"] == 10 and progress.read(store)["stage"]["count"] == 2
    clock.t = 10.0
    p.step(30, top1=0.5)                                   # 10 s after the last write: kept
    assert progress.read(store)["step"] == 10
    clock.t = 40.0
    p.step(130 - 60, checkpoint_at="2026-12-03T08:00:00+00:00")   # 40 s: written
    got = progress.read(store)
    assert got["step"] == 70 and got["last_eval"] == {"step": 30, "top1": 0.5}
    assert got["steps_per_second"] == 1.5 and got["eta_seconds"] == 20.0, got
    assert got["checkpoint_at"].startswith("2026-12-03")
    p.phase(progress.PUBLISHED)
    assert progress.read(store)["phase"] == "published"
    p.discard()
    assert progress.read(store) is None


def test_another_rank_writes_nothing_and_a_failing_store_only_warns(tmp_path, caplog):
    progress.Progress(None, "r").phase("training")          # no store: nothing, no error

    class Broken:
        def put_bytes(self, rel, data):
            raise OSError("disk on fire")

        def describe(self, rel=""):
            return f"broken/{rel}"

    p = progress.Progress(Broken(), "r")
    with caplog.at_level(logging.WARNING):
        p.phase("training")
        p.phase("final evaluation")
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1 and "disk on fire" in warnings[0].getMessage()


def test_status_lines():
    now = datetime(2026, 12, 3, 8, 0, 0, tzinfo=timezone.utc)
    ago = (now - timedelta(seconds=75)).isoformat()
    lines = progress.describe({
        "phase": "training", "updated_at": (now - timedelta(seconds=4)).isoformat(),
        "stage": {"index": 2, "count": 2, "name": "qat_dis"}, "step": 9, "steps": 24,
        "steps_per_second": 0.61, "eta_seconds": 24.6,
        "last_eval": {"step": 8, "top1": 0.90625}, "checkpoint_at": ago}, now)
    assert lines == ["phase:      training (updated 4s ago)",
                     "stage:      2 of 2 (qat_dis)",
                     "step:       9 of 24, 0.61 steps/s, training ETA 24s",
                     "last eval:  top-1 0.9062 at step 8",
                     "checkpoint: 1m15s ago"]
    failed = progress.describe({"phase": "failed", "error": "rank 1 lost"}, now)
    assert failed[-1] == "error:      rank 1 lost" and "updated ?" in failed[0]
    assert progress.duration(7300) == "2h01m"
    assert json.dumps(lines)


def test_restart_lines():
    """`clsact status` counts a JobSet's restarts against its failure policy; other kinds
    show their pods' in-place restarts instead."""
    from types import SimpleNamespace as NS

    from clsact.launch import status
    from clsact.launch.operators import JOBSET, OPERATORS

    js = {"spec": {"failurePolicy": {"maxRestarts": 2}}, "status": {"restarts": 1}}
    assert status.restarts(JOBSET, js).startswith("1 of 2 ")
    assert status.restarts(JOBSET, {"spec": {}, "status": {}}) is None
    assert status.restarts(OPERATORS["paddle"], js) is None
    pod = NS(status=NS(container_statuses=[NS(restart_count=2), NS(restart_count=None)]))
    assert status.container_restarts(pod) == 2
    assert status.container_restarts(NS(status=None)) == 0
