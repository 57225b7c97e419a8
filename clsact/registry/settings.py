"""What ``clsact eval`` evaluates with: a published run's own preprocessing, or the flags.

``--model-dir`` may name a published run (its save dir, holding ``config.yaml`` and
``manifest.json``), the ``model/`` folder of one, or a bare inference model directory:

* a run: image sizes, mean/std, file names and input name come from the run's resolved
  ``config.yaml`` (the data dir and val list too, unless given), so the number is measured
  the way the run measured it; a size flag that disagrees with the run is refused;
* a bare model: the flags (defaults: ImageNet's 256/224); a model whose fixed input size
  differs from ``--img-size`` is refused before anything is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from clsact import config
from clsact.errors import ConfigError, StorageError
from clsact.registry.runs import parent_location
from clsact.runconfig import Global
from clsact.storage import S3Settings, open_store

RUN_CONFIG = "config.yaml"
RUN_MANIFEST = "manifest.json"
DEFAULTS = {"img_size": 224, "resize_size": 256, "val_list": "val_list.txt",
            "model_filename": "inference.pdmodel", "params_filename": "inference.pdiparams"}
# eval flags a run's config answers; a given flag must agree with the run
FROM_RUN = ("img_size", "resize_size", "mean", "std", "model_filename", "params_filename",
            "input_name")


@dataclass
class EvalPlan:
    """The model location, the ``Global`` settings to evaluate with, and where they came
    from (a run's config, or None)."""

    model_dir: str
    settings: dict[str, Any]
    run_config: str | None = None


def find_run(model_dir: str, what: str = "--model-dir", s3: S3Settings | None = None
             ) -> tuple[str, str, Global] | None:
    """(run location, model location, the run's ``Global``) when ``model_dir`` is a
    published run or its ``model/`` folder; None for a bare model directory (or a run whose
    files this reader may not see: the model files' own reads then say why). ``what`` names
    the location in errors (the command's flag or argument).

    Raises:
        StorageError: the location is malformed.
        ConfigError: the run's config.yaml is not a clsact config.
    """
    candidates = [(model_dir, f"{model_dir.rstrip('/')}/model")]
    parent = parent_location(model_dir)
    if parent is not None:  # a model at the top of a disk or bucket (/opt) has no run above
        candidates.append((parent, model_dir))
    for run, model in candidates:
        store = open_store(run, what, s3)
        try:
            text = store.read_bytes(RUN_CONFIG)
            store.read_bytes(RUN_MANIFEST)
        except (OSError, StorageError):  # missing, or not readable with these credentials
            continue
        return run, model, _run_global(text, store.describe(RUN_CONFIG))
    return None


def _run_global(text: bytes, where: str) -> Global:
    try:
        return config.validate(config.load_yaml(text), source=where).globals
    except (yaml.YAMLError, ConfigError, AttributeError) as exc:
        raise ConfigError(f"{where} is not a readable clsact config ({exc}); pass the "
                          "model folder itself with the size flags") from None


def plan(flags: dict[str, Any], s3: S3Settings | None = None) -> EvalPlan:
    """Settle the evaluation settings from the eval flags (None: not given; a run's files
    read with ``s3``).

    Raises:
        ConfigError: a flag disagrees with the run's config, or no data dir is known.
        StorageError: a location is malformed or cannot be read.
    """
    found = find_run(flags["model_dir"], s3=s3)
    given = {k: v for k, v in flags.items() if v is not None}
    if found is None:
        settings = {**DEFAULTS, **given}
        if "data_dir" not in settings:
            raise ConfigError("--data-dir is required for a model that is not a published "
                              "clsact run")
        return EvalPlan(flags["model_dir"], settings)
    run, model, typed = found
    g = typed.to_section()  # as config.yaml has it (lists), what the eval settings take
    for key in FROM_RUN:
        if key in given and given[key] != g[key]:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {given[key]} differs from Global.{key} {g[key]} of the "
                              f"run in {run} ({RUN_CONFIG}): drop the flag to evaluate the "
                              "model as the run did")
    settings = {**{k: g[k] for k in FROM_RUN}, "data_dir": g["data_dir"],
                "val_list": g["val_list"], **given, "model_dir": model}
    return EvalPlan(model, settings, f"{run}/{RUN_CONFIG}")


def check_model_input(shape: tuple[int, ...], img_size: int, model_dir: str) -> None:
    """Refuse a model whose fixed input size is not the crop being fed.

    Raises:
        ConfigError: the model takes H x W inputs and ``img_size`` differs.
    """
    h, w = shape[2], shape[3]
    if (h > 0 and h != img_size) or (w > 0 and w != img_size):
        raise ConfigError(f"model {model_dir} takes {h}x{w} inputs but the evaluation would "
                          f"crop {img_size}x{img_size}: pass --img-size {h} and the "
                          "--resize-size it was trained with")
