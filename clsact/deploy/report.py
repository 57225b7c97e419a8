"""The run's deploy report: the baseline and the compressed model measured as served.

``report.json`` (every measurement), ``report.md`` (the table and the verdict) and
``report.png`` (top-1 through each runtime against its latency, baseline vs compressed). The
headline compares, at batch 1 with one thread (a phone or a single request on a shared
node), the compressed model through its fastest runtime with the baseline through *its*
fastest fp32 or bf16 runtime (as a user would deploy it): the speedup a user gets by deploying
the compressed model instead. The report names the CPU's instruction sets and the runtimes'
versions (:mod:`clsact.deploy.machine`), and the file the fastest deployment serves from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clsact.deploy import machine
from clsact.deploy.bench import Measurement, bench_model, format_table
from clsact.deploy.runtimes import ModelFiles
from clsact.plotting import figure
from clsact.process import cpu_count
from clsact.runconfig import Global
from clsact.storage.s3session import S3Settings

log = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.md", "report.png")
HEADLINE = {"batch": 1, "threads": 1}


def _at(m: Measurement, batch: int, threads: int) -> dict[str, Any] | None:
    return next((e for e in m.latency if e["batch"] == batch and e["threads"] == threads),
                None)


def fastest(results: list[Measurement], model: str, *, float_only: bool = False,
            flagged: bool = False, batch: int = HEADLINE["batch"],
            threads: int = HEADLINE["threads"]) -> tuple[Measurement, dict[str, Any]] | None:
    """The runtime serving ``model`` fastest at ``batch``/``threads`` (its measurement and
    latency entry), among the fp32/bf16 runtimes only with ``float_only``; among the runtimes
    that serve it as trained (no flag), or with ``flagged`` among those that do not; None
    when none ran."""
    from clsact.deploy.runtimes import RUNTIMES

    int8 = {r.key for r in RUNTIMES if r.int8}
    found = [(m, e) for m in results if m.model == model and m.status == "measured"
             and not (float_only and m.runtime in int8) and bool(m.flag) == flagged
             and (e := _at(m, batch, threads)) is not None]
    return min(found, key=lambda me: me[1]["p50_ms"]) if found else None


def _entry(found: tuple[Measurement, dict[str, Any]]) -> dict[str, Any]:
    m, e = found
    return {"runtime": m.runtime, "label": m.label, "p50_ms": e["p50_ms"],
            "top1": (m.accuracy or {}).get("top1"), "form": m.form}


def summary(results: list[Measurement], baseline: str, compressed: str) -> dict[str, Any]:
    """The headline: the fastest deployment of the compressed model among the runtimes that
    serve it as trained (no accuracy flag), its speedup over the baseline's fastest
    unflagged fp32 or bf16 runtime, the fastest flagged deployment when it is faster still (shown
    apart, with its loss, never as the headline), and the runtimes flagged for lost
    accuracy."""
    best, ref = fastest(results, compressed), fastest(results, baseline, float_only=True)
    lossy = fastest(results, compressed, flagged=True)
    out: dict[str, Any] = {"setting": dict(HEADLINE), "fastest": None, "baseline_fastest":
                           None, "speedup": None, "fastest_flagged": None,
                           "flagged": [f"{m.model} / {m.runtime}: {m.flag}" for m in results
                                       if m.flag],
                           "failed": [f"{m.model} / {m.runtime}: {m.reason}" for m in results
                                      if m.status == "failed"]}
    if best:
        out["fastest"] = _entry(best)
    if ref:
        out["baseline_fastest"] = _entry(ref)
    if lossy and (best is None or lossy[1]["p50_ms"] < best[1]["p50_ms"]):
        out["fastest_flagged"] = {**_entry(lossy), "flag": lossy[0].flag}
    if best and ref and best[1]["p50_ms"] > 0:
        out["speedup"] = round(ref[1]["p50_ms"] / best[1]["p50_ms"], 3)
    out["per_runtime"] = per_runtime(results, baseline, compressed)
    return out


def per_runtime(results: list[Measurement], baseline: str, compressed: str
                ) -> dict[str, float]:
    """The compressed model's speedup over the baseline on each runtime that served both
    (batch 1, one thread): where channel pruning must show on every runtime."""
    out = {}
    for m in results:
        if m.model != compressed or m.status != "measured":
            continue
        base = next((b for b in results if b.model == baseline and b.runtime == m.runtime
                     and b.status == "measured"), None)
        mine, theirs = _at(m, **HEADLINE), _at(base, **HEADLINE) if base else None
        if mine and theirs and mine["p50_ms"] > 0:
            out[m.runtime] = round(theirs["p50_ms"] / mine["p50_ms"], 3)
    return out


# What sparse weights need to pay: clsact's runtimes here run dense kernels.
SPARSE_KERNELS = {
    "UnstructurePrune": "unstructured zeros pay only on sparse kernels: Paddle Lite's ARM "
                        "sparse 1x1 convolution (`clsact export --target arm` turns it on "
                        "for this run); no runtime measured here has them, so their latency "
                        "is the dense model's",
    "ASPPrune": "2:4 sparsity pays only on sparse tensor cores (TensorRT on Ampere or newer "
                "GPUs, from the ONNX with its 2:4 weights); no runtime measured here has "
                "them, so their latency is the dense model's",
}


def pruning_summary(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """What the run's pruning did to the model (from ``metrics.json``) and what it needs to
    pay at serving time; None for a run without pruning."""
    p = metrics.get("pruning")
    if not p:
        return None
    weights = p["compressed"].get("pruned_weights") or {}
    groups = weights.get("groups_2of4")
    return {"strategy": p["strategy"], "flops_ratio": p["flops_ratio"],
            "params_ratio": p["params_ratio"], "zero_fraction": weights.get("zero_fraction"),
            "all_2of4": (weights.get("groups_2of4_ok") == groups) if groups else None,
            "needs": SPARSE_KERNELS.get(p["strategy"])}


def build(results: list[Measurement], baseline: str, compressed: str,
          metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """``report.json``'s content."""
    m = metrics or {}
    return {"format": "clsact-report/2", "run_id": m.get("run_id"), "machine": machine.describe(),
            "baseline_model": baseline, "compressed_model": compressed,
            "qat_top1": {"baseline": (m.get("baseline") or {}).get("top1"),
                         "compressed": (m.get("compressed") or {}).get("top1")},
            "summary": summary(results, baseline, compressed),
            "pruning": pruning_summary(m),
            "measurements": [asdict(x) for x in results]}


