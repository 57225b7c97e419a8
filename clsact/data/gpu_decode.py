"""JPEG decoding and preprocessing on the GPU (``Global.decode: gpu``).

A CPU decodes and resizes about 250 ImageNet JPEGs per second per core; one fast GPU trains a
MobileNetV3 distillation on about 2,500 per second. With ``decode: gpu`` the loader's workers
only fetch the bytes (from disk, S3 or packed shards) and the main process decodes each
image with nvJPEG (``paddle.vision.ops.decode_jpeg``, Paddle's documented API, on the GPU
place) and crops, resizes, flips and normalises it with Paddle ops on the same device. The
crop geometry and the random draws are the CPU pipeline's (:mod:`clsact.data.transforms`),
so a sample gets the same window either way; bilinear resizing in float differs from
OpenCV's fixed-point one by at most a level or two of 255 (a test, on CPU ops).

Not a JPEG (PNG, ...) or not decodable by nvJPEG: that image is decoded by OpenCV on the CPU
and uploaded; not decodable at all: counted as a bad image, as on the CPU path.

Needs a CUDA build of Paddle and a visible GPU: :func:`check_available` refuses otherwise,
with one line (CPU builds and machines without a GPU: set ``Global.decode: cpu``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clsact.data.transforms import (
    TransformSpec,
    crop_window,
    decode_image,
    short_side_size,
)
from clsact.errors import DeviceError

JPEG_MAGIC = b"\xff\xd8"


def check_available() -> None:
    """Refuse GPU decoding where it cannot run.

    Raises:
        DeviceError: this Paddle build has no CUDA, or no GPU is visible.
    """
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        raise DeviceError("Global.decode gpu: this Paddle build has no CUDA (nvJPEG decoding "
                          "runs on a GPU, paddle.vision.ops.decode_jpeg): install "
                          "paddlepaddle-gpu, or set Global.decode: cpu")
    if paddle.device.cuda.device_count() < 1:
        raise DeviceError("Global.decode gpu: no GPU is visible to this process "
                          "(CUDA_VISIBLE_DEVICES, the pod's nvidia.com/gpu limit): set "
                          "Global.decode: cpu or run where a GPU is")


def nvjpeg_decode(data: bytes):
    """RGB CHW uint8 tensor on the current GPU (Paddle's nvJPEG op).

    Raises:
        ValueError: nvJPEG cannot decode the bytes.
    """
    import paddle
    from paddle.vision.ops import decode_jpeg

    try:
        return decode_jpeg(paddle.to_tensor(np.frombuffer(data, dtype=np.uint8)), mode="rgb")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"nvJPEG cannot decode it ({exc})") from None


def cpu_decode(data: bytes):
    """RGB CHW uint8 tensor decoded by OpenCV (for non-JPEGs, and tests on CPU).

    Raises:
        ValueError: the bytes are not a decodable image.
    """
    import paddle

    return paddle.to_tensor(np.ascontiguousarray(decode_image(data).transpose(2, 0, 1)))


def _resize(img, h: int, w: int):
    """Bilinear resize of a CHW uint8 tensor to (h, w), rounded back to integer levels (as
    OpenCV's INTER_LINEAR on uint8: half-pixel centres, no antialiasing), as float32."""
    import paddle
    import paddle.nn.functional as F

    x = img.astype("float32").unsqueeze(0)
    if tuple(img.shape[1:]) != (h, w):
        x = F.interpolate(x, size=[h, w], mode="bilinear", align_corners=False, align_mode=0)
    return paddle.clip(paddle.round(x), 0.0, 255.0)[0]


def preprocess_one(img, spec: TransformSpec, rng: np.random.Generator | None):
    """Crop/resize/flip one CHW uint8 tensor as :func:`clsact.data.transforms.crop` does,
    to float32 CHW levels (0..255) of ``img_size``.

    Raises:
        ValueError: a training transform without a generator, or an image too small to crop.
    """
    _, h, w = img.shape
    size = spec.img_size
    if spec.train:
        if rng is None:
            raise ValueError("training transforms need a random generator")
        top, left, ch, cw = crop_window(h, w, spec.crop_scale, spec.crop_ratio, rng)
        out = _resize(img[:, top:top + ch, left:left + cw], size, size)
        if spec.random_flip and rng.random() < 0.5:
            out = out.flip(axis=[2])
        return out
    nh, nw = short_side_size(h, w, spec.resize_size)
    if nh < size or nw < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    out = _resize(img, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, top:top + size, left:left + size]


def preprocess_batch(datas: Sequence[bytes], spec: TransformSpec,
                     rngs: Sequence[np.random.Generator | None],
                     decode: Callable[[bytes], Any] = nvjpeg_decode
                     ) -> tuple[Any, list[int], list[tuple[int, str]]]:
    """Decode and preprocess a batch on the device: (float32 NCHW tensor of the good images,
    their positions in ``datas``, (position, reason) of the bad ones). JPEGs go through
    ``decode`` (nvJPEG), anything else, or what it rejects, through OpenCV. Runs in
    Paddle's dynamic mode whatever mode the caller is in."""
    from clsact.process import dynamic_mode

    with dynamic_mode():
        return _preprocess_batch(datas, spec, rngs, decode)


def _preprocess_batch(datas, spec, rngs, decode):
    import paddle

    good, kept, bad = [], [], []
    for i, (data, rng) in enumerate(zip(datas, rngs, strict=True)):
        try:
            try:
                if not data.startswith(JPEG_MAGIC):
                    raise ValueError("not a JPEG")
                img = decode(data)
            except ValueError:
                img = cpu_decode(data)  # PNG etc.; raises ValueError when undecodable
            good.append(preprocess_one(img, spec, rng))
            kept.append(i)
        except ValueError as exc:
            bad.append((i, str(exc)))
    if not good:
        return paddle.zeros([0, 3, spec.img_size, spec.img_size], "float32"), kept, bad
    x = paddle.stack(good)
    scale = paddle.to_tensor([1.0 / (255.0 * s) for s in spec.std], "float32")
    shift = paddle.to_tensor([-m / s for m, s in zip(spec.mean, spec.std, strict=True)],
                             "float32")
    return x * scale.reshape([1, 3, 1, 1]) + shift.reshape([1, 3, 1, 1]), kept, bad
