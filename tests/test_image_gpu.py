"""The GPU image (`make image`), built and run here, on a machine without a GPU:
`make test-image-gpu` (not part of `make test`: the build downloads ~3.5 GB of wheels).

What can be shown without a GPU: Paddle's CUDA build is installed; every library it links
(NEEDED) and every CUDA/cuDNN/NCCL library it dlopens loads inside the image; Paddle's own
loader finds cuDNN and NCCL there (and does not once the library folder is taken away); a
compress falls back to CPU and publishes; asking for a GPU fails with one clear line.
What cannot: any kernel on a GPU, and the driver (libcuda.so.1), which a GPU node's NVIDIA
container runtime mounts into the container."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clsact.compat import PADDLE_CUDA_DLOPEN_NAMES
from tests import dockerhost
from tests.conftest import run_cli
from tests.test_compress import small_config

pytestmark = pytest.mark.gpu_image

CONFIG_IN_POD = dockerhost.CONFIG_IN_POD


@pytest.fixture(scope="module")
def gpu_image(docker_engine) -> str:
    return dockerhost.build_image("gpu")


def python_in(image: str, code: str, *options: str) -> dict:
    proc = dockerhost.run(image, "-c", code, network="none",
                          options=("--entrypoint", "python", *options))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_paddle_is_the_cuda_build_and_every_library_loads(gpu_image):
    got = python_in(gpu_image, f"""
import ctypes, json, os, subprocess, paddle
site = os.path.dirname(os.path.dirname(paddle.__file__))
linked = {{}}
for so in ("paddle/base/libpaddle.so", "paddle/libs/libphi.so"):
    out = subprocess.run(["ldd", os.path.join(site, so)], capture_output=True, text=True).stdout
    linked[so] = [l.strip() for l in out.splitlines() if "not found" in l]
loaded, failed = [], {{}}
folder = "/opt/clsact/cuda/lib"
for name in {list(PADDLE_CUDA_DLOPEN_NAMES)!r} + sorted(os.listdir(folder)):
    try:
        ctypes.CDLL(name)
        loaded.append(name)
    except OSError as e:
        failed[name] = str(e)
import glob, shutil
headers = glob.glob(site + "/nvidia/*/include") + glob.glob(site + "/paddle/include")
tools = [t for t in ("nvcc", "gcc", "cc", "g++") if shutil.which(t)]
print(json.dumps({{"cuda": paddle.is_compiled_with_cuda(), "headers": headers, "tools": tools,
                  "devices": paddle.device.cuda.device_count(),
                  "missing_needed": linked, "loaded": loaded, "failed": failed,
                  "cudnn_compiled": paddle.version.cudnn(),
                  "cuda_compiled": paddle.version.cuda()}}))
""")
    assert got["cuda"] is True and got["devices"] == 0
    assert got["headers"] == [] and got["tools"] == [], "runtime libraries only"
    assert got["cuda_compiled"] == "11.8" and got["cudnn_compiled"].startswith("8.6")
    assert got["missing_needed"] == {"paddle/base/libpaddle.so": [], "paddle/libs/libphi.so": []}
    assert got["failed"] == {}, got["failed"]
    assert set(PADDLE_CUDA_DLOPEN_NAMES) <= set(got["loaded"])
    print(f"\nloaded inside the GPU image: {len(set(got['loaded']))} CUDA libraries "
          f"(Paddle built with CUDA {got['cuda_compiled']}, cuDNN {got['cudnn_compiled']})")


PROBE_LOADER = """
import json, paddle
from paddle.base import core
out = {}
for fn in ("cudnn_version", "nccl_version"):
    try:
        out[fn] = getattr(core, fn)()
    except Exception as e:
        out[fn] = type(e).__name__
