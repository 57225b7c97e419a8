"""``make bench``: MobileNetV3_large_x1_0 at 224 px, fp32 vs compressed by clsact, through
every runtime, side by side in one run.

The model is paddle.vision's ``MobileNetV3Large`` (scale 1.0, 1000 classes; no download,
ImageNet-shaped random weights) exported with ``paddle.jit.save``; clsact compresses it for a
few QAT + distillation steps on the demo's digits resized to 224 (accuracy is not the point
here; latency is). ``clsact bench``'s measurement then runs both models through each runtime
at batch 1 with one thread (the target) and with all cores, and batch 32. The result:
the compressed model through its fastest runtime against the fp32 model through its fastest
fp32 runtime, as a ratio measured in the same run; plus the Paddle Lite ``.nb`` sizes when
an ARM export can run here. Prints a table, writes JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml


def build_models(work: Path, steps: int) -> tuple[Path, Path, Path]:
    """(fp32 model dir, compressed run dir, data dir): the digits at 224, the exported
    MobileNetV3Large, and ``clsact compress`` of it for ``steps`` steps."""
    import paddle
    from paddle.vision.models import MobileNetV3Large

    from clsact import config
    from clsact.compress import compress
    from clsact.demo import build_digits_dataset

    data = work / "data"
    build_digits_dataset(data)
    lines = (data / "val_list.txt").read_text().splitlines()
    (data / "bench_val.txt").write_text("\n".join(lines[:96]) + "\n")
    fp32 = work / "fp32"
    paddle.disable_static()
    paddle.seed(0)
    net = MobileNetV3Large(scale=1.0, num_classes=1000)
    net.eval()
    paddle.jit.save(net, str(fp32 / "inference"),
                    input_spec=[paddle.static.InputSpec([None, 3, 224, 224], "float32",
                                                        "inputs")])
    cfg = {"Global": {"model_dir": str(fp32), "data_dir": str(data), "val_list": "bench_val.txt",
                      "batch_size": 8, "eval_batch_size": 32, "img_size": 224,
                      "resize_size": 256, "random_flip": False, "num_workers": 2,
                      "device": "cpu", "report": False, "checkpoint": False},
           "Distillation": {"alpha": 1.0, "loss": "soft_label"},
           "QuantAware": {"use_pact": False, "onnx_format": True,
                          "quantize_op_types": ["conv2d", "depthwise_conv2d"]},
           "TrainConfig": {"train_iter": steps, "eval_iter": steps, "logging_iter": steps,
                           "learning_rate": 0.0001,
                           "optimizer_builder": {"optimizer": {"type": "Momentum"}}}}
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = work / "run"
    compress(config.load(path), save_dir=str(run))
    return fp32, run, data


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a table, writes JSON."""
    from clsact import compat, logs

    compat.quiet_native_output()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="bench-results/deploy.json")
    p.add_argument("--steps", type=int, default=10, help="QAT steps (default 10)")
    p.add_argument("--budget", type=float, default=15.0, help="seconds per measurement")
    args = p.parse_args(argv)
    logs.setup(False)

    from clsact.deploy import bench, report
    from clsact.deploy.runtimes import ModelFiles, cpu_count

    with tempfile.TemporaryDirectory(prefix="clsact-bench-deploy-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        fp32, run, _data = build_models(work, args.steps)
        build_s = time.perf_counter() - t
        threads = tuple(dict.fromkeys((1, cpu_count())))
        results = []
        for name, where in (("fp32", fp32), ("compressed", run / "model")):
            results += bench.bench_model(name, ModelFiles.of(where), 224, threads=threads,
                                         batches=(1, 32), budget_s=args.budget)
        summary = report.summary(results, "fp32", "compressed")
        sizes = _arm_sizes(fp32, run / "model", work)
    print(bench.format_table(results))
    best, ref = summary["fastest"], summary["baseline_fastest_fp32"]
    print(f"\nbatch 1, 1 thread: compressed through {best['runtime']} {best['p50_ms']:.2f} ms "
          f"vs fp32 through {ref['runtime']} {ref['p50_ms']:.2f} ms: "
          f"{summary['speedup']:.2f}x ({'met' if summary['speedup'] > 1 else 'NOT met'}: the "
          "target is > 1)")
    print(f"Paddle Lite .nb for ARM: {sizes}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "MobileNetV3Large x1.0, 224 px", "qat_steps": args.steps,
                               "build_seconds": round(build_s, 1), "summary": summary,
                               "arm_nb_bytes": sizes, "measurements": bench.to_json(results)},
                              indent=2) + "\n")
    print(f"written to {out}")
    return 0


def _arm_sizes(fp32: Path, compressed: Path, work: Path) -> dict[str, int] | str:
    """Sizes of the two models' Paddle Lite .nb files, or why there are none."""
    from clsact.deploy import export
    from clsact.errors import ClsactError

    try:
        opt = export.lite_optimizer(export.find_lite_python())
        return {name: export.export_arm(d / "inference.pdmodel", d / "inference.pdiparams",
                                        work / "nb" / name, opt).stat().st_size
                for name, d in (("fp32", fp32), ("compressed", compressed))}
    except ClsactError as exc:
        return f"skipped: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
