"""``make study``: does the shipped QAT recipe keep a model's accuracy, run after run?

The recipe (``configs/mbv3_qat_dis.yaml``: QAT with PACT + soft-label distillation from the
fp32 model, Momentum at its learning rate) runs through ``clsact compress`` on models it was
not tuned on: ``paddle.vision`` architectures trained here on sklearn's digits (real 8x8
scans rendered as JPEGs) at two input sizes, several seeds each. Only the model, the data,
the sizes, the run length and, for these small images, the crop augmentation change — and
the variant under study, a set of ``--set`` overrides (:data:`VARIANTS`):

* ``upstream``: ACT as it runs upstream — no learning-rate guard, the best of the
  evaluations on the validation set published;
* ``last``: the same training, the state after the last step published (the honest number);
* one cause switched at a time (guard off, last state): ``lr/4`` and ``lr/20`` (the learning
  rate), ``no-pact``, ``alpha=0.1`` (the distillation loss's scale), ``no-quant``
  (distillation alone, no quantization at all), ``bn-train`` (the model exported as a
  static graph is, so that ACT trains with batch statistics; a ``paddle.jit.save`` export
  normalises with its running statistics in ACT's training already);
* ``shipped``: the recipe with clsact's defaults (the learning-rate guard of
  :mod:`clsact.guard`, the last state published).

Per run: the fp32 top-1, the final top-1 (the published model, evaluated once), every
evaluation, the best, the loss curve. Per (architecture, size, variant): the mean and worst
change against fp32, the spread of the final top-1 across seeds, and whether the targets
hold (final within ``--tolerance`` of fp32 on every seed, spread at most ``--tolerance``).
Prints a table, writes JSON (``--output``) and a plot (``--plot``). Baselines and datasets
are cached under ``--cache`` keyed by architecture, size and training settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.provenance import header, write_result

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "mbv3_qat_dis.yaml"
CLASSES = 10
PAD = 8  # rendered images are this much larger than the input; eval resizes to side+4

# name -> (paddle.vision constructor, keyword arguments, baseline epochs, baseline lr)
ARCHS: dict[str, tuple[str, dict[str, Any], int, float]] = {
    "mobilenet_v3_small": ("MobileNetV3Small", {"scale": 0.5}, 8, 5e-3),
    "mobilenet_v1": ("MobileNetV1", {"scale": 0.5}, 12, 2e-3),
}

# the recipe as the issue measured it on small images: batch 32, mild crops, no flips
COMMON = ["Global.batch_size=32", "Global.eval_batch_size=128", "Global.crop_scale=[0.7,1.0]",
          "Global.random_flip=false", "Global.device=cpu", "Global.report=false",
          "Global.checkpoint=false", "TrainConfig.origin_metric=null", "TrainConfig.epochs=null",
          "TrainConfig.logging_iter=1000"]
OFF = ["Global.lr_guard=false", "Global.final_model=last"]  # upstream training, honest end
# variant -> (--set overrides, config sections removed)
VARIANTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "upstream": (["Global.lr_guard=false", "Global.final_model=best"], ()),
    # the model as a static-graph export (batch norms without use_global_stats): ACT then
    # trains with batch statistics and updates the running ones
    "bn-train": (OFF, ()),
    "last": (OFF, ()),
    "lr/4": ([*OFF, "TrainConfig.learning_rate=0.00025"], ()),
    "lr/20": ([*OFF, "TrainConfig.learning_rate=0.00005"], ()),
    "no-pact": ([*OFF, "QuantAware.use_pact=false"], ()),
    "alpha=0.1": ([*OFF, "Distillation.alpha=0.1"], ()),
    "no-quant": (OFF, ("QuantAware",)),  # distillation alone, fp32: is it quantization?
    "shipped": ([], ()),  # the recipe with clsact's defaults (the guard, the last state)
}
@dataclass(frozen=True)
class Case:
    """One run of the study."""

    arch: str
    size: int
    seed: int
    variant: str

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.size}px-{self.variant.replace('/', '_')}-seed{self.seed}"


def dataset(cache: Path, size: int) -> Path:
    """sklearn's digits rendered for ``size``-pixel inputs (cached)."""
    from clsact.demo.digits import build_digits_dataset

    root = cache / f"digits-{size + PAD}"
    if not (root / "val_list.txt").is_file():
        build_digits_dataset(root, side=size + PAD)
    return root