def markdown(report: dict[str, Any], table: str) -> str:
    """``report.md``: the headline, then the full table."""
    s = report["summary"]
    lines = [f"# Deploy report{' of run ' + report['run_id'] if report.get('run_id') else ''}",
             ""]
    best, ref = s["fastest"], s["baseline_fastest"]
    lines.append(f"Measured on {machine.headline(report['machine'])}; "
                 + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()) + ".")
    if best and ref:
        lines.append(f"At batch {s['setting']['batch']}, {s['setting']['threads']} thread: the "
                     f"compressed model is fastest on **{best['label']}** from "
                     f"`model/{best['form']}` ({best['p50_ms']:.2f} ms), **{s['speedup']:.2f}x** "
                     f"the baseline on its fastest fp32/bf16 runtime, {ref['label']} "
                     f"({ref['p50_ms']:.2f} ms).")
    else:
        lines.append("No runtime served both models within the accuracy tolerance at batch 1 "
                     "with one thread.")
    lossy = s.get("fastest_flagged")
    if lossy:
        lines.append(f"Faster but not counted: {lossy['label']} ({lossy['p50_ms']:.2f} ms) "
                     f"loses accuracy: {lossy['flag']}.")
    if s.get("per_runtime"):
        lines.append("Per runtime, compressed vs baseline (batch 1, 1 thread): " + ", ".join(
            f"{r} {x:.2f}x" for r, x in s["per_runtime"].items()) + ".")
    p = report.get("pruning")
    if p:
        zeros = (f"; {100 * p['zero_fraction']:.1f}% of the pruned weights are zero"
                 if p["zero_fraction"] else "")
        groups = "; every 2:4 group holds two zeros" if p["all_2of4"] else ""
        lines.append(f"{p['strategy']}: {p['flops_ratio']:.2f}x fewer FLOPs, "
                     f"{p['params_ratio']:.2f}x fewer parameters{zeros}{groups}"
                     + (f". Sparse kernels: {p['needs']}." if p["needs"] else
                        ": fewer channels, faster on every dense runtime."))
    q = report["qat_top1"]
    if q.get("compressed") is not None:
        lines.append(f"ACT evaluation (training graph): baseline top-1 "
                     f"{100 * q['baseline']:.2f}%, compressed {100 * q['compressed']:.2f}%.")
    lines += ["", *(f"- FLAGGED {f}" for f in s["flagged"]),
              *(f"- FAILED {f}" for f in s["failed"]), "", "```", table, "```", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """``report.png``: top-1 through each runtime against its batch-1, 1-thread latency.

    Raises:
        ClsactError: matplotlib is missing or the file cannot be written.
    """
    with figure(path, (7, 4.5)) as ax:
        for m in report["measurements"]:
            e = next((x for x in m["latency"] if x["batch"] == HEADLINE["batch"]
                      and x["threads"] == HEADLINE["threads"]), None)
            if m["status"] != "measured" or e is None:
                continue
            top1 = (m["accuracy"] or {}).get("top1")
            y = 100 * top1 if top1 is not None else 0.0
            base = m["model"] == report["baseline_model"]
            ax.scatter([e["p50_ms"]], [y], s=80, marker="o" if base else "s",
                       color="tab:gray" if base else "tab:blue", zorder=3)
            ax.annotate(f"{'baseline' if base else 'compressed'}: {m['runtime']}",
                        (e["p50_ms"], y), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)
        ax.set_xlabel("latency p50, batch 1, 1 thread (ms)")
        ax.set_ylabel("top-1 as served (%)")
        s = report["summary"]
        ax.set_title(f"deploy report: fastest {s['fastest']['runtime']} "
                     f"{s['speedup']:.2f}x" if s.get("speedup") else "deploy report")
        ax.grid(alpha=0.3)


def write(out_dir: Path, results: list[Measurement], metrics: dict[str, Any] | None,
          baseline: str = "baseline", compressed: str = "compressed") -> dict[str, Any]:
    """Write report.json, report.md and report.png into ``out_dir``; returns the report.

    Raises:
        ClsactError: the files cannot be written.
    """
    report = build(results, baseline, compressed, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report, format_table(results)))
    plot(report, out_dir / "report.png")
    return report


