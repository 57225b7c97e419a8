"""`clsact bench`: the latency harness, runtime detection with skip lines, and the accuracy of
a model as Paddle Inference serves it (equal to `clsact eval`), on real Paddle (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clsact.deploy import bench
from clsact.deploy.latency import measure
from clsact.deploy.runtimes import RUNTIMES, ModelFiles, quantized_op_types, split_int8_here
from tests.conftest import REPO, compress_clas, run_cli


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, clas_model, small_digits_dir) -> Path:
    """A published run with its deploy report."""
    return compress_clas(tmp_path_factory.mktemp("reported"), clas_model, small_digits_dir,
                         True)


class FakeClock:
    """A clock that advances by the duration of each simulated call."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, iter(durations), 0

    def call(self):
        self.calls += 1
        self.now += next(self.durations)

    def __call__(self):
        return self.now


def test_latency_excludes_warmup_and_reports_percentiles():
    # 5 slow warm-up calls (1 s), then calls of 10, 20, ..., 100 ms repeating
    steady = [0.01 * (1 + i % 10) for i in range(1000)]
    clock = FakeClock([1.0] * 5 + steady)
    lat = measure(clock.call, 4, warmup=5, round_size=10, min_runs=20, clock=clock)
    assert lat.warmup == 5 and lat.runs >= 20 and lat.stable
    ms = np.asarray(steady[:lat.runs]) * 1000
    assert lat.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert lat.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert lat.p50_ms < 100  # the 1 s warm-up calls are not in it
    assert lat.images_per_second == pytest.approx(4 * 1000 / lat.p50_ms)
    # without warm-up the slow calls land in the timed ones: the check above can fail
    clock = FakeClock([1.0] * 5 + steady)
    cold = measure(clock.call, 4, warmup=0, round_size=10, min_runs=20, clock=clock)
    assert cold.p90_ms > 100