def data_settings(data: Path, size: int) -> list[str]:
    """``--set`` overrides pointing a config at the study's data for ``size``-pixel inputs."""
    return [f"Global.data_dir={data}", f"Global.img_size={size}",
            f"Global.resize_size={size + 4}"]


def baseline(cache: Path, arch: str, size: int) -> tuple[Path, float]:
    """A baseline of ``arch`` trained on the digits at ``size`` pixels and exported (ending
    in a softmax, as PaddleClas exports); cached. Returns (model dir, its val top-1).

    Raises:
        ClsactError: the architecture is unknown.
    """
    from clsact.errors import ClsactError

    if arch not in ARCHS:
        raise ClsactError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    kind, kwargs, epochs, lr = ARCHS[arch]
    out = cache / f"baseline-{arch}-{size}-e{epochs}-lr{lr:g}"
    stamp = out / "baseline.json"
    if stamp.is_file():
        return out, json.loads(stamp.read_text())["top1"]
    data = dataset(cache, size)  # before paddle: sklearn's zlib clashes with paddle's
    import paddle
    from paddle.vision import models

    from clsact import config
    from clsact.demo.digits import train_baseline

    paddle.disable_static()
    paddle.seed(0)
    net = getattr(models, kind)(num_classes=CLASSES, **kwargs)
    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._momentum = 0.9  # running statistics settle within a short training
    g = config.complete_global({"model_dir": str(out), "data_dir": str(data), "img_size": size,
                                "resize_size": size + 4, "batch_size": 64,
                                "crop_scale": [0.7, 1.0], "random_flip": False,
                                "num_workers": 2}, "study baseline")
    out.mkdir(parents=True, exist_ok=True)
    print(f"training the {arch} baseline at {size} px ({epochs} epochs)", flush=True)
    top1 = train_baseline(g, out, epochs, model=net, head=paddle.nn.Softmax(), lr=lr)
    stamp.write_text(json.dumps({"top1": top1, "arch": arch, "size": size}))
    return out, top1


BATCH_STATS_VARIANTS = ("bn-train",)


def batch_stats_form(model: Path) -> Path:
    """A copy of ``model`` (a ``paddle.jit.save`` export) whose batch norms lack
    ``use_global_stats``, as a static-graph ``save_inference_model`` writes them (cached
    next to it)."""
    import shutil

    from clsact.modelio import load_program

    out = model.parent / f"{model.name}-batch-stats"
    if (out / "inference.pdmodel").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    program = load_program(tmp / "inference.pdmodel")
    for op in program.global_block().ops:
        if op.type == "batch_norm":
            op._set_attr("use_global_stats", False)
    (tmp / "inference.pdmodel").write_bytes(program.desc.serialize_to_string())
    tmp.rename(out)
    return out


