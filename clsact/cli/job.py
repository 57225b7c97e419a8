"""The job's commands: ``compress``, ``eval``, ``verify``, ``dataset pack``, ``demo``,
``doctor``. Errors are :class:`~clsact.errors.ClsactError`: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clsact import exitcodes
from clsact.cli.common import add_s3_endpoint, s3_settings
from clsact.errors import ClsactError


def add_parsers(sub) -> None:
    """Add the job's commands to the subcommands ``sub``."""
    _add_compress(sub)
    _add_eval(sub)
    _add_verify(sub)
    _add_dataset(sub)
    _add_demo(sub)
    p = sub.add_parser("doctor", help="what this installation runs on: versions, the GPUs "
                       "the installed Paddle has kernels for, the GPUs visible here")
    p.add_argument("--json", action="store_true", help="print JSON")


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
    add_s3_endpoint(p)


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
    add_s3_endpoint(p)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check a published run against its manifest",
                       description="Exit 0 when LOCATION holds _SUCCESS and every file of "
                       "manifest.json with the right size and sha256; 1 otherwise.")
    p.add_argument("location", metavar="LOCATION", help="a save dir: path or s3://bucket/prefix")
    add_s3_endpoint(p)


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
    add_s3_endpoint(pk)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on a real small dataset (sklearn digits)")
    p.add_argument("--workdir", default="demo-output", help="where data, models, results go")
    p.add_argument("--config", default=None, help="compression config (default: "
                   "configs/demo_digits.yaml)")
    p.add_argument("--epochs", type=int, default=5, help="baseline training epochs")


def cmd_compress(args: argparse.Namespace) -> int:
    """``clsact compress``."""
    from clsact import config
    from clsact.compress import compress
    from clsact.process import rank_info

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
    from clsact.cli.registry import run_gate

    return run_gate(metrics["save_dir"], args.gate or None, {},
                    s3=cfg.globals.s3(args.s3_endpoint))


def cmd_eval(args: argparse.Namespace) -> int:
    """``clsact eval``."""
    import tempfile

    from clsact import config, storage
    from clsact.data.build import make_loader, read_samples
    from clsact.evaluate import evaluate_model_dir
    from clsact.modelio import inspect_model, model_paths
    from clsact.process import select_device
    from clsact.registry.settings import check_model_input, plan

    s3 = s3_settings(args)
    chosen = plan({"model_dir": args.model_dir, "data_dir": args.data_dir,
                   "val_list": args.val_list, "img_size": args.img_size,
                   "resize_size": args.resize_size, "model_filename": args.model_filename,
                   "params_filename": args.params_filename}, s3)
    g = config.complete_global(
        {**chosen.settings, "batch_size": args.batch_size, "num_workers": args.num_workers,
         "device": args.device}, chosen.run_config or "clsact eval")
    samples = read_samples(g, "val", s3)
    with tempfile.TemporaryDirectory(prefix="clsact-eval-") as scratch:
        model_dir = storage.input_dir(g.model_dir, "--model-dir",
                                      [g.model_filename, g.params_filename],
                                      Path(scratch) / "model", s3)
        model_file, _ = model_paths(model_dir, g.model_filename, g.params_filename)
        info = inspect_model(model_file, g.input_name)
        check_model_input(info.input_shape, g.img_size, g.model_dir)
        select_device(g.device)
        loader = make_loader(g, samples, train=False, batch_size=g.batch_size, s3=s3)
        try:
            result = evaluate_model_dir(model_dir, loader, model_filename=g.model_filename,
                                        params_filename=g.params_filename,
                                        input_name=g.input_name)
        finally:
            loader.close()
    result["settings"] = {"from": chosen.run_config or "flags", "img_size": g.img_size,
                          "resize_size": g.resize_size, "val_list": g.val_list}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``clsact verify``: 0 when the run is complete and intact, 1 when not."""
    from clsact import storage
    from clsact.storage.publish import verify

    result = verify(storage.open_store(args.location, "LOCATION", s3_settings(args)))
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
    from clsact.data.build import default_workers
    from clsact.data.shards import index_name, pack

    if args.shard_mb <= 0 or args.max_missing < 0:
        raise ClsactError("--shard-mb must be > 0 and --max-missing >= 0")
    if args.resize_short is not None and args.resize_short < 8:
        raise ClsactError(f"--resize-short {args.resize_short} is too small: give the "
                          "config's Global.resize_size (e.g. 256)")
    if not 1 <= args.quality <= 100 or (args.workers is not None and args.workers < 1):
        raise ClsactError("--quality must be in 1..100 and --workers >= 1")
    for st in pack(args.src, args.dst, args.lists, s3_settings(args),
                   shard_bytes=int(args.shard_mb * 2**20),
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
    from clsact.demo.run import run_demo

    return run_demo(Path(args.workdir), config_path=args.config, epochs=args.epochs)


def cmd_doctor(args: argparse.Namespace) -> int:
    """``clsact doctor``."""
    from clsact import doctor
    from clsact.process import visible_gpus

    facts = doctor.report(visible_gpus())
    print(json.dumps(facts, indent=2) if args.json else doctor.table(facts))
    return 0


COMMANDS = {"compress": cmd_compress, "eval": cmd_eval, "verify": cmd_verify,
            "dataset": cmd_dataset, "demo": cmd_demo, "doctor": cmd_doctor}
