"""The compressed model as each runtime serves it (issue 24): the observer-free copy OpenVINO
serves, the exact uint8 zero-point rewrite, served accuracy within the paired test for every
runtime (and flagged when a scale is wrong), ``clsact bench --diff`` finding where tensors
part, and honest baselines (the CPU's instruction sets, f32 and bf16 precision hints). Real
Paddle, paddle2onnx, ONNX Runtime and OpenVINO on the small conv net's published run."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from clsact.deploy import bench, diff, machine, qdq
from clsact.deploy.runtimes import RUNTIMES, ModelFiles, Runtime, serving_onnx
from clsact.errors import ModelError
from clsact.modelio import load_program
from tests.conftest import run_cli

BY_KEY = {r.key: r for r in RUNTIMES}


@pytest.fixture(scope="module")
def files(compressed_run) -> ModelFiles:
    return ModelFiles.of(compressed_run / "model")


@pytest.fixture(scope="module")
def val(compressed_run):
    """The run's 64 validation images and labels, decoded as the run decoded them."""
    from clsact import config
    from clsact.data.build import make_loader, read_samples

    g = config.load(compressed_run / "config.yaml").globals.replace(num_workers=0)
    loader = make_loader(g, read_samples(g, "val"), train=False, batch_size=32)
    try:
        batches = [types.SimpleNamespace(images=np.array(b.images, copy=True),
                                         labels=np.array(b.labels, copy=True))
                   for b in loader.epoch(0)]
    finally:
        loader.close()
    assert sum(len(b.labels) for b in batches) == 64
    return batches


