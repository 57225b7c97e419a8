"""``make bench``: MobileNetV3_large_x1_0 channel-pruned + QAT by the shipped
``configs/mbv3_prune_qat_dis.yaml`` against its fp32 baseline: latency at 224 px, top-1 on
the demo's digits, side by side in one run.

The baseline is paddle.vision's ``MobileNetV3Large`` (scale 1.0, 10 classes) trained from
scratch on the digits (no download) at ``--train-size`` px: from scratch at 224 px it does
not learn within what a benchmark can spend on two CPUs (measured: 10 % top-1 after two
epochs, 200 s each), at 64 px it does in minutes. clsact then runs the shipped config on it —
ChannelPrune of every pointwise convolution with distillation, then QAT + distillation on
the pruned model — with only the model, the data, the sizes, the batch and the run's length
overridden (``--steps`` pruning steps; the QAT stage gets ACT's 10 %): the two top-1s are
that run's exact evaluations on the digits' validation set.

Latency is the model's at 224 px: the same trained weights exported at 224 and compressed
by the same config for a few steps (the pruned architecture is the same: the same ratio of
the same weights by the same L1 criterion; latency does not depend on the trained values),
measured at batch 1 with one thread through every CPU runtime here, interleaved: the pruned +
QAT model through its fastest runtime against the fp32 model through its fastest fp32/bf16
runtime (paired ratio), next to the FLOPs ratio; then against fp32 precision alone (the bf16
deployment needs AVX512_BF16/AMX) and on older CPUs emulated here (oneDNN capped to AVX2, and
to AVX-512 VNNI). Targets: >= 1.5x and top-1 within 1 point. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.bench.deploy import emulated, format_emulated, predictors, side_by_side
from tests.bench.provenance import REPO, header, write_result

TARGET_SPEEDUP, TARGET_POINTS = 1.5, 1.0
CONFIG = REPO / "configs" / "mbv3_prune_qat_dis.yaml"


def build_fp32(cache: Path, epochs: int, size: int) -> tuple[Path, Path, Path, float]:
    """(fp32 model dir at ``size`` px, the same weights exported at 224 px, data dir, its
    top-1 in training): MobileNetV3Large trained on the digits at ``size`` px, kept in
    ``cache`` (keyed by the epochs and the size) for the next run."""
    out = cache / f"mbv3-large-{size}px-e{epochs}"
    data, fp32, at224, stamp = out / "data", out / "fp32", out / "fp32-224", out / "top1.json"
    if stamp.is_file():
        return fp32, at224, data, json.loads(stamp.read_text())["top1"]
    from clsact.demo.digits import build_digits_dataset  # before paddle (sklearn's zlib)

    build_digits_dataset(data)
    import paddle
    from paddle.vision.models import MobileNetV3Large

    from clsact import config
    from clsact.demo.digits import train_baseline

    paddle.disable_static()
    paddle.seed(0)
    g = config.complete_global({"model_dir": str(fp32), "data_dir": str(data),
                                "img_size": size, "resize_size": size * 8 // 7,
                                "batch_size": 64, "crop_scale": [0.7, 1.0],
                                "num_workers": 2, "random_flip": False}, "bench")
    net = MobileNetV3Large(scale=1.0, num_classes=10)
    for layer in net.sublayers():  # as tests/bench/study.py: statistics that settle in minutes
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._momentum = 0.9
    top1 = train_baseline(g, fp32, epochs, model=net, head=paddle.nn.Softmax(), lr=5e-3)
    exported = paddle.nn.Sequential(net, paddle.nn.Softmax())
    exported.eval()
    paddle.jit.save(exported, str(at224 / "inference"), input_spec=[
        paddle.static.InputSpec([None, 3, 224, 224], "float32", "inputs")])
    stamp.write_text(json.dumps({"top1": top1}))
    return fp32, at224, data, top1


def compress_shipped(work: Path, name: str, fp32: Path, data: Path, size: int,
                     steps: int) -> Path:
    """The shipped prune + QAT config on ``fp32`` (model, data, sizes, batch and length
    overridden); returns the published run."""
    from clsact import config
    from clsact.compress import compress

    sets = [f"Global.model_dir={fp32}", f"Global.data_dir={data}", f"Global.img_size={size}",
            f"Global.resize_size={size * 8 // 7}", "Global.batch_size=32",
            "Global.crop_scale=[0.7,1.0]",
            "Global.eval_batch_size=64", "Global.num_workers=2", "Global.device=cpu",
            "Global.report=false", "Global.checkpoint=false", "Global.random_flip=false",
            "TrainConfig.origin_metric=null", "TrainConfig.epochs=null",
            f"TrainConfig.train_iter={steps}", f"TrainConfig.eval_iter={steps}",
            "TrainConfig.logging_iter=20"]
    run = work / name
    compress(config.load(CONFIG, sets), save_dir=str(run))
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the tables, writes JSON."""
    from clsact import compat, logs

    compat.quiet_native_output()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="bench-results/prune.json")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "clsact" / "bench-prune"),
                   help="where the trained baseline is kept between runs")
    p.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    p.add_argument("--train-size", type=int, default=64, help="px the accuracy is measured at")
    p.add_argument("--steps", type=int, default=1000, help="pruning steps (QAT: a tenth)")
    p.add_argument("--latency-steps", type=int, default=10,
                   help="pruning steps of the 224 px copy measured for latency")
    args = p.parse_args(argv)
    logs.setup(False)

    from clsact.deploy import machine
    from clsact.deploy.runtimes import ModelFiles

    with tempfile.TemporaryDirectory(prefix="clsact-bench-prune-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        fp32, at224, data, trained_top1 = build_fp32(Path(args.cache), args.epochs,
                                                     args.train_size)
        train_s = time.perf_counter() - t
        run = compress_shipped(work, "run", fp32, data, args.train_size, args.steps)
        compress_s = time.perf_counter() - t - train_s
        fast = compress_shipped(work, "run-224", at224, data, 224, args.latency_steps)
        m = json.loads((run / "metrics.json").read_text())
        m224 = json.loads((fast / "metrics.json").read_text())
        fp32_calls, skipped = predictors(ModelFiles.of(at224), "fp32")
        q_calls, q_skipped = predictors(ModelFiles.of(fast / "model"), "pruned-qat")
        q_calls.pop("pruned-qat/paddle-cpu", None)  # QDQ run in fp32: not a deployment
        paired = side_by_side({**fp32_calls, **q_calls}, "fp32/", "pruned-qat")
        # fp32 precision only: the bf16 deployment is this CPU's (AMX/AVX512_BF16) alone
        f32 = {k: v for k, v in fp32_calls.items() if "bf16" not in k}
        paired_f32 = side_by_side({**f32, **q_calls}, "fp32/", "pruned-qat")
        older = emulated(at224, fast / "model")
    base, comp, pr = m["baseline"], m["compressed"], m224["pruning"]
    points = 100 * (comp["top1"] - base["top1"])
    print(header())
    print(f"MobileNetV3Large x1.0 on the digits at {args.train_size} px: fp32 trained "
          f"{args.epochs} epochs ({train_s:.0f} s); {CONFIG.name}: "
          f"{m['stages'][0]['train_steps']} pruning + {m['stages'][1]['train_steps']} QAT "
          f"steps ({compress_s:.0f} s)")
    print(f"  {'model':<12} {'top-1':>7} {'FLOPs@224':>14} {'params':>11} {'files':>11}")
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
    print(f"  against fp32 precision only: pruned+QAT through {paired_f32['fastest']} vs fp32 "
          f"through {paired_f32['baseline']}: {paired_f32['speedup']:.2f}x (paired)")
    if older:
        print(format_emulated(older, {isa: TARGET_SPEEDUP for isa in older}))
    for key, why in {**skipped, **q_skipped}.items():
        print(f"  skipped {key}: {why}")
    write_result(args.output, {
        "model": "MobileNetV3Large x1.0, 10 classes (digits)", "config": CONFIG.name,
        "train_px": args.train_size, "latency_px": 224,
        "baseline_epochs": args.epochs, "baseline_trained_top1": trained_top1,
        "pruning_steps": m["stages"][0]["train_steps"], "qat_steps": m["stages"][1]["train_steps"],
        "seconds": {"train": round(train_s, 1), "compress": round(compress_s, 1)},
        "machine": machine.describe(), "top1": {"fp32": base["top1"], "pruned_qat":
                                                comp["top1"], "stage1": m["stages"][0]["top1"],
                                                "points": round(points, 2)},
        "pruning_at_224": pr, "pruning_at_train_px": m["pruning"], "side_by_side": paired,
        "side_by_side_fp32_precision": paired_f32, "emulated_cpus": older,
        "targets": {"speedup": TARGET_SPEEDUP, "points": TARGET_POINTS,
                    "speedup_met": met_speed, "accuracy_met": met_acc}})
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
