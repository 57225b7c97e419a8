"""``make bench``: MobileNetV3_large_x1_0 at 224 px, channel-pruned + QAT by the shipped
``configs/mbv3_prune_qat_dis.yaml`` against its fp32 baseline, side by side in one run.

The baseline is paddle.vision's ``MobileNetV3Large`` (scale 1.0, 10 classes) trained from
scratch on the demo's digits at 224 px (``--epochs``; no download), so both top-1s mean
something. clsact then runs the shipped config on it — ChannelPrune of every pointwise
convolution with distillation, then QAT + distillation on the pruned model — with only the
model, the data, the batch and the run's length overridden (``--steps`` pruning steps; the QAT
stage gets ACT's 10 %). Measured: the two models' top-1 on the digits' validation set (the
run's own exact evaluations), their FLOPs and parameters (paddleslim), and their latency at
batch 1 with one thread through every CPU runtime here, interleaved, the pruned + QAT model
through its fastest runtime against the fp32 model through its fastest fp32/bf16 runtime
(paired ratio). Targets: >= 1.5x and top-1 within 1 point. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.bench.deploy import predictors, side_by_side
from tests.bench.provenance import REPO, header, write_result

TARGET_SPEEDUP, TARGET_POINTS = 1.5, 1.0
CONFIG = REPO / "configs" / "mbv3_prune_qat_dis.yaml"


def build_fp32(work: Path, epochs: int) -> tuple[Path, Path, float]:
    """(fp32 model dir, data dir, its top-1 in training): MobileNetV3Large trained on the
    digits at 224."""
    import paddle
    from paddle.vision.models import MobileNetV3Large

    from clsact import config
    from clsact.demo.digits import build_digits_dataset, train_baseline

    data = work / "data"
    build_digits_dataset(data)
    fp32 = work / "fp32"
    paddle.disable_static()
    paddle.seed(0)
    g = config.complete_global({"model_dir": str(fp32), "data_dir": str(data), "img_size": 224,
                                "resize_size": 256, "batch_size": 32, "num_workers": 2,
                                "random_flip": False}, "bench")
    top1 = train_baseline(g, fp32, epochs, model=MobileNetV3Large(scale=1.0, num_classes=10),
                          head=paddle.nn.Softmax(), lr=2e-3)
    return fp32, data, top1


def compress_shipped(work: Path, fp32: Path, data: Path, steps: int) -> Path:
    """The shipped prune + QAT config on ``fp32`` (model, data, batch and length
    overridden); returns the published run."""
    from clsact import config
    from clsact.compress import compress

    sets = [f"Global.model_dir={fp32}", f"Global.data_dir={data}", "Global.batch_size=16",
            "Global.eval_batch_size=64", "Global.num_workers=2", "Global.device=cpu",
            "Global.report=false", "Global.checkpoint=false", "Global.random_flip=false",
            "TrainConfig.origin_metric=null", "TrainConfig.epochs=null",
            f"TrainConfig.train_iter={steps}", f"TrainConfig.eval_iter={steps}",
            "TrainConfig.logging_iter=20"]
    run = work / "run"
    compress(config.load(CONFIG, sets), save_dir=str(run))
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the tables, writes JSON."""
    from clsact import compat, logs

    compat.quiet_native_output()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="bench-results/prune.json")
    p.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    p.add_argument("--steps", type=int, default=150, help="pruning steps (QAT: a tenth)")
    args = p.parse_args(argv)
    logs.setup(False)

    from clsact.deploy import machine
    from clsact.deploy.runtimes import ModelFiles

    with tempfile.TemporaryDirectory(prefix="clsact-bench-prune-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        fp32, data, trained_top1 = build_fp32(work, args.epochs)
        train_s = time.perf_counter() - t
        run = compress_shipped(work, fp32, data, args.steps)
        compress_s = time.perf_counter() - t - train_s
        m = json.loads((run / "metrics.json").read_text())
        fp32_calls, skipped = predictors(ModelFiles.of(fp32), "fp32")
        q_calls, q_skipped = predictors(ModelFiles.of(run / "model"), "pruned-qat")
        q_calls.pop("pruned-qat/paddle-cpu", None)  # QDQ run in fp32: not a deployment
        paired = side_by_side({**fp32_calls, **q_calls}, "fp32/", "pruned-qat")
    base, comp, pr = m["baseline"], m["compressed"], m["pruning"]
    points = 100 * (comp["top1"] - base["top1"])
    print(header())
    print(f"MobileNetV3Large x1.0 on the digits at 224 px: fp32 trained {args.epochs} epochs "
          f"({train_s:.0f} s); {CONFIG.name}: {m['stages'][0]['train_steps']} pruning + "
          f"{m['stages'][1]['train_steps']} QAT steps ({compress_s:.0f} s)")
    print(f"  {'model':<12} {'top-1':>7} {'FLOPs':>14} {'params':>11} {'files':>11}")
    for name, acc, meas in (("fp32", base, pr["baseline"]), ("pruned+QAT", comp,
                                                               pr["compressed"])):
        print(f"  {name:<12} {100 * acc['top1']:6.2f}% {meas['flops']:14,d} "
              f"{meas['params']:11,d} {meas['file_bytes']:11,d}")
    print(f"  stage 1 (pruned, fp32) top-1 {100 * m['stages'][0]['top1']:.2f}%")
    print("batch 1, 1 thread, interleaved (median ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in paired["ms"].items()))
    met_speed = paired["speedup"] is not None and paired["speedup"] >= TARGET_SPEEDUP
    met_acc = points >= -TARGET_POINTS
    print(f"  pruned+QAT through {paired['fastest']} vs fp32 through {paired['baseline']}: "
          f"{paired['speedup']:.2f}x (paired; target >= {TARGET_SPEEDUP}x: "
          f"{'met' if met_speed else 'NOT met'}); FLOPs ratio {pr['flops_ratio']:.2f}x")
    print(f"  top-1 {100 * comp['top1']:.2f}% vs fp32 {100 * base['top1']:.2f}%: "
          f"{points:+.2f} points (target within {TARGET_POINTS}: "
          f"{'met' if met_acc else 'NOT met'})")
    for key, why in {**skipped, **q_skipped}.items():
        print(f"  skipped {key}: {why}")
    write_result(args.output, {
        "model": "MobileNetV3Large x1.0, 224 px, 10 classes (digits)", "config": CONFIG.name,
        "baseline_epochs": args.epochs, "baseline_trained_top1": trained_top1,
        "pruning_steps": m["stages"][0]["train_steps"], "qat_steps": m["stages"][1]["train_steps"],
        "seconds": {"train": round(train_s, 1), "compress": round(compress_s, 1)},
        "machine": machine.describe(), "top1": {"fp32": base["top1"], "pruned_qat":
                                                comp["top1"], "stage1": m["stages"][0]["top1"],
                                                "points": round(points, 2)},
        "pruning": pr, "side_by_side": paired,
        "targets": {"speedup": TARGET_SPEEDUP, "points": TARGET_POINTS,
                    "speedup_met": met_speed, "accuracy_met": met_acc}})
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
