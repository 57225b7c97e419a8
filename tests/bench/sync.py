"""``make bench``: what synchronising the ranks costs per training step, both ways, side by side.

Two CPU ranks (``paddle.distributed.launch``, gloo) run the same QAT + distillation job on
paddle.vision's MobileNetV3 Large x1.0 at 224 px, once with ``Global.rank_sync: state``
(the training state averaged through the host after every step) and once with
``gradients`` (fleet's ``c_allreduce_sum`` ops in the training program). Each run's
``metrics.json`` gives the measured step time, the host average's time per step and the
sizes that each way moves; the step times of the two runs are compared as a ratio.

From those sizes the module also prints the cost model for the cluster (8 GPUs per pod x N
pods): bytes per GPU and per step over PCIe (host copies) and over the network, for both
ways. The bandwidths are assumptions, printed with the table; the byte counts are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.bench.provenance import header, write_result

STEPS = 12
BATCH = 8
MODES = ("state", "gradients")
GPUS_PER_POD = 8
PODS = (1, 2, 4, 8)
# assumed bandwidths for the cost model (GB/s): host<->GPU copies over PCIe Gen4 x16, and
# NCCL's ring bus bandwidth per GPU within a pod (NVLink) and across pods (the pod's NICs
# shared by its 8 GPUs, e.g. 8 x 200 Gb/s InfiniBand)
PCIE_GBPS = 25.0
NVLINK_GBPS = 150.0
NETWORK_GBPS = 20.0
# the step the sync competes with: one H200 consumes ~2,560 images/s in a MobileNetV3
# distillation step (STACK.md), so a batch of 256 per GPU is a 100 ms step
GPU_STEP_MS = 100.0
FLOAT_BYTES = 4


def prepare(root: Path) -> tuple[Path, Path]:
    """The model and a small ImageNet-shaped dataset under ``root``; (model dir, data dir)."""
    from tests.bench.graph import export
    from tests.bench.loader import make_images

    model = root / "model"
    model.mkdir()
    export("MobileNetV3Large", 1.0, 224, model)
    data = root / "data"
    data.mkdir()
    samples = make_images(data, STEPS * BATCH * 2 + 32)
    lines = [f"{s.key} {i % 1000}" for i, s in enumerate(samples)]
    (data / "train.txt").write_text("\n".join(lines[32:]) + "\n")
    (data / "val.txt").write_text("\n".join(lines[:32]) + "\n")
    return model, data


def config(root: Path, model: Path, data: Path, mode: str) -> Path:
    """The job's config for ``mode``."""
    cfg = {"Global": {"model_dir": str(model), "data_dir": str(data), "train_list": "train.txt",
                      "val_list": "val.txt", "batch_size": BATCH, "eval_batch_size": 16,
                      "num_workers": 1, "device": "cpu", "rank_sync": mode, "report": False,
                      "checkpoint": False, "lr_scaling": "none", "collective_timeout": 600},
           "Distillation": {"alpha": 1.0, "loss": "soft_label", "teacher_model_dir": str(model)},
           "QuantAware": {"use_pact": True},
           "TrainConfig": {"train_iter": STEPS, "eval_iter": STEPS, "learning_rate": 0.001,
                           "optimizer_builder": {"optimizer": {"type": "Momentum"}}}}
    path = root / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_mode(root: Path, cfg: Path, mode: str) -> dict:
    """Run the two-rank job; its ``act.rank_sync`` record.

    Raises:
        RuntimeError: the job failed (its rank logs' tail in the message).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    save = root / f"run-{mode}"
    clsact = str(Path(sys.executable).parent / "clsact")
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                           "2", "--log_dir", str(root / f"log-{mode}"), clsact, "compress",
                           "--config", str(cfg), "--save-dir", str(save)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(p.read_text(errors="replace")
                       for p in sorted((root / f"log-{mode}").glob("workerlog.*")))
        raise RuntimeError(f"the {mode} run failed:\n{logs[-3000:]}")
    return json.loads((save / "metrics.json").read_text())["act"]["rank_sync"]


def cost_model(state_values: int, gradient_values: int) -> list[dict]:
    """Per GPU and per step, for ``PODS`` pods of ``GPUS_PER_POD`` GPUs: bytes over PCIe and
    over the network each way, and the time at the assumed bandwidths.

    ``state`` on GPU: the state is read to the host, handed to NCCL as a new device tensor,
    read back and written into the scope: 4 crossings of PCIe; NCCL's ring all-reduce moves
    2(W-1)/W of it per GPU; none of it overlaps the step. ``gradients``: no PCIe; the ring
    all-reduce of the gradients, issued per fused group as the backward pass produces them.
    """
    state, grads = state_values * FLOAT_BYTES, gradient_values * FLOAT_BYTES
    rows = []
    for pods in PODS:
        world = pods * GPUS_PER_POD
        ring = 2 * (world - 1) / world
        link = NVLINK_GBPS if pods == 1 else NETWORK_GBPS
        for mode, pcie, net in (("state", 4 * state, ring * state), ("gradients", 0, ring * grads)):
            ms = 1000 * (pcie / (PCIE_GBPS * 1e9) + net / (link * 1e9))
            rows.append({"pods": pods, "gpus": world, "mode": mode, "pcie_mb": pcie / 1e6,
                         "allreduce_mb": net / 1e6, "ms": ms, "share": ms / (GPU_STEP_MS + ms)})
    return rows


def format_report(out: dict) -> str:
    """The two tables of one run."""
    lines = [f"Rank sync on CPU (2 ranks, gloo; MobileNetV3 Large x1.0 224 px, QAT + "
             f"distillation, batch {BATCH} per rank, {STEPS} steps)",
             f"{'mode':<10} {'step ms':>9} {'host sync ms':>13} {'share of step':>14}"]
    for mode in MODES:
        r = out["runs"][mode]
        lines.append(f"{mode:<10} {r['step_ms']:>9.1f} {r['host_sync_ms']:>13.1f} "
                     f"{100 * r['host_sync_share']:>13.1f}%")
    lines.append(f"step time, state / gradients: {out['step_ratio']:.2f}x")
    sizes = out["sizes"]
    lines += ["", f"Cost model per GPU and step: state {sizes['state_values'] / 1e6:.1f} M "
              f"values, gradients {sizes['gradient_values'] / 1e6:.1f} M (fp32); assumed "
              f"PCIe {PCIE_GBPS:g} GB/s, NVLink {NVLINK_GBPS:g} GB/s in a pod, "
              f"{NETWORK_GBPS:g} GB/s per GPU across pods; step {GPU_STEP_MS:g} ms",
              f"{'pods x 8':>8} {'mode':<10} {'PCIe MB':>8} {'all-reduce MB':>14} "
              f"{'ms':>7} {'share':>7}"]
    for r in out["cost_model"]:
        lines.append(f"{r['pods']:>8} {r['mode']:<10} {r['pcie_mb']:>8.1f} "
                     f"{r['allreduce_mb']:>14.1f} {r['ms']:>7.1f} {100 * r['share']:>6.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("bench-results/sync.json"))
    args = parser.parse_args(argv)
    print(header())
    with tempfile.TemporaryDirectory(prefix="clsact-bench-sync-") as tmp:
        root = Path(tmp)
        model, data = prepare(root)
        runs = {mode: run_mode(root, config(root, model, data, mode), mode) for mode in MODES}
    sizes = {k: runs["state"][k] for k in ("state_values", "gradient_values")}
    out = {"runs": runs, "sizes": sizes,
           "step_ratio": runs["state"]["step_ms"] / runs["gradients"]["step_ms"],
           "cost_model": cost_model(**sizes)}
    print(format_report(out))
    write_result(args.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
