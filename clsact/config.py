"""Load, normalise, override, validate and save compression configs.

The file format is upstream ACT's (``Global``, ``Distillation``, ``QuantAware``,
``TrainConfig`` and the other strategy sections of paddleslim 2.6.0). Two upstream dialects are
accepted unchanged and normalised, each with a warning:

* ``Quantization`` (the pre-2.4 name, still used by PaddleClas' ``mbv3_qat_dis.yaml``) is
  renamed to ``QuantAware``. paddleslim 2.6.0 silently ignores it, which would turn the run
  into distillation only; clsact never lets that happen.
* ``DataLoader`` (PaddleClas' data section) is translated into ``Global`` keys (batch sizes,
  workers, data root, list files, crop/resize sizes, mean/std). Transform ops clsact does not
  implement are refused, except ``AutoAugment``, which is reported as not applied.

Nothing here imports paddle: validation runs before any heavy work.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clsact import schema, strategy
from clsact.errors import ConfigError, StorageError
from clsact.runconfig import Global
from clsact.storage import check_location, is_uri


@dataclass
class Config:
    """A validated config: ``data`` holds every section as written (``Global`` with defaults
    filled in: what ACT is given and ``config.yaml`` saves), ``globals`` the typed ``Global``
    built from it once."""

    data: dict[str, Any]
    source: str
    warnings: list[str] = field(default_factory=list)
    globals: Global = field(init=False)

    def __post_init__(self) -> None:
        self.globals = Global.from_section(self.data["Global"])

    @property
    def train(self) -> dict[str, Any]:
        """The ``TrainConfig`` section as written (ACT's own; it fills its defaults)."""
        return self.data.get("TrainConfig") or {}

    def strategies(self) -> dict[str, dict[str, Any]]:
        """The strategy sections (``QuantAware``, ``Distillation``, ...) present in the config."""
        return {k: v for k, v in self.data.items() if k in schema.STRATEGIES}

    def act_config(self) -> dict[str, Any]:
        """A deep copy of what paddleslim's ``AutoCompression(config=...)`` takes.

        ACT mutates the dict it is given (it pops ``TrainConfig``), hence the copy. Keys that
        clsact adds to ACT's sections (:data:`schema.CLSACT_ONLY_KEYS`) are left out.
        """
        out = copy.deepcopy(self.strategies())
        for section, key in schema.CLSACT_ONLY_KEYS:  # resolved by clsact, unknown to ACT
            (out.get(section) or {}).pop(key, None)
        out["TrainConfig"] = copy.deepcopy(self.train)
        return out

    def with_global(self, **changes: Any) -> Config:
        """A copy whose ``Global`` has ``changes`` (in ``data`` and ``globals`` alike)."""
        data = copy.deepcopy(self.data)
        data["Global"].update(changes)
        return Config(data=data, source=self.source, warnings=list(self.warnings))

    def for_stage(self, sections: tuple[str, ...], train: dict[str, Any]) -> Config:
        """A copy holding only the strategy sections ``sections``, with ``train`` as its
        ``TrainConfig``: one stage of a chain (:func:`clsact.strategy.plan`)."""
        data = {k: copy.deepcopy(v) for k, v in self.data.items()
                if k not in schema.STRATEGIES or k in sections}
        data["TrainConfig"] = copy.deepcopy(train)
        return Config(data=data, source=self.source, warnings=list(self.warnings))

    def to_yaml(self) -> str:
        """The resolved config as YAML text (what every run saves next to its outputs)."""
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None)


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ``" (did you mean 'X'?)"`` hint for a misspelt name, or ``""`` when nothing is close."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f" (did you mean '{lowered[word.lower()]}'?)"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 (and JSON, Go, Helm) write them.

    PyYAML follows YAML 1.1, where ``1e-4`` and ``4e-05`` (no dot) are strings: a learning
    rate written that way, or any float that Helm's ``toYaml`` (the chart's ConfigMaps) or a
    JSON tool wrote, would silently become text. Here they are floats.
    """


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`Loader`.

    Raises:
        yaml.YAMLError: not YAML.
    """
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def parse_yaml_file(path: str | Path, what: str, flag: str) -> Any:
    """Parse a local YAML file (``what`` names it in errors, ``flag`` says how to pass it);
    None for an empty file.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML (with line and column).
    """
    p = Path(path)
    if is_uri(str(path)):
        raise ConfigError(f"{what} {path}: give a local file path for {flag}")
    if not p.is_file():
        raise ConfigError(f"{what} file {path} does not exist (pass {flag} PATH to a YAML file)")
    try:
        return load_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path}:{where} is not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML config file into a dict.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    data = parse_yaml_file(path, "config", "--config")
    if data is None:
        raise ConfigError(f"config {path} is empty; see configs/ for complete examples")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``Section.key[.sub]=value`` into a key path and a YAML-parsed value.

    Raises:
        ConfigError: the text has no ``=`` or no ``Section.key`` path.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected Section.key=value, e.g. TrainConfig.epochs=1")
    path_text, _, value_text = text.partition("=")
    parts = [p.strip() for p in path_text.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: expected Section.key=value, e.g. Global.batch_size=64")
    try:
        value = load_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``--set`` overrides to the raw config dict in place.

    Raises:
        ConfigError: an override is malformed or walks into a non-mapping value.
    """
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is not a section or mapping")
            node = child
        node[parts[-1]] = value


def _type_ok(value: Any, types: str) -> bool:
    for t in types.split("|"):
        if t == "any":
            return True
        if t == "null" and value is None:
            return True
        if t == "bool" and isinstance(value, bool):
            return True
        if t == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t == "str" and isinstance(value, str):
            return True
        if t == "list" and isinstance(value, list):
            return True
        if t == "dict" and isinstance(value, dict):
            return True
    return False


_YAML11_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def fix_yaml11_floats(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-4`` (an exponent without a dot) as a string; turn such
    strings into floats everywhere in the config, nested mappings included."""
    if isinstance(value, dict):
        return {k: fix_yaml11_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fix_yaml11_floats(v) for v in value]
    if isinstance(value, str) and _YAML11_EXP_FLOAT.match(value.strip()):
        return float(value)
    return value


def check_section(name: str, section: Any, keys: dict[str, tuple[str, Any]], src: str,
                  choices: dict[tuple[str, str], tuple[str, ...]] | None = None) -> dict:
    """Check a mapping against a key table (type, default); return it without defaults.

    ``choices`` (default :data:`schema.CHOICES`) lists the allowed values of some keys.

    Raises:
        ConfigError: not a mapping, unknown key (with a did-you-mean), wrong type, a value not
            among its choices, or a required key missing.
    """
    choice_table = schema.CHOICES if choices is None else choices
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{src}: section {name} must be a mapping, got {type(section).__name__}")
    out = {}
    for key, value in section.items():
        if key not in keys:
            raise ConfigError(
                f"{src}: unknown key {name}.{key}{suggest(str(key), list(keys))}; "
                f"valid keys: {', '.join(keys)}"
            )
        types, _default = keys[key]
        if not _type_ok(value, types):
            raise ConfigError(
                f"{src}: {name}.{key} must be {types.replace('|', ' or ')}, "
                f"got {type(value).__name__} {value!r}"
            )
        allowed = choice_table.get((name, key))
        if allowed and value is not None and value not in allowed:
            raise ConfigError(
                f"{src}: {name}.{key} is {value!r}; choose one of {', '.join(allowed)}"
                f"{suggest(str(value), allowed)}"
            )
        out[key] = value
    for key, (_types, default) in keys.items():
        if default is schema.REQUIRED and key not in out:
            raise ConfigError(f"{src}: {name}.{key} is required")
    return out


def _rename_quantization(data: dict[str, Any], src: str, warnings: list[str]) -> None:
    if schema.OLD_QUANT not in data:
        return
    if "QuantAware" in data:
        raise ConfigError(
            f"{src}: both 'Quantization' and 'QuantAware' are set; 'Quantization' is the old "
            "name of 'QuantAware' (paddleslim 2.6 ignores it): delete the 'Quantization' section"
        )
    data["QuantAware"] = data.pop(schema.OLD_QUANT)
    warnings.append(
        f"{src}: section 'Quantization' renamed to 'QuantAware' (paddleslim 2.6 silently "
        "ignores 'Quantization' and would run distillation only); rename it in the file"
    )


def _translate_transforms(ops: Any, where: str, src: str, warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(ops, list):
        raise ConfigError(f"{src}: {where}.transform_ops must be a list of ops")
    for item in ops:
        name, args = (next(iter(item.items())) if isinstance(item, dict) and len(item) == 1
                      else (item, None))
        args = args or {}
        if name == "DecodeImage":
            if args.get("to_rgb", True) is not True or args.get("channel_first", False):
                raise ConfigError(f"{src}: {where} DecodeImage must use to_rgb: True, "
                                  "channel_first: False (clsact decodes to RGB HWC)")
        elif name in ("RandCropImage", "CropImage"):
            out["img_size"] = int(args.get("size", 224))
        elif name == "ResizeImage":
            if "resize_short" not in args:
                raise ConfigError(f"{src}: {where} ResizeImage: only resize_short is supported")
            out["resize_size"] = int(args["resize_short"])
        elif name == "RandFlipImage":
            if args.get("flip_code", 1) != 1:
                raise ConfigError(f"{src}: {where} RandFlipImage: only flip_code 1 is supported")
        elif name == "NormalizeImage":
            scale = args.get("scale", "1.0/255.0")
            if str(scale).replace(" ", "") not in ("1.0/255.0", "1/255", "0.00392156862745098"):
                raise ConfigError(f"{src}: {where} NormalizeImage.scale must be 1.0/255.0")
            for k in ("mean", "std"):
                if k in args:
                    out[k] = list(args[k])
        elif name == "AutoAugment":
            warnings.append(f"{src}: {where} AutoAugment is not applied by clsact "
                            "(random resized crop + flip only)")
        else:
            raise ConfigError(f"{src}: {where} transform {name!r} is not supported; supported: "
                              "DecodeImage, RandCropImage, RandFlipImage, AutoAugment (ignored), "
                              "ResizeImage, CropImage, NormalizeImage")
    return out


def _translate_dataloader(data: dict[str, Any], src: str, warnings: list[str]) -> None:
    """Fold a PaddleClas ``DataLoader`` section into ``Global`` (explicit Global keys win)."""
    section = data.pop(schema.DATALOADER, None)
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{src}: DataLoader must be a mapping with Train and Eval")
    derived: dict[str, Any] = {}
    roots = []
    for phase, list_key, bs_key in (("Train", "train_list", "batch_size"),
                                    ("Eval", "val_list", "eval_batch_size")):
        part = section.get(phase) or {}
        dataset = part.get("dataset") or {}
        sampler = part.get("sampler") or {}
        loader = part.get("loader") or {}
        if dataset.get("name", "ImageNetDataset") != "ImageNetDataset":
            raise ConfigError(f"{src}: DataLoader.{phase}.dataset.name must be ImageNetDataset")
        if "batch_size" in sampler:
            derived[bs_key] = sampler["batch_size"]
        if phase == "Train" and "num_workers" in loader:
            derived["num_workers"] = loader["num_workers"]
        root = dataset.get("image_root")
        if root:
            roots.append(root)
            label = dataset.get("cls_label_path")
            if label:
                rel = os.path.relpath(label, root)
                derived[list_key] = rel if not rel.startswith("..") else os.path.abspath(label)
        derived.update(_translate_transforms(dataset.get("transform_ops", []),
                                             f"DataLoader.{phase}", src, warnings))
    if len({os.path.normpath(r) for r in roots}) > 1:
        raise ConfigError(f"{src}: DataLoader Train and Eval image_root differ; clsact reads "
                          "one data_dir holding both list files")
    if roots:
        derived["data_dir"] = roots[0]
    glob = data.setdefault("Global", {}) or {}
    data["Global"] = glob
    for key, value in derived.items():
        glob.setdefault(key, value)
    warnings.append(f"{src}: PaddleClas DataLoader section translated into Global "
                    f"({', '.join(sorted(derived))})")


def _check_global_values(g: dict[str, Any], src: str) -> None:
    for key in ("batch_size", "img_size", "resize_size"):
        if g[key] < 1:
            raise ConfigError(f"{src}: Global.{key} must be >= 1, got {g[key]}")
    if g["eval_batch_size"] is not None and g["eval_batch_size"] < 1:
        raise ConfigError(f"{src}: Global.eval_batch_size must be >= 1")
    if g["resize_size"] < g["img_size"]:
        raise ConfigError(f"{src}: Global.resize_size ({g['resize_size']}) must be >= "
                          f"Global.img_size ({g['img_size']})")
    if g["num_workers"] is not None and g["num_workers"] < 0:
        raise ConfigError(f"{src}: Global.num_workers must be >= 0 (0 decodes in-process)")
    if not 0.0 <= g["max_bad_fraction"] <= 1.0:
        raise ConfigError(f"{src}: Global.max_bad_fraction must be within [0, 1]")
    for key, lo, hi in (("crop_scale", 0.0, 1.0), ("crop_ratio", 0.0, 100.0)):
        v = g[key]
        if (len(v) != 2 or not all(_type_ok(x, "float") for x in v)
                or not lo < v[0] <= v[1] <= hi):
            raise ConfigError(f"{src}: Global.{key} must be two numbers [min, max] with "
                              f"{lo} < min <= max <= {hi}, got {v}")
    for key in ("mean", "std"):
        v = g[key]
        if len(v) != 3 or not all(_type_ok(x, "float") for x in v):
            raise ConfigError(f"{src}: Global.{key} must be three numbers (R, G, B), got {v}")
    if any(x <= 0 for x in g["std"]):
        raise ConfigError(f"{src}: Global.std values must be > 0")
    if g["decode"] == "gpu" and g["device"] == "cpu":
        raise ConfigError(f"{src}: Global.decode gpu needs Global.device gpu (or auto on a "
                          "GPU machine); set Global.decode: cpu to decode on the CPU")
    if g["collective_timeout"] <= 0:
        raise ConfigError(f"{src}: Global.collective_timeout must be > 0 seconds")
    if g["selection_holdout"] < 0:
        raise ConfigError(f"{src}: Global.selection_holdout must be >= 0 (images of the train "
                          f"list held out for ACT's model selection), got {g['selection_holdout']}")
    if g["selection_holdout"] and g["selection_list"]:
        raise ConfigError(f"{src}: set Global.selection_list or Global.selection_holdout, not "
                          "both")
    if g["freeze_bn_after"] is not None and g["freeze_bn_after"] < 0:
        raise ConfigError(f"{src}: Global.freeze_bn_after must be >= 0 (the step from which "
                          "batch-norm statistics are frozen) or null (never), got "
                          f"{g['freeze_bn_after']}")
    if g["final_model"] is None:
        g["final_model"] = "average" if g["lr_guard"] else "last"
    if g["final_model"] == "average" and not g["lr_guard"]:
        raise ConfigError(f"{src}: Global.final_model: average averages the states the "
                          "learning-rate guard judged healthy; with Global.lr_guard: false set "
                          "Global.final_model: last (or best)")
    if g["lr_guard_window"] < 2:
        raise ConfigError(f"{src}: Global.lr_guard_window must be >= 2 steps, got "
                          f"{g['lr_guard_window']}")
    if g["lr_guard_threshold"] <= 1:
        raise ConfigError(f"{src}: Global.lr_guard_threshold must be > 1 (a multiple of the "
                          f"untrained student's loss), got {g['lr_guard_threshold']}")
    for key in ("checkpoint_every_steps", "checkpoint_every_minutes"):
        if g[key] is not None and g[key] <= 0:
            raise ConfigError(f"{src}: Global.{key} must be > 0 (or null for no such "
                              f"cadence), got {g[key]}")
    for key in ("report_budget", "report_timeout"):
        if g[key] <= 0:
            raise ConfigError(f"{src}: Global.{key} must be > 0 seconds, got {g[key]}")
    for key in ("s3_max_attempts", "io_threads"):
        if g[key] < 1:
            raise ConfigError(f"{src}: Global.{key} must be >= 1, got {g[key]}")
    for key in ("model_dir", "data_dir", "output_dir"):
        try:
            check_location(g[key], f"{src}: Global.{key}")
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
    if g["scratch_dir"] is not None and is_uri(g["scratch_dir"]):
        raise ConfigError(f"{src}: Global.scratch_dir must be a local directory")
    if g["s3_endpoint"] is not None and not g["s3_endpoint"].startswith(("http://", "https://")):
        raise ConfigError(f"{src}: Global.s3_endpoint must be an http(s):// URL, got "
                          f"{g['s3_endpoint']!r}")


def _check_train(t: dict[str, Any], src: str) -> None:
    if t.get("epochs") is None and t.get("train_iter") is None:
        raise ConfigError(f"{src}: TrainConfig needs epochs or train_iter (paddleslim would "
                          "otherwise train for 100 epochs)")
    for key in ("epochs", "train_iter", "eval_iter", "logging_iter"):
        if t.get(key) is not None and t[key] < 1:
            raise ConfigError(f"{src}: TrainConfig.{key} must be >= 1, got {t[key]}")
    lr = t.get("learning_rate")
    if isinstance(lr, dict) and "type" not in lr:
        raise ConfigError(f"{src}: TrainConfig.learning_rate as a mapping needs a 'type' "
                          "(a paddle.optimizer.lr class, e.g. CosineAnnealingDecay)")
    for key in ("origin_metric", "target_metric"):
        if t.get(key) is not None and not 0.0 <= t[key] <= 1.0:
            raise ConfigError(f"{src}: TrainConfig.{key} is a top-1 fraction in [0, 1], "
                              f"got {t[key]}")


def check_gate(section: dict[str, Any], src: str) -> dict[str, Any]:
    """Validate a ``Gate`` section (keys, types, ranges); returns it with defaults filled in.

    Raises:
        ConfigError: unknown key, wrong type, a threshold outside [0, 1], or a bad location.
    """
    gate = check_section("Gate", section, schema.GATE, src)
    for key, (_types, default) in schema.GATE.items():
        gate.setdefault(key, default)
    for key, value in gate.items():
        if key != "against" and value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{src}: Gate.{key} is a top-1 fraction in [0, 1] (0.75 = 75 %), "
                              f"got {value}")
    if gate["against"] is not None:
        try:
            check_location(gate["against"], f"{src}: Gate.against")
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
    return gate


def _check_strategies(data: dict[str, Any], src: str) -> None:
    present = [s for s in schema.STRATEGIES if s in data]
    for name, why in schema.REFUSED_STRATEGIES.items():
        if name in present:
            raise ConfigError(f"{src}: strategy {name} is not supported: {why}")
    if not present:
        raise ConfigError(f"{src}: no compression strategy; add QuantAware and Distillation "
                          "sections (see configs/mbv3_qat_dis.yaml)")
    distill = [s for s in ("Distillation", "MultiTeacherDistillation") if s in present]
    if len(distill) > 1:
        raise ConfigError(f"{src}: set Distillation or MultiTeacherDistillation, not both")
    needs_distill = [s for s in ("QuantAware", "ChannelPrune", "ASPPrune", "TransformerPrune",
                                 "UnstructurePrune") if s in present]
    strategy.check(data, src)
    if needs_distill and not distill:
        raise ConfigError(f"{src}: {needs_distill[0]} needs a Distillation section (ACT trains "
                          "the compressed model by distillation from the original); add "
                          "'Distillation: {alpha: 1.0, loss: soft_label}'")


def _resolve_local_paths(g: dict[str, Any]) -> None:
    for key in ("model_dir", "data_dir", "output_dir", "scratch_dir"):
        if g[key] is not None and not is_uri(g[key]):
            g[key] = os.path.abspath(os.path.expanduser(g[key]))


def complete_section(section: Any, source: str) -> dict[str, Any]:
    """Validate a ``Global`` section and fill in its defaults (local paths made absolute).

    Raises:
        ConfigError: unknown key, wrong type or value, or a required key is missing.
    """
    g = check_section("Global", section, schema.GLOBAL, source)
    for key, (_types, default) in schema.GLOBAL.items():
        g.setdefault(key, copy.deepcopy(default))
    _check_global_values(g, source)
    _resolve_local_paths(g)
    return g


def complete_global(section: Any, source: str) -> Global:
    """The typed ``Global`` of a section (see :func:`complete_section`).

    Raises:
        ConfigError: see :func:`complete_section`.
    """
    return Global.from_section(complete_section(section, source))


def validate(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Normalise and validate a raw config dict (see the module docstring).

    Raises:
        ConfigError: unknown section or key (with a did-you-mean), wrong type or value,
            missing required key, or an unsupported strategy combination.
    """
    data = fix_yaml11_floats(copy.deepcopy(raw))
    warnings: list[str] = []
    _rename_quantization(data, source, warnings)
    _translate_dataloader(data, source, warnings)
    sections = schema.all_sections()
    for name in data:
        if name not in sections:
            hint = suggest(str(name), list(sections))
            raise ConfigError(f"{source}: unknown section {name!r}{hint}; valid sections: "
                              f"{', '.join(sections)}")
    out: dict[str, Any] = {"Global": complete_section(data.get("Global"), source)}
    for name in sections:
        if name == "Gate" and name in data:
            out[name] = check_gate(data.get(name), source)
        elif name in data and name != "Global":
            out[name] = check_section(name, data.get(name), sections[name], source)
    _check_strategies(out, source)
    out.setdefault("TrainConfig", {})
    _check_train(out["TrainConfig"], source)
    return Config(data=out, source=source, warnings=warnings)


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override (``--set``) and validate a config file.

    Raises:
        ConfigError: see :func:`read_yaml`, :func:`apply_overrides` and :func:`validate`.
    """
    raw = read_yaml(path)
    apply_overrides(raw, overrides or [])
    return validate(raw, source=str(path))


def save(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (re-loadable with :func:`load`)."""
    Path(path).write_text(config.to_yaml(), encoding="utf-8")
