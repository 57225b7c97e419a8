"""The deploy check's commands: ``bench``, ``report``, ``export`` (registered on the
``clsact`` parser by :func:`add_parsers`). Errors are :class:`~clsact.errors.ClsactError`:
one line, exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clsact.cli.common import add_s3_endpoint, s3_settings
from clsact.errors import ClsactError


def add_parsers(sub) -> None:
    """Add ``bench``, ``report`` and ``export`` to the subcommands ``sub``."""
    _add_bench(sub)
    _add_report(sub)
    _add_export(sub)


def _add_bench(sub) -> None:
    from clsact.deploy.runtimes import RUNTIMES

    p = sub.add_parser("bench", help="latency and accuracy of models as served, through each "
                       "runtime", description="Measure each --model-dir (a published run, its "
                       "model/ folder, or a bare model dir; path or s3://) through every runtime "
                       "that can run it here: p50/p90 latency after warm-up per batch size and "
                       "thread count, and the exact top-1/top-5 on the validation set (the "
                       "run's, or --data-dir). Runtimes that cannot run say why.")
    p.add_argument("--model-dir", action="append", required=True, metavar="DIR",
                   help="repeatable: e.g. the baseline and the compressed model")
    p.add_argument("--data-dir", help="validation images (default: the run's)")
    p.add_argument("--val-list", help="default: the run's, else val_list.txt")
    p.add_argument("--img-size", type=int, help="center crop (default: the run's, else 224)")
    p.add_argument("--resize-size", type=int, help="default: the run's, else 256")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes "
                   "(default 1 32)")
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="CPU thread counts "
                   "(default: 1 all)")
    p.add_argument("--runtime", action="append", choices=[r.key for r in RUNTIMES],
                   help="only these runtimes (repeatable; default: all)")
    p.add_argument("--budget", type=float, default=10.0, metavar="S", help="seconds per "
                   "latency measurement at most (default 10)")
    p.add_argument("--no-accuracy", action="store_true", help="latency only")
    p.add_argument("--reference-top1", type=float, action="append", metavar="X",
                   help="per --model-dir: top-1 to flag a runtime against (default: the "
                   "run's own metrics)")
    p.add_argument("--profile", action="store_true", help="also where the time goes: each "
                   "model's ops (how many hold int8 weights, the QDQ pairs) and ONNX Runtime's "
                   "and OpenVINO's per-op times by precision (int8, fp32, qdq, layout) at "
                   "batch 1, one thread")
    p.add_argument("--diff", action="store_true", help="also where each runtime's intermediate "
                   "tensors first part from Paddle's QAT evaluation graph on the same images "
                   "(layer, mean and max error in steps of the layer's quantizer)")
    p.add_argument("--diff-images", type=int, default=8, metavar="N", help="images for --diff "
                   "(default 8: the validation set's first, or random ones without data)")
    p.add_argument("--output", help="also write the results as JSON to this file")
    add_s3_endpoint(p)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="measure a published run's baseline and compressed "
                       "model as served again: report.{json,md,png}",
                       description="Benchmark the run's baseline (Global.model_dir of its "
                       "config, or --baseline-dir) and its compressed model through every "
                       "runtime (latency, accuracy on the run's validation set) and write the "
                       "report to --output, or add it to the run with --publish (a run made "
                       "with --no-report; the forms the runtimes served the model from go "
                       "into RUN/model too).")
    p.add_argument("run", metavar="RUN", help="a published run: path or s3://bucket/prefix")
    p.add_argument("--output", metavar="DIR", help="where the files go (default "
                   "./report-<run id>)")
    p.add_argument("--publish", action="store_true", help="add the files to the run (listed "
                   "in manifest.report.json) instead")
    p.add_argument("--baseline-dir", help="the fp32 model (default: the run's Global.model_dir)")
    p.add_argument("--budget", type=float, default=5.0, metavar="S",
                   help="seconds per latency measurement at most (default 5)")
    add_s3_endpoint(p)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="the compressed model for a deployment target "
                       "(arm: a Paddle Lite .nb)",
                       description="Optimise a published run's compressed model (RUN/model) "
                       "for ARM CPUs with Paddle Lite 2.13's optimizer into a .nb file, "
                       "which Paddle Lite's MobileConfig runs on Android/ARM Linux.")
    p.add_argument("run", metavar="RUN", help="a published run (or a model dir): path or s3://")
    p.add_argument("--target", choices=("arm",), required=True)
    p.add_argument("--output", metavar="DIR", default=".", help="where <name>.nb goes "
                   "(default: the current directory)")
    p.add_argument("--name", help="file name without .nb (default: the run's id)")
    p.add_argument("--lite-python", metavar="PYTHON", help="a Python 3.8-3.10 for Paddle "
                   "Lite's optimizer (default: $CLSACT_LITE_PYTHON, PATH, pyenv)")
    add_s3_endpoint(p)


def _thread_counts(values: list[str]) -> tuple[int, ...]:
    """``--threads`` values ("all" = this process's CPUs), deduplicated, in order.

    Raises:
        ClsactError: a value is neither a positive integer nor ``all``.
    """
    from clsact.process import cpu_count

    out: list[int] = []
    for v in values:
        n = cpu_count() if v == "all" else int(v) if v.isdigit() and int(v) > 0 else None
        if n is None:
            raise ClsactError(f"--threads takes positive integers or 'all', got {v!r}")
        if n not in out:
            out.append(n)
    return tuple(out)


def cmd_bench(args: argparse.Namespace) -> int:
    """``clsact bench``."""
    import tempfile

    from clsact.deploy import bench, machine, profile
    from clsact.deploy.runtimes import RUNTIMES

    if any(b < 1 for b in args.batch) or args.budget <= 0 or args.diff_images < 1:
        raise ClsactError("--batch sizes and --diff-images must be >= 1 and --budget > 0")
    refs = args.reference_top1 or []
    if refs and len(refs) != len(args.model_dir):
        raise ClsactError(f"--reference-top1 given {len(refs)} times for {len(args.model_dir)} "
                          "--model-dir: give one per model, or none")
    threads = _thread_counts(args.threads)
    runtimes = [r for r in RUNTIMES if not args.runtime or r.key in args.runtime]
    results = []
    profiles: dict[str, dict] = {}
    diffs: dict[str, str] = {}
    diff_json: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clsact-bench-") as scratch:
        for i, location in enumerate(args.model_dir):
            target = _bench_target(args, location, Path(scratch) / f"m{i}")
            if args.profile:
                profiles[target["name"]] = profile.where_time_goes(target["files"],
                                                                   target["img_size"])
            if args.diff:
                diffs[target["name"]], diff_json[target["name"]] = _diff(target, args.diff_images)
            ref = refs[i] if refs else target["reference"]
            loader = target["loader"]
            try:
                results += bench.bench_model(
                    target["name"], target["files"], target["img_size"], runtimes=runtimes,
                    batches=tuple(args.batch), threads=threads, budget_s=args.budget,
                    val_batches=(lambda loader=loader: loader.epoch(0)) if loader else None,
                    reference_top1=ref)
            finally:
                if loader is not None:
                    loader.close()
    print(f"measured on {machine.headline(machine.describe())}")
    print(bench.format_table(results))
    if profiles:
        print("\n" + profile.format_anatomy(profiles))
    for text in diffs.values():
        print("\n" + text)
    if args.output:
        out = {"machine": machine.describe(), "measurements": bench.to_json(results)}
        if diff_json:
            out["diff"] = diff_json
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _diff(target: dict, count: int) -> tuple[str, dict]:
    """``--diff`` of one model: its text and JSON.

    Raises:
        ClsactError: Paddle cannot run the model, or the images cannot be read.
    """
    import numpy as np

    from clsact.deploy import diff
    from clsact.deploy.runtimes import RUNTIMES

    loader, size = target["loader"], target["img_size"]
    images = []
    if loader is not None:
        for batch in loader.epoch(0):
            images.append(np.array(batch.images, copy=True))
            if sum(len(x) for x in images) >= count:
                break
    pick = (np.concatenate(images)[:count] if images else
            np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32))
    result = diff.run_diff(target["files"], pick)
    notes = {r.key: r.note(target["files"]) for r in RUNTIMES}
    return diff.format_report(target["name"], result, 0, notes), diff.to_json(result)


def _bench_target(args: argparse.Namespace, location: str, scratch: Path) -> dict:
    """The model files, name, crop size, reference top-1 and validation loader of one
    ``--model-dir`` (settings from its run, as ``clsact eval`` takes them).

    Raises:
        ClsactError: a location, the model, or the data cannot be used.
    """
    from clsact import config
    from clsact.data.build import make_loader, read_samples
    from clsact.deploy.bench import local_model
    from clsact.deploy.runtimes import ModelFiles
    from clsact.modelio import inspect_model
    from clsact.registry.settings import check_model_input, find_run, plan

    s3 = s3_settings(args)
    chosen = plan({"model_dir": location, "data_dir": args.data_dir, "val_list": args.val_list,
                   "img_size": args.img_size, "resize_size": args.resize_size,
                   "model_filename": None, "params_filename": None}, s3) if (
        args.data_dir or find_run(location, s3=s3)) else None
    settings = chosen.settings if chosen else {
        "model_dir": location, "data_dir": ".", "img_size": args.img_size or 224,
        "resize_size": args.resize_size or 256}
    g = config.complete_global({**settings, "batch_size": 32, "device": "cpu"},
                               chosen.run_config if chosen and chosen.run_config else "bench")
    model_dir = local_model(g.model_dir, scratch, (g.model_filename, g.params_filename), s3)
    files = ModelFiles.of(model_dir, g.model_filename, g.params_filename)
    check_model_input(inspect_model(files.model_file, g.input_name).input_shape,
                      g.img_size, location)
    loader = None
    if chosen is not None and not args.no_accuracy:
        loader = make_loader(g, read_samples(g, "val", s3), train=False, batch_size=32, s3=s3)
    return {"name": location.rstrip("/").rsplit("/", 1)[-1] if chosen is None or
            not chosen.run_config else _run_name(chosen.run_config),
            "files": files, "img_size": g.img_size, "loader": loader,
            "reference": _reference_top1(chosen, s3)}


def _run_name(run_config: str) -> str:
    """The run id a run's ``config.yaml`` location belongs to (its folder's name)."""
    run = run_config.rsplit("/", 1)[0]
    return run.rstrip("/").rsplit("/", 1)[-1]


def _reference_top1(chosen, s3) -> float | None:
    """The run's own compressed top-1 (metrics.json) for a run's model, else None."""
    if chosen is None or not chosen.run_config:
        return None
    from clsact import storage

    run = chosen.run_config.rsplit("/", 1)[0]
    try:
        metrics = json.loads(storage.open_store(run, "--model-dir", s3).read_bytes("metrics.json"))
    except (OSError, ValueError, ClsactError):
        return None
    value = (metrics.get("compressed") or {}).get("top1")
    return float(value) if isinstance(value, (int, float)) else None


def cmd_report(args: argparse.Namespace) -> int:
    """``clsact report``: regenerate a run's deploy report."""
    import tempfile

    from clsact import storage
    from clsact.compress import MODEL_SUBDIR
    from clsact.data.build import read_samples
    from clsact.deploy import report
    from clsact.registry.settings import find_run
    from clsact.storage.publish import add_to_run

    s3 = s3_settings(args)
    if args.budget <= 0:
        raise ClsactError("--budget must be > 0 seconds")
    found = find_run(args.run, "RUN", s3)
    if found is None:
        raise ClsactError(f"{args.run} is not a published clsact run (no config.yaml and "
                          "manifest.json); pass a run's save dir")
    run_loc, model_loc, g = found
    run = storage.open_store(run_loc, "RUN", s3)
    try:
        metrics = json.loads(run.read_bytes("metrics.json"))
    except FileNotFoundError:
        raise ClsactError(f"{run.describe('metrics.json')} is missing: the run did not finish "
                          "publishing") from None
    except ValueError as exc:
        raise ClsactError(f"{run.describe('metrics.json')} is not JSON ({exc})") from None
    names = [g.model_filename, g.params_filename]
    if args.publish and "report" in metrics:
        raise ClsactError(f"{run.describe()} was published with its report (in manifest.json); "
                          "write a new one elsewhere with --output DIR")
    with tempfile.TemporaryDirectory(prefix="clsact-report-") as tmp:
        work = Path(tmp)
        baseline = storage.input_dir(args.baseline_dir or g.model_dir, "--baseline-dir",
                                     names, work / "baseline", s3)
        compressed = storage.input_dir(model_loc, "RUN/model", names,
                                       work / "compressed", s3)
        out = work / "out" if args.publish else Path(
            args.output or f"report-{metrics.get('run_id', 'run')}")
        serving = work / "serving"
        serving.mkdir()
        report.measure_run(out, baseline, compressed, g, read_samples(g, "val", s3), metrics,
                           budget_s=args.budget, serving_dir=serving if args.publish else None,
                           s3=s3)
        if args.publish:  # the report, and the forms the runtimes served the model from
            add_to_run(run, "report", {**{name: (out / name).read_bytes()
                                          for name in report.REPORT_FILES},
                                       **{f"{MODEL_SUBDIR}/{f.name}": f.read_bytes()
                                          for f in sorted(serving.iterdir())}})
            where = run.describe()
        else:
            where = str(out)
        print((out / "report.md").read_text())
    print(f"report.json, report.md, report.png in {where}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``clsact export --target arm``."""
    import tempfile

    from clsact import storage
    from clsact.deploy import export
    from clsact.registry.runs import as_dict, open_location, read_run
    from clsact.registry.settings import find_run

    s3 = s3_settings(args)
    opt = export.lite_optimizer(export.find_lite_python(args.lite_python))
    found = find_run(args.run, "RUN", s3)
    model_loc = found[1] if found else args.run
    names = ([found[2].model_filename, found[2].params_filename] if found else
             ["inference.pdmodel", "inference.pdiparams"])
    name = args.name or (found[0].rstrip("/").rsplit("/", 1)[-1] if found else "model")
    pruned = as_dict(read_run(open_location(found[0], "RUN", s3)).metrics).get("pruning") \
        if found else None
    sparse = as_dict(pruned).get("strategy") == "UnstructurePrune"
    with tempfile.TemporaryDirectory(prefix="clsact-export-") as tmp:
        local = storage.input_dir(model_loc, "RUN", names, Path(tmp) / "model", s3)
        nb = export.export_arm(local / names[0], local / names[1], Path(args.output) / name, opt,
                               sparse=sparse)
    print(f"{nb} ({nb.stat().st_size:,d} bytes): Paddle Lite {export.LITE_VERSION} naive "
          "buffer for ARM CPUs" + (" with sparse 1x1 convolutions (the run's unstructured "
                                   "sparsity)" if sparse else "")
          + "; run it with paddlelite's MobileConfig.set_model_from_file")
    return 0


COMMANDS = {"bench": cmd_bench, "report": cmd_report, "export": cmd_export}