def _executor_outputs(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The model's output through Paddle's static executor (the QAT evaluation's kernels)."""
    program = load_program(model_dir / "inference.pdmodel")
    out = [op.input("X")[0] for op in program.global_block().ops if op.type == "fetch"][0]
    ref, _ = diff.reference(model_dir / "inference.pdmodel", model_dir / "inference.pdiparams",
                            images, [out])
    return ref[out]


def test_observer_pairs_are_removed_without_changing_paddle_s_arithmetic(files, val, tmp_path,
                                                                         monkeypatch):
    program = load_program(files.model_file)
    before = qdq.census(program)
    assert before.real > 0 and before.observer > 0
    assert qdq.strip_observers(program) == before.observer
    assert qdq.census(program) == qdq.Census(before.real, 0)
    stripped, _ = qdq.rewritten_copy(files.model_file, files.params_file, tmp_path / "s",
                                     qdq.strip_observers)
    images = val[0].images
    original = _executor_outputs(files.model_file.parent, images)
    # Paddle computes an observer pair as identity: the copy gives the very same numbers
    assert np.array_equal(_executor_outputs(stripped.parent, images), original)
    # ... which a rewrite that also drops the real activation pairs would not (the check
    # can fail); weights are stored quantized, with a lone dequantize each
    monkeypatch.setattr(qdq, "is_observer", lambda op: op.type in (
        qdq.QUANTIZE, qdq.DEQUANTIZE) and not op.input("X")[0].endswith(".w_0"))
    wrong, _ = qdq.rewritten_copy(files.model_file, files.params_file, tmp_path / "w",
                                  qdq.strip_observers)
    assert not np.allclose(_executor_outputs(wrong.parent, images), original, atol=1e-4)


def test_a_broken_observer_pair_is_refused(files):
    from clsact import compat

    program = load_program(files.model_file)
    block = program.global_block()
    lone = next(i for i, op in enumerate(block.ops)
                if op.type == qdq.DEQUANTIZE and qdq.is_observer(op))
    compat.remove_ops(block, [lone])
    with pytest.raises(ModelError, match="without their dequantize_linear"):
        qdq.strip_observers(program)


def _ort(model: bytes, fused: bool = True):
    """ONNX Runtime on ``model``, one thread (``fused=False``: no graph optimization, each
    QuantizeLinear/DequantizeLinear and convolution computed as the graph says)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _set_zero_point(model: bytes, value: int) -> bytes:
    """The first activation quantize's zero point set to ``value`` (a wrong one)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    inits = {t.name: i for i, t in enumerate(m.graph.initializer)}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear"
             and n.input[2].endswith(".zero_point_u8"))
    old = numpy_helper.to_array(m.graph.initializer[inits[q.input[2]]])
    m.graph.initializer[inits[q.input[2]]].CopyFrom(
        numpy_helper.from_array(np.full(old.shape, value, np.uint8), q.input[2]))
    return m.SerializeToString()


def test_the_uint8_zero_point_rewrite_is_exact_on_real_tensors(files, val):
    exported = serving_onnx(files)
    rewritten, changed = qdq.uint8_activations(exported)
    assert changed > 0
    x = np.concatenate([b.images for b in val])
    want = _ort(exported, fused=False)(x)
    assert np.array_equal(_ort(rewritten, fused=False)(x), want)  # bit for bit
    # a wrong zero point is not: the comparison can fail
    assert not np.array_equal(_ort(_set_zero_point(rewritten, 120), fused=False)(x), want)
    if machine.has_vnni():  # fused into QLinearConv, still exact where int8 sums are
        assert np.array_equal(_ort(rewritten)(x), _ort(exported)(x))
    with pytest.raises(ModelError, match="not an ONNX model"):
        qdq.uint8_activations(b"not onnx")


class _ServesThis(Runtime):
    """ONNX Runtime on a given ONNX model (a sabotaged one)."""

    model: bytes = b""

    def load(self, files, threads):
        return _ort(self.model)


def _wrong_scale(model: bytes) -> bytes:
    """The model input's quantizer with a scale 50x too small (every pixel saturates)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "inputs")
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] == q.input[1]:
            t = numpy_helper.to_array(n.attribute[0].t)
            n.attribute[0].t.CopyFrom(numpy_helper.from_array((t / 50).astype(t.dtype),
                                                              n.output[0]))
    return m.SerializeToString()


def test_every_runtime_serves_the_compressed_model_as_trained(files, val):
    """Paddle's oneDNN int8, ONNX Runtime and OpenVINO against Paddle's own arithmetic: no
    runtime loses significantly more images than it gains. A model served with a wrong scale
    is flagged by the same test."""
    keys = ("paddle-cpu", "paddle-cpu-int8", "onnxruntime", "openvino")
    results = bench.bench_model("compressed", files, 32, runtimes=[BY_KEY[k] for k in keys],
                                batches=(1,), budget_s=0.3, val_batches=lambda: val)
    by = {m.runtime: m for m in results}
    assert all(by[k].status == "measured" for k in keys), [(m.runtime, m.reason)
                                                          for m in results]
    for key in keys[1:]:
        assert by[key].paired["images"] == 64 and by[key].flag is None, by[key].paired
    # OpenVINO on the observer-free copy computes what Paddle computes (its int8 ops split
    # where their sums would saturate, and the table says so)
    assert by["openvino"].paired["lost"] + by["openvino"].paired["gained"] <= 2
    from clsact.deploy.runtimes import SPLIT_NOTE, split_int8_here

    assert by["openvino"].note == (SPLIT_NOTE if split_int8_here() else None)
    assert (SPLIT_NOTE in bench.format_table(results)) == split_int8_here()
    bad = _ServesThis(**{**BY_KEY["onnxruntime"].__dict__, "key": "wrong-scale",
                         "drift": None})
    object.__setattr__(bad, "model", _wrong_scale(serving_onnx(files)))
    flagged = bench.bench_model("compressed", files, 32, runtimes=[BY_KEY["paddle-cpu"], bad],
                                batches=(1,), budget_s=0.3, val_batches=lambda: val)[1]
    assert flagged.flag and "exact McNemar" in flagged.flag, flagged.paired
    assert flagged.paired["lost"] > 10
    assert "why:" not in flagged.flag  # a runtime with no known drift says only the figures
    object.__setattr__(bad, "drift", BY_KEY["onnxruntime"].drift)  # flagged: it says why
    flagged = bench.bench_model("compressed", files, 32, runtimes=[BY_KEY["paddle-cpu"], bad],
                                batches=(1,), budget_s=0.3, val_batches=lambda: val)[1]
    assert "why: paddle2onnx's ONNX Runtime export" in flagged.flag


SATURATION_CHILD = """
import sys
import numpy as np
import openvino as ov
from clsact.deploy import saturation
from clsact.deploy.runtimes import ModelFiles, openvino_config, openvino_read, split_int8_here
import openvino.opset13 as ops

def run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", openvino_config(1))
    return compiled.create_infer_request().infer({0: x})[0]

def one_conv(groups):
    # 16 channels of signed inputs, int8 weights of +-120..127 (per-channel scale)
    x = ops.parameter([1, 16, 12, 12], np.float32)
    q = ops.fake_quantize(x, np.float32(-2), np.float32(2), np.float32(-2), np.float32(2), 255)
    w = np.random.default_rng(0).choice([-127, -120, 120, 127], (16, 16 // groups, 3, 3))
    deq = ops.multiply(ops.convert(ops.constant(w.astype(np.int8)), "f32"),
                       ops.constant(np.full((16, 1, 1, 1), 0.01, np.float32)))
    if groups == 1:
        y = ops.convolution(q, deq, [1, 1], [1, 1], [1, 1], [1, 1])
    else:
        deq = ops.reshape(deq, ops.constant(np.array([16, 1, 1, 3, 3])), False)
        y = ops.group_convolution(q, deq, [1, 1], [1, 1], [1, 1], [1, 1])
    return ov.Model([y], [x])

files, x = ModelFiles.of(sys.argv[1]), np.load(sys.argv[2])
out = {"split_here": split_int8_here()}
for split in (False, True):
    model = openvino_read(files, split=False)
    if split:
        out["split"] = saturation.split_int8_convolutions(model)
    np.save(f"{sys.argv[3]}/{split}.npy", run(model, x))
signed = np.random.default_rng(1).uniform(-2, 2, (1, 16, 12, 12)).astype(np.float32)
for groups in (1, 16):  # a plain convolution saturates whole, a depthwise one does not
    model = one_conv(groups)
    whole = run(model, signed)
    out[f"split{groups}"] = saturation.split_int8_convolutions(model, depthwise=True)
    out[f"parts{groups}"] = float(np.abs(whole - run(model, signed)).max())
print(out)
"""


def test_int8_sums_saturate_without_vnni_and_the_split_is_exact(files, val, tmp_path):
    """OpenVINO's int8 kernels without VNNI (oneDNN capped to AVX2 in a child: this CPU's own
    kernels on an AVX2-only CPU, the older ones on a newer CPU) part from Paddle's arithmetic
    by far with their weights whole, and compute it with every int8 op split (to float
    rounding); the served form splits there and only there."""
    import ast
    import os
    import subprocess
    import sys

    from clsact.deploy.runtimes import int8_op_indices, split_int8_here
    from tests.conftest import REPO

    x = np.concatenate([b.images for b in val])
    want = _executor_outputs(files.model_file.parent, x)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", SATURATION_CHILD, str(files.model_file.parent),
                           str(tmp_path / "x.npy"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    block = load_program(files.model_file).global_block()
    ops = [i for i in int8_op_indices(block) if block.ops[i].type != "depthwise_conv2d"]
    assert {k: child[k] for k in ("split_here", "split", "split1", "split16")} == {
        "split_here": True, "split": len(ops), "split1": 1, "split16": 1}  # all but depthwise
    assert child["parts1"] > 1.0 and child["parts16"] < 1e-3, child  # why the depthwise stay
    whole, split = (np.load(tmp_path / f"{s}.npy") for s in (False, True))
    assert np.abs(split - want).max() < 1e-5, np.abs(split - want).max()
    assert np.abs(whole - want).max() > 1e-2  # saturated: the split is what makes it exact
    assert split_int8_here() == (not machine.int8_dot_product())
    assert machine.int8_dot_product(frozenset({"avx512_vnni"}), "")
    assert not machine.int8_dot_product(frozenset({"avx512_vnni"}), "avx512_core")
    assert not machine.int8_dot_product(frozenset({"avx2"}), "")


def test_weights_with_a_zero_point_are_left_whole():
    """The split sums two halves through the same dequantization: a nonzero zero point
    would be subtracted twice, so such weights stay whole (QAT's are symmetric)."""
    import openvino as ov
    import openvino.opset13 as ops

    from clsact.deploy import saturation

    def model(zero_point: int):
        x = ops.parameter([1, 4, 6, 6], np.float32)
        q = ops.constant(np.full((4, 4, 3, 3), 100, np.int8))
        w = ops.multiply(ops.subtract(ops.convert(q, "f32"),
                                      ops.constant(np.float32(zero_point))),
                         ops.constant(np.float32(0.01)))
        return ov.Model([ops.convolution(x, w, [1, 1], [0, 0], [0, 0], [1, 1])], [x])

    assert saturation.split_int8_convolutions(model(0)) == 1
    assert saturation.split_int8_convolutions(model(3)) == 0


def test_diff_finds_where_a_runtime_parts_from_paddle(files, val):
    images = val[0].images[:8]
    good = diff.run_diff(files, images)
    assert diff.first_parting(good["openvino"]) is None  # the observer-free copy: none parts
    assert len(good["onnxruntime"]) > 5
    bad = diff.run_diff(files, images, runtimes=("onnxruntime",),
                        onnx_model=_wrong_scale(serving_onnx(files)))["onnxruntime"]
    first = diff.first_parting(bad)
    # the wrong input scale shows in the first tensor compared (the first convolution's,
    # its batch norm folded in by paddle2onnx), by far; with the right one it does not part
    assert first is bad[0] and first.error > 10 * diff.STEPS, bad[:3]
    assert not good["onnxruntime"][0].parts and good["onnxruntime"][0].name == first.name
    text = diff.format_report("compressed", {"onnxruntime": bad})
    assert f"first parts at #{first.index} {first.op} -> {first.name}" in text


def test_bench_diff_from_the_command_line(compressed_run, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--model-dir", str(compressed_run), "--runtime", "paddle-cpu",
                   "--batch", "1", "--threads", "1", "--budget", "0.3", "--no-accuracy",
                   "--diff", "--diff-images", "4", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "intermediate tensors against Paddle's executor" in proc.stdout
    assert "measured on " in proc.stdout
    got = json.loads(out.read_text())
    assert got["diff"]["run"]["openvino"]["first_parting"] is None
    from clsact.deploy.runtimes import SPLIT_NOTE, split_int8_here

    assert (SPLIT_NOTE in proc.stdout) == split_int8_here()  # says how it was served
    assert got["machine"]["isa"] == machine.isa()


CPUINFO = """processor\t: 0
model name\t: Example CPU @ 2.0GHz
flags\t\t: fpu sse avx2 avx512f avx512_vnni
processor\t: 1
model name\t: Example CPU @ 2.0GHz
flags\t\t: fpu sse avx2 avx512f avx512_vnni
"""


def test_the_cpu_s_instruction_sets_are_read_from_cpuinfo():
    model, flags = machine.parse_cpuinfo(CPUINFO)
    assert model == "Example CPU @ 2.0GHz"
    assert machine.isa(flags) == ["AVX2", "AVX-512", "AVX512_VNNI"]
    assert machine.has_vnni(flags) and not machine.has_bf16(flags)
    assert machine.has_bf16(flags | {"amx_bf16"})
    assert not machine.has_vnni(frozenset({"avx2"}))
    d = {"cpu": model, "isa": machine.isa(flags), "cpus": 2}
    assert machine.headline(d) == "Example CPU @ 2.0GHz (AVX2, AVX-512, AVX512_VNNI), 2 CPU(s)"


def test_the_bf16_row_exists_only_where_the_cpu_has_bf16(mbv3_model, files, monkeypatch):
    """The f32 hint is honoured everywhere and the bf16 one where the CPU has bf16: OpenVINO
    reports the precision it compiled for, and bf16 logits part from Paddle's where f32 ones
    do not."""
    from clsact.deploy.runtimes import openvino_compiled

    fp32 = ModelFiles.of(mbv3_model)
    bf16 = BY_KEY["openvino-bf16"]
    assert "a quantized model" in bf16.skip_reason(files)
    monkeypatch.setattr(machine, "cpu", lambda: ("x", frozenset({"avx2", "avx512f"})))
    assert "no bf16" in bf16.skip_reason(fp32)
    monkeypatch.undo()
    assert (bf16.skip_reason(fp32) is None) == machine.has_bf16()
    hint = str(openvino_compiled(fp32, 1).get_property("INFERENCE_PRECISION_HINT"))
    assert hint == "<Type: 'float32'>"
    if not machine.has_bf16():
        pytest.skip("this CPU has no bf16: its bf16 row is skipped (checked above)")
    compiled = openvino_compiled(fp32, 1, "bf16")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    paddle = BY_KEY["paddle-cpu"].load(fp32, 1)(x)
    scale = float(np.abs(paddle).max())
    assert np.abs(bf16.load(fp32, 1)(x) - paddle).max() > 1e-3 * scale
    assert np.abs(BY_KEY["openvino"].load(fp32, 1)(x) - paddle).max() <= 1e-3 * scale


def _dynamic(files: ModelFiles):
    """OpenVINO as clsact ran it before: one compiled model for every batch size."""
    from clsact.deploy.runtimes import openvino_compiled

    request = openvino_compiled(files, 1).create_infer_request()

    def run(x):
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return run


def test_make_bench_emulates_older_cpus_by_capping_onednn(clas_model, compressed_run):
    """``make bench`` measures the AVX2 target on a newer CPU by capping oneDNN (Paddle's and
    OpenVINO's) with ONEDNN_MAX_CPU_ISA in a child: the capped child's convolutions run AVX2
    kernels, the uncapped ones do not."""
    import os
    import subprocess
    import sys

    from tests.bench.deploy import emulated
    from tests.conftest import REPO

    if "avx512f" not in machine.cpu()[1]:
        pytest.skip("an AVX2-only CPU: nothing older to emulate")
    script = ("import sys\nfrom clsact.deploy import profile\n"
              "from clsact.deploy.runtimes import ModelFiles\n"
              "rows = profile.openvino_ops(ModelFiles.of(sys.argv[1]), runs=2, img_size=32)\n"
              "print(sorted({r.kernel for r in rows if 'Convolution' in r.op}))\n")
    kernels = {}
    for cap in ("AVX2", None):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if cap:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        proc = subprocess.run([sys.executable, "-c", script, str(compressed_run / "model")],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        kernels[cap] = proc.stdout.strip().splitlines()[-1]
    assert "avx2" in kernels["AVX2"] and "avx512" not in kernels["AVX2"], kernels
    assert "avx512" in kernels[None], kernels
    rows = emulated(clas_model, compressed_run / "model")
    avx2 = rows["AVX2"]
    assert "error" not in avx2, avx2
    assert set(avx2["ms"]) == {"fp32/paddle-cpu", "fp32/openvino", "compressed/paddle-cpu-int8",
                               "compressed/openvino"} and avx2["speedup"] > 0
