"""Which GPUs the installed Paddle runs on (clsact.gpuarch): the fatbin reader on ELF files
laid out as nvcc lays them out, the support rule, the build's check, the refusal of a GPU
before any work, and `clsact doctor`. The reading of the real paddlepaddle-gpu wheel, checked
against NVIDIA's cuobjdump, is in tests/test_image_gpu.py (make test-image-gpu)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clsact import gpuarch
from tests.conftest import REPO, run_cli
from tests.fatbins import ELF, PTX, paddle_like, shared_object
from tests.test_distributed import clean_env

SCRIPT = REPO / "clsact" / "gpuarch.py"


def test_the_reader_returns_every_module_and_entry(tmp_path):
    modules = [[(ELF, 80), (ELF, 86)], [(PTX, 90)], [(ELF, 61), (ELF, 70), (PTX, 70)]]
    lib = shared_object(tmp_path / "lib.so", modules)
    assert gpuarch.read_library(lib) == modules
    assert gpuarch.read_library(shared_object(tmp_path / "cpu.so", [])) == []
    (tmp_path / "text.so").write_text("not an ELF file")
    with pytest.raises(gpuarch.ArchError, match="not a 64-bit little-endian ELF"):
        gpuarch.read_library(tmp_path / "text.so")
    with pytest.raises(gpuarch.ArchError, match="cannot read its GPU code"):
        gpuarch.read_library(tmp_path / "missing.so")


def test_what_runs_where():
    sass80, ptx70 = [(ELF, 80)], [(PTX, 70)]
    assert gpuarch.runs(sass80, (8, 0)) and gpuarch.runs(sass80, (8, 9)), "same major, higher"
    assert not gpuarch.runs(sass80, (9, 0)) and not gpuarch.runs(sass80, (7, 5))
    assert not gpuarch.runs([(ELF, 86)], (8, 0)), "not a lower minor"
    assert gpuarch.runs(ptx70, (9, 0)) and gpuarch.runs(ptx70, (12, 0)), "PTX: any newer"
    assert not gpuarch.runs(ptx70, (6, 1))
    assert gpuarch.capability("sm_90") == gpuarch.capability("9.0") == gpuarch.capability(90)


def test_the_matrix_of_a_paddle_like_build(tmp_path):
    """Shaped like paddlepaddle-gpu 2.6.2: runs 6.1 to 8.9 (8.9 on sm_86 code), not Hopper
    or Blackwell, although one module carries sm_90 code; with sm_90 in every module, 9.0
    runs too."""
    matrix = gpuarch.scan(paddle_like(tmp_path / "a"))
    assert matrix["cuda"] and matrix["supported"] == ["6.1", "7.0", "7.5", "8.0", "8.6", "8.9"]
    phi = matrix["libraries"]["paddle/libs/libphi.so"]
    assert phi["sass"]["sm_80"] == 120 and phi["sass"]["sm_90"] == 1 and phi["modules"] == 121
    assert phi["coverage"]["8.0"] == "120/121" and phi["coverage"]["9.0"] == "1/121"
    assert matrix["gpus"]["8.0"] == ["A100, A30"] and "9.0" not in matrix["gpus"]
    hopper = gpuarch.scan(paddle_like(tmp_path / "b", extra_sm=90))
    assert "9.0" in hopper["supported"] and "10.0" not in hopper["supported"]
    cpu = tmp_path / "cpu"
    shared_object(cpu / "paddle/libs/libphi.so", [])
    assert gpuarch.scan(cpu) == {"format": gpuarch.FORMAT, "cuda": False, "supported": [],
                                 "libraries": {}}


def test_the_build_check_fails_in_one_line_on_a_missing_arch(tmp_path):
    """What the image build runs (docker/Dockerfile): GPU_ARCHS=80,90 on a Paddle without
    Hopper kernels stops the build with one line; GPU_ARCHS=80,86 writes the record."""
    root = paddle_like(tmp_path / "p")
    bad = subprocess.run([sys.executable, str(SCRIPT), "scan", "--root", str(root), "--want",
                          "80,90", "--output", str(tmp_path / "r.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and not (tmp_path / "r.json").exists()
    assert bad.stderr.strip().splitlines() == [
        "gpuarch: error: paddle has no complete kernels for compute capability 9.0 "
        "(paddle/base/libpaddle.so: 0/30 modules for 9.0; paddle/libs/libphi.so: 1/121 modules "
        "for 9.0); supported: 6.1, 7.0, 7.5, 8.0, 8.6, 8.9. Build with a wheel compiled for it "
        "(PADDLE_GPU=...) or leave it out of GPU_ARCHS"]
    ok = subprocess.run([sys.executable, str(SCRIPT), "scan", "--root", str(root), "--want",
                         "80,86", "--output", str(tmp_path / "r.json")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "r.json").read_text())["supported"][-1] == "8.9"


def test_a_gpu_this_paddle_cannot_run_is_refused_before_any_work(tmp_path, clas_model,
                                                                 small_digits_dir):
    """The capability probe substituted (an H100 visible) and the image's record of a
    Paddle without Hopper kernels: `compress` stops with one line before the model is fetched
    or the save dir claimed, with Global.device auto as with gpu."""
    from tests.test_compress import small_config

    record = tmp_path / "gpu-archs.json"
    record.write_text(json.dumps(gpuarch.scan(paddle_like(tmp_path / "p"))))
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import clsact.process as r\n"
        "r.visible_gpus = lambda: [('NVIDIA H100 80GB HBM3', (9, 0))]\n")
    env = {**clean_env(), gpuarch.RECORD_ENV: str(record)}
    env["PYTHONPATH"] = f"{probe}:{env['PYTHONPATH']}"
    cfg = small_config(tmp_path, clas_model, small_digits_dir)
    for device in ("auto", "gpu"):
        save = tmp_path / f"run-{device}"
        proc = subprocess.run([sys.executable, "-m", "clsact", "compress", "--config", str(cfg),
                               "--save-dir", str(save), "--set", f"Global.device={device}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            "clsact: error: GPU NVIDIA H100 80GB HBM3 (compute capability 9.0) cannot run "
            "this image's Paddle (paddlepaddle-gpu: kernels for 6.1, 7.0, 7.5, 8.0, 8.6, 8.9); "
            "build an image from a Paddle 2.6 GPU wheel compiled for it: make image "
            "PADDLE_GPU=<wheel file or URL> GPU_ARCHS=<e.g. 80,90> (docs/images.md)")
        assert not save.exists(), "nothing claimed, nothing fetched"
    gpuarch.check_gpus([("NVIDIA L4", (8, 9)), ("NVIDIA A100", (8, 0))],
                       json.loads(record.read_text()))


def test_doctor_prints_the_matrix_and_the_visible_gpus(tmp_path):
    record = tmp_path / "gpu-archs.json"
    record.write_text(json.dumps(gpuarch.scan(paddle_like(tmp_path / "p"))))
    env = {**clean_env(), gpuarch.RECORD_ENV: str(record)}
    proc = run_cli("doctor", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:-1]}
    assert rows["8.0"].split()[1] == "yes" and "A100" in rows["8.0"]
    assert rows["9.0"].split()[1] == "NO" and "0/30, 1/121" in rows["9.0"]
    assert proc.stdout.splitlines()[-1] == "visible GPUs: none"
    facts = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert facts["gpu_support"]["supported"][-1] == "8.9" and facts["visible_gpus"] == []
    here = run_cli("doctor")  # this machine: the CPU build, read from its libraries
    assert "none: this Paddle has no GPU code" in here.stdout, here.stdout + here.stderr
