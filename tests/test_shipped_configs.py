"""Every config we ship runs to a published, verified, gated run: only the model, the data
and the sizes are overridden to the small test case (a small PaddleClas-like net on
digits), and the pruning sections' weight names to that net's."""

import json

import pytest
import yaml

from clsact import config, strategy
from tests.conftest import REPO, run_cli

SHIPPED = sorted(p for p in (REPO / "configs").glob("*_dis.yaml"))
SMALL = ["Global.train_list=small_train.txt", "Global.val_list=small_val.txt",
         "Global.img_size=32", "Global.resize_size=36", "Global.batch_size=16",
         "Global.eval_batch_size=32", "Global.num_workers=1", "Global.device=cpu",
         "Global.report=false", "Global.lr_guard_window=2"]
# the small net's weights: the stem convolution is the one whose channels paddleslim can
# follow to the end (its pointwise convolution feeds a flatten of a 2x2 map: refused, see
# tests/test_pruning.py); GMP's schedule fitted to 18 steps (3 epochs of 6)
FOR_SMALL_NET = {
    "ChannelPrune": ["ChannelPrune.prune_params_type=null",
                     "ChannelPrune.prune_params_name=[conv2d_0.w_0]"],
    "UnstructurePrune": ["UnstructurePrune.gmp_config.pruning_iterations=11",
                         "UnstructurePrune.gmp_config.pruning_steps=1",
                         "UnstructurePrune.gmp_config.tunning_iterations=6",
                         "TrainConfig.epochs=3"],
}


@pytest.fixture(scope="module")
def baseline_top1(clas_model, small_digits_dir) -> float:
    """The test model's measured top-1: what ``TrainConfig.origin_metric`` says of it."""
    ev = run_cli("eval", "--model-dir", str(clas_model), "--data-dir", str(small_digits_dir),
                 "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36")
    assert ev.returncode == 0, ev.stderr[-2000:]
    return json.loads(ev.stdout)["top1"]


def test_every_production_config_is_covered():
    names = {p.name for p in SHIPPED}
    assert {"mbv3_qat_dis.yaml", "mobilenetv1_qat_dis.yaml", "resnet50_vd_qat_dis.yaml",
            "mbv3_prune_qat_dis.yaml", "mbv3_unstructured_dis.yaml", "mbv3_asp_dis.yaml",
            "resnet50_vd_prune_dis.yaml"} <= names
    assert all("origin_metric" in (yaml.safe_load(p.read_text())["TrainConfig"]) for p in SHIPPED)
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert shipped - names == {"demo_digits.yaml", "launch-values.yaml"}, "run by other tests"


@pytest.mark.parametrize("config_file", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_publishes_a_run(tmp_path, config_file, clas_model, small_digits_dir,
                                        baseline_top1):
    save = tmp_path / "runs" / "one"
    model_data = [f"Global.model_dir={clas_model}", f"Global.data_dir={small_digits_dir}",
                  f"TrainConfig.origin_metric={baseline_top1}"]
    prune = strategy.prune_section(yaml.safe_load(config_file.read_text()))
    sets = model_data + SMALL + FOR_SMALL_NET.get(prune, [])
    args = [a for kv in sets for a in ("--set", kv)]
    proc = run_cli("compress", "--config", str(config_file), "--save-dir", str(save), *args,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert run_cli("verify", str(save)).returncode == 0
    m = json.loads((save / "metrics.json").read_text())
    stages = strategy.plan(config.load(config_file, sets).data)
    assert m["act"]["strategies"] == [s.name for s in stages]
    assert (m["compressed"]["quant_ops"] > 0) == ("QuantAware" in {
        s for stage in stages for s in stage.sections})
    # ACT's origin_metric pre-check is answered with the measured baseline: it is neither an
    # ACT evaluation nor a checkpoint
    log = (save / "clsact.log").read_text()
    assert "ACT's origin_metric check: the baseline top-1" in log
    assert "quant_aware config" not in log, "paddleslim's config dumps are DEBUG lines"
    if len(stages) == 1:
        resolved = yaml.safe_load((save / "config.yaml").read_text())["TrainConfig"]
        steps, every = m["act"]["train_steps"], resolved["eval_iter"]
        assert len(m["act"]["evaluations"]) == steps // every
        assert m["act"]["checkpoints"]["written"] == len(m["act"]["evaluations"])
        assert m["stages"] is None
    else:  # each stage evaluated and checkpointed; the finished first stage kept once
        assert [s["name"] for s in m["stages"]] == [s.name for s in stages]
        assert m["stages"][-1]["top1"] == m["compressed"]["top1"]
        # 2 epochs of 6 steps, then ACT's 10 % of the epochs: at least 1
        assert [s["train_steps"] for s in m["stages"]] == [12, 6]
        assert m["act"]["checkpoints"]["written"] == sum(
            len(s["evaluations"]) for s in m["stages"]) + 1
    if prune is not None:
        p = m["pruning"]
        assert p["strategy"] == prune and p["weights"]
        assert p["baseline"]["flops"] > 0 and p["compressed"]["params"] > 0
        if prune == "ChannelPrune":
            assert p["flops_ratio"] > 1.1 and p["params_ratio"] > 1.05
        elif prune == "ASPPrune":
            w = p["compressed"]["pruned_weights"]
            assert w["groups_2of4_ok"] == w["groups_2of4"] > 0
        else:
            assert p["compressed"]["pruned_weights"]["zero_fraction"] >= 0.74
    gate = run_cli("gate", str(save), "--against", str(tmp_path / "runs"), "--json")
    assert gate.returncode in (0, 1), gate.stderr[-2000:]
    verdict = json.loads(gate.stdout)  # the run's own Gate section, against its fp32 model
    assert (verdict["verdict"] == "blessed") == (gate.returncode == 0), verdict
    assert verdict["candidate"]["top1"] == m["compressed"]["top1"]
