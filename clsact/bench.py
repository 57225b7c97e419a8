"""``make bench``: data-loading throughput, measured side by side in one run.

* ``upstream``: the ACT example's reader — one process, PIL decode, LANCZOS resize-short
  256, center crop 224, normalise;
* ``clsact-1``: clsact's eval pipeline (OpenCV, bilinear) in-process (``num_workers=0``);
* ``clsact-N``: clsact's loader with N worker processes (N = usable CPUs).

Images are synthetic ImageNet-like JPEGs (500x375, quality 90, ~75 KB) written to a temp dir.
Prints a table and writes JSON (``--output``). The target (object-storage issue): clsact-N
>= 0.9 x cores x the per-core upstream rate.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from clsact.data.build import default_workers
from clsact.data.listfile import Sample
from clsact.data.loader import BatchLoader
from clsact.data.transforms import TransformSpec
from clsact.storage import LocalStore


def make_images(root: Path, n: int, seed: int = 0) -> list[Sample]:
    """Write ``n`` photo-like 500x375 JPEGs (smooth colour fields plus noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(exist_ok=True)
    samples = []
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        rel = f"img/{i:05d}.jpg"
        cv2.imwrite(str(root / rel), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        samples.append(Sample(rel, i % 1000))
    return samples


def upstream_pass(root: Path, samples: list[Sample]) -> None:
    """The ACT example's single-process PIL reader over ``samples``."""
    from PIL import Image

    spec = TransformSpec(train=False)
    mean = np.array(spec.mean, np.float32)
    std = np.array(spec.std, np.float32)
    for s in samples:
        img = Image.open(root / s.path).convert("RGB")
        w, h = img.size
        p = 256 / min(w, h)
        img = img.resize((int(round(w * p)), int(round(h * p))), Image.LANCZOS)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        arr = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
        ((arr - mean) / std).transpose(2, 0, 1)


def clsact_pass(root: Path, samples: list[Sample], workers: int) -> tuple[int, float]:
    """One timed evaluation pass of clsact's loader; returns (images delivered, seconds)."""
    loader = BatchLoader(LocalStore(root), samples, TransformSpec(train=False),
                         batch_size=32, num_workers=workers, shuffle=False)
    try:
        list(loader.epoch(0))  # warm the pool up (spawn + imports) outside the timing
        start = time.perf_counter()
        n = sum(len(b.labels) for b in loader.epoch(0))
        return n, time.perf_counter() - start
    finally:
        loader.close()


def run(n: int, workers: int) -> dict:
    """Measure every reader on the same images; returns the results."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = make_images(root, n)
        total_bytes = sum((root / s.path).stat().st_size for s in samples)
        rows = []
        start = time.perf_counter()
        upstream_pass(root, samples)
        rows.append(("upstream (1 proc, PIL LANCZOS)", 1, n, time.perf_counter() - start))
        for w in (0, workers):
            got, secs = clsact_pass(root, samples, w)
            rows.append((f"clsact loader ({w} workers)" if w else "clsact (in-process, cv2)",
                         max(w, 1), got, secs))
    results = [{"reader": r, "processes": p, "images": i, "seconds": round(s, 3),
                "images_per_s": round(i / s, 1),
                "mb_per_s": round(total_bytes * i / n / s / 1e6, 2)} for r, p, i, s in rows]
    up = results[0]["images_per_s"]
    target = 0.9 * workers * up
    return {"images": n, "mean_kb": round(total_bytes / n / 1024, 1), "cores": workers,
            "results": results,
            "ratio_parallel_vs_upstream": round(results[-1]["images_per_s"] / up, 2),
            "target_images_per_s": round(target, 1),
            "meets_target": results[-1]["images_per_s"] >= target}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--output", default="bench-results/loader.json")
    args = parser.parse_args(argv)
    out = run(args.images, args.workers)
    print(f"{out['images']} JPEGs 500x375 (~{out['mean_kb']} KB), {out['cores']} cores")
    print(f"{'reader':34} {'procs':>5} {'img/s':>8} {'MB/s':>7}")
    for r in out["results"]:
        print(f"{r['reader']:34} {r['processes']:>5} {r['images_per_s']:>8} {r['mb_per_s']:>7}")
    print(f"parallel / upstream: {out['ratio_parallel_vs_upstream']}x; target "
          f">= 0.9 x cores x upstream = {out['target_images_per_s']} img/s: "
          f"{'met' if out['meets_target'] else 'NOT met'}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
