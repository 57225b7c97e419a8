"""Every config we ship runs to a published, verified run: only the model, the data and the
sizes are overridden to the small test case (a small PaddleClas-like net on digits)."""

import json

import pytest
import yaml

from tests.conftest import REPO, run_cli

SHIPPED = sorted(p for p in (REPO / "configs").glob("*_qat_dis.yaml"))
SMALL = ["Global.train_list=small_train.txt", "Global.val_list=small_val.txt",
         "Global.img_size=32", "Global.resize_size=36", "Global.batch_size=16",
         "Global.eval_batch_size=32", "Global.num_workers=1", "Global.device=cpu",
         "Global.report=false", "Global.lr_guard_window=2"]


@pytest.fixture(scope="module")
def baseline_top1(clas_model, small_digits_dir) -> float:
    """The test model's measured top-1: what ``TrainConfig.origin_metric`` says of it."""
    ev = run_cli("eval", "--model-dir", str(clas_model), "--data-dir", str(small_digits_dir),
                 "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36")
    assert ev.returncode == 0, ev.stderr[-2000:]
    return json.loads(ev.stdout)["top1"]


def test_every_production_config_is_covered():
    names = {p.name for p in SHIPPED}
    assert {"mbv3_qat_dis.yaml", "mobilenetv1_qat_dis.yaml", "resnet50_vd_qat_dis.yaml"} <= names
    assert all("origin_metric" in (yaml.safe_load(p.read_text())["TrainConfig"]) for p in SHIPPED)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_publishes_a_run(tmp_path, config, clas_model, small_digits_dir,
                                        baseline_top1):
    save = tmp_path / "run"
    model_data = [f"Global.model_dir={clas_model}", f"Global.data_dir={small_digits_dir}",
                  f"TrainConfig.origin_metric={baseline_top1}"]
    args = [a for kv in model_data + SMALL for a in ("--set", kv)]
    proc = run_cli("compress", "--config", str(config), "--save-dir", str(save), *args,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert run_cli("verify", str(save)).returncode == 0
    m = json.loads((save / "metrics.json").read_text())
    assert m["compressed"]["quant_ops"] > 0 and m["act"]["strategies"] == ["qat_dis"]
    # ACT's origin_metric pre-check is answered with the measured baseline: it is neither an
    # ACT evaluation nor a checkpoint
    log = (save / "clsact.log").read_text()
    assert "ACT's origin_metric check: the baseline top-1" in log
    resolved = yaml.safe_load((save / "config.yaml").read_text())["TrainConfig"]
    steps, every = m["act"]["train_steps"], resolved["eval_iter"]
    assert len(m["act"]["evaluations"]) == steps // every
    assert m["act"]["checkpoints"]["written"] == len(m["act"]["evaluations"])
    assert "quant_aware config" not in log, "paddleslim's config dumps are DEBUG lines"
