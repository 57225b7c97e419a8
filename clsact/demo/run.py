"""``clsact demo``: the whole compression job on a real, small, offline dataset.

scikit-learn ships the UCI handwritten digits (1,797 real 8x8 scans, 10 classes). The demo
renders them as an ImageNet-layout JPEG tree with list files, trains a small MobileNetV3
(paddle.vision ``MobileNetV3Small``, scale 0.5, 32x32 input) briefly on CPU with clsact's own
loader, exports it with ``paddle.jit.save`` (dropout included, so the paddleslim Mask defect
is exercised), then does what a cluster job does: starts an S3-compatible server on loopback
(moto server; a real store in production), uploads the dataset and the baseline, runs exactly
``clsact compress`` from ``s3://`` to ``s3://`` with ``configs/demo_digits.yaml``, verifies
the published run and gates it against the bucket's ``latest`` pointer (the first run:
blessed). Then it compresses again with a learning rate 100x too high, and the gate refuses
that run (``latest`` still names the first). It prints baseline vs compressed accuracy, both
verdicts and ``clsact history`` of the bucket (plot in ``<workdir>/history.png``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from clsact.errors import ConfigError

log = logging.getLogger(__name__)


def default_config_path() -> Path:
    """``configs/demo_digits.yaml`` of the source tree clsact runs from.

    Raises:
        ConfigError: clsact is installed without its configs/ folder.
    """
    path = Path(__file__).resolve().parents[2] / "configs" / "demo_digits.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found; pass --config PATH to a demo config")
    return path


def format_table(metrics: dict) -> str:
    """The before/after table the demo prints."""
    b, c = metrics["baseline"], metrics["compressed"]
    rows = [("", "top-1", "top-5", "images", "eval s"),
            ("baseline fp32", f"{b['top1']:.4f}", f"{b['top5']:.4f}", str(b["samples"]),
             f"{b['seconds']:.1f}"),
            ("QAT+distill int8", f"{c['top1']:.4f}", f"{c['top5']:.4f}", str(c["samples"]),
             f"{c['seconds']:.1f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


BUCKET = "clsact-demo"
HARMFUL_LR_FACTOR = 100  # the demo's second run: a learning rate this much too high ...
HARMFUL_STEPS = 20       # ... for this many steps (one evaluation)


def upload_inputs(store, data_dir: Path, model_dir: Path, threads: int = 8) -> int:
    """Upload the dataset tree and the baseline model under ``store`` (``data/``,
    ``baseline/``) in parallel; returns the number of files."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(p, f"data/{p.relative_to(data_dir).as_posix()}")
            for p in sorted(data_dir.rglob("*")) if p.is_file()]
    jobs += [(model_dir / n, f"baseline/{n}") for n in ("inference.pdmodel",
                                                          "inference.pdiparams")]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: store.put_file(*job), jobs))
    return len(jobs)


