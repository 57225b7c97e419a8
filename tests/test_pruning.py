"""Pruning against the model and through the job: names checked against the model,
pruning paddleslim would get wrong refused up front, sparsity measured from the saved
weights, masks compared across ranks, and a chain (pruning, then QAT) or a GMP run that is
killed resumes where it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from clsact import pruning
from clsact.errors import DistributedError
from tests.conftest import REPO, list_keys, run_cli, upload_tree
from tests.test_compress import small_config


def prune_config(tmp_path: Path, model: Path, data: Path, section: dict, qat: bool = False,
                 glob: dict | None = None, **train) -> Path:
    """The short test config with a pruning section (and QAT after it with ``qat``), its
    ``Global`` updated by ``glob``."""
    path = small_config(tmp_path, model, data, **train)
    raw = yaml.safe_load(path.read_text())
    if not qat:
        raw.pop("QuantAware")
    raw.update(section)
    raw["Global"].update(glob or {})
    raw["Distillation"] = {"alpha": 1.0, "loss": "l2", "node": ["softmax_0.tmp_0"]}
    path.write_text(yaml.safe_dump(raw))
    return path


STEM = {"ChannelPrune": {"pruned_ratio": 0.25, "prune_params_name": ["conv2d_0.w_0"]}}
GMP = {"UnstructurePrune": {"prune_strategy": "gmp", "ratio": 0.75, "local_sparsity": True,
                            "gmp_config": {"stable_iterations": 0, "pruning_iterations": 22,
                                           "pruning_steps": 2, "tunning_iterations": 4,
                                           "initial_ratio": 0.15}}}


def one_line_refusal(proc, save: Path) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert not (save / "_SUCCESS").exists() and not (save / "_CLAIM").exists(), \
        "nothing published, the save dir given back"
    return line


@pytest.mark.parametrize("section, fragment", [
    ({"ChannelPrune": {"pruned_ratio": 0.25, "prune_params_name": ["conv2d_0.w0"]}},
     "ChannelPrune.prune_params_name names 'conv2d_0.w0', which is not a weight of the model "
     "(closest: conv2d_0.w_0"),
    # the pointwise convolution feeds a flatten of a 2x2 map into the linear layer: paddleslim
    # prunes 8 of the linear layer's 128 rows for 8 channels (it needs 32); refused before the
    # graphs are built, where ACT would fail at its first step
    ({"ChannelPrune": {"pruned_ratio": 0.25, "prune_params_type": "conv1x1_only"}},
     "ChannelPrune cannot prune conv2d_2.w_0 consistently: the pruned model fails in its "
     "matmul_v2 op"),
    ({"ASPPrune": {"prune_params_name": ["conv2d_0.w_0"]}},
     "ASPPrune.prune_params_name names conv2d_0.w_0 (16, 3, 3, 3): its input size is not a "
     "multiple of 4"),
])
def test_pruning_the_model_cannot_take_is_refused_before_any_work(
        tmp_path, clas_model, small_digits_dir, section, fragment):
    save = tmp_path / "run"
    cfg = prune_config(tmp_path, clas_model, small_digits_dir, section)
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(save))
    line = one_line_refusal(proc, save)
    assert fragment in line, line
    assert "paddleslim is building" not in proc.stdout + proc.stderr


def test_two_of_four_agrees_with_paddles_own_check():
    """An independent computation: Paddle's ASP check on the weight as ASP prunes it."""
    from paddle.incubate.asp import CheckMethod, MaskAlgo, check_sparsity, create_mask

    rng = np.random.default_rng(0)
    for shape in ((8, 16, 3, 3), (32, 12)):  # conv (out, in, kh, kw), matmul (in, out)
        w = rng.normal(size=shape).astype(np.float32)
        w = w * create_mask(w.T, func_name=MaskAlgo.MASK_1D, n=2, m=4).T
        ok, total = pruning.two_of_four(w)
        assert ok == total > 0
        assert check_sparsity(w.T, func_name=CheckMethod.CHECK_1D, n=2, m=4)
        broken = w.copy()
        idx = np.argwhere(broken == 0)[0]
        broken[tuple(idx)] = 1.0  # one group keeps three of four
        assert pruning.two_of_four(broken)[0] == total - 1
        assert not check_sparsity(broken.T, func_name=CheckMethod.CHECK_1D, n=2, m=4)
    assert pruning.two_of_four(np.zeros((4, 3, 1, 1), np.float32)) == (0, 0), "no groups"


class _Group:
    """Two ranks whose gather returns the digests given (an error branch's unit test)."""

    def __init__(self, digests):
        self.digests, self.active = digests, True

    def gather_object(self, _obj, _what):
        return self.digests


