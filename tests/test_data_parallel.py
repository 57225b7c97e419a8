"""The data-parallel property itself, on real ranks (gloo on CPU, `paddle.distributed.launch`).

W ranks x batch B must train what 1 rank x batch WB trains on the same samples (W = 3: a
world size that is not a power of two, whose 1/W is not exact in float32). For that to
hold exactly the model and optimizer are chosen so the math says it must: a small conv net
without batch norm (per-rank batch statistics would differ from 2B-batch ones) or dropout
(random per rank), distillation only (no activation quantizers, whose scales follow each
rank's batch maximum), from a teacher with other weights (so the gradient is not zero),
Momentum without weight decay and ``lr_scaling: none``. Each step, rank r trains on
``order[r::W]`` of the same epoch permutation and the single rank on ``order[0:WB]``: the
same samples, and the mean gradient over them is the weighted mean of the ranks' means.
Switching the synchronisation off (a ``sitecustomize`` that makes it a no-op) must break it.
Both ways of synchronising (``Global.rank_sync``) are run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clsact.data.loader import shard_indices
from tests.conftest import copy_images
from tests.test_distributed import CLSACT, clean_env, worker_logs

B = 8
STEPS = 6
WORLD = 3


def _export(out: Path, seed: int) -> Path:
    import paddle

    paddle.disable_static()
    paddle.seed(seed)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, stride=2), paddle.nn.ReLU(),
                               paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(),
                               paddle.nn.Linear(8, 10))
    net.eval()
    spec = paddle.static.InputSpec([None, 3, 32, 32], "float32", "inputs")
    paddle.jit.save(net, str(out / "inference"), input_spec=[spec])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(student, teacher): the same small net with different initial weights."""
    return (_export(tmp_path_factory.mktemp("student"), 1),
            _export(tmp_path_factory.mktemp("teacher"), 2))


def _config(tmp_path: Path, tiny, data: Path, batch: int, **glob) -> Path:
    student, teacher = tiny
    cfg = {"Global": {"model_dir": str(student), "data_dir": str(data),
                      "train_list": "small_train.txt", "val_list": "small_val.txt",
                      "batch_size": batch, "eval_batch_size": 32, "img_size": 32,
                      "resize_size": 36, "num_workers": 1, "device": "cpu",
                      "lr_scaling": "none", "collective_timeout": 60, "report": False,
                      "lr_guard": False, **glob},
           "Distillation": {"alpha": 1.0, "loss": "soft_label",
                            "teacher_model_dir": str(teacher)},
           "TrainConfig": {"train_iter": STEPS, "eval_iter": STEPS, "learning_rate": 0.5,
                           "optimizer_builder": {"optimizer": {"type": "Momentum"}}}}
    path = tmp_path / f"config-{batch}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _params(model_dir: Path) -> dict[str, np.ndarray]:
    import paddle

    paddle.enable_static()
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        program, _, _ = paddle.static.load_inference_model(str(model_dir / "inference"), exe)
        return {v.name: np.array(scope.find_var(v.name).get_tensor())
                for v in program.list_vars() if v.persistable and v.name not in ("feed",
                                                                                  "fetch")}


def _ranks(tmp_path: Path, cfg: Path, save: Path, extra_path: str = "", world: int = 2) -> None:
    env = clean_env()
    if extra_path:
        env["PYTHONPATH"] = f"{extra_path}:{env['PYTHONPATH']}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                           str(world), "--log_dir", str(tmp_path / "pod0"), CLSACT, "compress",
                           "--config", str(cfg), "--save-dir", str(save)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, worker_logs(tmp_path)[-4000:]
    assert not (tmp_path / "http.log").exists(), "nothing written into the working directory"


# Each way of synchronising switched off: ``state``'s host average made a no-op;
# ``gradients``: fleet writes no all-reduce into the program (and clsact's check of the
# program, which would refuse to train, is bypassed, so the ranks do train apart).
SYNC_OFF = {
    "state": "import clsact.distributed as d\nd.average_state = lambda *args, **kwargs: None\n",
    "gradients": (
        "from paddle.distributed.fleet.meta_optimizers.raw_program_optimizer import "
        "RawProgramOptimizer as R\nR._transpile_main_program = lambda self, loss: None\n"
        "import clsact.distributed as d\nd.allreduce_coverage = lambda program: "
        "{'grads': 1, 'covered': 1, 'allreduce_ops': 0, 'loss_grad_scale': "
        f"{float(np.float32(1 / WORLD))!r}, 'missing': []}}\n"),
}