def run_demo(workdir: Path, config_path: str | None = None, epochs: int = 5) -> int:
    """Build data, train and export a baseline, compress it s3 -> s3 on an embedded S3
    server, verify and print the result. Returns 0.

    Raises:
        ClsactError: the config is invalid, the embedded S3 server cannot start (moto
            missing), or the compression fails for a user reason.
    """
    import os

    from clsact import config as config_mod
    from clsact import storage
    from clsact.compress import compress, new_run_id
    from clsact.demo.digits import build_digits_dataset, train_baseline
    from clsact.demo.s3server import DEMO_CREDENTIALS, LocalS3Server
    from clsact.registry import history
    from clsact.registry.gate import format_outcome, gate
    from clsact.storage.publish import verify

    start = time.perf_counter()
    workdir = workdir.resolve()
    cfg_path = Path(config_path) if config_path else default_config_path()
    data_dir, model_dir, results = workdir / "data", workdir / "baseline", workdir / "results"
    root = f"s3://{BUCKET}"
    overrides = [f"Global.data_dir={root}/data", f"Global.model_dir={root}/baseline"]
    cfg = config_mod.load(cfg_path, overrides)

    print(f"[1/6] rendering sklearn digits as an ImageNet-layout JPEG tree in {data_dir}",
          flush=True)
    if not (data_dir / "val_list.txt").exists():
        n_train, n_val = build_digits_dataset(data_dir)
    else:
        n_train = len((data_dir / "train_list.txt").read_text().split("\n")) - 1
        n_val = len((data_dir / "val_list.txt").read_text().split("\n")) - 1
    print(f"      {n_train} train / {n_val} val images", flush=True)

    print(f"[2/6] training a MobileNetV3Small x0.5 baseline for {epochs} epochs on CPU", flush=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    local_cfg = config_mod.load(cfg_path, [f"Global.data_dir={data_dir}",
                                           f"Global.model_dir={model_dir}"])
    train_baseline(local_cfg.globals, model_dir, epochs)

    os.environ.update(DEMO_CREDENTIALS)  # the embedded server's (unchecked) credentials
    with LocalS3Server() as server:
        s3 = storage.S3Settings(endpoint_url=server.endpoint)
        server.client().create_bucket(Bucket=BUCKET)
        t = time.perf_counter()
        n = upload_inputs(storage.open_store(root, "demo bucket", s3), data_dir, model_dir)
        print(f"[3/6] S3-compatible server (moto) at {server.endpoint}: uploaded {n} files to "
              f"{root}/data and {root}/baseline in {time.perf_counter() - t:.1f}s", flush=True)

        run_id = new_run_id()
        save = f"{root}/runs/{run_id}"
        print(f"[4/6] clsact compress --config {cfg_path} --set Global.data_dir={root}/data "
              f"--set Global.model_dir={root}/baseline --save-dir {save} "
              f"--s3-endpoint {server.endpoint} --gate {root}", flush=True)
        metrics = compress(cfg, save_dir=save, run_id=run_id, s3_endpoint=server.endpoint)
        first_gate = gate(save, root, s3=s3)
        print(format_outcome(first_gate), flush=True)

        published = storage.open_store(save, "--save-dir", s3)
        check = verify(published)
        listing = published.list()
        for rel, _size in listing:  # keep a copy: the embedded server's data dies with it
            published.get_file(rel, results / rel)

        bad_lr = HARMFUL_LR_FACTOR * float(cfg.train["learning_rate"])
        bad_id = new_run_id()
        bad_save = f"{root}/runs/{bad_id}"
        # with the learning-rate guard off, as upstream runs: clsact's guard would restore
        # the calibrated state of such a run (tests/test_convergence.py shows it does)
        harmful = [f"TrainConfig.learning_rate={bad_lr!r}",
                   f"TrainConfig.train_iter={HARMFUL_STEPS}", "Global.report=false",
                   "Global.lr_guard=false"]
        print(f"\n[5/6] a harmful second run (learning rate {HARMFUL_LR_FACTOR}x too high and "
              f"the learning-rate guard off; {HARMFUL_STEPS} steps are enough to ruin it): "
              "clsact compress ... "
              f"{' '.join('--set ' + x for x in harmful)} --save-dir {bad_save} --gate {root}",
              flush=True)
        bad_cfg = config_mod.load(cfg_path, [*overrides, *harmful])
        compress(bad_cfg, save_dir=bad_save, run_id=bad_id, s3_endpoint=server.endpoint)
        second_gate = gate(bad_save, root, s3=s3)
        print(format_outcome(second_gate), flush=True)
        bucket = storage.open_store(root, "demo bucket", s3)
        pointer = json.loads(bucket.read_bytes("latest"))
        rows = history.collect(bucket)
        history.plot(rows, workdir / "history.png", title=f"top-1 of {root}")
        endpoint = server.endpoint

    print("[6/6] result", flush=True)
    print(format_table(metrics))
    c = metrics["compressed"]
    print(f"\ntop-1 change: {100 * metrics['delta_top1']:+.2f} points; "
          f"{c['quant_ops']} quantize/dequantize ops; "
          f"{metrics['act']['train_steps']} QAT steps; compress {metrics['wall_seconds']:.0f}s, "
          f"demo total {time.perf_counter() - start:.0f}s")
    print(f"\npublished to {save} ({'verified' if check.ok else 'NOT verified'}: "
          f"{check.files} files match {check.manifests()}, _SUCCESS written last):")
    for rel, size in listing:
        print(f"  {size:>10,d}  {save}/{rel}")
    if (results / "report.md").is_file():
        print(f"\ndeploy report (the models measured as served; {results / 'report.md'}):")
        body = (results / "report.md").read_text().splitlines()[1:]  # without the title
        print("\n".join(line for line in body if line != "```").strip("\n"))
        print(f"plot: {results / 'report.png'}")
    print(f"\nclsact history {root}  ({root}/latest names run {pointer['run_id']}):")
    print(history.table(rows))
    print(f"plot: {workdir / 'history.png'}")
    print(f"a copy of the first run is in {results} (the embedded server at {endpoint} has "
          "stopped).")
    print("With your own store: AWS_ENDPOINT_URL=https://... (or AWS S3), credentials from the "
          "usual AWS chain, then\n  clsact compress --config CONFIG --save-dir "
          "s3://BUCKET/runs/ID --gate s3://BUCKET   and   clsact history s3://BUCKET")
    ok = check.ok and first_gate.blessed and not second_gate.blessed and \
        pointer["run_id"] == run_id
    if not ok:
        print("demo: UNEXPECTED: the first run should be verified and blessed, the harmful "
              "one refused, and latest should still name the first", file=sys.stderr)
    return 0 if ok else 1