def test_latency_runs_until_the_median_settles_or_the_budget_ends():
    # a median that keeps drifting never settles: the budget stops it, and it says so
    clock = FakeClock([0.001 * (1.5 ** (i // 10)) for i in range(10_000)])
    lat = measure(clock.call, 1, warmup=0, budget_s=5.0, clock=clock)
    assert not lat.stable and clock.now >= 5.0 and lat.runs < 10_000
    with pytest.raises(ValueError):
        measure(clock.call, 1, round_size=0)


def test_skip_lines_and_quantized_op_types(mbv3_model, compressed_run):
    fp32 = ModelFiles.of(mbv3_model)
    assert quantized_op_types(fp32.model_file) == [] and not fp32.quantized
    int8 = ModelFiles.of(compressed_run / "model")
    # exactly the op types the config's QuantAware.quantize_op_types quantized in this net
    assert int8.quantized_ops == ("conv2d", "depthwise_conv2d", "matmul_v2")
    reasons = {r.key: r.skip_reason(fp32) for r in RUNTIMES}
    assert reasons["paddle-cpu"] is None
    assert "not a quantized model" in reasons["paddle-cpu-int8"]
    if reasons["paddle-gpu"] is not None:  # a machine with a usable GPU runs that row
        assert "GPU" in reasons["paddle-gpu"]
    assert {r.key: r.skip_reason(int8) for r in RUNTIMES}["paddle-cpu-int8"] is None


def test_optional_runtimes_say_why_they_are_skipped(mbv3_model, monkeypatch, capsys):
    import importlib.util

    from clsact.deploy import runtimes

    fp32 = ModelFiles.of(mbv3_model)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    reasons = {r.key: r.skip_reason(fp32) for r in RUNTIMES}
    assert reasons["onnxruntime"] == "onnxruntime is not installed (pip install " \
        "'clsact[deploy]')"
    assert reasons["openvino"] is None
    # paddle2onnx 2.x cannot export quantized models: refused with the pin to use
    import paddle2onnx

    from clsact.deploy import onnx_export

    monkeypatch.setattr(paddle2onnx, "__version__", "2.1.0")
    assert onnx_export.main([str(fp32.model_file), str(fp32.params_file), "x.onnx"]) == 1
    assert "pip install 'paddle2onnx<2'" in capsys.readouterr().err
    # the converter runs in a child: its crash (it aborts on models it does not know) is a
    # skip line, and this process lives on
    crash = mbv3_model.parent / "abort.sh"
    crash.write_text("#!/bin/sh\nkill -ABRT $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(onnx_export.sys, "executable", str(crash))
    with pytest.raises(runtimes.RuntimeSkip, match=r"paddle2onnx crashed \(SIGABRT\)"):
        runtimes.serving_onnx(ModelFiles(fp32.model_file.with_name("x.pdmodel"),
                                         fp32.params_file, ()))
    # a model a converter rejects is a skip line, not a crash
    bad = mbv3_model.parent / "bad-model"
    bad.mkdir(exist_ok=True)
    (bad / "inference.pdmodel").write_bytes(fp32.model_file.read_bytes()[:200])
    (bad / "inference.pdiparams").write_bytes(b"")
    broken = ModelFiles(bad / "inference.pdmodel", bad / "inference.pdiparams", ())
    results = bench.bench_model("broken", broken, 32, runtimes=[
        r for r in RUNTIMES if r.key == "openvino"], batches=(1,), budget_s=0.5)
    assert results[0].status == "skipped" and "OpenVINO cannot read" in results[0].reason


def test_onnxruntime_and_openvino_serve_the_fp32_model_like_paddle(mbv3_model, small_digits_dir,
                                                                   tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--model-dir", str(mbv3_model), "--data-dir", str(small_digits_dir),
                   "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36",
                   "--batch", "1", "--threads", "1", "--budget", "1", "--runtime", "paddle-cpu",
                   "--runtime", "onnxruntime", "--runtime", "openvino", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = {r["runtime"]: r["accuracy"] for r in json.loads(out.read_text())["measurements"]}
    assert acc["onnxruntime"] == acc["openvino"] == acc["paddle-cpu"]
    assert acc["paddle-cpu"]["samples"] == 64


def test_openvino_fp32_row_runs_in_fp32(mbv3_model):
    """OpenVINO's fp32 row computes in fp32 on every CPU: its logits match Paddle's to fp32
    rounding. Without the explicit precision hint a CPU with bf16 (AVX512_BF16, AMX) runs
    the model in bf16, about 1e-2 off."""
    from clsact.deploy.runtimes import openvino_config

    assert openvino_config(1)["INFERENCE_PRECISION_HINT"] == "f32"
    files = ModelFiles.of(mbv3_model)
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    by_key = {r.key: r for r in RUNTIMES}
    paddle_out = by_key["paddle-cpu"].load(files, 1)(x)
    ov_out = by_key["openvino"].load(files, 1)(x)
    scale = float(np.abs(paddle_out).max())  # this untrained model's logits are tiny
    assert scale > 0 and float(np.abs(ov_out - paddle_out).max()) <= 1e-3 * scale


def test_thread_settings_are_honoured(mbv3_model):
    """The predictor's OpenMP pool has as many threads as asked (counted in /proc)."""
    script = (
        "import os, sys, numpy as np\n"
        "from clsact.deploy.runtimes import ModelFiles, RUNTIMES\n"
        "p = RUNTIMES[0].load(ModelFiles.of(sys.argv[1]), int(sys.argv[2]))\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "[p(np.zeros((8, 3, 32, 32), 'float32')) for _ in range(3)]\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n")
    grown = {}
    for n in (1, 2):
        proc = subprocess.run([sys.executable, "-c", script, str(mbv3_model), str(n)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        grown[n] = int(proc.stdout.strip().splitlines()[-1])
    assert grown == {1: 0, 2: 1}


def test_accuracy_through_paddle_inference_equals_clsact_eval(compressed_run, small_digits_dir,
                                                             tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--model-dir", str(compressed_run), "--batch", "1", "--threads",
                   "1", "--budget", "1", "--runtime", "paddle-cpu", "--runtime",
                   "paddle-cpu-int8", "--runtime", "paddle-gpu", "--output", str(out),
                   "--profile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --profile: the ops and the per-op times by precision through both converters
    assert "conv2d 2 (2 int8)" in proc.stdout and "onnxruntime, run" in proc.stdout
    assert proc.stdout.count("by kind: int8") == 2
    results = {r["runtime"]: r for r in json.loads(out.read_text())["measurements"]}
    ev = tmp_path / "eval.json"
    assert run_cli("eval", "--model-dir", str(compressed_run), "--output",
                   str(ev)).returncode == 0
    evaluated = json.loads(ev.read_text())
    served = results["paddle-cpu"]["accuracy"]
    # Paddle Inference fp32 (oneDNN) scores the run's images exactly as `clsact eval` does
    assert (served["top1"], served["top5"], served["samples"]) == (
        evaluated["top1"], evaluated["top5"], evaluated["samples"]) == (
        served["top1"], served["top5"], 64)
    int8 = results["paddle-cpu-int8"]
    assert int8["status"] == "measured" and int8["accuracy"]["samples"] == 64
    assert int8["latency"][0]["batch"] == 1 and int8["latency"][0]["p50_ms"] > 0
    metrics = json.loads((compressed_run / "metrics.json").read_text())
    assert results["paddle-cpu"]["reference_top1"] == metrics["compressed"]["top1"]
    gpu = next(r for r in RUNTIMES if r.key == "paddle-gpu")
    if gpu.skip_reason(ModelFiles.of(compressed_run / "model")) is None:  # a usable GPU here
        assert results["paddle-gpu"]["status"] == "measured"
    else:
        assert results["paddle-gpu"]["status"] == "skipped"
        assert "paddle-gpu: skipped: no GPU visible" in proc.stdout
    assert "p50 ms" in proc.stdout and "Traceback" not in proc.stderr


def test_a_runtime_that_breaks_is_reported_and_the_others_still_run(mbv3_model):
    import dataclasses

    class Broken(type(RUNTIMES[0])):
        def load(self, files, threads):
            raise RuntimeError("kernel exploded\nsecond line")

    paddle_cpu = RUNTIMES[0]
    broken = Broken(**{f.name: getattr(paddle_cpu, f.name)
                       for f in dataclasses.fields(paddle_cpu)} | {"key": "broken"})
    results = bench.bench_model("m", ModelFiles.of(mbv3_model), 32, runtimes=[broken, paddle_cpu],
                                batches=(1,), budget_s=0.5)
    assert (results[0].status, results[0].reason) == ("failed", "kernel exploded")
    assert results[1].status == "measured" and results[1].latency
    assert "m / broken: FAILED: kernel exploded" in bench.format_table(results)


def test_the_paired_test_is_an_exact_mcnemar_test():
    """Checked against scipy's exact binomial test (an independent computation), and the
    flag follows the test, not a fixed margin: 2 images of 359 are noise, 30 of 50 000
    against 5 are not."""
    from scipy.stats import binomtest

    for lost, gained in ((0, 0), (2, 0), (4, 2), (7, 0), (9, 6), (30, 5), (120, 80)):
        want = binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
        assert bench.mcnemar_p(lost, gained) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError):
        bench.mcnemar_p(-1, 0)
    ref = np.ones(359, bool)
    two = ref.copy()
    two[:2] = False  # 0.56 point: the old fixed 0.5-point rule flagged this
    assert bench.accuracy_flag(bench.paired(two, ref)) is None
    big_ref = np.ones(50_000, bool)
    big_ref[:5] = False
    big = np.ones(50_000, bool)
    big[5:35] = False  # 30 lost, 5 gained: 0.05 point, but not chance
    pair = bench.paired(big, big_ref)
    assert (pair["lost"], pair["gained"]) == (30, 5) and pair["p_value"] < 1e-4
    assert "exact McNemar" in bench.accuracy_flag(pair)
    assert bench.accuracy_flag(bench.paired(big_ref, big)) is None  # gains are not flagged


def test_the_headline_counts_only_runtimes_that_serve_the_model_as_trained():
    """A runtime that loses accuracy is never the headline, however fast: it is shown apart
    with its loss."""
    from clsact.deploy import report
    from clsact.deploy.bench import Measurement

    def m(model, runtime, ms, flag=None):
        return Measurement(model, runtime, runtime.upper(), "measured", flag=flag,
                           latency=[{"batch": 1, "threads": 1, "p50_ms": ms}],
                           accuracy={"top1": 0.8 if flag else 0.9})

    results = [m("baseline", "paddle-cpu", 10.0), m("baseline", "openvino", 4.0,
                                                     "top-1 0.70 < 0.90"),
               m("compressed", "paddle-cpu-int8", 8.0), m("compressed", "openvino", 1.0,
                                                          "top-1 0.80 < 0.90")]
    s = report.summary(results, "baseline", "compressed")
    assert s["fastest"]["runtime"] == "paddle-cpu-int8"
    assert s["baseline_fastest"]["runtime"] == "paddle-cpu"
    assert s["speedup"] == 1.25
    assert s["fastest_flagged"] == {"runtime": "openvino", "label": "OPENVINO", "p50_ms": 1.0,
                                    "top1": 0.8, "flag": "top-1 0.80 < 0.90", "form": None}
    # the baseline as a user would deploy it: its bf16 row counts when it is the fastest
    results.append(m("baseline", "openvino-bf16", 5.0))
    s = report.summary(results, "baseline", "compressed")
    assert s["baseline_fastest"]["runtime"] == "openvino-bf16" and s["speedup"] == 0.625
    text = report.markdown(report.build(results, "baseline", "compressed"), "")
    assert "fastest on **PADDLE-CPU-INT8**" in text and "Faster but not counted: OPENVINO" in text


def test_bench_errors_are_one_line(tmp_path):
    for args, words in ((["--model-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)],
                         "is not an existing directory"),
                        (["--model-dir", "x", "--threads", "0"], "--threads takes"),
                        (["--model-dir", "gs://b/m"], "unsupported scheme")):
        proc = run_cli("bench", *args)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_the_run_publishes_its_deploy_report(reported_run):
    from PIL import Image

    from clsact.storage import LocalStore
    from clsact.storage.publish import verify

    compressed_run = reported_run
    manifest = json.loads((compressed_run / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"report.json", "report.md", "report.png"} <= listed
    assert verify(LocalStore(compressed_run)).ok
    with Image.open(compressed_run / "report.png") as img:
        img.verify()
    report = json.loads((compressed_run / "report.json").read_text())
    metrics = json.loads((compressed_run / "metrics.json").read_text())
    assert report["run_id"] == metrics["run_id"]
    assert report["qat_top1"] == {"baseline": metrics["baseline"]["top1"],
                                  "compressed": metrics["compressed"]["top1"]}
    assert metrics["report"]["speedup"] == report["summary"]["speedup"] > 0
    by = {(m["model"], m["runtime"]): m for m in report["measurements"]}
    # served by Paddle Inference fp32, both models score exactly what the run measured
    assert by[("baseline", "paddle-cpu")]["accuracy"]["top1"] == metrics["baseline"]["top1"]
    assert by[("compressed", "paddle-cpu")]["accuracy"]["top1"] == \
        metrics["compressed"]["top1"]
    assert by[("baseline", "paddle-cpu-int8")]["status"] == "skipped"
    assert by[("compressed", "paddle-cpu-int8")]["status"] == "measured"
    settings = {(e["batch"], e["threads"]) for e in by[("compressed", "paddle-cpu")]["latency"]}
    assert {(1, 1), (32, 1)} <= settings
    fastest = report["summary"]["fastest"]
    batch1 = [(e["p50_ms"], m["runtime"]) for m in report["measurements"]
              if m["model"] == "compressed" for e in m["latency"]
              if e["batch"] == 1 and e["threads"] == 1]
    assert fastest["runtime"] == min(batch1)[1]  # the fastest, by its own numbers
    text = (compressed_run / "report.md").read_text()
    assert f"**{report['summary']['speedup']:.2f}x**" in text and "p50 ms" in text
    # the CPU's instruction sets and the runtimes' versions, in the JSON and the text
    from clsact.deploy import machine

    assert report["machine"]["isa"] == machine.isa() and "AVX2" in report["machine"]["isa"]
    assert report["machine"]["versions"]["openvino"] and "Measured on " in text
    # the forms the runtimes served the compressed model from are published with it,
    # listed (and so verified) in the manifest, and named by the headline
    assert {"model/inference.onnx", "model/inference.openvino.pdmodel"} <= listed
    assert f"`model/{fastest['form']}`" in text
    assert {m["form"] for m in report["measurements"] if m["runtime"] == "onnxruntime"} == \
        {"inference.onnx"}


def test_report_regenerates_and_publishes_into_a_run_without_one(compressed_run, reported_run,
                                                                  tmp_path):
    from clsact.storage import LocalStore
    from clsact.storage.publish import verify

    metrics = json.loads((compressed_run / "metrics.json").read_text())
    out = tmp_path / "again"
    proc = run_cli("report", str(compressed_run), "--output", str(out), "--budget", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    by = {(m["model"], m["runtime"]): m for m in report["measurements"]}
    assert by[("compressed", "paddle-cpu")]["accuracy"]["top1"] == metrics["compressed"]["top1"]
    assert by[("baseline", "paddle-cpu")]["accuracy"]["top1"] == metrics["baseline"]["top1"]
    assert "Deploy report of run" in proc.stdout
    # --publish adds it to the run as an addendum: verify checks it
    # the run's model/ folder names the run too
    proc = run_cli("report", str(compressed_run / "model"), "--publish", "--budget", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = verify(LocalStore(compressed_run))
    assert check.ok and "manifest.report.json" in check.addenda, check.problems
    added = {f["path"] for f in json.loads(
        (compressed_run / "manifest.report.json").read_text())["files"]}
    assert {"report.json", "model/inference.onnx", "model/inference.openvino.pdmodel"} <= added
    # a run published with its report keeps it: one line, exit 2
    proc = run_cli("report", str(reported_run), "--publish")
    assert proc.returncode == 2 and "was published with its report" in proc.stderr
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "is not a published clsact run" in proc.stderr


def test_arm_export_refuses_without_a_python_for_paddle_lite(monkeypatch, tmp_path,
                                                             compressed_run):
    from clsact.deploy import export

    proc = run_cli("export", "--target", "arm", str(compressed_run), "--lite-python",
                   sys.executable)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "is Python 3.11: Paddle Lite 2.13rc0" in proc.stderr and "3.8-3.10" in proc.stderr
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.delenv(export.LITE_PYTHON_ENV, raising=False)
    with pytest.raises(export.ExportRefused, match="none was found: pass --lite-python"):
        export.find_lite_python()


def test_arm_export_writes_a_paddle_lite_model(compressed_run, clas_model, tmp_path,
                                               lite_python):
    """With a Python 3.8-3.10 here (pyenv), Paddle Lite 2.13rc0's optimizer turns the QAT
    model (quantize_linear/dequantize_linear) into a .nb for ARM; a file that is not a model
    is refused with the optimizer's reason. (`make bench` compares the .nb sizes of
    MobileNetV3: the int8 weights stay int8.)"""
    from clsact.deploy import export

    python = lite_python
    proc = run_cli("export", "--target", "arm", str(compressed_run), "--output", str(tmp_path),
                   "--lite-python", python, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = tmp_path / f"{compressed_run.name}.nb"
    assert f"{nb} (" in proc.stdout and nb.stat().st_size > 0
    opt = export.lite_optimizer(python)
    fp32 = export.export_arm(clas_model / "inference.pdmodel", clas_model / "inference.pdiparams",
                             tmp_path / "fp32", opt)
    assert fp32.read_bytes() != nb.read_bytes()
    with pytest.raises(Exception, match="could not optimise"):
        bad = tmp_path / "bad.pdmodel"
        bad.write_bytes(b"not a model")
        export.export_arm(bad, clas_model / "inference.pdiparams", tmp_path / "bad", opt)


def test_census_counts_int8_weights_and_the_qdq_on_every_output(mbv3_model, compressed_run):
    from clsact.deploy.profile import paddle_census

    fp32 = paddle_census(ModelFiles.of(mbv3_model).model_file)
    assert "quantize_linear" not in fp32
    assert all(r["int8_weights"] == 0 and r["qdq_inputs"] == 0 for r in fp32.values())
    q = paddle_census(ModelFiles.of(compressed_run / "model").model_file)
    # the clas net: 2 convolutions, 1 depthwise, 1 linear, all quantized by its config
    assert {k: q[k]["int8_weights"] for k in ("conv2d", "depthwise_conv2d", "matmul_v2")} == {
        "conv2d": 2, "depthwise_conv2d": 1, "matmul_v2": 1}
    assert q["relu"]["int8_weights"] == 0
    # paddleslim's onnx_format export puts a QDQ pair on every op's output (scales for
    # TensorRT): the ReLUs and the BN are fed through one too
    assert q["relu"]["qdq_inputs"] == q["relu"]["ops"] == 2 and q["batch_norm"]["qdq_inputs"] == 1
    assert q["quantize_linear"]["ops"] > 4


def _convs(census: dict) -> int:
    return sum(census.get(k, {}).get("ops", 0) for k in ("conv2d", "depthwise_conv2d"))


def _int8_plain_convs(files: ModelFiles) -> int:
    """How many of the model's int8 ops are convolutions that are not depthwise."""
    from clsact.deploy.runtimes import int8_op_indices
    from clsact.modelio import load_program

    block = load_program(files.model_file).global_block()
    return sum(block.ops[i].type == "conv2d" for i in int8_op_indices(block))


def test_runtime_profiles_account_for_every_convolution_and_its_precision(mbv3_model,
                                                                          compressed_run):
    """The profiles, read from ONNX Runtime's and OpenVINO's own counters, against the
    convolutions counted in the Paddle program: each is attributed once, to an int8 kernel
    only for the quantized model."""
    from clsact.deploy import profile

    for where, quantized in ((mbv3_model, False), (compressed_run / "model", True)):
        files = ModelFiles.of(where)
        n_convs = _convs(profile.paddle_census(files.model_file))
        size = 32
        ort_rows = profile.onnxruntime_ops(files, runs=3, img_size=size)
        ort_convs = sum(r.nodes for r in ort_rows if r.op in ("Conv", "QLinearConv", "FusedConv"))
        assert ort_convs == n_convs, ort_rows
        ov_rows = profile.openvino_ops(files, runs=3, img_size=size)
        ov_convs = sum(r.nodes for r in ov_rows
                       if r.op in ("Convolution", "GroupConvolution"))
        # without VNNI each int8 convolution but the depthwise is served as two (saturation)
        split = _int8_plain_convs(files) if quantized and split_int8_here() else 0
        assert ov_convs == n_convs + split, ov_rows
        for rows in (ort_rows, ov_rows):
            parts = profile.split(rows)
            assert set(parts) == set(profile.KINDS) and all(v >= 0 for v in parts.values())
            assert (parts["int8"] > 0) == quantized, rows
            assert parts["fp32"] > 0  # the classifier head and pooling stay fp32
        assert (profile.split(ort_rows)["qdq"] > 0) == quantized  # ORT keeps Q/DQ nodes
        text = profile.format_ops("t", ort_rows)
        assert "by kind: int8" in text and ort_rows[0].op in text


def test_ort_profile_events_are_averaged_per_op_type():
    from clsact.deploy.profile import _ort_rows

    def ev(op, dur):
        return {"cat": "Node", "name": f"{op}_n_kernel_time", "dur": dur,
                "args": {"op_name": op, "provider": "CPUExecutionProvider"}}

    rows = _ort_rows([ev("QLinearConv", 3000), ev("QLinearConv", 1000), ev("Conv", 400),
                      ev("Conv", 600), ev("QuantizeLinear", 100), ev("QuantizeLinear", 150),
                      ev("Transpose", 200), ev("Transpose", 50),
                      {"cat": "Session", "name": "model_run", "dur": 9999}], runs=2)
    assert [(r.op, r.kind, r.ms, r.nodes) for r in rows] == [
        ("QLinearConv", "int8", 2.0, 1), ("Conv", "fp32", 0.5, 1),
        ("QuantizeLinear", "qdq", 0.125, 1), ("Transpose", "layout", 0.125, 1)]


def test_error_lines_skip_native_preambles():
    from clsact.deploy.runtimes import first_line

    ov = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'creator_it != "
                      "CREATORS_MAP.end()' failed at src/frontends/paddle/src/frontend.cpp:62:\n"
                      "FrontEnd API failed with OpConversionFailure:\nNo creator found for "
                      "fake_quantize_moving_average_abs_max node.\n\n")
    assert first_line(ov) == "No creator found for fake_quantize_moving_average_abs_max node."
    assert first_line(ValueError("bad shape\ndetail")) == "bad shape"
    assert first_line(ValueError("")) == "ValueError"


def test_interleaved_rounds_take_turns_and_pair_the_ratio():
    """Calls take turns round by round, so a burst of load that slows one round slows every
    call in it alike: the paired ratio stays 2.0 although rounds 2-3 run 3x slower."""
    from clsact.deploy.latency import interleaved, paired_ratio

    now = [0.0]
    order: list[str] = []

    def call(name, ms):
        def run():
            slow = 3.0 if len(order) // 8 in (2, 3) else 1.0  # load during rounds 2-3
            now[0] += ms * slow / 1000.0
            order.append(name)
        return run

    rounds = interleaved({"a": call("a", 2.0), "b": call("b", 1.0)}, rounds=6, per_round=4,
                         warmup=0, clock=lambda: now[0])
    assert order == (["a"] * 4 + ["b"] * 4) * 6  # turns, round by round
    assert rounds["a"] == pytest.approx([2, 2, 6, 6, 2, 2])
    assert paired_ratio(rounds, "a", "b") == pytest.approx(2.0)
    with pytest.raises(ValueError):
        interleaved({}, rounds=1)