def write_serving_files(results: list[Measurement], model_dir: Path, names: tuple[str, str],
                        serving_dir: Path) -> list[Path]:
    """The compressed model in the forms the runtimes served it from (the serving ONNX,
    OpenVINO's observer-free program) into ``serving_dir``, each only when a runtime measured
    it from that form; returns the files written.

    Raises:
        ClsactError: a file cannot be made or written.
    """
    import shutil

    from clsact.deploy.runtimes import OPENVINO_MODEL, SERVING_ONNX, openvino_model, serving_onnx

    used = {m.form for m in results if m.model == "compressed" and m.status == "measured"}
    files = ModelFiles.of(model_dir, *names)
    out = []
    if SERVING_ONNX in used:
        out.append(serving_dir / SERVING_ONNX)
        out[-1].write_bytes(serving_onnx(files))
    if OPENVINO_MODEL in used:
        out.append(serving_dir / OPENVINO_MODEL)
        shutil.copyfile(openvino_model(files), out[-1])
    return out


def measure_run(out_dir: Path, baseline_dir: Path, compressed_dir: Path, g: Global,
                val_samples: list, metrics: dict[str, Any] | None, *,
                budget_s: float, serving_dir: Path | None = None,
                s3: S3Settings | None = None) -> dict[str, Any]:
    """Benchmark the baseline and the compressed model of a run (every runtime that can run
    them here; batch 1 and 32; one thread and all; accuracy on the validation set) and
    write the report into ``out_dir``. Returns the report. With ``serving_dir``, the
    compressed model goes there too in the forms the runtimes served it from
    (:func:`write_serving_files`). The images are read with ``s3`` (default ``g.s3()``).

    Raises:
        ClsactError: a model cannot be loaded or run, or the data cannot be read.
    """
    from clsact.data.build import make_loader

    names = (g.model_filename, g.params_filename)
    m = metrics or {}
    threads = tuple(dict.fromkeys((1, cpu_count())))
    results: list[Measurement] = []
    for name, where, ref in (("baseline", baseline_dir, (m.get("baseline") or {}).get("top1")),
                             ("compressed", compressed_dir,
                              (m.get("compressed") or {}).get("top1"))):
        loader = make_loader(g, val_samples, train=False, batch_size=32, s3=s3)
        try:
            results += bench_model(name, ModelFiles.of(where, *names), g.img_size,
                                   threads=threads, budget_s=budget_s,
                                   val_batches=lambda loader=loader: loader.epoch(0),
                                   reference_top1=ref)
        finally:
            loader.close()
    if serving_dir is not None:
        write_serving_files(results, compressed_dir, names, serving_dir)
    report = write(out_dir, results, metrics)
    s = report["summary"]
    if s["speedup"] is not None:
        log.info("deploy report: compressed fastest on %s at %.2f ms, %.2fx the baseline's "
                 "fastest fp32/bf16 runtime (%s)", s["fastest"]["runtime"], s["fastest"]["p50_ms"],
                 s["speedup"], s["baseline_fastest"]["runtime"])
    for line in s["flagged"]:
        log.warning("deploy report: FLAGGED %s", line)
    for line in s["failed"]:
        log.warning("deploy report: FAILED %s", line)
    return report
