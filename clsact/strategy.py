"""Strategy combinations, the stages of a chain, and the pruning settings' checks.

Which combinations run, in which stages, and the checks of their settings that need nothing
but the config (and, for the GMP schedule, the run's length).

ACT chains strategies itself: a pruning section with ``QuantAware`` prunes first and then
runs QAT on the pruned model, its ``TrainConfig`` applying to the pruning and the QAT stage
getting 10 % of the epochs/iterations and of the learning rate. clsact runs the same two
stages as two ACT runs (:func:`plan`), so each stage has its own training loop, evaluations,
checkpoints and resume point, and ``metrics.json`` records each stage's top-1; the QAT stage's
``TrainConfig`` follows ACT's rule (:func:`qat_train`), except that a fraction never rounds
down to zero steps (ACT's ``int(0.1 * train_iter)`` does, and then trains 100 epochs).

Refused up front, one line each (:func:`check`): two pruning sections in one run; 2:4 or
unstructured sparsity followed by QAT (QAT's training is not masked: it would fill the
zeros in again); a pruning section without distillation (ACT silently ignores it then);
settings paddleslim would assert on later (ratios out of range, GMP iteration counts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from clsact import schema
from clsact.errors import ConfigError

PRUNE_SECTIONS = ("ChannelPrune", "ASPPrune", "UnstructurePrune")
DISTILL_SECTIONS = ("Distillation", "MultiTeacherDistillation")
CRITERIA = ("l1_norm", "bn_scale", "geometry_median")
POINTWISE = "conv1x1_only"  # ChannelPrune.prune_params_type / UnstructurePrune's own value
GMP_KEYS = ("stable_iterations", "pruning_iterations", "tunning_iterations", "pruning_steps",
            "initial_ratio")
QAT_SHARE = 0.1  # ACT: the QAT stage after pruning gets 10 % of the epochs/steps/rate
# ACT's name of each single-stage strategy (paddleslim's AutoCompression._prepare_strategy)
ACT_NAMES = {"ChannelPrune": "channel_prune_dis", "ASPPrune": "asp_prune_dis",
             "UnstructurePrune": "unstructure_prune_dis", "QuantAware": "qat_dis"}


@dataclass(frozen=True)
class Stage:
    """One ACT run of a chain: the strategy sections it is given and its ``TrainConfig``."""

    name: str                       # ACT's strategy name (channel_prune_dis, qat_dis, ...)
    sections: tuple[str, ...]       # the config's strategy sections this stage runs
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def prune(self) -> str | None:
        """The pruning section of this stage, if any."""
        return next((s for s in self.sections if s in PRUNE_SECTIONS), None)


def prune_section(data: dict[str, Any]) -> str | None:
    """The config's pruning section (at most one: :func:`check`)."""
    return next((s for s in PRUNE_SECTIONS if s in data), None)


def _single_name(present: list[str]) -> str:
    for section in (*PRUNE_SECTIONS, "QuantAware"):
        if section in present:
            return ACT_NAMES[section]
    if "QuantPost" in present:
        return "quant_post"
    return "single_teacher_dis" if "Distillation" in present else "multi_teacher_dis"


def plan(data: dict[str, Any]) -> list[Stage]:
    """The stages of a validated config's run: one, or pruning then QAT.

    Each stage keeps the distillation section; the QAT stage after pruning trains on
    :func:`qat_train` of the config's ``TrainConfig``.
    """
    present = [s for s in schema.STRATEGIES if s in data]
    train = copy.deepcopy(data.get("TrainConfig") or {})
    prune = prune_section(data)
    if prune is None or "QuantAware" not in present:
        return [Stage(_single_name(present), tuple(present), train)]
    distill = tuple(s for s in present if s in DISTILL_SECTIONS)
    return [Stage(ACT_NAMES[prune], (prune, *distill), train),
            Stage("qat_dis", ("QuantAware", *distill), qat_train(train))]


def qat_train(train: dict[str, Any]) -> dict[str, Any]:
    """ACT's ``TrainConfig`` for QAT after pruning: 10 % of the epochs (at least 1), of
    ``train_iter`` (at least 1 step here; ACT's rounds to 0) and of every learning-rate
    value (a number, a scheduler's ``learning_rate``, or ``PiecewiseDecay``'s values)."""
    out = copy.deepcopy(train)
    if out.get("epochs") is not None:
        out["epochs"] = max(int(out["epochs"] * QAT_SHARE), 1)
    if out.get("train_iter") is not None:
        out["train_iter"] = max(int(out["train_iter"] * QAT_SHARE), 1)
    lr = out.get("learning_rate", 0.02)
    if isinstance(lr, dict):
        if "learning_rate" in lr:
            lr["learning_rate"] = lr["learning_rate"] * QAT_SHARE
        elif "values" in lr:
            lr["values"] = [v * QAT_SHARE for v in lr["values"]]
    else:
        out["learning_rate"] = lr * QAT_SHARE
    return out