print(json.dumps(out))
"""


def test_paddles_own_loader_finds_cudnn_and_nccl(gpu_image):
    """Paddle dlopens the unversioned libcudnn.so / libnccl.so (compat.PADDLE_CUDA_DLOPEN_NAMES)
    and finds the wheels' libraries through the image's LD_LIBRARY_PATH; without that folder
    it finds neither (the check can fail)."""
    got = python_in(gpu_image, PROBE_LOADER, "-e", "LD_DEBUG=files")
    assert got["cudnn_version"] // 100 == 86, got  # 8.6.x
    assert got["nccl_version"] // 100 == 219, got  # 2.19.x
    traced = dockerhost.run(gpu_image, "-c", PROBE_LOADER, network="none",
                            options=("--entrypoint", "python", "-e", "LD_DEBUG=files"))
    opened = {line.split("file=")[1].split()[0] for line in traced.stderr.splitlines()
              if "dynamically loaded by" in line and "libphi.so" in line}
    assert {"libcudnn.so", "libnccl.so"} <= opened, opened
    without = python_in(gpu_image, PROBE_LOADER, "-e", "LD_LIBRARY_PATH=")
    assert without["cudnn_version"] != got["cudnn_version"], without
    assert without["nccl_version"] != got["nccl_version"], without
    print(f"\nPaddle's loader in the GPU image: {got}; without the image's library path: "
          f"{without}; opened by libphi.so: {sorted(opened)}")


def test_compress_on_cpu_in_the_gpu_image(gpu_image, tmp_path, clas_model, small_digits_dir):
    """Global.device auto falls back to CPU without a GPU and publishes; gpu is refused.
    The container is given no GPU even on a GPU host (NVIDIA_VISIBLE_DEVICES=void: the
    image sets it to all, which NVIDIA's runtime honours without --gpus)."""
    cfg = small_config(tmp_path, Path("/in/model"), Path("/in/data"))
    cfg.write_text(cfg.read_text().replace("device: cpu", "device: auto"))
    options, out = dockerhost.local_job_volumes(tmp_path, cfg, clas_model, small_digits_dir)
    options = (*options, "-e", "NVIDIA_VISIBLE_DEVICES=void")
    proc = dockerhost.run(gpu_image, "compress", "--config", CONFIG_IN_POD, "--save-dir",
                          "/out/run", network="none", options=options)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert run_cli("verify", str(out / "run")).returncode == 0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["device"] == "cpu", metrics.get("device")
    print(f"\nCPU-place compress in the GPU image: top-1 {metrics['baseline']['top1']:.4f} -> "
          f"{metrics['compressed']['top1']:.4f}")

    refused = dockerhost.run(gpu_image, "compress", "--config", CONFIG_IN_POD, "--set",
                             "Global.device=gpu", "--save-dir", "/out/gpu", network="none",
                             options=options)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "clsact: error: Global.device is gpu but no GPU is visible; use --set Global.device=cpu")
    assert not (out / "gpu").exists() or not list((out / "gpu").iterdir()), "nothing written"


def _cuobjdump(tmp_path: Path) -> Path:
    """NVIDIA's cuobjdump from its PyPI wheel (nvidia-cuda-cuobjdump), unpacked here."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                    str(tmp_path), "nvidia-cuda-cuobjdump"], check=True, timeout=600)
    wheel = next(tmp_path.glob("nvidia_cuda_cuobjdump-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/bin/cuobjdump"))
        zf.extract(member, tmp_path)
    binary = tmp_path / member
    binary.chmod(0o755)
    return binary


def test_the_image_records_which_gpus_it_runs_and_cuobjdump_agrees(gpu_image, tmp_path):
    """The build read Paddle's kernels (clsact.gpuarch): today's wheel runs sm_80 (A100) and
    not sm_90 (H100); the image label says the same; for every architecture NVIDIA's
    cuobjdump lists (the CUDA 13 one on PyPI stops at the wheel's sm_35 entry), the module
    counts are the same; `clsact doctor` prints it."""
    import re
    from collections import Counter

    record = json.loads(dockerhost.run(gpu_image, "/opt/clsact/gpu-archs.json", network="none",
                                       options=("--entrypoint", "cat")).stdout)
    assert record["cuda"] and "8.0" in record["supported"] and "9.0" not in record["supported"]
    assert record["paddle"] == "paddlepaddle-gpu 2.6.2"
    label = dockerhost.inspect(gpu_image, '{{ index .Config.Labels "io.clsact.gpu-archs" }}')
    assert label == ",".join(record["supported"])
    binary = _cuobjdump(tmp_path)
    site = "/opt/clsact/lib/python3.11/site-packages"
    for rel in ("paddle/libs/libphi.so", "paddle/base/libpaddle.so"):
        proc = dockerhost.run(gpu_image, "--list-elf", f"{site}/{rel}", network="none",
                              options=("--entrypoint", "/cuobjdump", "-v",
                                       f"{binary}:/cuobjdump:ro"))
        listed = Counter(re.findall(r"\.(sm_\d+)\.cubin", proc.stdout))
        assert listed["sm_80"] > 100, (proc.stdout[-500:], proc.stderr[-500:])
        assert {a: record["libraries"][rel]["sass"].get(a) for a in listed} == dict(listed)
    doctor = dockerhost.run(gpu_image, "doctor", network="none")
    assert doctor.returncode == 0 and "recorded by the image build" in doctor.stdout
    print(f"\nGPU support recorded by the image: {record['supported']}\n{doctor.stdout}")


def test_the_build_refuses_an_arch_the_wheel_lacks(docker_engine):
    """GPU_ARCHS=80,90 with today's wheel: the build stops with one line naming the missing
    capability and the module counts (the dependency layers come from the cache)."""
    with pytest.raises(RuntimeError) as failed:
        dockerhost.build_image("gpu", GPU_ARCHS="80,90")
    last = str(failed.value).strip().splitlines()[-1]
    assert last.startswith("build.sh: error: gpuarch: error: paddlepaddle-gpu 2.6.2 has no "
                           "complete kernels for compute capability 9.0 ("), last
    assert "supported: 6.1, 7.0, 7.5, 8.0, 8.6, 8.9" in last
