"""Optimizer and learning-rate settings for a run of N ranks.

With ``Global.rank_sync: state`` clsact's ranks average their training state after every
step (:mod:`clsact.distributed`), weighted by the samples each rank trained on. For an
optimizer whose update is linear in the gradient (SGD, Momentum, with L1/L2 weight decay:
the same weights on every rank give the same decay term) that equals one step on the global
batch's mean gradient. It does not for adaptive optimizers (Adam's moments are not linear
in the gradient), for gradient clipping (each rank would clip its own gradient) or for mixed
precision (dynamic loss scaling per rank): :func:`check_data_parallel` refuses those with
more than one rank. With ``gradients`` (fleet's all-reduce in the graph) any optimizer and
clipping train exactly.

``Global.lr_scaling: linear`` multiplies every learning-rate value of ``TrainConfig``
(a number, or every LR-valued argument of a ``paddle.optimizer.lr`` scheduler, defaults
included) by the world size: :func:`scale_learning_rate`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from clsact.config import Config
from clsact.errors import ConfigError

log = logging.getLogger(__name__)

# Optimizers (paddle.optimizer classes) whose step is linear in the gradient.
LINEAR_OPTIMIZERS = ("SGD", "Momentum")
# Scheduler arguments that hold learning-rate values (absolute, not factors or steps).
LR_ARGS = ("learning_rate", "values", "end_lr", "start_lr", "eta_min", "max_learning_rate",
           "end_learning_rate", "base_learning_rate")
# Schedulers ACT can build from YAML and step without a metric, with their LR arguments.
SCHEDULERS: dict[str, tuple[str, ...]] = {
    "NoamDecay": ("learning_rate",),
    "PiecewiseDecay": ("values",),
    "NaturalExpDecay": ("learning_rate",),
    "InverseTimeDecay": ("learning_rate",),
    "PolynomialDecay": ("learning_rate", "end_lr"),
    "LinearWarmup": ("learning_rate", "start_lr", "end_lr"),
    "ExponentialDecay": ("learning_rate",),
    "MultiStepDecay": ("learning_rate",),
    "StepDecay": ("learning_rate",),
    "CosineAnnealingDecay": ("learning_rate", "eta_min"),
    "OneCycleLR": ("max_learning_rate", "end_learning_rate"),
    "CyclicLR": ("base_learning_rate", "max_learning_rate"),
}


def optimizer_type(train: dict[str, Any]) -> str:
    """The ``paddle.optimizer`` class ACT will build (``SGD`` when unset, as ACT does)."""
    builder = train.get("optimizer_builder") or {}
    if not isinstance(builder, dict):
        return str(builder)
    return str((builder.get("optimizer") or {}).get("type", "SGD"))


def check_data_parallel(cfg: Config, world: int, mode: str = "state") -> None:
    """Refuse settings that the ranks' synchronisation (``mode``, see
    :func:`clsact.distributed.sync_mode`) would not train exactly.

    Raises:
        ConfigError: with more than one rank: mixed precision (loss scaling per rank, not
            verified here), and when averaging states (``state``) a non-linear optimizer or
            gradient clipping; in any mode, ``lr_scaling: linear`` with a scheduler whose
            learning-rate arguments clsact does not know. An all-reduce of gradients in the
            graph (``gradients``) trains any optimizer and clipping exactly: the optimizer
            ops, clipping included, read the mean gradient.
    """
    if world <= 1:
        return
    t, src = cfg.train, cfg.source
    kind = optimizer_type(t)
    how = (f"with {world} ranks and Global.rank_sync {mode}, clsact averages the ranks' "
           "training states, which equals averaging gradients only for SGD/Momentum without "
           "clipping or mixed precision")
    fix = "set Global.rank_sync: gradients (in-graph gradient all-reduce), or run one rank"
    if mode != "gradients" and kind not in LINEAR_OPTIMIZERS:
        raise ConfigError(f"{src}: TrainConfig.optimizer_builder.optimizer.type is {kind}: "
                          f"{how}; use Momentum or SGD, or {fix}")
    builder = t.get("optimizer_builder") or {}
    if mode != "gradients" and isinstance(builder, dict) and builder.get("grad_clip"):
        raise ConfigError(f"{src}: TrainConfig.optimizer_builder.grad_clip is set: {how} "
                          f"(each rank would clip its own gradient); remove grad_clip, or {fix}")
    if t.get("amp_config"):
        raise ConfigError(f"{src}: TrainConfig.amp_config is set with {world} ranks: mixed "
                          "precision (loss scaling per rank) is not supported across ranks; "
                          "remove amp_config or run one rank")
    lr = t.get("learning_rate")
    if (cfg.globals.lr_scaling == "linear" and isinstance(lr, dict)
            and lr.get("type") not in SCHEDULERS):
        raise ConfigError(f"{src}: TrainConfig.learning_rate.type {lr.get('type')!r} cannot be "
                          f"scaled to {world} ranks (known: {', '.join(SCHEDULERS)}); set "
                          "Global.lr_scaling: none and give the LR for the global batch")


def _scheduler_defaults(kind: str) -> dict[str, Any]:
    import paddle

    cls = getattr(paddle.optimizer.lr, kind, None)
    if cls is None:
        return {}
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def scale_learning_rate(cfg: Config, world: int) -> float:
    """Apply ``Global.lr_scaling`` for ``world`` ranks to ``TrainConfig.learning_rate`` in
    place: a number, or every LR argument of a scheduler (a default that applies is written
    out scaled). Returns the factor (1.0 when nothing was scaled).

    Raises:
        ConfigError: the scheduler type is not one clsact knows how to scale.
    """
    factor = float(world) if cfg.globals.lr_scaling == "linear" else 1.0
    if factor == 1.0:
        return 1.0
    lr = cfg.train.get("learning_rate", 0.02)  # ACT's default (schema)
    if isinstance(lr, (int, float)):
        cfg.data.setdefault("TrainConfig", cfg.train)["learning_rate"] = float(lr) * factor
        return factor
    kind = lr.get("type")
    if kind not in SCHEDULERS:
        raise ConfigError(f"{cfg.source}: TrainConfig.learning_rate.type {kind!r} cannot be "
                          "scaled; set Global.lr_scaling: none")
    defaults = _scheduler_defaults(kind)
    for arg in SCHEDULERS[kind]:
        value = lr.get(arg, defaults.get(arg))
        if isinstance(value, list):
            lr[arg] = [float(v) * factor for v in value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lr[arg] = float(value) * factor
    return factor


def complete_schedule(train: dict[str, Any], total_steps: int) -> list[str]:
    """Fill scheduler arguments that depend on the run's length and that ACT would pass
    missing to paddle (``CosineAnnealingDecay`` without ``T_max`` is a TypeError deep in
    ACT); learning-rate numbers become floats (ACT takes an int as a scheduler mapping).
    Returns what was filled, for the log. The schedule steps once per training step."""
    lr = train.get("learning_rate")
    filled = []
    if isinstance(lr, int) and not isinstance(lr, bool):
        train["learning_rate"] = float(lr)
    if not isinstance(lr, dict):
        return filled
    needs = {"CosineAnnealingDecay": "T_max", "PolynomialDecay": "decay_steps",
             "OneCycleLR": "total_steps"}
    key = needs.get(lr.get("type"))
    if key and lr.get(key) is None:
        lr[key] = total_steps
        filled.append(f"TrainConfig.learning_rate.{key}={total_steps} (the run's steps)")
    return filled


def resume_position(train: dict[str, Any], steps: int) -> None:
    """Shift ``TrainConfig`` (in place) so that ACT runs only the steps after ``steps``,
    with a learning-rate scheduler continuing where it was."""
    if train.get("train_iter"):
        train["train_iter"] = max(1, int(train["train_iter"]) - steps)
    lr = train.get("learning_rate")
    if isinstance(lr, dict):
        lr["last_epoch"] = steps - 1
