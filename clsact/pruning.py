"""Pruning against the model (weights checked, pruning tried, result measured).

Which weights a pruning section names, whether paddleslim can prune them, and what a pruned
model measures.

Before any work (:func:`resolve`): ``ChannelPrune.prune_params_type: conv1x1_only`` becomes
the list of the model's pointwise convolutions; every name in ``prune_params_name`` must be
a weight of the model (the closest real names are listed otherwise); ChannelPrune is tried
on a scratch copy of the program and run once on a zero batch, so a pruning paddleslim gets
wrong (e.g. a flatten of a spatial map into a linear layer, whose rows it cannot match to the
channels) is refused with one line instead of failing after the graphs are built; an ASP
weight whose input size is not a multiple of 4 (no 2:4 groups) is refused.

After the run (:func:`measure`): parameters and FLOPs (paddleslim's ``flops``), the model
files' size, and — measured from the saved weights — the fraction of zeros of the pruned
weights and, for 2:4 sparsity, whether every group of four consecutive input weights holds
at least two zeros (the groups cuSparseLt and Paddle's ASP use).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from clsact.errors import ModelError
from clsact.modelio import load_program, model_paths

log = logging.getLogger(__name__)
POINTWISE = "conv1x1_only"
QUANT_STATE = ("@scale", "@zero_point")  # quantizer state in a QAT model, not weights
WEIGHT_OPS = ("conv2d", "depthwise_conv2d", "matmul_v2", "matmul", "mul")


def _load(model_dir: Path, model_filename: str, params_filename: str):
    """(program, scope, feed names, fetch vars) of an inference model in a fresh scope."""
    import paddle

    paddle.enable_static()
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.CPUPlace())
    model, params = model_paths(model_dir, model_filename, params_filename)
    with paddle.static.scope_guard(scope):
        program, feeds, fetches = paddle.static.load_inference_model(
            str(model.parent), exe, model_filename=model.name,
            params_filename=params.name)
    return program, scope, feeds, fetches


def _graph(model_dir: Path, g):
    """The model's program, parsed without its weights (names and shapes are enough)."""
    return load_program(model_paths(model_dir, g.model_filename, g.params_filename)[0])


def _weight_ops(program) -> list[tuple[Any, str]]:
    """(op, weight name) for every conv/matmul op whose weight is a persistable variable."""
    out = []
    block = program.global_block()
    for op in block.ops:
        if op.type not in WEIGHT_OPS:
            continue
        slot = "Filter" if "conv" in op.type else "Y"
        for name in op.input(slot):
            if block.has_var(name) and block.var(name).persistable:
                out.append((op, name))
    return out


def conv_weights(program, pointwise: bool) -> list[str]:
    """The weights of the ungrouped ``conv2d`` ops (``pointwise``: only 1x1 kernels), in
    program order — what ChannelPrune prunes when no names are given."""
    block = program.global_block()
    return [name for op, name in _weight_ops(program)
            if op.type == "conv2d" and op.attr("groups") == 1
            and (not pointwise or tuple(block.var(name).shape[2:]) == (1, 1))]


def weight_names(program) -> list[str]:
    """Every conv/matmul weight of the program."""
    return [name for _op, name in _weight_ops(program)]


def _unknown(names: list[str], known: list[str], where: str) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(known[:3])}"
            raise ModelError(f"{where} names {name!r}, which is not a weight of the model "
                             f"({hint}; `clsact inspect` lists them all)")


