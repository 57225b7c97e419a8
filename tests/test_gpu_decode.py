"""`Global.decode: gpu`: refused with one line where no GPU is (here: always), and the
device pipeline's geometry, flips and normalisation checked against the CPU pipeline with
Paddle's own ops on the CPU place. nvJPEG itself (paddle.vision.ops.decode_jpeg) needs a GPU:
in these tests OpenCV stands in for it, and that is all that stands in."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clsact.data import gpu_decode
from clsact.data.listfile import read_list
from clsact.data.loader import BatchLoader, load_batch, sample_rng
from clsact.data.transforms import TransformSpec
from clsact.errors import DeviceError
from clsact.storage import LocalStore
from tests.conftest import run_cli
from tests.test_compress import small_config

STD = (0.229, 0.224, 0.225)
ONE_LEVEL = 1.0 / (255 * min(STD))  # one step of 255 in normalised units


def photo(seed: int, w: int = 120, h: int = 90) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_refused_where_there_is_no_gpu(small_digits_dir, clas_model, tmp_path):
    with pytest.raises(DeviceError, match="no CUDA .* set Global.decode: cpu"):
        gpu_decode.check_available()
    samples = read_list(small_digits_dir, "small_val.txt")
    with pytest.raises(DeviceError, match="Global.decode gpu"):
        BatchLoader(LocalStore(small_digits_dir), samples, TransformSpec(train=False),
                    batch_size=8, num_workers=0, shuffle=False, decode="gpu")
    cfg = small_config(tmp_path, clas_model, small_digits_dir)
    for device, fragment in (("cpu", "Global.decode gpu needs Global.device gpu"),
                             ("auto", "Global.decode gpu, but this run's device is cpu")):
        proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(tmp_path / "out"),
                       "--set", "Global.decode=gpu", "--set", f"Global.device={device}")
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("train", [False, True])
def test_device_pipeline_matches_the_cpu_pipeline(tmp_path, train):
    files = []
    for i in range(6):
        ext = ".png" if i == 5 else ".jpg"  # a PNG goes through OpenCV
        cv2.imwrite(str(tmp_path / f"{i}{ext}"), photo(i, 120 + 7 * i, 90 + 3 * i),
                    [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
        files.append(f"{i}{ext}")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    files.insert(2, "bad.jpg")
    spec = TransformSpec(train=train, img_size=48, resize_size=56, crop_scale=(0.3, 1.0))
    items = [(i, name, i % 3) for i, name in enumerate(files)]
    store = LocalStore(tmp_path)
    cpu = load_batch(store, spec, items, seed=4, epoch=2)
    datas = [(tmp_path / name).read_bytes() for name in files]
    rngs = [sample_rng(4, 2, i) if train else None for i in range(len(files))]
    x, kept, bad = gpu_decode.preprocess_batch(datas, spec, rngs, decode=gpu_decode.cpu_decode)
    assert kept == [0, 1, 3, 4, 5, 6] and [i for i, _ in bad] == [2]
    got = x.numpy()
    assert got.shape == cpu.images.shape == (6, 3, 48, 48) and got.dtype == np.float32
    diff = np.abs(got - cpu.images)
    # same windows and flips; float bilinear vs OpenCV's fixed point: a level or two at most
    assert diff.max() <= 2.01 * ONE_LEVEL and diff.mean() < 0.2 * ONE_LEVEL, diff.max()
    if train:  # a wrong window or a missed flip is far off: the check can fail
        other = gpu_decode.preprocess_batch(
            datas, spec, [sample_rng(4, 3, i) for i in range(len(files))],
            decode=gpu_decode.cpu_decode)[0].numpy()
        assert np.abs(other - cpu.images).mean() > 5 * ONE_LEVEL


def test_loader_decoding_on_the_device(small_digits_dir, monkeypatch):
    """The loader with decode gpu: workers only fetch; batches, bad-image accounting and
    fingerprints as on the CPU path (OpenCV standing in for nvJPEG, no GPU here)."""
    monkeypatch.setattr(gpu_decode, "check_available", lambda: None)
    monkeypatch.setattr(gpu_decode, "nvjpeg_decode", gpu_decode.cpu_decode)
    samples = read_list(small_digits_dir, "small_val.txt")
    spec = TransformSpec(train=False, img_size=32, resize_size=36)
    out = {}
    for decode in ("cpu", "gpu"):
        ld = BatchLoader(LocalStore(small_digits_dir), samples, spec, batch_size=16,
                         num_workers=0, shuffle=False, decode=decode)
        ld.record_digests = {}
        try:
            out[decode] = (list(ld.epoch(0)), ld.record_digests)
        finally:
            ld.close()
    (cpu, cpu_digests), (dev, dev_digests) = out["cpu"], out["gpu"]
    assert cpu_digests == dev_digests and len(cpu_digests) == 64
    for a, b in zip(cpu, dev, strict=True):
        assert np.array_equal(a.labels, b.labels)
        assert np.abs(a.images - b.images).max() <= 2.01 * ONE_LEVEL