def _ratio(value: Any, where: str, src: str, low_open: bool = True) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (
                (0.0 < v if low_open else 0.0 <= v) and v < 1.0):
            raise ConfigError(f"{src}: {where} must be a fraction in {'(0' if low_open else '[0'}"
                              f", 1) (0.25 = a quarter), got {v!r}")


def _check_channel(section: dict[str, Any], src: str) -> None:
    ratio, names = section.get("pruned_ratio"), section.get("prune_params_name")
    _ratio(ratio, "ChannelPrune.pruned_ratio", src)
    if isinstance(ratio, list) and (names is None or len(names) != len(ratio)):
        raise ConfigError(f"{src}: ChannelPrune.pruned_ratio is a list of {len(ratio)} ratios: "
                          "give ChannelPrune.prune_params_name with as many names (one ratio "
                          "each), or one ratio for all")
    if section.get("criterion") not in CRITERIA:
        raise ConfigError(f"{src}: ChannelPrune.criterion must be one of {', '.join(CRITERIA)},"
                          f" got {section.get('criterion')!r}")
    kind = section.get("prune_params_type")
    if kind not in (None, POINTWISE):
        raise ConfigError(f"{src}: ChannelPrune.prune_params_type must be {POINTWISE} (the "
                          f"pointwise convolutions) or null (every ungrouped convolution), got "
                          f"{kind!r}")
    if kind is not None and names:
        raise ConfigError(f"{src}: set ChannelPrune.prune_params_name or "
                          "ChannelPrune.prune_params_type, not both")


def _check_unstructured(section: dict[str, Any], src: str) -> None:
    where = f"{src}: UnstructurePrune"
    if section.get("prune_strategy") not in (None, "gmp"):
        raise ConfigError(f"{where}.prune_strategy must be gmp (gradual magnitude pruning) or "
                          f"null (prune once to the ratio), got {section['prune_strategy']!r}")
    mode = section.get("prune_mode")
    if mode not in ("ratio", "threshold"):
        raise ConfigError(f"{where}.prune_mode must be ratio or threshold, got {mode!r}")
    if section.get("prune_strategy") == "gmp" and mode != "ratio":
        raise ConfigError(f"{where}: the gmp strategy prunes by ratio; set prune_mode: ratio")
    if mode == "threshold" and section.get("local_sparsity"):
        raise ConfigError(f"{where}: local_sparsity needs prune_mode: ratio (paddleslim cannot "
                          "hold every layer at one threshold-defined sparsity)")
    if section.get("prune_params_type") not in (None, POINTWISE):
        raise ConfigError(f"{where}.prune_params_type must be {POINTWISE} or null (every "
                          f"weight but norms and biases), got {section['prune_params_type']!r}")
    _ratio(section.get("ratio"), "UnstructurePrune.ratio", src)
    if not isinstance(section.get("threshold"), (int, float)) or section["threshold"] < 0:
        raise ConfigError(f"{where}.threshold must be >= 0, got {section.get('threshold')!r}")
    gmp = section.get("gmp_config")
    if gmp is None:
        return
    if section.get("prune_strategy") != "gmp":
        raise ConfigError(f"{where}.gmp_config is set but prune_strategy is not gmp: set "
                          "prune_strategy: gmp or remove gmp_config")
    unknown = sorted(set(gmp) - {*GMP_KEYS, "resume_iteration"})
    if unknown:
        raise ConfigError(f"{where}.gmp_config: unknown key {unknown[0]!r}; its keys are "
                          f"{', '.join(GMP_KEYS)}")
    missing = [k for k in GMP_KEYS if k not in gmp]
    if missing:
        raise ConfigError(f"{where}.gmp_config needs {', '.join(missing)} (or leave gmp_config "
                          "out: clsact then derives it from the run's length as ACT does)")
    if gmp.get("resume_iteration", -1) != -1:
        raise ConfigError(f"{where}.gmp_config.resume_iteration is set by clsact when a run "
                          "resumes from its checkpoint; remove it")
    for key in GMP_KEYS[:4]:
        if not isinstance(gmp[key], int) or isinstance(gmp[key], bool) or gmp[key] < 0:
            raise ConfigError(f"{where}.gmp_config.{key} must be a whole number of steps >= 0, "
                              f"got {gmp[key]!r}")
    if gmp["pruning_steps"] < 1 or gmp["pruning_iterations"] <= 10 * gmp["pruning_steps"]:
        raise ConfigError(f"{where}.gmp_config: pruning_iterations ({gmp['pruning_iterations']}) "
                          f"must exceed 10 x pruning_steps ({gmp['pruning_steps']}), as "
                          "paddleslim's GMP pruner requires; raise pruning_iterations or lower "
                          "pruning_steps")
    _ratio(gmp["initial_ratio"], "UnstructurePrune.gmp_config.initial_ratio", src,
           low_open=False)
    if gmp["initial_ratio"] > section["ratio"]:
        raise ConfigError(f"{where}.gmp_config.initial_ratio ({gmp['initial_ratio']}) is above "
                          f"the target ratio ({section['ratio']})")


