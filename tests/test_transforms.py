"""Preprocessing: shapes, value ranges, PaddleClas geometry, determinism."""

import cv2
import numpy as np
import pytest

from clsact.data.transforms import (
    TransformSpec,
    center_crop,
    decode_image,
    normalize_batch,
    preprocess,
    random_resized_crop,
    resize_short,
)


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def test_decode_is_rgb():
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    ok, buf = cv2.imencode(".png", bgr)
    rgb = decode_image(buf.tobytes())
    assert rgb.shape == (8, 8, 3) and rgb[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg(20, 20)[:30]])
def test_decode_rejects_garbage(data):
    with pytest.raises(ValueError):
        decode_image(data)


def test_resize_short_keeps_aspect_like_paddleclas():
    img = np.zeros((375, 500, 3), np.uint8)
    out = resize_short(img, 256)
    # PaddleClas: percent = 256/375; w = round(500*percent) = 341
    assert out.shape == (256, 341, 3)


def test_center_crop_is_central():
    img = np.arange(10 * 12).reshape(10, 12, 1).repeat(3, axis=2)
    out = center_crop(img, 4)
    assert out.shape == (4, 4, 3) and out[0, 0, 0] == img[3, 4, 0]


def test_eval_output_shape_range_and_determinism():
    spec = TransformSpec(train=False, img_size=224, resize_size=256)
    data = jpeg(500, 375)
    a, b = preprocess(spec, data, None), preprocess(spec, data, None)
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert np.array_equal(a, b)
    lo = (0 - np.array(spec.mean)) / np.array(spec.std)
    hi = (1 - np.array(spec.mean)) / np.array(spec.std)
    for c in range(3):
        assert lo[c] - 1e-5 <= a[c].min() and a[c].max() <= hi[c] + 1e-5


def test_normalize_matches_formula():
    """Every uint8 value and channel against ``(x/255 - mean)/std`` computed in float64 (the
    pipeline's definition, as PaddleClas' NormalizeImage writes it)."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    pixels[0, 0, :3, :] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    out = normalize_batch(pixels, mean, std)
    assert out.shape == (3, 3, 5, 7) and out.dtype == np.float32 and out.flags.c_contiguous
    want = ((pixels.astype(np.float64) / 255 - mean) / std).transpose(0, 3, 1, 2)
    assert np.abs(out - want).max() < 2e-6
    filled = np.zeros_like(out)
    assert normalize_batch(pixels, mean, std, out=filled) is filled
    assert np.array_equal(filled, out)


def test_train_transform_is_seeded_and_varies():
    spec = TransformSpec(train=True, img_size=64)
    data = jpeg(120, 90)
    same1 = preprocess(spec, data, np.random.default_rng(5))
    same2 = preprocess(spec, data, np.random.default_rng(5))
    other = preprocess(spec, data, np.random.default_rng(6))
    assert same1.shape == (3, 64, 64)
    assert np.array_equal(same1, same2) and not np.array_equal(same1, other)


def test_random_resized_crop_respects_area_bounds():
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 255
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = random_resized_crop(img, 32, (1.0, 1.0), (1.0, 1.0), rng)
        # full-area square crop == whole image resized
        assert out.shape == (32, 32, 3)
        assert np.array_equal(out, cv2.resize(img, (32, 32), interpolation=cv2.INTER_LINEAR))


def test_flip_can_be_disabled():
    spec = TransformSpec(train=True, img_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                         random_flip=False)
    data = jpeg(16, 16)
    base = preprocess(TransformSpec(train=False, img_size=16, resize_size=16), data, None)
    for seed in range(10):
        assert np.allclose(preprocess(spec, data, np.random.default_rng(seed)), base)