def test_ranks_with_different_pruning_masks_stop_the_run(monkeypatch):
    from clsact import act

    sync = act._RankSync(_Group(["a", "b"]))
    sync.masks = {"w_mask": "w"}
    monkeypatch.setattr(act, "state_digest", lambda scope, names: "a")
    monkeypatch.setattr(sync, "_scope_and_place", lambda: (None, None))
    with pytest.raises(DistributedError, match="the ranks' pruning masks differ"):
        sync.check_masks()
    sync.group = _Group(["a", "a"])
    sync.check_masks()
    assert sync.mask_checks == 2


@pytest.mark.parametrize("mode", ["state", "gradients"])
def test_two_ranks_keep_identical_masks(tmp_path, clas_model, small_digits_dir, mode):
    """The unstructured pruner recomputes its masks on each rank from that rank's weights:
    compared at every evaluation, never averaged."""
    from tests.test_distributed import run_one_pod

    cfg = prune_config(tmp_path, clas_model, small_digits_dir, GMP, train_iter=30, eval_iter=10,
                       glob={"batch_size": 8, "num_workers": 1, "collective_timeout": 120,
                             "rank_sync": mode})
    save = tmp_path / "run"
    run_one_pod(tmp_path, cfg, save)
    m = json.loads((save / "metrics.json").read_text())
    masks = m["act"]["pruning_masks"]
    assert masks["count"] > 0 and masks["rank_checks"] == len(m["act"]["evaluations"]) == 3
    assert masks["identical_across_ranks"] is True
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert m["pruning"]["compressed"]["pruned_weights"]["zero_fraction"] >= 0.74
    assert run_cli("verify", str(save)).returncode == 0