def dry_run_channel_prune(model_dir: Path, g, names: list[str], ratios: list[float],
                          criterion: str) -> None:
    """Prune a scratch copy of the model as ACT will and run it once on a zero batch.

    Raises:
        ModelError: paddleslim cannot prune these weights consistently (the pruned program
            does not run), naming the op that broke.
    """
    import paddle
    from paddleslim.prune import Pruner

    program, scope, feeds, fetches = _load(model_dir, g.model_filename, g.params_filename)
    place = paddle.CPUPlace()
    shape = [1, 3, g.img_size, g.img_size]
    with paddle.static.scope_guard(scope):
        try:
            pruned, _, _ = Pruner(criterion).prune(program, scope, params=names, ratios=ratios,
                                                   place=place)
            exe = paddle.static.Executor(place)
            exe.run(pruned, feed={feeds[0]: np.zeros(shape, np.float32)}, fetch_list=fetches)
        except Exception as exc:  # noqa: BLE001 - paddle raises many types for a bad graph
            text = " ".join(str(exc).split())
            op = text.split("[operator < ")[-1].split(" >")[0] if "[operator < " in text else ""
            raise ModelError(
                f"ChannelPrune cannot prune {', '.join(names[:4])}"
                f"{' ...' if len(names) > 4 else ''} consistently: the pruned model fails"
                f"{f' in its {op} op' if op else ''} ({text[:160]}); paddleslim cannot follow "
                "pruned channels through every op (e.g. a flatten of a spatial map into a "
                "linear layer): leave those weights out of ChannelPrune.prune_params_name"
            ) from None


def resolve(data: dict[str, Any], model_dir: Path, g) -> dict[str, Any]:
    """The ACT overrides of the config's pruning section for this model (names resolved),
    after checking them against the model; ``{}`` without a pruning section.

    Raises:
        ModelError: a named weight is not in the model, ChannelPrune would break the model,
            an ASP weight has no 2:4 groups, or there is nothing to prune.
    """
    if "ChannelPrune" in data:
        return _resolve_channel(data["ChannelPrune"], model_dir, g)
    if "ASPPrune" in data:
        return _resolve_asp(data["ASPPrune"], model_dir, g)
    if "UnstructurePrune" in data:
        program = _graph(model_dir, g)
        pointwise = data["UnstructurePrune"].get("prune_params_type", POINTWISE) == POINTWISE
        if pointwise and not conv_weights(program, pointwise=True):
            raise ModelError("UnstructurePrune.prune_params_type is conv1x1_only but the model "
                             "has no 1x1 convolution: set prune_params_type: null")
    return {}


def _resolve_channel(section: dict[str, Any], model_dir: Path, g) -> dict[str, Any]:
    program = _graph(model_dir, g)
    kind = section.get("prune_params_type")
    names = section.get("prune_params_name")
    if names:
        _unknown(names, conv_weights(program, pointwise=False) or weight_names(program),
                 "ChannelPrune.prune_params_name")
    else:
        names = conv_weights(program, pointwise=kind == POINTWISE)
    if not names:
        raise ModelError("ChannelPrune finds no ungrouped convolution to prune in the model"
                         f"{' (prune_params_type: conv1x1_only)' if kind else ''}")
    ratio = section["pruned_ratio"]
    ratios = ratio if isinstance(ratio, list) else [float(ratio)] * len(names)
    dry_run_channel_prune(model_dir, g, names, ratios, section.get("criterion", "l1_norm"))
    log.info("ChannelPrune: %d weights (%s), ratio %s, checked on a scratch copy",
             len(names), "pointwise convolutions" if kind == POINTWISE and not
             section.get("prune_params_name") else "as named" if section.get(
                 "prune_params_name") else "every ungrouped convolution", ratio)
    return {"ChannelPrune": {"prune_params_name": names, "pruned_ratio": ratio,
                             "criterion": section.get("criterion", "l1_norm")}}


def asp_weights(program) -> list[str]:
    """The weights ASP prunes when no names are given (ACT's rule: ungrouped convolutions
    and matmul weights)."""
    return [name for op, name in _weight_ops(program)
            if (op.type == "conv2d" and op.attr("groups") == 1)
            or op.type in ("mul", "matmul_v2")]


def _input_size(shape: tuple[int, ...]) -> int:
    """The size along which 2:4 groups run: a conv weight's input channels, a matmul
    weight's rows."""
    return int(shape[1]) if len(shape) == 4 else int(shape[0])


