"""Image preprocessing equivalent to PaddleClas' ImageNet pipelines.

Decoder and interpolation: OpenCV (``cv2.imdecode`` + ``cv2.INTER_LINEAR``), as PaddleClas
itself uses for training and evaluating its ImageNet models (``DecodeImage`` +
``ResizeImage``/``RandCropImage`` with the cv2 backend). The published baselines
(MobileNetV3_large_x1_0 75.32%) were measured that way; the ACT example's PIL LANCZOS
reader differs slightly and is ~2x slower. OpenCV ships with paddleslim
(opencv-python 4.6).

* eval: decode RGB -> resize the short side to ``resize_size`` (rounded like PaddleClas) ->
  center crop ``img_size`` -> ``(x/255 - mean)/std`` -> CHW float32;
* train: decode RGB -> random resized crop (area ``crop_scale``, aspect ``crop_ratio``) to
  ``img_size`` -> horizontal flip with p=0.5 (unless ``random_flip`` is off) -> normalise
  -> CHW float32.

The two halves are separate (:func:`crop` gives uint8 HWC, :func:`normalize_batch` a whole
batch's float32 NCHW) so the loader's workers hand over a quarter of the bytes.

Random choices come from a ``numpy.random.Generator`` the caller seeds per (epoch, sample), so
a sample's augmentation does not depend on which worker decodes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class TransformSpec:
    """Everything a worker needs to preprocess one image (picklable)."""

    train: bool
    img_size: int = 224
    resize_size: int = 256
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random_flip: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to an RGB uint8 HWC array.

    Raises:
        ValueError: the bytes are not a decodable image.
    """
    if not data:
        raise ValueError("empty file")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size`` (PaddleClas' rounding)."""
    percent = size / min(h, w)
    return max(1, int(round(h * percent))), max(1, int(round(w * percent)))


def resize_short(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (aspect kept, bilinear)."""
    h, w = img.shape[:2]
    new_h, new_w = short_side_size(h, w, size)
    if (new_w, new_h) == (w, h):
        return img
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window. Raises ValueError if the image is smaller."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def crop_window(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random window of random area and aspect ratio.

    Up to 10 tries find a window that fits; otherwise the largest central window with an
    aspect ratio inside ``ratio`` is used.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(
    img: np.ndarray,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """A random crop of random area and aspect ratio (:func:`crop_window`), resized to
    ``size`` x ``size``."""
    top, left, ch, cw = crop_window(img.shape[0], img.shape[1], scale, ratio, rng)
    crop = img[top : top + ch, left : left + cw]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def normalize_batch(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                    out: np.ndarray | None = None) -> np.ndarray:
    """``(pixels/255 - mean)/std`` as float32, NHWC uint8 -> NCHW, in one pass per channel
    (``pixels * (1/(255 std)) - mean/std``: equal to the formula within float32 rounding).
    ``out`` (N, C, H, W) float32 is filled when given."""
    n, h, w, c = pixels.shape
    if out is None:
        out = np.empty((n, c, h, w), dtype=np.float32)
    for ch in range(c):
        scale = np.float32(1.0 / (255.0 * std[ch]))
        shift = np.float32(-mean[ch] / std[ch])
        np.multiply(pixels[..., ch], scale, out=out[:, ch], dtype=np.float32)
        out[:, ch] += shift
    return out


def crop(spec: TransformSpec, data: bytes, rng: np.random.Generator | None) -> np.ndarray:
    """Decode and crop (train: random resized crop and flip; eval: resize short side and
    center crop) one image to ``img_size`` x ``img_size``, RGB uint8 HWC: what the loader's
    workers hand over before normalising.

    Raises:
        ValueError: the bytes are not a decodable image (or too small to crop).
    """
    img = decode_image(data)
    if spec.train:
        if rng is None:
            raise ValueError("training transforms need a random generator")
        img = random_resized_crop(img, spec.img_size, spec.crop_scale, spec.crop_ratio, rng)
        if spec.random_flip and rng.random() < 0.5:
            img = img[:, ::-1]
        return img
    return center_crop(resize_short(img, spec.resize_size), spec.img_size)


def preprocess(spec: TransformSpec, data: bytes, rng: np.random.Generator | None) -> np.ndarray:
    """Decode and preprocess one image to a CHW float32 array of ``img_size``.

    Raises:
        ValueError: the bytes are not a decodable image (or too small to crop).
    """
    return normalize_batch(crop(spec, data, rng)[None], spec.mean, spec.std)[0]
