"""``make bench``: building the QAT program, with paddle's ``IrGraph.link_to`` and with
:func:`clsact.compat.fast_ir_graph_links`, side by side in one run.

For each model (paddle.vision MobileNetV3 Small x0.5 at 32 px, the test model; MobileNetV3
Large x1.0 at 224 px, the product's model) the inference program of a ``paddle.jit.save``
export is turned into a training graph and run through the two passes ACT's QAT applies
first (``QuantizationTransformPassV2`` with PACT-free defaults, ``OutScaleForTrainingPass``),
alternating original and fast ``link_to`` (median of ``--repeats``). Prints a table and
writes JSON (``--output``). Both variants must build programs with the same ops (checked).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.bench.provenance import header, write_result

MODELS = {"MobileNetV3Small x0.5 (32 px)": ("MobileNetV3Small", 0.5, 32),
          "MobileNetV3Large x1.0 (224 px)": ("MobileNetV3Large", 1.0, 224)}


def export(kind: str, scale: float, side: int, out: Path) -> Path:
    """A ``paddle.jit.save`` export of a paddle.vision MobileNetV3; returns its path prefix."""
    import paddle
    from paddle.vision import models

    paddle.disable_static()
    net = getattr(models, kind)(scale=scale, num_classes=1000)
    net.eval()
    spec = paddle.static.InputSpec([None, 3, side, side], "float32", "inputs")
    paddle.jit.save(net, str(out / "inference"), input_spec=[spec])
    return out / "inference"


def build_once(prefix: Path, fast: bool) -> tuple[float, int]:
    """Seconds to run the two QAT passes on the model's graph, and the op count built."""
    import paddle
    from paddle.base.framework import IrGraph
    from paddle.static.quantization import OutScaleForTrainingPass, QuantizationTransformPassV2

    from clsact import compat

    compat.fast_ir_graph_links()
    fast_link = IrGraph.link_to
    IrGraph.link_to = fast_link if fast else IrGraph._clsact_original_link_to
    try:
        paddle.enable_static()
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            program, _, _ = paddle.static.load_inference_model(str(prefix), exe)
            start = time.perf_counter()
            graph = IrGraph(paddle.base.core.Graph(program.desc), for_test=False)
            QuantizationTransformPassV2(scope=scope, place=paddle.CPUPlace()).apply(graph)
            OutScaleForTrainingPass(scope=scope, place=paddle.CPUPlace()).apply(graph)
            ops = len(graph.all_op_nodes())
            return time.perf_counter() - start, ops
    finally:
        IrGraph.link_to = fast_link


def run(repeats: int) -> dict:
    """Every measurement, per model."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="clsact-bench-graph-") as tmp:
        for name, (kind, scale, side) in MODELS.items():
            folder = Path(tmp) / kind
            folder.mkdir()
            prefix = export(kind, scale, side, folder)
            times: dict[bool, list[float]] = {False: [], True: []}
            ops: dict[bool, int] = {}
            for _ in range(repeats):
                for fast in (False, True):
                    seconds, ops[fast] = build_once(prefix, fast)
                    times[fast].append(seconds)
            if ops[False] != ops[True]:
                raise SystemExit(f"{name}: the fast links built {ops[True]} ops, "
                                 f"paddle's {ops[False]}")
            slow, quick = statistics.median(times[False]), statistics.median(times[True])
            out[name] = {"ops": ops[True], "paddle_link_to_s": round(slow, 3),
                         "fast_link_to_s": round(quick, 3), "speedup": round(slow / quick, 2)}
    return out


def format_report(out: dict) -> str:
    """The table ``make bench`` prints."""
    lines = [f"{'QAT graph passes':34} {'ops':>6} {'paddle s':>9} {'fast s':>8} {'speedup':>8}"]
    for name, r in out.items():
        lines.append(f"{name:34} {r['ops']:>6} {r['paddle_link_to_s']:>9.2f} "
                     f"{r['fast_link_to_s']:>8.2f} {r['speedup']:>7.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", default="bench-results/graph.json")
    args = parser.parse_args(argv)
    from clsact import compat

    compat.quiet_native_output()  # before paddle imports tqdm
    print(header())
    out = run(args.repeats)
    print(format_report(out))
    write_result(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