def _resolve_asp(section: dict[str, Any], model_dir: Path, g) -> dict[str, Any]:
    program = _graph(model_dir, g)
    names = section.get("prune_params_name")
    block = program.global_block()
    if names:
        _unknown(names, weight_names(program), "ASPPrune.prune_params_name")
        bad = [n for n in names if _input_size(block.var(n).shape) % 4]
        if bad:
            raise ModelError(f"ASPPrune.prune_params_name names {bad[0]} {block.var(bad[0]).shape}"
                             ": its input size is not a multiple of 4, so it has no 2:4 groups "
                             "(ASP would leave it dense); leave it out")
        return {}
    names = [n for n in asp_weights(program) if _input_size(block.var(n).shape) % 4 == 0]
    if not names:
        raise ModelError("ASPPrune finds no weight with an input size that is a multiple of 4 "
                         "(no 2:4 groups) in the model")
    return {"ASPPrune": {"prune_params_name": names}}


def targets(section: str, settings: dict[str, Any], model_dir: Path, g) -> list[str]:
    """The weights a pruning section works on in this model (``settings``: the section with
    its resolved names): ChannelPrune's pruned convolutions, ASP's 2:4 weights, the weights
    the unstructured pruner sparsifies (1x1 convolutions, or every conv/matmul weight)."""
    if settings.get("prune_params_name"):
        return list(settings["prune_params_name"])
    program = _graph(model_dir, g)
    if section == "ChannelPrune":
        return conv_weights(program, settings.get("prune_params_type") == POINTWISE)
    if section == "ASPPrune":
        return [n for n in asp_weights(program)
                if _input_size(program.global_block().var(n).shape) % 4 == 0]
    if settings.get("prune_params_type", POINTWISE) == POINTWISE:
        return conv_weights(program, pointwise=True)
    return weight_names(program)


def two_of_four(weight: np.ndarray) -> tuple[int, int]:
    """(groups of four consecutive input weights holding at least two zeros, all groups) of
    a conv (out, in, kh, kw) or matmul (in, out) weight; (0, 0) when the input size is not a
    multiple of 4."""
    rows = weight.transpose(0, 2, 3, 1).reshape(-1, weight.shape[1]) if weight.ndim == 4 \
        else weight.T
    if rows.shape[1] % 4:
        return 0, 0
    zeros = (rows.reshape(rows.shape[0], -1, 4) == 0).sum(axis=-1)
    return int((zeros >= 2).sum()), int(zeros.size)


def measure(model_dir: Path, g, targets: list[str] | None = None) -> dict[str, Any]:
    """Parameters, FLOPs, file sizes and sparsity of a saved model, from its files.

    ``targets`` are the weights a pruning strategy worked on (their zeros and 2:4 groups
    are reported apart); quantizer state of a QAT model is not counted as parameters.
    """
    from paddleslim.analysis import flops

    program, scope, *_ = _load(model_dir, g.model_filename, g.params_filename)
    values = {}
    for var in program.list_vars():
        if var.persistable and var.name not in ("feed", "fetch") and not any(
                mark in var.name for mark in QUANT_STATE):
            found = scope.find_var(var.name)
            if found is not None:
                values[var.name] = np.array(found.get_tensor())
    files = model_paths(model_dir, g.model_filename, g.params_filename)
    out: dict[str, Any] = {
        "params": int(sum(v.size for v in values.values())),
        "flops": int(flops(program, only_conv=False)),
        "file_bytes": int(sum(Path(f).stat().st_size for f in files)),
    }
    weights = [n for n in (targets or []) if n in values]
    if weights:
        total = sum(values[n].size for n in weights)
        zeros = sum(int((values[n] == 0).sum()) for n in weights)
        groups = [two_of_four(values[n]) for n in weights]
        out["pruned_weights"] = {
            "count": len(weights), "values": int(total),
            "zero_fraction": round(zeros / total, 6) if total else None,
            "groups_2of4_ok": sum(ok for ok, _ in groups),
            "groups_2of4": sum(all_ for _, all_ in groups)}
    return out