def recipe(folder: Path, without: tuple[str, ...]) -> Path:
    """The shipped recipe, or a copy of it without the sections ``without`` in ``folder``."""
    if not without:
        return RECIPE
    import yaml

    data = {k: v for k, v in yaml.safe_load(RECIPE.read_text()).items() if k not in without}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"recipe-without-{'-'.join(without)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def compress_run(case: Case, model: Path, data: Path, steps: int, eval_every: int,
                 out: Path, threads: int) -> dict[str, Any]:
    """Run ``clsact compress`` for ``case``; returns its metrics.json plus the log tail on
    failure (``error``)."""
    if case.variant in BATCH_STATS_VARIANTS:
        model = batch_stats_form(model)
    sets = [*COMMON, *data_settings(data, case.size), f"Global.model_dir={model}",
            f"Global.seed={case.seed}", f"TrainConfig.train_iter={steps}",
            f"TrainConfig.eval_iter={eval_every}", *VARIANTS[case.variant][0]]
    args = [sys.executable, "-m", "clsact", "compress", "--config",
            str(recipe(out.parent, VARIANTS[case.variant][1])), "--save-dir", str(out),
            "--overwrite"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CPU_NUM": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads((out / "metrics.json").read_text())


def summarize_run(case: Case, metrics: dict[str, Any]) -> dict[str, Any]:
    """The study's record of one run."""
    row: dict[str, Any] = {"arch": case.arch, "size": case.size, "seed": case.seed,
                           "variant": case.variant}
    if "error" in metrics:
        return {**row, "error": metrics["error"]}
    act = metrics["act"]
    return {**row, "fp32": metrics["baseline"]["top1"], "final": metrics["compressed"]["top1"],
            "evaluations": act["evaluations"], "best": act["best_top1"],
            "final_model": act["final_model"], "bn_frozen_at": act["bn_frozen_at_step"],
            "loss_curve": act["loss_curve"], "steps": act["train_steps"],
            "seconds": metrics["wall_seconds"]}


def summarize(rows: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """Per (arch, size, variant): seeds, mean/min final top-1 change against fp32 (points),
    spread of the final top-1 across seeds (points), whether the targets hold."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["size"], r["variant"]), []).append(r)
    out = []
    for (arch, size, variant), runs in groups.items():
        ok = [r for r in runs if "error" not in r]
        drops = [100 * (r["final"] - r["fp32"]) for r in ok]
        finals = [100 * r["final"] for r in ok]
        best = [100 * (r["best"] - r["fp32"]) for r in ok if r["best"] is not None]
        spread = max(finals) - min(finals) if finals else None
        out.append({
            "arch": arch, "size": size, "variant": variant, "seeds": len(runs),
            "failed": len(runs) - len(ok),
            "fp32": round(100 * ok[0]["fp32"], 2) if ok else None,
            "mean_change": round(statistics.mean(drops), 2) if drops else None,
            "worst_change": round(min(drops), 2) if drops else None,
            "best_eval_change": round(statistics.mean(best), 2) if best else None,
            "spread": round(spread, 2) if spread is not None else None,
            "meets_targets": bool(ok) and len(ok) == len(runs)
            and min(drops) >= -100 * tolerance and spread <= 100 * tolerance})
    return out


def format_table(summary: list[dict[str, Any]], tolerance: float) -> str:
    """The study's table (points of top-1)."""
    head = ("arch", "px", "variant", "seeds", "fp32 %", "final-fp32 mean", "worst",
            "spread", "best eval-fp32", f"final within {100 * tolerance:g} pt, spread <= "
            f"{100 * tolerance:g}")
    lines = [head]
    for s in summary:
        def f(x):
            return "-" if x is None else f"{x:+.2f}"
        lines.append((s["arch"], str(s["size"]), s["variant"],
                      f"{s['seeds']}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
                      "-" if s["fp32"] is None else f"{s['fp32']:.2f}", f(s["mean_change"]),
                      f(s["worst_change"]), "-" if s["spread"] is None else f"{s['spread']:.2f}",
                      f(s["best_eval_change"]), "yes" if s["meets_targets"] else "NO"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (one panel per architecture and size, a colour per variant) and each
    run's final top-1 against fp32.

    Raises:
        ClsactError: matplotlib is missing or the file cannot be written.
    """
    from clsact.plotting import figure

    ok = [r for r in rows if "error" not in r]
    keys = sorted({(r["arch"], r["size"]) for r in ok})
    variants = sorted({r["variant"] for r in ok})
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    with figure(path, (5 * max(1, len(keys)), 7)) as ax:
        fig = ax.figure
        fig.clf()
        for col, key in enumerate(keys):
            top = fig.add_subplot(2, len(keys), col + 1)
            bottom = fig.add_subplot(2, len(keys), len(keys) + col + 1)
            for r in (r for r in ok if (r["arch"], r["size"]) == key):
                c = colours[r["variant"]]
                if r["loss_curve"]:
                    xs, ys = zip(*r["loss_curve"], strict=True)
                    top.plot(xs, ys, color=c, alpha=0.7, lw=1,
                             label=r["variant"] if r["seed"] == min(
                                 x["seed"] for x in ok if x["variant"] == r["variant"]
                                 and (x["arch"], x["size"]) == key) else None)
                bottom.scatter([variants.index(r["variant"])], [100 * (r["final"] - r["fp32"])],
                               color=c, s=18)
            top.set_title(f"{key[0]} {key[1]} px: training loss")
            top.set_xlabel("step")
            top.set_yscale("log")
            top.legend(fontsize=7)
            bottom.axhline(0, color="grey", lw=0.5)
            bottom.axhline(-1, color="grey", lw=0.5, ls="--")
            bottom.set_xticks(range(len(variants)), variants, rotation=30, fontsize=7)
            bottom.set_ylabel("final top-1 - fp32 (points)")


def run_study(cases: list[Case], cache: Path, steps: int, eval_every: int, jobs: int,
              log=print) -> list[dict[str, Any]]:
    """Run every case (``jobs`` at a time, the CPUs shared between them); returns the rows."""
    from concurrent.futures import ThreadPoolExecutor

    models = {(c.arch, c.size): baseline(cache, c.arch, c.size) for c in cases}
    for c in cases:  # made once, before runs in parallel need it
        if c.variant in BATCH_STATS_VARIANTS:
            batch_stats_form(models[(c.arch, c.size)][0])
    threads = max(1, (os.cpu_count() or 1) // jobs)

    def one(case: Case) -> dict[str, Any]:
        start = time.perf_counter()
        model, _ = models[(case.arch, case.size)]
        metrics = compress_run(case, model, dataset(cache, case.size), steps, eval_every,
                               cache / "runs" / case.name, threads)
        row = summarize_run(case, metrics)
        log(f"  {case.name}: " + (f"FAILED {row['error'].strip().splitlines()[-1]}"
                                  if "error" in row else
                                  f"fp32 {100 * row['fp32']:.2f} final {100 * row['final']:.2f}"
                                  f" best {100 * (row['best'] or 0):.2f} evals "
                                  f"{[round(100 * e, 1) for e in row['evaluations']]}")
            + f" ({time.perf_counter() - start:.0f}s)")
        return row

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cases))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.study", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--archs", default="mobilenet_v1,mobilenet_v3_small")
    ap.add_argument("--sizes", default="32,48")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="upstream,shipped")
    ap.add_argument("--steps", type=int, default=80, help="QAT steps per run (batch 32)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "clsact" / "study"))
    ap.add_argument("--output", default="bench-results/study.json")
    ap.add_argument("--plot", default="bench-results/study.png")
    a = ap.parse_args(argv)

    cases = [Case(arch, int(size), int(seed), variant)
             for arch in a.archs.split(",") for size in a.sizes.split(",")
             for variant in a.variants.split(",") for seed in a.seeds.split(",")]
    unknown = sorted({c.variant for c in cases} - set(VARIANTS))
    if unknown:
        print(f"study: unknown variant(s) {', '.join(unknown)}; choose from "
              f"{', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"study: {len(cases)} runs of {a.steps} steps; {header()}", flush=True)
    rows = run_study(cases, cache, a.steps, a.eval_every, a.jobs,
                     log=lambda m: print(m, flush=True))
    summary = summarize(rows, a.tolerance)
    print(format_table(summary, a.tolerance))
    write_result(a.output, {"steps": a.steps, "eval_every": a.eval_every,
                            "tolerance": a.tolerance, "summary": summary, "runs": rows})
    plot(rows, Path(a.plot))
    print(f"wrote {a.output} and {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
