"""End to end on real Paddle + PaddleSlim (CPU): ``clsact compress`` then ``clsact eval``."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from clsact.modelio import count_ops
from tests.conftest import copy_images, run_cli


def small_config(tmp_path: Path, model: Path, data: Path, **train) -> Path:
    cfg = {
        "Global": {"model_dir": str(model), "data_dir": str(data),
                   "train_list": "small_train.txt", "val_list": "small_val.txt",
                   "batch_size": 16, "eval_batch_size": 32, "img_size": 32, "resize_size": 36,
                   "num_workers": 2, "device": "cpu",
                   # the deploy report is tested by tests/test_deploy.py (it takes seconds)
                   "report": False,
                   # runs of a few steps test the job's mechanics at the configured rate;
                   # the guard (10 steps at rate 0 first) is tested by test_convergence.py
                   "lr_guard": False},
        "Distillation": {"alpha": 1.0, "loss": "soft_label"},
        "QuantAware": {"use_pact": True, "onnx_format": True,
                       "quantize_op_types": ["conv2d", "depthwise_conv2d", "matmul_v2"]},
        "TrainConfig": {"train_iter": 3, "eval_iter": 2, "logging_iter": 1,
                        "learning_rate": 0.0005,
                        "optimizer_builder": {"optimizer": {"type": "Momentum"},
                                              "weight_decay": 4e-5}, **train},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compress_then_eval(tmp_path, mbv3_model, small_digits_dir):
    before = sha(mbv3_model / "inference.pdmodel")
    out = tmp_path / "run"
    cfg = small_config(tmp_path, mbv3_model, small_digits_dir)
    raw = yaml.safe_load(cfg.read_text())
    # a teacher saved by paddle.jit.save with dropout: ACT copies its ops, Mask defect and all
    raw["Distillation"]["teacher_model_dir"] = str(mbv3_model)
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compressed top1" in proc.stdout

    assert sorted(p.name for p in out.iterdir()) == ["_CLAIM", "_SUCCESS", "_progress.json",
                                                     "clsact.log", "config.yaml",
                                                     "manifest.json", "metrics.json", "model"]
    progress = json.loads((out / "_progress.json").read_text())
    assert progress["phase"] == "published" and progress["stage"]["count"] == 1
    assert progress["step"] == progress["steps"] == 3, "the last step the run reported"
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0 and "5 files" in verified.stdout
    assert sha(mbv3_model / "inference.pdmodel") == before, "the input model must stay as it was"
    quant_ops = count_ops(out / "model" / "inference.pdmodel")
    assert quant_ops > 0

    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "succeeded"
    for side in ("baseline", "compressed"):
        assert 0.0 <= m[side]["top1"] <= m[side]["top5"] <= 1.0
        assert m[side]["samples"] == 64 and m[side]["bad_images"] == 0
    assert m["compressed"]["quant_ops"] == quant_ops
    assert m["act"]["strategies"] == ["qat_dis"] and m["act"]["train_steps"] == 3
    assert len(m["act"]["evaluations"]) == 1  # eval_iter 2 within 3 steps
    assert m["compat"]["dropout_masks_fixed"] == 1
    assert m["versions"]["paddle"] == "2.6.2" and m["versions"]["paddleslim"] == "2.6.0"
    assert m["wall_seconds"] > 0 and m["data"]["train_samples"] == 96
    assert yaml.safe_load((out / "config.yaml").read_text())["TrainConfig"]["train_iter"] == 3
    assert "baseline top1" in (out / "clsact.log").read_text()

    result = tmp_path / "eval.json"
    proc = run_cli("eval", "--model-dir", str(out / "model"), "--data-dir", str(small_digits_dir),
                   "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36",
                   "--batch-size", "7", "--output", str(result))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads(result.read_text())
    assert ev["samples"] == 64
    # exact, sample-weighted metrics do not depend on the batch size
    assert ev["top1"] == pytest.approx(m["compressed"]["top1"])
    assert ev["top5"] == pytest.approx(m["compressed"]["top5"])

    again = run_cli("compress", "--config", str(cfg), "--save-dir", str(out))
    assert again.returncode == 2
    assert "already holds a finished run" in again.stderr and "--overwrite" in again.stderr


def test_wrong_origin_metric_stops_before_training_and_publishes_nothing(
        tmp_path, mbv3_model, small_digits_dir):
    out = tmp_path / "run"
    cfg = small_config(tmp_path, mbv3_model, small_digits_dir, origin_metric=0.99)
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(out))
    assert proc.returncode == 2
    assert "TrainConfig.origin_metric is 0.99 but the baseline model scores" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []


def test_corrupt_validation_images_fail_clearly_and_publish_nothing(
        tmp_path, mbv3_model, small_digits_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    for name in ("small_train.txt", "small_val.txt"):
        lines = (small_digits_dir / name).read_text().splitlines()
        copy_images(small_digits_dir, data, lines)
        extra = ["broken.jpg 1"] if "val" in name else []
        (data / name).write_text("\n".join(lines + extra) + "\n")
    out = tmp_path / "run"
    cfg = small_config(tmp_path, mbv3_model, data)
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(out),
                   "--set", "Global.max_bad_fraction=0.0")
    assert proc.returncode == 2
    assert "1 of 65 images in the validation set are unreadable" in proc.stderr
    assert "broken.jpg" in proc.stderr.splitlines()[-1]
    assert list(out.iterdir()) == []


def test_compress_s3_to_s3(tmp_path, s3_server, bucket, clas_model, small_digits_dir):
    """Model and images read from S3, results published to S3 with manifest + _SUCCESS."""
    from tests.conftest import list_keys
    from tests.test_s3_cli import upload_inputs

    client = s3_server.client()
    upload_inputs(client, bucket, small_digits_dir, clas_model)
    cfg = small_config(tmp_path, f"s3://{bucket}/model", f"s3://{bucket}/data")
    save = f"s3://{bucket}/runs/nightly-1"
    args = ("compress", "--config", str(cfg), "--save-dir", save, "--run-id", "nightly-1",
            "--s3-endpoint", s3_server.endpoint)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results in {save} (run nightly-1)" in proc.stdout
    keys = list_keys(client, bucket, "runs/nightly-1/")
    assert [k.split("nightly-1/")[1] for k in keys] == [
        "_CLAIM", "_SUCCESS", "_progress.json", "clsact.log", "config.yaml", "manifest.json",
        "metrics.json", "model/inference.pdiparams", "model/inference.pdmodel"]
    manifest = json.loads(client.get_object(Bucket=bucket, Key="runs/nightly-1/manifest.json")
                          ["Body"].read())
    assert manifest["run_id"] == "nightly-1" and len(manifest["files"]) == 5
    m = json.loads(client.get_object(Bucket=bucket, Key="runs/nightly-1/metrics.json")
                   ["Body"].read())
    assert m["save_dir"] == save and m["compressed"]["quant_ops"] > 0
    assert m["baseline"]["samples"] == 64 and m["data"]["train_samples"] == 96
    assert run_cli("verify", save, "--s3-endpoint", s3_server.endpoint).returncode == 0

    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert list_keys(client, bucket, "runs/nightly-1/") == keys

    # the gate: bless nightly-1 by hand, then `compress --gate` a second run whose config
    # sets no threshold: it is published, but not blessed (exit 1) and latest stays
    prefix = f"s3://{bucket}"
    ok = run_cli("gate", save, "--against", prefix, "--min-top1", "0", "--s3-endpoint",
                 s3_server.endpoint)
    assert ok.returncode == 0 and "BLESSED run nightly-1" in ok.stdout, ok.stderr[-2000:]
    second = run_cli("compress", "--config", str(cfg), "--save-dir", f"{prefix}/runs/nightly-2",
                     "--run-id", "nightly-2", "--s3-endpoint", s3_server.endpoint,
                     "--gate", prefix)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "NOT BLESSED run nightly-2 (thresholds): s3://" in second.stdout
    assert "still names run nightly-1" in second.stdout
    assert run_cli("verify", f"{prefix}/runs/nightly-2", "--s3-endpoint",
                   s3_server.endpoint).returncode == 0
    m2 = json.loads(client.get_object(Bucket=bucket, Key="runs/nightly-2/metrics.json")
                    ["Body"].read())
    assert m2["val_set"]["fingerprint"] == m["val_set"]["fingerprint"]  # same images


def test_a_held_out_slice_chooses_the_model_and_val_is_measured_once(
        tmp_path, clas_model, small_digits_dir):
    """Global.selection_holdout: ACT's evaluations (its choice of the best model) run on
    train images held out of training; metrics.json says so and how many competed."""
    out = tmp_path / "run"
    base = run_cli("eval", "--model-dir", str(clas_model), "--data-dir", str(small_digits_dir),
                   "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36")
    origin = json.loads(base.stdout)["top1"]
    cfg = small_config(tmp_path, clas_model, small_digits_dir, train_iter=4, eval_iter=2,
                       origin_metric=origin)
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(out),
                   "--set", "Global.selection_holdout=16", "--set", "Global.final_model=best")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["train_samples"] == 80, "the held-out images are not trained on"
    sel = m["selection"]
    assert (sel["set"], sel["samples"]) == ("holdout", 16)
    # 1 or 2: ACT stops early when the first one is within 0.5% of the baseline
    assert sel["evaluations_competed"] == len(m["act"]["evaluations"]) >= 1
    assert "measured once" in sel["note"]
    assert m["compressed"]["samples"] == 64, "the published number is on the val list"
    bad = run_cli("compress", "--config", str(cfg), "--save-dir", str(tmp_path / "x"),
                  "--set", "Global.selection_holdout=96")
    assert bad.returncode == 2 and "leaves none of the 96 training images" in bad.stderr
