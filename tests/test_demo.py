"""``clsact demo`` end to end: the honest result the README promises."""

import json

from tests.conftest import run_cli


def test_demo_compresses_without_losing_accuracy(tmp_path):
    proc = run_cli("demo", "--workdir", str(tmp_path / "demo"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "QAT+distill int8" in proc.stdout and "baseline fp32" in proc.stdout
    m = json.loads((tmp_path / "demo" / "results" / "metrics.json").read_text())
    assert m["baseline"]["samples"] == m["compressed"]["samples"] == 359
    assert m["baseline"]["top1"] > 0.85, "the baseline must have learned the digits"
    assert m["compressed"]["quant_ops"] > 0
    assert m["compressed"]["top1"] >= m["baseline"]["top1"] - 0.01, "more than 1 point lost"
    # the run went through the embedded S3 server and was published + verified there
    assert m["save_dir"].startswith("s3://clsact-demo/runs/")
    assert m["config"] == "config.yaml" and m["data"]["train_samples"] == 1438
    assert "(verified: 5 files match manifest.json" in proc.stdout
    assert (tmp_path / "demo" / "results" / "_SUCCESS").is_file()
