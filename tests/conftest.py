"""Shared fixtures: a real JPEG dataset (sklearn digits) and a real exported MobileNetV3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """sklearn digits rendered as an ImageNet-layout JPEG tree (1,438 train / 359 val)."""
    from clsact.demo import build_digits_dataset

    root = tmp_path_factory.mktemp("digits")
    build_digits_dataset(root)
    return root


@pytest.fixture(scope="session")
def small_digits_dir(digits_dir: Path) -> Path:
    """The same images with short list files (96 train / 64 val) for fast end-to-end runs."""
    for name, n in (("small_train.txt", 96), ("small_val.txt", 64)):
        src = "train_list.txt" if "train" in name else "val_list.txt"
        lines = (digits_dir / src).read_text().splitlines()[:n]
        (digits_dir / name).write_text("\n".join(lines) + "\n")
    return digits_dir


@pytest.fixture(scope="session")
def mbv3_model(tmp_path_factory) -> Path:
    """An untrained MobileNetV3Small x0.5 (10 classes, 32x32) saved by ``paddle.jit.save``,
    so its dropout op lacks the Mask output (paddleslim issue #1927)."""
    import paddle

    from clsact.demo import build_model

    paddle.disable_static()
    out = tmp_path_factory.mktemp("mbv3")
    model = build_model()
    model.eval()
    spec = paddle.static.InputSpec([None, 3, 32, 32], "float32", "inputs")
    paddle.jit.save(model, str(out / "inference"), input_spec=[spec])
    return out


def copy_images(src: Path, dst: Path, lines: list[str]) -> None:
    """Copy the images named by list-file ``lines`` from data dir ``src`` into ``dst``."""
    for line in lines:
        rel = line.rsplit(maxsplit=1)[0]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes((src / rel).read_bytes())


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m clsact ARGS`` as a user would; returns the completed process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "clsact", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)