@pytest.fixture(scope="module")
def one_rank_of_wb(tmp_path_factory, tiny, small_digits_dir) -> Path:
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("one")
    proc = run_cli("compress", "--config", str(_config(tmp, tiny, small_digits_dir, WORLD * B)),
                   "--save-dir", str(tmp / "one"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "one"


@pytest.mark.parametrize("mode", ["state", "gradients"])
def test_three_ranks_of_b_train_what_one_rank_of_3b_trains(tmp_path, tiny, small_digits_dir,
                                                           one_rank_of_wb, mode):
    """Both ways of synchronising (host average of the state after each step; fleet's
    gradient all-reduce ops in the program, here over gloo) train what one rank trains on
    the union of their batches; each switched off, they do not."""
    cfg = _config(tmp_path, tiny, small_digits_dir, B, rank_sync=mode)
    two = tmp_path / "synced-run"
    _ranks(tmp_path / "synced", cfg, two, world=WORLD)
    off = tmp_path / "nosync"
    off.mkdir()
    (off / "sitecustomize.py").write_text(SYNC_OFF[mode])
    unsynced = tmp_path / "unsynced"
    _ranks(tmp_path / "off", cfg, unsynced, extra_path=str(off), world=WORLD)

    init, w1, w2, w0 = (_params(tiny[0]), _params(one_rank_of_wb / "model"),
                        _params(two / "model"), _params(unsynced / "model"))
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["act"]["train_steps"] == STEPS
    assert metrics["distributed"]["rank_sync"] == mode
    timing = metrics["act"]["rank_sync"]
    assert timing["mode"] == mode and timing["steps_timed"] == STEPS - 1
    if mode == "gradients":  # every gradient all-reduced in the graph, none through the host
        cover = timing["allreduce"]
        assert cover["covered"] == cover["grads"] == len(init), cover
        assert cover["allreduce_ops"] >= 1
        assert np.float32(cover["loss_grad_scale"]) == np.float32(1 / WORLD)
        assert timing["host_sync_ms"] == 0.0
    else:
        assert timing["allreduce"] is None and timing["host_sync_ms"] > 0
    moved = max(np.abs(w1[n] - init[n]).max() for n in init)
    synced = max(np.abs(w2[n] - w1[n]).max() for n in init)
    apart = max(np.abs(w0[n] - w1[n]).max() for n in init)
    assert moved > 1e-3, "training changed the weights"
    assert synced <= 1e-4 * moved, (synced, moved)
    assert apart >= 0.02 * moved, ("without the synchronisation the ranks must differ", apart,
                                   moved)


def test_a_program_without_the_gradient_all_reduce_is_refused(tmp_path, tiny,
                                                              small_digits_dir):
    """clsact checks the program ACT is about to train: with fleet's all-reduce missing, the
    run stops with one line before its first step, and publishes nothing."""
    off = tmp_path / "nosync"
    off.mkdir()
    (off / "sitecustomize.py").write_text(SYNC_OFF["gradients"].split("import clsact")[0])
    cfg = _config(tmp_path, tiny, small_digits_dir, B, rank_sync="gradients")
    save = tmp_path / "run"
    env = clean_env()
    env["PYTHONPATH"] = f"{off}:{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                           "2", "--log_dir", str(tmp_path / "pod0"), CLSACT, "compress",
                           "--config", str(cfg), "--save-dir", str(save)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    logs = worker_logs(tmp_path)
    assert ("clsact: error: the training program all-reduces 0 of the 4 gradients its "
            "optimizer reads") in logs, logs[-3000:]
    assert "Traceback" not in logs
    assert not (save / "_SUCCESS").exists() and not (save / "model").exists()


def test_a_rank_whose_batch_is_unreadable_takes_the_same_steps(tmp_path, tiny,
                                                               small_digits_dir):
    """Rank 1's second batch of epoch 0 is all corrupt JPEGs: it steps on a stand-in that
    the average weighs 0, instead of taking one step fewer and leaving rank 0 waiting in a
    collective until the watchdog fires."""
    data = tmp_path / "data"
    lines = {}
    for name in ("small_train.txt", "small_val.txt"):
        lines[name] = (small_digits_dir / name).read_text().splitlines()
        copy_images(small_digits_dir, data, lines[name])
        (data / name).write_text("\n".join(lines[name]) + "\n")
    mine = shard_indices(len(lines["small_train.txt"]), epoch=0, seed=0, shuffle=True, rank=1,
                         world=2, even=True)[B:2 * B]
    for i in mine:
        (data / lines["small_train.txt"][i].rsplit(maxsplit=1)[0]).write_bytes(b"\xff\xd8bad")
    cfg = _config(tmp_path, tiny, data, B, max_bad_fraction=0.5, collective_timeout=30)
    save = tmp_path / "run"
    _ranks(tmp_path, cfg, save)
    m = json.loads((save / "metrics.json").read_text())
    assert m["act"]["train_steps"] == STEPS
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1]
    rank1 = (save / "logs" / "rank-1.log").read_text()
    assert "rank 1: batch 1 had no readable image; stepping on a stand-in" in rank1
    assert "stand-in" not in (save / "clsact.log").read_text()
    assert os.path.exists(save / "_SUCCESS")
