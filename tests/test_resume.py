"""Resume after preemption: a run killed mid-training and restarted with the same run id
continues from its last checkpoint (fewer steps the second time) and says so."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from clsact import config
from clsact.checkpoint import Checkpoint, Checkpointer, differences, fingerprint, load, save
from clsact.data.listfile import Sample
from clsact.distributed import arrays_digest
from clsact.errors import ClsactError, StorageError
from clsact.optim import resume_position
from clsact.storage import LocalStore
from tests.conftest import REPO, run_cli
from tests.test_compress import small_config


def _fp(tmp_path, lr=0.001, world=1, labels=(0, 1), model=b"model"):
    (tmp_path / "m.pdmodel").write_bytes(model)
    cfg = config.validate({"Global": {"model_dir": "m", "data_dir": "d", "num_workers": 3},
                           "Distillation": {}, "QuantAware": {},
                           "TrainConfig": {"train_iter": 10, "learning_rate": lr}})
    samples = [Sample(f"{i}.jpg", lab) for i, lab in enumerate(labels)]
    return fingerprint(cfg.data, world, {"train": samples, "val": samples},
                       [tmp_path / "m.pdmodel"])


def test_checkpoint_round_trip_and_guards(tmp_path):
    store = LocalStore(tmp_path / "store")
    fp = _fp(tmp_path)
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "v": np.ones(2, np.float32)}
    save(store, Checkpoint("r1", 10, [0.5], state, fp))
    save(store, Checkpoint("r1", 20, [0.5, 0.6], state, fp))
    assert [p for p, _ in store.list("_checkpoint")] == ["_checkpoint/progress.json",
                                                         "_checkpoint/state-0-000000020.npz"]
    got = load(store, "r1", fp)
    assert got.steps == 20 and got.evaluations == [0.5, 0.6]
    assert np.array_equal(got.state["w"], state["w"])
    assert load(store, "other-run", fp) is None
    (tmp_path / "store" / "_checkpoint" / "state-0-000000020.npz").write_bytes(b"broken")
    assert load(store, "r1", fp) is None, "a damaged state is not loaded"
    train = {"train_iter": 60, "learning_rate": {"type": "CosineAnnealingDecay",
                                                 "learning_rate": 0.1, "T_max": 60}}
    resume_position(train, 20)
    assert train["train_iter"] == 40 and train["learning_rate"]["last_epoch"] == 19


def test_a_checkpoint_of_other_settings_is_refused_naming_the_difference(tmp_path):
    fp = _fp(tmp_path)
    assert differences(fp, _fp(tmp_path)) == []
    assert differences(fp, _fp(tmp_path, lr=0.002)) == ["TrainConfig.learning_rate 0.001 -> 0.002"]
    assert differences(fp, _fp(tmp_path, world=4)) == ["world size 1 -> 4 ranks"]
    assert differences(fp, _fp(tmp_path, labels=(1, 0))) == ["the samples of train",
                                                            "the samples of val"]
    assert differences(fp, _fp(tmp_path, model=b"other")) == ["the model files"]
    faster = _fp(tmp_path)  # where files are and how fast they are read does not matter
    assert "Global.num_workers" not in faster["config"]
    store = LocalStore(tmp_path / "store")
    save(store, Checkpoint("r1", 10, [], {"w": np.zeros(2, np.float32)}, fp))
    with pytest.raises(ClsactError, match=r"made with other settings \(TrainConfig.learning_rate"
                       r" 0.001 -> 0.002\): resume with the settings .* --overwrite"):
        load(store, "r1", _fp(tmp_path, lr=0.002))


class FlakyStore(LocalStore):
    """Fails the first ``failures`` writes; each write takes ``delay`` seconds."""

    def __init__(self, root, failures=0, delay=0.0):
        super().__init__(root)
        self.failures, self.delay = failures, delay

    def put_bytes(self, rel, data, *, exclusive=False):
        time.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise StorageError(f"{self.describe(rel)}: S3 put_object kept failing (503)")
        super().put_bytes(rel, data, exclusive=exclusive)


def test_checkpoint_cadence_in_steps_and_minutes():
    now = [0.0]
    by_steps = Checkpointer(LocalStore("/nonexistent"), every_steps=5, clock=lambda: now[0])
    assert [s for s in range(1, 13) if by_steps.due(s)] == list(range(5, 13))
    by_steps.last_step = 5
    assert not by_steps.due(9) and by_steps.due(10)
    by_time = Checkpointer(LocalStore("/nonexistent"), every_minutes=2, clock=lambda: now[0])
    assert not by_time.due(1)
    now[0] = 121.0
    assert by_time.due(1)
    assert not Checkpointer(None, every_steps=1).due(3), "ranks other than 0 never write"


def test_a_failed_checkpoint_is_a_warning_and_the_next_one_retries(tmp_path, caplog):
    store = FlakyStore(tmp_path, failures=1)
    ckpt = Checkpointer(store, every_steps=1)
    state = {"w": np.ones(3, np.float32)}
    assert ckpt.write(Checkpoint("r", 1, [], state))
    ckpt.close()
    assert ckpt.failed == 1 and "checkpoint after 1 steps failed" in caplog.text
    assert "the next checkpoint tries again" in caplog.text
    assert ckpt.write(Checkpoint("r", 2, [], state))
    ckpt.close()
    assert ckpt.written == 1 and load(store, "r", {}).steps == 2


def test_a_run_that_lost_its_claim_stops_checkpointing(tmp_path, caplog):
    """Run B took the save dir over (--overwrite): run A's next checkpoint writes nothing,
    deletes nothing of B's, and A writes none after it."""
    from clsact.storage.publish import claim

    store = LocalStore(tmp_path)
    state = {"w": np.ones(3, np.float32)}
    claim(store, "run-a", overwrite=False)
    mine = Checkpointer(store, every_steps=1)
    assert mine.write(Checkpoint("run-a", 1, [], state))
    mine.close()
    claim(store, "run-b", overwrite=True)
    save(store, Checkpoint("run-b", 5, [], state))  # B's own checkpoint
    theirs = sorted(p for p, _ in store.list("_checkpoint"))
    assert mine.write(Checkpoint("run-a", 2, [], state))
    mine.close()
    assert mine.lost and "no more will be" in caplog.text and "took" in caplog.text
    assert not mine.write(Checkpoint("run-a", 3, [], state)), "none after the claim is lost"
    assert sorted(p for p, _ in store.list("_checkpoint")) == theirs
    assert load(store, "run-b", {}).steps == 5
    assert mine.summary()["claim_lost"] is True
    # and save() itself never deletes another run's state file
    save(store, Checkpoint("run-a", 9, [], state))
    assert (tmp_path / "_checkpoint" / "state-0-000000005.npz").exists()


