"""Resume after preemption: a run killed mid-training and restarted with the same run id
continues from its last checkpoint (fewer steps the second time) and says so."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from clsact.checkpoint import Checkpoint, load, resume_config, save
from clsact.storage import LocalStore
from tests.conftest import REPO, run_cli
from tests.test_compress import small_config


def test_checkpoint_round_trip_and_guards(tmp_path):
    store = LocalStore(tmp_path)
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "v": np.ones(2, np.float32)}
    save(store, Checkpoint("r1", 10, [0.5], state))
    save(store, Checkpoint("r1", 20, [0.5, 0.6], state))
    assert [p for p, _ in store.list("_checkpoint")] == ["_checkpoint/progress.json",
                                                         "_checkpoint/state-000000020.npz"]
    got = load(store, "r1")
    assert got.steps == 20 and got.evaluations == [0.5, 0.6]
    assert np.array_equal(got.state["w"], state["w"])
    assert load(store, "other-run") is None
    (tmp_path / "_checkpoint" / "state-000000020.npz").write_bytes(b"broken")
    assert load(store, "r1") is None, "a damaged state is not loaded"
    train = {"train_iter": 60, "learning_rate": {"type": "CosineAnnealingDecay",
                                                 "learning_rate": 0.1, "T_max": 60}}
    resume_config(train, 20)
    assert train["train_iter"] == 40 and train["learning_rate"]["last_epoch"] == 19


def test_killed_run_resumes_with_fewer_steps(tmp_path, mbv3_model, small_digits_dir):
    cfg = small_config(tmp_path, mbv3_model, small_digits_dir, train_iter=60, eval_iter=10)
    raw = yaml.safe_load(cfg.read_text())
    raw["Global"]["num_workers"] = 1
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
    steps_before = json.loads(progress.read_text())["steps"]
    assert 10 <= steps_before < 60 and not (save_dir / "_SUCCESS").exists()

    again = run_cli(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    m = json.loads((save_dir / "metrics.json").read_text())
    assert m["run_id"] == "nightly-7"
    assert m["resumed"]["from_step"] == steps_before
    assert m["act"]["train_steps"] == 60 - steps_before, "only the remaining steps ran"
    assert len(m["resumed"]["earlier_evaluations"]) == steps_before // 10
    assert not (save_dir / "_checkpoint").exists(), "the checkpoint is removed once published"
    assert run_cli("verify", str(save_dir)).returncode == 0


def test_two_ranks_resume_after_the_pod_is_killed(tmp_path, mbv3_model, small_digits_dir):
    from tests.test_distributed import CLSACT, clean_env, descendants, dist_config

    cfg = dist_config(tmp_path, mbv3_model, small_digits_dir)
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
