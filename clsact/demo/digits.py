"""The demo's props: sklearn's handwritten digits as an ImageNet-layout JPEG tree with list
files, and a small paddle.vision baseline trained on them with clsact's own loader and
exported with ``paddle.jit.save`` (dropout included, so the paddleslim Mask defect is
exercised). ``clsact demo`` (:mod:`clsact.demo.run`), the tests and ``make study`` use them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from clsact.runconfig import Global

log = logging.getLogger(__name__)
IMAGE_SIDE = 40  # rendered JPEG size; eval resizes to 36 and center-crops 32
CLASSES = 10


def build_digits_dataset(root: Path, val_fraction: float = 0.2, seed: int = 0,
                         side: int = IMAGE_SIDE) -> tuple[int, int]:
    """Write sklearn's digits as ``root/{train,val}/<label>/<n>.jpg`` (``side`` pixels
    square) plus list files.

    The split is stratified and fixed by ``seed``. Returns (train, val) sample counts.
    """
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for label in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(len(idx) * val_fraction))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                gray = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                big = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
                rel = f"{split}/{label}/{i:04d}.jpg"
                cv2.imwrite(str(root / rel), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                lines[split].append(f"{rel} {label}")
    for split in ("train", "val"):
        order = rng.permutation(len(lines[split]))
        text = "\n".join(lines[split][j] for j in order) + "\n"
        (root / f"{split}_list.txt").write_text(text)
    return len(lines["train"]), len(lines["val"])


def build_model(num_classes: int = CLASSES):
    """MobileNetV3Small x0.5; BN momentum 0.9 so running stats settle in a short training."""
    import paddle
    from paddle.vision.models import MobileNetV3Small

    paddle.seed(0)
    model = MobileNetV3Small(scale=0.5, num_classes=num_classes)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._momentum = 0.9
    return model


def train_baseline(g: Global, out_dir: Path, epochs: int, model=None, head=None,
                   lr: float = 5e-3) -> float:
    """Train the demo baseline (or ``model``) with clsact's loader and export it with
    ``paddle.jit.save`` (followed by ``head``, e.g. a softmax, when given).

    Returns the final validation top-1 measured in dygraph.
    """
    import warnings

    import paddle

    from clsact.data.build import make_loader, read_samples
    from clsact.metrics import TopK

    warnings.filterwarnings("ignore", message="When training, we now always track")

    paddle.disable_static()
    model = model if model is not None else build_model()
    train = make_loader(g, read_samples(g, "train"), train=True, batch_size=g.batch_size)
    val = make_loader(g, read_samples(g, "val"), train=False, batch_size=256)
    sched = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=epochs * len(train))
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    top1 = 0.0
    try:
        for epoch in range(epochs):
            start, model_loss = time.perf_counter(), []
            model.train()
            for batch in train.epoch(epoch):
                loss = paddle.nn.functional.cross_entropy(
                    model(paddle.to_tensor(batch.images)), paddle.to_tensor(batch.labels))
                loss.backward()
                opt.step()
                opt.clear_grad()
                sched.step()
                model_loss.append(float(loss))
            model.eval()
            counter = TopK()
            with paddle.no_grad():
                for batch in val.epoch(0):
                    counter.update(model(paddle.to_tensor(batch.images)).numpy(), batch.labels)
            top1 = counter.result()["top1"]
            print(f"  baseline epoch {epoch + 1}/{epochs}: loss {np.mean(model_loss):.3f}  "
                  f"val top1 {top1:.4f}  ({time.perf_counter() - start:.1f}s)", flush=True)
    finally:
        train.close()
        val.close()
    spec = paddle.static.InputSpec([None, 3, g.img_size, g.img_size], "float32", "inputs")
    exported = model if head is None else paddle.nn.Sequential(model, head)
    exported.eval()
    paddle.jit.save(exported, str(out_dir / "inference"), input_spec=[spec])
    return top1
