"""clsact: compress image classifiers (QAT + distillation) and run them on Kubernetes.

Commands: ``compress``, ``eval``, ``verify``, ``gate``, ``history``, ``dataset pack``,
``demo``, ``doctor``, and the launcher's
``render``, ``submit``, ``status``, ``list``, ``logs``, ``cancel``, ``rbac``
(:mod:`clsact.launch.cli`).

User mistakes (:class:`~clsact.errors.ClsactError`) end with one ``clsact: error: ...`` line
on stderr and exit code 2; the exit codes are :mod:`clsact.exitcodes`; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clsact import __version__, compat, exitcodes, logs
from clsact.deploy import cli as deploy_cli
from clsact.errors import EXIT_USER_ERROR, ClsactError
from clsact.launch import cli as launch_cli
from clsact.runtime import unwind_on_sigterm


def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="run QAT + distillation (PaddleSlim ACT) on a model",
                       description="Compress an inference model as the config says; results "
                       "(model/, metrics.json, config.yaml, clsact.log) go to the save dir.")
    p.add_argument("--config", required=True, help="ACT-format YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="S.KEY=VALUE",
                   help="override a config value, e.g. TrainConfig.epochs=1 (repeatable)")
    p.add_argument("--save-dir", help="where results go, a path or s3://bucket/prefix "
                   "(default: Global.output_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run (one with _SUCCESS) in the save dir")
    p.add_argument("--run-id", help="id recorded in metrics.json and manifest.json "
                   "(default: timestamp + random)")
    p.add_argument("--no-report", action="store_true", help="skip the deploy report (the "
                   "models measured through each runtime: Global.report)")
    p.add_argument("--gate", nargs="?", const="", metavar="PREFIX", help="after publishing, "
                   "run `clsact gate` on the run against PREFIX (default Gate.against); the "
                   "exit code is the gate's (0 blessed, 1 not blessed)")
    _add_s3_endpoint(p)


def _add_s3_endpoint(p) -> None:
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph "
                   "RGW, ...); default Global.s3_endpoint, then AWS_ENDPOINT_URL, then AWS")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 of an inference model on a list file",
                       description="Evaluate a published run (its save dir or model/ folder: "
                       "sizes, mean/std, data dir and val list come from its config.yaml) or a "
                       "bare inference model directory (sizes from the flags).")
    p.add_argument("--model-dir", required=True, help="a run's save dir, its model/ folder, "
                   "or a model directory; a path or s3://bucket/prefix")
    p.add_argument("--data-dir", help="a path or s3://bucket/prefix (default: the run's)")
    p.add_argument("--val-list", help="list file or packed index (default: the run's, else "
                   "val_list.txt)")
    p.add_argument("--model-filename", help="default: the run's, else inference.pdmodel")
    p.add_argument("--params-filename", help="default: the run's, else inference.pdiparams")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, help="center crop (default: the run's, else 224)")
    p.add_argument("--resize-size", type=int, help="short side before the crop (default: the "
                   "run's, else 256)")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--output", help="also write the JSON result to this file")
    _add_s3_endpoint(p)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check a published run against its manifest",
                       description="Exit 0 when LOCATION holds _SUCCESS and every file of "
                       "manifest.json with the right size and sha256; 1 otherwise.")
    p.add_argument("location", metavar="LOCATION", help="a save dir: path or s3://bucket/prefix")
    _add_s3_endpoint(p)


def add_threshold_flags(p) -> None:
    """The gate's threshold flags (they override the run config's ``Gate`` section)."""
    for name, text in (("min-top1", "floor on the compressed top-1 (fraction, 0.75 = 75%%)"),
                       ("max-regression", "largest top-1 drop against the last blessed run "
                        "(absolute fraction, 0.005 = half a point)"),
                       ("max-regression-relative", "largest top-1 drop against the last "
                        "blessed run as a fraction of its top-1"),
                       ("max-drop-vs-fp32", "largest drop below the run's own fp32 top-1")):
        p.add_argument(f"--{name}", type=float, metavar="X", help=text)


def threshold_flags(args: argparse.Namespace) -> dict[str, float | None]:
    """The threshold flags given (None: not given).

    Raises:
        ClsactError: a value outside [0, 1].
    """
    out = {k: getattr(args, k) for k in ("min_top1", "max_regression",
                                         "max_regression_relative", "max_drop_vs_fp32")}
    for key, value in out.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise ClsactError(f"--{key.replace('_', '-')} is a top-1 fraction in [0, 1] (0.75 = "
                              f"75%), got {value}")
    return out


def _add_gate(sub) -> None:
    p = sub.add_parser("gate", help="bless a published run if it may replace the last "
                       "blessed one (PREFIX/latest)",
                       description="Check RUN against the last blessed run named by "
                       "PREFIX/latest and the thresholds of its config's Gate section (or the "
                       "flags); record blessing.json in RUN and, if blessed, move "
                       "PREFIX/latest to it (compare-and-swap). Exit 0 blessed, 1 not "
                       "blessed, 2 error.")
    p.add_argument("run", metavar="RUN", help="a published run: path or s3://bucket/prefix")
    p.add_argument("--against", metavar="PREFIX", help="where the latest pointer lives "
                   "(default: the run config's Gate.against)")
    add_threshold_flags(p)
    p.add_argument("--regate", action="store_true", help="gate a run that holds a verdict "
                   "again (default: report its verdict)")
    p.add_argument("--json", action="store_true", help="print blessing.json's content")
    _add_s3_endpoint(p)


def _add_history(sub) -> None:
    p = sub.add_parser("history", help="every finished run under a prefix: accuracy, gate "
                       "verdict, latest", description="List the finished runs under PREFIX "
                       "(oldest first) with their fp32 and compressed accuracy, the gate's "
                       "verdict and the run PREFIX/latest names.")
    p.add_argument("prefix", metavar="PREFIX", help="path or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw top-1 over the runs")
    p.add_argument("--floor", type=float, help="the floor drawn (default: the last gate's "
                   "min_top1)")
    _add_s3_endpoint(p)


def _add_dataset(sub) -> None:
    p = sub.add_parser("dataset", help="dataset tools (pack)")
    dsub = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    pk = dsub.add_parser("pack", help="turn a list-file tree into tar shards + an index",
                         description="Pack the images named by each list file of SRC into "
                         "~--shard-mb tar shards in DST, plus DST/<list>.shards.json (written "
                         "last). Train from it with Global.data_dir=DST and "
                         "Global.train_list=<list>.shards.json.")
    pk.add_argument("src", metavar="SRC", help="data dir holding the list files (path or s3://)")
    pk.add_argument("dst", metavar="DST", help="where shards + indexes go (path or s3://)")
    pk.add_argument("--lists", nargs="+", default=["train_list.txt", "val_list.txt"],
                    help="list files to pack, relative to SRC (default: train and val)")
    pk.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MB")
    pk.add_argument("--seed", type=int, default=0, help="seed of the pack-time shuffle")
    pk.add_argument("--max-missing", type=int, default=0,
                    help="listed images that may be missing (skipped) before failing")
    pk.add_argument("--overwrite", action="store_true", help="replace existing indexes")
    pk.add_argument("--resize-short", type=int, metavar="N", help="store the images resized "
                    "to a short side of N px (never enlarged; JPEG --quality): a cheaper decode "
                    "every epoch. Use the config's Global.resize_size (the loader checks)")
    pk.add_argument("--quality", type=int, default=95, help="JPEG quality of resized images "
                    "(default 95)")
    pk.add_argument("--workers", type=int, help="processes resizing (default: the CPUs, <= 8)")
    _add_s3_endpoint(pk)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on a real small dataset (sklearn digits)")
    p.add_argument("--workdir", default="demo-output", help="where data, models, results go")
    p.add_argument("--config", default=None, help="compression config (default: "
                   "configs/demo_digits.yaml)")
    p.add_argument("--epochs", type=int, default=5, help="baseline training epochs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``clsact`` command."""
    parser = argparse.ArgumentParser(prog="clsact", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clsact {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_compress(sub)
    _add_eval(sub)
    _add_verify(sub)
    _add_gate(sub)
    _add_history(sub)
    deploy_cli.add_parsers(sub, _add_s3_endpoint)
    _add_dataset(sub)
    _add_demo(sub)
    p = sub.add_parser("doctor", help="what this installation runs on: versions, the GPUs "
                       "the installed Paddle has kernels for, the GPUs visible here")
    p.add_argument("--json", action="store_true", help="print JSON")
    launch_cli.add_parsers(sub)
    return parser


def cmd_compress(args: argparse.Namespace) -> int:
    """``clsact compress``."""
    from clsact import config
    from clsact.compress import compress
    from clsact.runtime import rank_info

    cfg = config.load(args.config, [*args.overrides,
                                     *(["Global.report=false"] if args.no_report else [])])
    if args.gate == "" and not (cfg.data.get("Gate") or {}).get("against"):
        raise ClsactError("--gate needs a prefix: --gate PREFIX, or Gate.against in the config")
    metrics = compress(cfg, save_dir=args.save_dir, overwrite=args.overwrite,
                       run_id=args.run_id, s3_endpoint=args.s3_endpoint)
    b, c = metrics["baseline"], metrics["compressed"]
    print(f"baseline   top1 {b['top1']:.4f}  top5 {b['top5']:.4f}  ({b['samples']} images)")
    print(f"compressed top1 {c['top1']:.4f}  top5 {c['top5']:.4f}  ({c['quant_ops']} quantize ops)")
    rep = metrics.get("report") or {}
    if rep.get("speedup") is not None:
        print(f"deployed: fastest on {rep['fastest']['label']} (model/{rep['fastest']['form']})"
              f" at {rep['fastest']['p50_ms']:.2f} ms (batch 1, 1 thread), {rep['speedup']:.2f}x"
              f" the baseline's fastest fp32/bf16 runtime; report.md in the run")
    for line in rep.get("flagged", []):
        print(f"FLAGGED {line}")
    for line in rep.get("failed", []):
        print(f"FAILED {line}")
    print(f"results in {metrics['save_dir']} (run {metrics['run_id']})")
    if args.gate is None or rank_info().rank != 0:
        return 0
    return run_gate(metrics["save_dir"], args.gate or None, {})


def run_gate(run: str, against: str | None, flags: dict[str, float | None], *,
             regate: bool = False, as_json: bool = False) -> int:
    """Gate ``run`` and print the report; returns the gate's exit code (0 or 1).

    Raises:
        ClsactError: see :func:`clsact.gate.gate`.
    """
    from clsact.gate import blessing_document, format_outcome, gate

    out = gate(run, against, flags, regate=regate)
    if as_json:
        print(json.dumps(blessing_document(out), indent=2))
    else:
        print(format_outcome(out))
    return out.exit_code


def cmd_gate(args: argparse.Namespace) -> int:
    """``clsact gate``: 0 blessed, 1 not blessed."""
    from clsact import storage

    storage.configure(endpoint_url=args.s3_endpoint)
    return run_gate(args.run, args.against, threshold_flags(args), regate=args.regate,
                    as_json=args.json)


def cmd_history(args: argparse.Namespace) -> int:
    """``clsact history``."""
    from clsact import history, storage

    storage.configure(endpoint_url=args.s3_endpoint)
    if args.floor is not None and not 0.0 <= args.floor <= 1.0:
        raise ClsactError(f"--floor is a top-1 fraction in [0, 1], got {args.floor}")
    prefix, rows = history.history(args.prefix)
    if args.json:
        print(json.dumps(history.to_json(rows), indent=2))
    else:
        print(history.table(rows))
    if args.plot:
        history.plot(rows, Path(args.plot), args.floor, title=f"top-1 of {prefix.describe()}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``clsact eval``."""
    import tempfile

    from clsact import config, storage
    from clsact.data.build import make_loader, read_samples
    from clsact.evalsettings import check_model_input, plan
    from clsact.evaluate import evaluate_model_dir
    from clsact.modelio import inspect_model, model_paths
    from clsact.runtime import select_device

    storage.configure(endpoint_url=args.s3_endpoint)
    chosen = plan({"model_dir": args.model_dir, "data_dir": args.data_dir,
                   "val_list": args.val_list, "img_size": args.img_size,
                   "resize_size": args.resize_size, "model_filename": args.model_filename,
                   "params_filename": args.params_filename})
    g = config.complete_global(
        {**chosen.settings, "batch_size": args.batch_size, "num_workers": args.num_workers,
         "device": args.device}, chosen.run_config or "clsact eval")
    samples = read_samples(g, "val")
    with tempfile.TemporaryDirectory(prefix="clsact-eval-") as scratch:
        model_dir = storage.input_dir(g["model_dir"], "--model-dir",
                                      [g["model_filename"], g["params_filename"]],
                                      Path(scratch) / "model")
        model_file, _ = model_paths(model_dir, g["model_filename"], g["params_filename"])
        info = inspect_model(model_file, g["input_name"])
        check_model_input(info.input_shape, g["img_size"], g["model_dir"])
        select_device(g["device"])
        loader = make_loader(g, samples, train=False, batch_size=g["batch_size"])
        try:
            result = evaluate_model_dir(model_dir, loader, model_filename=g["model_filename"],
                                        params_filename=g["params_filename"],
                                        input_name=g["input_name"])
        finally:
            loader.close()
    result["settings"] = {"from": chosen.run_config or "flags", "img_size": g["img_size"],
                          "resize_size": g["resize_size"], "val_list": g["val_list"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``clsact verify``: 0 when the run is complete and intact, 1 when not."""
    from clsact import storage
    from clsact.storage.publish import verify

    storage.configure(endpoint_url=args.s3_endpoint)
    result = verify(storage.open_store(args.location, "LOCATION"))
    for problem in result.problems:
        print(f"clsact: verify: {result.location}: {problem}", file=sys.stderr)
    if not result.ok:
        print(f"FAILED {result.location}: {len(result.problems)} problem(s)")
        return exitcodes.CHECK_FAILED
    print(f"OK {result.location}: run {result.run_id}, {result.files} files, "
          f"{result.bytes} bytes match {result.manifests()}")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    """``clsact dataset pack``."""
    from clsact import storage
    from clsact.data.build import default_workers
    from clsact.data.shards import index_name, pack

    if args.shard_mb <= 0 or args.max_missing < 0:
        raise ClsactError("--shard-mb must be > 0 and --max-missing >= 0")
    if args.resize_short is not None and args.resize_short < 8:
        raise ClsactError(f"--resize-short {args.resize_short} is too small: give the "
                          "config's Global.resize_size (e.g. 256)")
    if not 1 <= args.quality <= 100 or (args.workers is not None and args.workers < 1):
        raise ClsactError("--quality must be in 1..100 and --workers >= 1")
    storage.configure(endpoint_url=args.s3_endpoint)
    for st in pack(args.src, args.dst, args.lists, shard_bytes=int(args.shard_mb * 2**20),
                   seed=args.seed, overwrite=args.overwrite, max_missing=args.max_missing,
                   resize_short=args.resize_short, quality=args.quality,
                   workers=args.workers or default_workers()):
        mb = st.bytes / 2**20
        print(f"{st.index}: {st.samples} images in {st.shards} shards, {mb:.1f} MB, "
              f"{st.missing} missing, {st.seconds:.1f}s ({mb / max(st.seconds, 1e-9):.1f} MB/s)")
    names = ", ".join(index_name(name) for name in args.lists)
    print(f"train from it: --set Global.data_dir={args.dst} and set Global.train_list / "
          f"Global.val_list to {names}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``clsact demo``."""
    from clsact.demo import run_demo

    return run_demo(Path(args.workdir), config_path=args.config, epochs=args.epochs)


def cmd_doctor(args: argparse.Namespace) -> int:
    """``clsact doctor``."""
    from clsact import doctor
    from clsact.runtime import visible_gpus

    facts = doctor.report(visible_gpus())
    print(json.dumps(facts, indent=2) if args.json else doctor.table(facts))
    return 0


COMMANDS = {"compress": cmd_compress, "eval": cmd_eval, "verify": cmd_verify,
            "gate": cmd_gate, "history": cmd_history, **deploy_cli.COMMANDS,
            "dataset": cmd_dataset, "demo": cmd_demo, "doctor": cmd_doctor,
            **launch_cli.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    compat.quiet_native_output()
    logs.setup(args.verbose)
    unwind_on_sigterm()
    try:
        return COMMANDS[args.command](args)
    except ClsactError as exc:
        print(f"clsact: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        from clsact.storage.publish import published

        done = published()
        print(f"clsact: interrupted after publishing to {', '.join(done)} (complete)" if done
              else "clsact: interrupted; nothing was published", file=sys.stderr)
        return exitcodes.INTERRUPTED