def test_a_slow_upload_does_not_hold_up_training(tmp_path):
    """Uploads run on a thread: a step never waits for the store (so the other ranks'
    collectives cannot time out on rank 0's checkpoint)."""
    ckpt = Checkpointer(FlakyStore(tmp_path, delay=1.0), every_steps=1)
    state = {"w": np.ones(3, np.float32)}
    start = time.perf_counter()
    assert ckpt.write(Checkpoint("r", 1, [], state))
    assert not ckpt.write(Checkpoint("r", 2, [], state)), "skipped while one is uploading"
    assert time.perf_counter() - start < 0.5 and ckpt.busy()
    assert any(t.name == "clsact-checkpoint" for t in threading.enumerate())
    ckpt.close()
    assert ckpt.summary() == {"written": 1, "failed": 0, "skipped_busy": 1, "claim_lost": False}


def test_killed_run_resumes_with_fewer_steps(tmp_path, clas_model, small_digits_dir):
    """Checkpoints come every 10 steps although ACT evaluates only at the end (step 60);
    a restart with another learning rate is refused, the same settings resume."""
    cfg = small_config(tmp_path, clas_model, small_digits_dir, train_iter=60, eval_iter=60)
    raw = yaml.safe_load(cfg.read_text())
    raw["Global"].update(num_workers=1, checkpoint_every_steps=10)
    cfg.write_text(yaml.safe_dump(raw))
    save_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "clsact", "compress", "--config", str(cfg), "--save-dir",
           str(save_dir), "--run-id", "nightly-7"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    progress = save_dir / "_checkpoint" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and not progress.exists() and proc.poll() is None:
        time.sleep(0.1)
    assert progress.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)  # preempted: no chance to clean up
    proc.wait(timeout=60)
    before = json.loads(progress.read_text())
    steps_before = before["steps"]
    with np.load(save_dir / before["state"]) as npz:  # what the restart must restore
        saved_digest = arrays_digest({k: npz[k] for k in npz.files}, list(npz.files))
    assert 10 <= steps_before < 60 and steps_before % 10 == 0, steps_before
    assert before["evaluations"] == [], "the checkpoint came from the cadence, not an evaluation"
    assert not (save_dir / "_SUCCESS").exists()

    changed = run_cli(*cmd[3:], "--set", "TrainConfig.learning_rate=0.001")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert changed.stderr.splitlines()[-1] == (
        f"clsact: error: the checkpoint of run nightly-7 in {save_dir}/_checkpoint was made with "
        "other settings (TrainConfig.learning_rate 0.0005 -> 0.001): resume with the settings "
        "it was made with, or start over with --overwrite (discards it) or another --save-dir")
    other = run_cli(*cmd[3:-1], "nightly-8")
    assert other.returncode == 2 and "belongs to run nightly-7 (unfinished" in other.stderr
    assert "resume it with --run-id nightly-7" in other.stderr

    again = run_cli(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    m = json.loads((save_dir / "metrics.json").read_text())
    assert m["run_id"] == "nightly-7"
    assert m["resumed"]["from_step"] == steps_before
    restored = re.search(r"resumed at step (\d+): restored (\d+) state variables, state "
                         r"digest (\w+)", (save_dir / "clsact.log").read_text())
    assert restored and int(restored[1]) == steps_before
    assert restored[3] == saved_digest, "the scope holds the checkpoint's state after restore"
    assert m["act"]["train_steps"] == 60 - steps_before, "only the remaining steps ran"
    assert m["act"]["checkpoints"]["written"] >= 1
    assert not (save_dir / "_checkpoint").exists(), "the checkpoint is removed once published"
    assert run_cli("verify", str(save_dir)).returncode == 0


def test_two_ranks_resume_after_the_pod_is_killed(tmp_path, clas_model, small_digits_dir):
    from tests.test_distributed import CLSACT, clean_env, descendants, dist_config

    cfg = dist_config(tmp_path, clas_model, small_digits_dir)
    raw = yaml.safe_load(cfg.read_text())
    raw["TrainConfig"].update(train_iter=40, eval_iter=10)
    cfg.write_text(yaml.safe_dump(raw))
    save_dir = tmp_path / "run"

    def launch(log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
             "--log_dir", str(tmp_path / log), CLSACT, "compress", "--config", str(cfg),
             "--save-dir", str(save_dir), "--run-id", "pod-restart"],
            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    first = launch("first")
    progress = save_dir / "_checkpoint" / "progress.json"
    deadline = time.time() + 400
    while time.time() < deadline and not progress.exists() and first.poll() is None:
        time.sleep(0.1)
    assert progress.exists(), "no checkpoint was written"
    for pid in [first.pid, *descendants(first.pid)]:  # the pod is preempted
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=60)
    steps_before = json.loads(progress.read_text())["steps"]
    assert not (save_dir / "_SUCCESS").exists()

    second = launch("second")
    assert second.wait(timeout=600) == 0, "".join(
        p.read_text(errors="replace") for p in (tmp_path / "second").glob("workerlog.*"))[-3000:]
    m = json.loads((save_dir / "metrics.json").read_text())
    assert m["resumed"]["from_step"] == steps_before >= 10
    assert m["act"]["train_steps"] == 40 - steps_before
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1], "both ranks resumed the same state"
    assert run_cli("verify", str(save_dir)).returncode == 0
