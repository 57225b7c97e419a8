"""``make bench``: MobileNetV3_large_x1_0 at 224 px, fp32 vs compressed by clsact, through
every runtime, side by side in one run.

The model is paddle.vision's ``MobileNetV3Large`` (scale 1.0, 1000 classes; no download,
ImageNet-shaped random weights) exported with ``paddle.jit.save``; clsact compresses it for a
few QAT + distillation steps on the demo's digits resized to 224 (accuracy is not the point
here; latency is). ``clsact bench``'s measurement then runs both models through each runtime
at batch 1 with one thread (the target) and with all cores, and batch 32. The result:
the compressed model through its fastest runtime against the fp32 model through its fastest
fp32 or bf16 runtime, as a ratio measured in the same run; plus the Paddle Lite ``.nb`` sizes
when an ARM export can run here. Every figure names the CPU's instruction sets.

The **levers** (issue 24): each other form the compressed model could be served in, measured
interleaved with the form clsact serves through the same engine, with its top-1 agreement
with Paddle's own arithmetic on the bench images (what it would cost in fidelity). Prints
tables, writes JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from tests.bench.provenance import REPO, header, write_result

TARGET_VNNI, TARGET_AVX2 = 1.5, 1.15  # paired speedup over the fastest fp32/bf16 deployment
QAT_DEFAULT = {"use_pact": False, "onnx_format": True,
               "quantize_op_types": ["conv2d", "depthwise_conv2d"]}
# QuantAware settings that can move the int8 speed (issue 14, item 4): each is the default
# above with one change, compressed and measured the same way.
VARIANTS: dict[str, dict] = {
    "default (conv2d + depthwise, per-channel)": {},
    "no depthwise (conv2d only)": {"quantize_op_types": ["conv2d"]},
    "+ matmul_v2 (the classifier's FCs)": {
        "quantize_op_types": ["conv2d", "depthwise_conv2d", "matmul_v2"]},
    "per-tensor weights (abs_max)": {"weight_quantize_type": "abs_max"},
    "is_full_quantize": {"is_full_quantize": True},
    "onnx_format false (fake quant ops)": {"onnx_format": False},
}


def build_fp32(work: Path) -> tuple[Path, Path]:
    """(fp32 model dir, data dir): the digits at 224 and the exported MobileNetV3Large."""
    import paddle
    from paddle.vision.models import MobileNetV3Large

    from clsact.demo.digits import build_digits_dataset

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
    return fp32, data


def bench_images(data: Path, count: int = 48):
    """The first ``count`` bench validation images, decoded at 224 as the runs read them."""
    import numpy as np

    from clsact import config
    from clsact.data.build import make_loader, read_samples

    g = config.complete_global({"model_dir": ".", "data_dir": str(data), "img_size": 224,
                                "resize_size": 256, "val_list": "bench_val.txt",
                                "num_workers": 0}, "bench")
    loader = make_loader(g, read_samples(g, "val")[:count], train=False, batch_size=count)
    try:
        return np.concatenate([np.array(b.images, copy=True) for b in loader.epoch(0)])
    finally:
        loader.close()


def compress_model(work: Path, name: str, fp32: Path, data: Path, steps: int,
                   quant_aware: dict | None = None) -> Path:
    """``clsact compress`` of ``fp32`` for ``steps`` steps with :data:`QAT_DEFAULT` updated
    by ``quant_aware``; returns the run dir (its model in ``model/``)."""
    from clsact import config
    from clsact.compress import compress

    cfg = {"Global": {"model_dir": str(fp32), "data_dir": str(data), "val_list": "bench_val.txt",
                      "batch_size": 8, "eval_batch_size": 32, "img_size": 224,
                      "resize_size": 256, "random_flip": False, "num_workers": 2,
                      "device": "cpu", "report": False, "checkpoint": False},
           "Distillation": {"alpha": 1.0, "loss": "soft_label"},
           "QuantAware": {**QAT_DEFAULT, **(quant_aware or {})},
           "TrainConfig": {"train_iter": steps, "eval_iter": steps, "logging_iter": steps,
                           "learning_rate": 0.0001,
                           "optimizer_builder": {"optimizer": {"type": "Momentum"}}}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = work / name
    compress(config.load(path), save_dir=str(run))
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the tables, writes JSON."""
    from clsact import compat, logs

    compat.quiet_native_output()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="bench-results/deploy.json")
    p.add_argument("--steps", type=int, default=10, help="QAT steps (default 10)")
    p.add_argument("--budget", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--no-sweep", action="store_true", help="skip the QuantAware variants "
                   "(each is compressed again: about 3 minutes apiece)")
    p.add_argument("--isa-child", nargs=2, metavar=("FP32", "COMPRESSED"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.isa_child:
        return _isa_child(*args.isa_child)
    logs.setup(False)

    from clsact.deploy import bench, machine, profile, report
    from clsact.deploy.runtimes import RUNTIMES, ModelFiles
    from clsact.process import cpu_count

    with tempfile.TemporaryDirectory(prefix="clsact-bench-deploy-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        fp32, data = build_fp32(work)
        run = compress_model(work, "run", fp32, data, args.steps)
        build_s = time.perf_counter() - t
        threads = tuple(dict.fromkeys((1, cpu_count())))
        results = []
        for name, where in (("fp32", fp32), ("compressed", run / "model")):
            results += bench.bench_model(name, ModelFiles.of(where), 224, threads=threads,
                                         batches=(1, 32), budget_s=args.budget)
        summary = report.summary(results, "fp32", "compressed")
        fp32_calls, _ = predictors(ModelFiles.of(fp32), "fp32")
        q_calls, _ = predictors(ModelFiles.of(run / "model"), "compressed")
        q_calls.pop("compressed/paddle-cpu", None)  # QDQ run in fp32: not a deployment
        paired = side_by_side({**fp32_calls, **q_calls}, "fp32/", "compressed")
        base_key = paired["baseline"]
        compressed = ModelFiles.of(run / "model")
        served = {rt.key: rt.load(compressed, 1) for rt in RUNTIMES
                  if rt.key in ("onnxruntime", "openvino") and rt.skip_reason(compressed) is None}
        lever_rows = levers(compressed, bench_images(data), served)
        anatomy = {name: profile.where_time_goes(ModelFiles.of(where))
                   for name, where in (("fp32", fp32), ("compressed", run / "model"))}
        sizes = _arm_sizes(fp32, run / "model", work)
        older = emulated(fp32, run / "model")
        variants = [] if args.no_sweep else sweep(work, fp32, data, args.steps,
                                                  (base_key, fp32_calls[base_key]))
    where = machine.describe()
    target = TARGET_VNNI if machine.has_vnni() else TARGET_AVX2
    print(header())
    print(bench.format_table(results))
    best, ref = summary["fastest"], summary["baseline_fastest"]
    print(f"\nbatch 1, 1 thread: compressed through {best['runtime']} {best['p50_ms']:.2f} ms "
          f"vs fp32 through {ref['runtime']} {ref['p50_ms']:.2f} ms: "
          f"{summary['speedup']:.2f}x (separate measurements)")
    print("side by side (interleaved rounds, batch 1, 1 thread, median ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in paired["ms"].items()))
    met = paired["speedup"] is not None and paired["speedup"] >= target
    print(f"  compressed through {paired['fastest']} vs fp32/bf16 through {base_key}: "
          f"{paired['speedup']:.2f}x (paired; target >= {target}x on this CPU "
          f"({'VNNI' if machine.has_vnni() else 'AVX2 only'}): {'met' if met else 'NOT met'})")
    print("\n" + format_levers(lever_rows))
    if older:
        print("\n" + format_emulated(older, {"AVX2": TARGET_AVX2,
                                            "AVX512_CORE_VNNI": TARGET_VNNI}))
    print(f"Paddle Lite .nb for ARM: {sizes}\n")
    print(profile.format_anatomy(anatomy))
    if variants:
        print("\n" + format_sweep(variants))
    write_result(args.output, {"model": "MobileNetV3Large x1.0, 224 px", "qat_steps": args.steps,
                               "build_seconds": round(build_s, 1), "machine": where,
                               "target": target, "summary": summary,
                               "side_by_side": paired, "levers": lever_rows,
                               "emulated_cpus": older,
                               "arm_nb_bytes": sizes, "measurements": bench.to_json(results),
                               "where_time_goes": anatomy, "variants": variants})
    print(f"written to {args.output}")
    return 0


CPU_RUNTIMES = ("paddle-cpu", "paddle-cpu-int8", "onnxruntime", "openvino", "openvino-bf16")
# Older CPUs emulated on this one: oneDNN (in Paddle and in OpenVINO's CPU plugin) uses no
# instruction set above ONEDNN_MAX_CPU_ISA. ONNX Runtime's MLAS has no such cap, and a capped
# OpenVINO refuses bf16, so those rows are left out of the emulated measurements.
EMULATED = {"AVX2": ("avx2", "AVX2 only: no VNNI, no AVX-512, no bf16"),
            "AVX512_CORE_VNNI": ("avx512_vnni", "AVX-512 VNNI, no AMX, no bf16 (Cascade Lake)")}
EMULATED_RUNTIMES = ("paddle-cpu", "paddle-cpu-int8", "openvino")


def emulated(fp32: Path, compressed: Path) -> dict[str, dict]:
    """For each of :data:`EMULATED` this CPU is above: the batch-1, one-thread side by side
    of the oneDNN runtimes in a child process whose oneDNN is capped to that instruction set
    (``--isa-child``), with the compressed model's paired speedup over the fp32 model's."""
    import os
    import subprocess
    import sys

    from clsact.deploy import machine

    flags = machine.cpu()[1]
    out = {}
    for isa, (flag, what) in EMULATED.items():
        if flag not in flags or isa == "AVX512_CORE_VNNI" and not (
                machine.has_bf16(flags) or "amx_int8" in flags):
            continue  # not above it: the real rows are this ISA already
        # by its import name: run as `python -m tests.bench.deploy`, __name__ is __main__
        proc = subprocess.run([sys.executable, "-m", "tests.bench.deploy", "--isa-child",
                               str(fp32), str(compressed)], capture_output=True, text=True,
                              timeout=1800, cwd=REPO,
                              env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa})
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            out[isa] = {"what": what, "error": err[:300]}
            continue
        out[isa] = {"what": what, **json.loads(lines[-1])}
    return out


def _isa_child(fp32: str, compressed: str) -> int:
    """Child of :func:`emulated`: the side by side as one JSON line."""
    from clsact import compat
    from clsact.deploy.runtimes import ModelFiles

    compat.quiet_native_output()
    calls = {}
    for label, where in (("fp32", fp32), ("compressed", compressed)):
        found, _ = predictors(ModelFiles.of(where), label, EMULATED_RUNTIMES)
        calls.update(found)
    calls.pop("compressed/paddle-cpu", None)  # QDQ run in fp32: not a deployment
    print(json.dumps(side_by_side(calls, "fp32/", "compressed")))
    return 0


def format_emulated(rows: dict[str, dict], targets: dict[str, float]) -> str:
    """The emulated instruction sets as lines."""
    lines = ["older CPUs emulated (oneDNN capped with ONEDNN_MAX_CPU_ISA; Paddle and OpenVINO "
             "only: ONNX Runtime cannot be capped), batch 1, 1 thread, interleaved:"]
    for isa, r in rows.items():
        if "error" in r:
            lines.append(f"  {isa} ({r['what']}): FAILED: {r['error']}")
            continue
        ms = ", ".join(f"{k} {v:.2f}" for k, v in r["ms"].items())
        met = r["speedup"] is not None and r["speedup"] >= targets[isa]
        lines.append(f"  {isa} ({r['what']}): {ms} ms; compressed through {r['fastest']} vs "
                     f"fp32 through {r['baseline']}: {r['speedup']:.2f}x (paired; target >= "
                     f"{targets[isa]}x: {'met' if met else 'NOT met'})")
    return "\n".join(lines)


def lever_predictors(files) -> dict[str, tuple[str, object]]:
    """``{lever: (the served runtime it is compared with, predict)}``: the compressed
    model's other forms (each one change from what clsact serves), with one thread.

    Raises:
        RuntimeSkip: a converter or runtime rejects a form.
    """
    from clsact.deploy import qdq
    from clsact.deploy.runtimes import (
        _openvino_predictor,
        _ort_predictor,
        serving_onnx,
        split_int8_here,
    )

    uint8 = qdq.uint8_activations(serving_onnx(files))[0]
    split = split_int8_here()
    return {
        ("OpenVINO: int8 ops whole (their sums saturate here)" if split else
         "OpenVINO: int8 ops split (what a CPU without VNNI is served)"):
            ("openvino", _openvino_predictor(files, 1, split=not split)),
        "ORT: uint8 activation zero points (more QLinearConv)":
            ("onnxruntime", _ort_predictor(files, 1, model=uint8)),
        "ORT: observer pairs removed": ("onnxruntime", _ort_predictor(
            files, 1, model=serving_onnx(files, observers=False))),
        "OpenVINO: the .pdmodel as saved (observer pairs kept)":
            ("openvino", _openvino_predictor(files, 1, model=files.model_file)),
        "OpenVINO: the serving ONNX (observers kept)":
            ("openvino", _openvino_predictor(files, 1, model=serving_onnx(files))),
        "OpenVINO: the serving ONNX, uint8 zero points":
            ("openvino", _openvino_predictor(files, 1, model=uint8)),
        "OpenVINO: the ONNX without observer pairs":
            ("openvino", _openvino_predictor(files, 1, model=serving_onnx(
                files, observers=False))),
    }


def levers(files, images, served: dict) -> list[dict]:
    """Each lever measured interleaved with the served form of its engine (``served``:
    ``{runtime: predict}``), with its top-1 agreement with Paddle's fp32 kernels on
    ``images`` (N, 3, 224, 224), and the served form's, for comparison."""
    import numpy as np

    from clsact.deploy.latency import interleaved, paired_ratio
    from clsact.deploy.runtimes import RUNTIMES, RuntimeSkip
    from clsact.errors import ClsactError

    paddle = next(r for r in RUNTIMES if r.key == "paddle-cpu").load(files, 1)
    ref = np.concatenate([paddle(images[i:i + 1]).argmax(1) for i in range(len(images))])

    def agree(predict) -> float:
        got = np.concatenate([predict(images[i:i + 1]).argmax(1) for i in range(len(images))])
        return round(float((got == ref).mean()), 4)

    try:
        found = lever_predictors(files)
    except (RuntimeSkip, ClsactError) as exc:
        return [{"lever": "all", "skipped": str(exc)}]
    x = images[:1]
    out = []
    for name, (runtime, predict) in found.items():
        if runtime not in served:
            continue
        rounds = interleaved({"served": lambda p=served[runtime]: p(x),
                              "lever": lambda p=predict: p(x)}, rounds=7, per_round=20)
        out.append({"lever": name, "runtime": runtime,
                    "served_ms": round(float(np.median(rounds["served"])), 3),
                    "lever_ms": round(float(np.median(rounds["lever"])), 3),
                    "lever_speedup": round(paired_ratio(rounds, "served", "lever"), 3),
                    "agreement": agree(predict), "served_agreement": agree(served[runtime])})
    return out


def format_levers(rows: list[dict]) -> str:
    """The levers as a table."""
    lines = ["levers (compressed model, batch 1, 1 thread, interleaved with the form clsact "
             "serves through the same engine; speedup: the lever's over the served form's "
             "(paired, > 1: the lever is faster); agree: top-1 equal to Paddle's on the bench "
             "images, the lever's and the served form's)",
             f"  {'lever':<56} {'served ms':>9} {'lever ms':>9} {'speedup':>8} "
             f"{'agree':>6} {'(served)':>8}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"  {r['lever']:<56} skipped: {r['skipped']}")
            continue
        lines.append(f"  {r['lever']:<56} {r['served_ms']:9.2f} {r['lever_ms']:9.2f} "
                     f"{r['lever_speedup']:7.2f}x {100 * r['agreement']:5.1f}% "
                     f"{100 * r['served_agreement']:7.1f}%")
    return "\n".join(lines)


def predictors(files, label: str, keys: tuple[str, ...] = CPU_RUNTIMES
               ) -> tuple[dict, dict[str, str]]:
    """``{label/runtime: predict-a-224-batch-of-1}`` for each CPU runtime of ``keys`` that
    can run the model with one thread, and ``{label/runtime: why not}`` for the others."""
    import numpy as np

    from clsact.deploy.runtimes import RUNTIMES, RuntimeSkip
    from clsact.errors import ClsactError

    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    calls, skipped = {}, {}
    for rt in RUNTIMES:
        if rt.key not in keys:
            continue
        key = f"{label}/{rt.key}"
        reason = rt.skip_reason(files)
        if reason is None:
            try:
                predict = rt.load(files, 1)
                calls[key] = lambda predict=predict: predict(x)
                continue
            except (RuntimeSkip, ClsactError, RuntimeError, ValueError) as exc:
                reason = str(exc)
        skipped[key] = reason
    return calls, skipped


def side_by_side(calls: dict, baseline: str, label: str, rounds: int = 9) -> dict:
    """Interleaved rounds of ``calls`` (:func:`clsact.deploy.latency.interleaved`): each
    call's median ms, and the fastest ``label/...`` call's paired speedup over the fastest
    call whose key starts with ``baseline`` (a key or a ``label/`` prefix)."""
    from clsact.deploy.latency import interleaved, paired_ratio

    per_round = interleaved(calls, rounds=rounds, per_round=20)
    ms = {k: round(float(sorted(v)[len(v) // 2]), 3) for k, v in per_round.items()}

    def fastest(prefix: str) -> str | None:
        keys = [k for k in ms if k.startswith(prefix)]
        return min(keys, key=ms.__getitem__) if keys else None

    best, base = fastest(f"{label}/"), fastest(baseline)
    return {"ms": ms, "fastest": best, "baseline": base,
            "speedup": round(paired_ratio(per_round, base, best), 3) if best and base
            else None}


def sweep(work: Path, fp32: Path, data: Path, steps: int, baseline: tuple[str, object]
          ) -> list[dict]:
    """Each of :data:`VARIANTS` compressed, then its CPU runtimes measured at batch 1, one
    thread, interleaved with ``baseline`` (the fp32 model's fastest: (key, call)), with the
    time split by kind (int8, fp32, qdq, layout) through ONNX Runtime and OpenVINO."""
    from clsact.deploy import profile
    from clsact.deploy.runtimes import ModelFiles, RuntimeSkip
    from clsact.errors import ClsactError

    out = []
    for i, (name, change) in enumerate(VARIANTS.items()):
        row: dict = {"variant": name, "quant_aware": change}
        out.append(row)
        try:
            files = ModelFiles.of(compress_model(work, f"variant{i}", fp32, data, steps,
                                                 change) / "model")
        except ClsactError as exc:
            row["error"] = str(exc)
            continue
        census = profile.paddle_census(files.model_file)
        row["int8_weight_ops"] = sum(r.get("int8_weights", 0) for r in census.values())
        row["quantize_linear"] = census.get("quantize_linear", {}).get("ops", 0)
        row["quantized_op_types"] = list(files.quantized_ops)
        calls, row["skipped"] = predictors(files, "v")
        calls.pop("v/paddle-cpu", None)  # QDQ run in fp32: not a deployment
        row.update(side_by_side({baseline[0]: baseline[1], **calls}, baseline[0], "v"))
        for key, fn in (("onnxruntime", profile.onnxruntime_ops),
                        ("openvino", profile.openvino_ops)):
            try:
                row[f"{key}_split"] = profile.split(fn(files))
            except RuntimeSkip as exc:
                row[f"{key}_split"] = f"skipped: {exc}"
    return out


def format_sweep(variants: list[dict]) -> str:
    """The variants as a table: ms per runtime (interleaved with the fp32 model's fastest),
    the fastest one's paired speedup over it, and the time split int8/fp32/qdq/layout."""
    keys = ("paddle-cpu-int8", "onnxruntime", "openvino")
    lines = ["QuantAware variant (batch 1, 1 thread): int8-weight ops, QDQ pairs; ms through "
             "Paddle int8 / ORT / OpenVINO; fp32 model's fastest (interleaved); speedup of "
             "the fastest over it (paired)"]
    notes = []
    for row in variants:
        if "error" in row:
            lines.append(f"  {row['variant']:<42} FAILED: {row['error']}")
            continue
        ms = row["ms"]
        cells = " / ".join(f"{ms[f'v/{k}']:6.2f}" if f"v/{k}" in ms else "  -   " for k in keys)
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        lines.append(f"  {row['variant']:<42} {row['int8_weight_ops']:3d} "
                     f"{row['quantize_linear']:4d}  {cells}  {ms[row['baseline']]:6.2f}  "
                     f"{speed}")
        for k in ("onnxruntime_split", "openvino_split"):
            split = row.get(k)
            if isinstance(split, dict):
                lines.append(f"  {'':<42} {k.split('_')[0]:>12}: " + ", ".join(
                    f"{kind} {v:.2f}" for kind, v in split.items()))
        notes += [f"  {row['variant']} / {k.split('/', 1)[1]}: skipped: {why}"
                  for k, why in row.get("skipped", {}).items()]
    return "\n".join(lines + notes)


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