def killed_and_resumed(cfg: Path, save: Path, stage: int, steps: int) -> tuple[int, dict]:
    """Run ``cfg``, SIGKILL it once its checkpoint reaches ``steps`` steps of ``stage``
    (0-based), restart it with the same run id; returns (the killed checkpoint's steps, the
    published metrics)."""
    cmd = [sys.executable, "-m", "clsact", "compress", "--config", str(cfg), "--save-dir",
           str(save), "--run-id", "killed-1"]
    done = _kill_when(cmd, save / "_checkpoint" / "progress.json", stage, steps)
    assert not (save / "_SUCCESS").exists()
    assert (save / "_checkpoint" / "stage-0" / "inference.pdmodel").exists() == (stage == 1)
    again = run_cli(*cmd[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (save / "_checkpoint").exists(), "the checkpoint is removed once published"
    assert run_cli("verify", str(save)).returncode == 0
    return done, json.loads((save / "metrics.json").read_text())


def test_two_ranks_run_a_chain_with_gradients_all_reduced(tmp_path, clas_model,
                                                         small_digits_dir):
    """Both stages on two ranks through fleet's in-graph all-reduce: each stage's program
    is checked for it (QAT's quantizer parameters added by clsact), the ranks end equal."""
    from tests.test_distributed import run_one_pod

    cfg = prune_config(tmp_path, clas_model, small_digits_dir, STEM, qat=True, train_iter=20,
                       eval_iter=10, glob={"batch_size": 8, "num_workers": 1,
                                           "collective_timeout": 120, "rank_sync": "gradients"})
    save = tmp_path / "run"
    run_one_pod(tmp_path, cfg, save)
    m = json.loads((save / "metrics.json").read_text())
    assert [s["train_steps"] for s in m["stages"]] == [20, 2]
    cover = m["act"]["rank_sync"]["allreduce"]
    assert cover["covered"] == cover["grads"] and cover["added_by_clsact"] >= 1
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert m["compressed"]["samples"] == 64, "every val sample once"
    assert run_cli("verify", str(save)).returncode == 0


def _kill_when(cmd: list[str], progress: Path, stage: int, steps: int) -> int:
    """Start ``cmd``; SIGKILL it once its checkpoint reaches ``steps`` steps of ``stage``
    (0-based); returns the steps of that checkpoint."""
    err = progress.parent.parent.with_suffix(".stderr")
    with err.open("w") as sink:  # a file: a full pipe would stall the run
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = json.loads(progress.read_text())
        except (OSError, ValueError):
            seen = {}
        if seen.get("stage", 0) == stage and seen.get("steps", 0) >= steps:
            proc.send_signal(signal.SIGKILL)  # preempted: no chance to clean up
            proc.wait(timeout=60)
            return seen["steps"]
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint at stage {stage} step {steps} (exit {proc.poll()}): "
                         f"{err.read_text()[-2000:]}")


@pytest.mark.parametrize("stage", [0, 1])
def test_a_chain_killed_in_either_stage_resumes_there(tmp_path, clas_model, small_digits_dir,
                                                      stage):
    """ChannelPrune for 600 steps (100 epochs of 6), then QAT for 60 (ACT's 10 %), a
    checkpoint every 5 steps: killed in the first or the second stage, the restart continues
    in that stage (the second from the first stage's kept model) and trains only what is
    left."""
    cfg = prune_config(tmp_path, clas_model, small_digits_dir, STEM, qat=True, train_iter=600,
                       eval_iter=300, glob={"num_workers": 1, "checkpoint_every_steps": 5})
    save = tmp_path / "run"
    done, m = killed_and_resumed(cfg, save, stage, 10)
    assert (m["resumed"]["stage"], m["resumed"]["from_step"]) == (stage + 1, done)
    steps = [s["train_steps"] for s in m["stages"]]
    assert steps == ([600 - done, 60] if stage == 0 else [600, 60 - done])
    log = (save / "clsact.log").read_text()
    assert ("resuming at stage 2 with the model stage 1 produced" in log) == (stage == 1)
    assert m["compressed"]["quant_ops"] > 0 and m["pruning"]["flops_ratio"] > 1.1


def test_a_killed_gmp_run_resumes_its_schedule(tmp_path, clas_model, small_digits_dir):
    """GMP keeps its position outside the training state: restarted without it, a run with
    fewer than ``pruning_iterations`` steps left would never reach its ratio."""
    cfg = prune_config(tmp_path, clas_model, small_digits_dir, GMP, train_iter=30, eval_iter=30,
                       glob={"num_workers": 1, "checkpoint_every_steps": 2})
    done, m = killed_and_resumed(cfg, tmp_path / "run", 0, 10)
    assert 30 - done < 22, "fewer steps left than the pruning phase"
    assert m["resumed"]["from_step"] == done and m["act"]["train_steps"] == 30 - done
    assert m["pruning"]["compressed"]["pruned_weights"]["zero_fraction"] >= 0.74


def test_a_chain_reads_and_publishes_s3(tmp_path, s3_server, clas_model, small_digits_dir):
    """Model and data from a bucket, the run (and the first stage's kept model) to one."""
    bucket = f"prune-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    upload_tree(client, bucket, "model", clas_model, ["inference.pdmodel", "inference.pdiparams"])
    lines = [ln.split()[0] for name in ("small_train.txt", "small_val.txt")
             for ln in (small_digits_dir / name).read_text().splitlines()]
    upload_tree(client, bucket, "data", small_digits_dir,
                lines + ["small_train.txt", "small_val.txt"])
    cfg = prune_config(tmp_path, Path("/unused"), Path("/unused"), STEM, qat=True,
                       train_iter=20, eval_iter=10,
                       glob={"model_dir": f"s3://{bucket}/model",
                             "data_dir": f"s3://{bucket}/data", "num_workers": 1})
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", f"s3://{bucket}/runs/1",
                   "--s3-endpoint", s3_server.endpoint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"stage 1 done: its model is kept in s3://{bucket}/runs/1/_checkpoint/stage-0" \
        in proc.stdout + proc.stderr
    keys = list_keys(client, bucket, "runs/1/")
    assert "runs/1/_SUCCESS" in keys and not any("_checkpoint" in k for k in keys)
    m = json.loads(client.get_object(Bucket=bucket, Key="runs/1/metrics.json")["Body"].read())
    assert [s["name"] for s in m["stages"]] == ["channel_prune_dis", "qat_dis"]


@pytest.fixture(scope="module")
def gmp_run(tmp_path_factory, clas_model, small_digits_dir) -> Path:
    """A published GMP run (75 % of the 1x1 convolution's weights zero) with its deploy
    report."""
    tmp = tmp_path_factory.mktemp("gmp")
    cfg = prune_config(tmp, clas_model, small_digits_dir, GMP, train_iter=30, eval_iter=30)
    save = tmp / "run"
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(save), "--set",
                   "Global.report=true", "--set", "Global.report_budget=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save


def test_the_report_says_what_sparsity_needs_to_pay(gmp_run):
    report = json.loads((gmp_run / "report.json").read_text())
    p = report["pruning"]
    assert p["strategy"] == "UnstructurePrune" and p["zero_fraction"] >= 0.74
    assert p["flops_ratio"] == 1.0, "same shapes: dense kernels do the same work"
    assert "no runtime measured here has them" in p["needs"]
    assert report["summary"]["per_runtime"], "each runtime serving both models compared"
    text = (gmp_run / "report.md").read_text()
    assert "UnstructurePrune: 1.00x fewer FLOPs" in text and "Sparse kernels:" in text


def test_arm_export_of_a_sparse_run_uses_lites_sparse_convolution(gmp_run, tmp_path,
                                                                   lite_python):
    """``clsact export`` turns on Paddle Lite's sparse_conv_detect_pass for a run with
    unstructured sparsity: the .nb then holds sparse_conv2d ops, the dense export none."""
    from clsact.deploy import export

    proc = run_cli("export", "--target", "arm", str(gmp_run), "--output", str(tmp_path),
                   "--lite-python", lite_python, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with sparse 1x1 convolutions" in proc.stdout
    dense = export.export_arm(gmp_run / "model" / "inference.pdmodel",
                              gmp_run / "model" / "inference.pdiparams", tmp_path / "dense",
                              export.lite_optimizer(lite_python))
    assert b"sparse_conv2d" in (tmp_path / f"{gmp_run.name}.nb").read_bytes()
    assert b"sparse_conv2d" not in dense.read_bytes()