def check(data: dict[str, Any], src: str) -> None:
    """Refuse strategy combinations ACT cannot run (or would run other than written) and
    pruning settings paddleslim would assert on.

    Raises:
        ConfigError: the first problem, with the fix.
    """
    prunes = [s for s in PRUNE_SECTIONS if s in data]
    if len(prunes) > 1:
        raise ConfigError(f"{src}: {prunes[0]} and {prunes[1]} in one config: clsact runs one "
                          "pruning strategy per run; publish the first and compress its model "
                          "with the second in another run")
    if not prunes:
        return
    prune = prunes[0]
    section = _with_defaults(prune, data[prune])
    if not any(s in data for s in DISTILL_SECTIONS):
        raise ConfigError(f"{src}: {prune} needs a Distillation section (ACT ignores a pruning "
                          "section without one); add 'Distillation: {alpha: 1.0, loss: l2}'")
    if "QuantPost" in data:
        raise ConfigError(f"{src}: {prune} with QuantPost is not supported; use QuantAware "
                          "(pruning, then quantization-aware training)")
    if prune in ("ASPPrune", "UnstructurePrune") and "QuantAware" in data:
        raise ConfigError(f"{src}: {prune} followed by QuantAware would lose the sparsity (QAT "
                          "does not keep pruned weights at zero); run the sparse model without "
                          "QuantAware, or use ChannelPrune + QuantAware")
    if prune == "ChannelPrune":
        _check_channel(section, src)
    elif prune == "UnstructurePrune":
        _check_unstructured(section, src)


def _with_defaults(name: str, section: dict[str, Any]) -> dict[str, Any]:
    """A strategy section with paddleslim's defaults (schema) filled in."""
    keys = schema.STRATEGIES[name]
    return {**{k: copy.deepcopy(d) for k, (_t, d) in keys.items() if d is not schema.REQUIRED},
            **section}


def gradual(data: dict[str, Any]) -> bool:
    """Whether a config prunes gradually (UnstructurePrune with the GMP schedule): its
    loss rises with the sparsity by design, so clsact's learning-rate guard, which takes a
    rise above the starting loss for a diverging run, is off for it."""
    section = data.get("UnstructurePrune")
    return section is not None and section.get("prune_strategy") == "gmp"


def gmp_schedule(raw: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """The GMP schedule of an ``UnstructurePrune`` section for a run of ``total_steps``:
    the configured one, or (none configured) ACT's rule — 45 % of the steps pruning, 45 %
    tuning, one ratio increase per 100th of the pruning phase when that is over 1,000 steps,
    else one — except that ACT's floor of 30 pruning steps becomes 11 (paddleslim's least for
    one increase), so a short run still reaches its ratio.

    Raises:
        ConfigError: the schedule reaches its ratio after the run ends.
    """
    section = _with_defaults("UnstructurePrune", raw)
    gmp = section.get("gmp_config")
    if gmp is None:
        if total_steps < 11:
            raise ConfigError(f"UnstructurePrune with prune_strategy gmp needs at least 11 "
                              f"training steps, the run trains {total_steps}: train longer or "
                              "set prune_strategy: null (prune once)")
        pruning = max(int(0.45 * total_steps), 11)
        return {"stable_iterations": 0, "pruning_iterations": pruning,
                "tunning_iterations": pruning, "resume_iteration": -1,
                "pruning_steps": 100 if 0.45 * total_steps > 1000 else 1,
                "initial_ratio": 0.15}
    reach = gmp["stable_iterations"] + gmp["pruning_iterations"]
    if reach > total_steps:
        raise ConfigError(
            f"UnstructurePrune.gmp_config reaches its ratio {section['ratio']} after "
            f"stable_iterations + pruning_iterations = {reach} steps but the run trains "
            f"{total_steps}: lower pruning_iterations (more than 10 x pruning_steps) or train "
            "longer (TrainConfig.epochs/train_iter)")
    return {**gmp, "resume_iteration": -1}


def rank_sync_for(data: dict[str, Any], mode: str, requested: str, world: int) -> str:
    """The ranks' synchronisation for this config: Paddle's ASP loses its excluded layers
    under fleet's distributed optimizer (measured: "Cannot find conv2d_0.w_0.asp_mask"), so
    ASPPrune on several ranks synchronises the state (``auto`` picks it).

    Raises:
        ConfigError: ``Global.rank_sync: gradients`` asked for with ASPPrune on several ranks.
    """
    if "ASPPrune" not in data or world < 2 or mode != "gradients":
        return mode
    if requested == "auto":
        return "state"
    raise ConfigError("ASPPrune cannot run with Global.rank_sync: gradients (Paddle's ASP "
                      "loses its excluded layers under fleet's distributed optimizer); set "
                      "Global.rank_sync: state or auto")
