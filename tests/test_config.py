"""Config loading: upstream files unchanged, ready configs, and every bad input."""

import inspect
from pathlib import Path

import pytest
import yaml

from clsact import config, schema
from clsact.errors import ConfigError
from tests.conftest import REPO, SHARED

REFERENCE = SHARED / "reference" / "paddleslim"
BASE = {
    "Global": {"model_dir": "m", "data_dir": "d"},
    "Distillation": {"alpha": 1.0, "loss": "soft_label"},
    "QuantAware": {"use_pact": True},
    "TrainConfig": {"epochs": 1},
}


def write(tmp_path: Path, data, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def with_(**sections):
    out = {k: dict(v) for k, v in BASE.items()}
    for k, v in sections.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/paddleslim is absent")
@pytest.mark.parametrize("name", sorted(p.name for p in REFERENCE.glob("*.yaml"))
                         if REFERENCE.is_dir() else [])
def test_upstream_configs_load_unchanged(name):
    cfg = config.load(REFERENCE / name)
    assert cfg.strategies(), name
    if "qat" in name:
        assert "QuantAware" in cfg.data, "a QAT recipe must stay a QAT run"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/paddleslim is absent")
def test_paddleclas_config_is_normalised_with_warnings():
    cfg = config.load(REFERENCE / "paddleclas_mbv3_qat_dis.yaml")
    assert "Quantization" not in cfg.data and cfg.data["QuantAware"]["use_pact"] is True
    g = cfg.globals
    assert (g.batch_size, g.eval_batch_size, g.num_workers) == (128, 32, 8)
    assert (g.img_size, g.resize_size, g.train_list) == (224, 256, "train_list.txt")
    assert g.data_dir.endswith("dataset/ILSVRC2012")
    text = " ".join(cfg.warnings)
    assert "'Quantization' renamed to 'QuantAware'" in text and "AutoAugment" in text


COMPRESSION_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml")
                             if p.name != "launch-values.yaml")  # tested in test_launch_render


@pytest.mark.parametrize("path", COMPRESSION_CONFIGS, ids=lambda p: p.name)
def test_ready_configs_validate(path):
    from clsact import strategy

    cfg = config.load(path)
    assert "Distillation" in cfg.data
    assert "QuantAware" in cfg.data or strategy.prune_section(cfg.data), "a strategy that trains"
    assert cfg.train.get("epochs") or cfg.train.get("train_iter")


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(write(tmp_path, BASE), ["TrainConfig.epochs=3"])
    out = tmp_path / "resolved.yaml"
    config.save(cfg, out)
    again = config.load(out)
    assert again.data == cfg.data and again.train["epochs"] == 3
    assert again.globals.img_size == 224  # defaults are written out


@pytest.mark.parametrize("sections, message", [
    (with_(Gloabl={"a": 1}), r"unknown section 'Gloabl' \(did you mean 'Global'\?\)"),
    (with_(QuantAware={"use_pac": True}), r"unknown key QuantAware.use_pac \(did you mean "
                                          r"'use_pact'\?\)"),
    (with_(TrainConfig={"epochs": 1, "learning_rat": 0.1}), r"did you mean 'learning_rate'"),
    (with_(QuantAware={"weight_bits": "eight"}), r"QuantAware.weight_bits must be int, got str"),
    (with_(QuantAware={"use_pact": "yes"}), r"QuantAware.use_pact must be bool"),
    (with_(TrainConfig={"epochs": 1.5}), r"TrainConfig.epochs must be int or null"),
    (with_(TrainConfig={"eval_iter": 5}), r"TrainConfig needs epochs or train_iter"),
    (with_(TrainConfig={"epochs": 0}), r"TrainConfig.epochs must be >= 1"),
    (with_(TrainConfig={"epochs": 1, "origin_metric": 75.3}), r"top-1 fraction in \[0, 1\]"),
    (with_(TrainConfig={"epochs": 1, "learning_rate": {"learning_rate": 0.1}}), r"needs a 'type'"),
    (with_(Global={"data_dir": "d"}), r"Global.model_dir is required"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "img_size": 300}),
     r"Global.resize_size \(256\) must be >= Global.img_size \(300\)"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "device": "cuda"}),
     r"Global.device is 'cuda'; choose one of auto, cpu, gpu"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "mean": [0.5]}),
     r"Global.mean must be three"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "crop_scale": [0.9, 0.1]}),
     r"Global.crop_scale must be two numbers"),
    (with_(QuantAware={"activation_quantize_type": "moving_avg_abs_max"}),
     r"did you mean 'moving_average_abs_max'"),
    (with_(Distillation=None), r"QuantAware needs a Distillation section"),
    (with_(QuantAware=None, Distillation=None), r"no compression strategy"),
    (with_(HyperParameterOptimization={}), r"HyperParameterOptimization is not supported: it "
                                           r"pip-installs"),
    (with_(Quantization={"use_pact": True}), r"both 'Quantization' and 'QuantAware' are set"),
    (with_(QuantAware=[1, 2]), r"section QuantAware must be a mapping"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "final_model": "mean"}),
     r"Global.final_model is 'mean'; choose one of average, last, best"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "final_model": "average",
                   "lr_guard": False}), r"with Global.lr_guard: false set Global.final_model"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "lr_guard_window": 1}),
     r"Global.lr_guard_window must be >= 2"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "lr_guard_threshold": 0.9}),
     r"Global.lr_guard_threshold must be > 1"),
    (with_(Global={"model_dir": "m", "data_dir": "d", "freeze_bn_after": -2}),
     r"Global.freeze_bn_after must be >= 0"),
])
def test_bad_configs_fail_with_the_culprit(tmp_path, sections, message):
    path = write(tmp_path, sections)
    with pytest.raises(ConfigError, match=message) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_old_quantization_section_becomes_quant_aware(tmp_path):
    data = with_(QuantAware=None, Quantization={"use_pact": True, "weight_bits": 8})
    cfg = config.load(write(tmp_path, data))
    assert cfg.data["QuantAware"] == {"use_pact": True, "weight_bits": 8}
    assert "'Quantization' renamed to 'QuantAware'" in cfg.warnings[0]


@pytest.mark.parametrize("text, message", [
    ("Global: [unclosed", r"line 1, column \d+ is not valid YAML"),
    ("", r"is empty"),
    ("- a\n- b\n", r"must be a mapping of sections, got list"),
])
def test_unparseable_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text))


def test_the_published_state_follows_the_guard_unless_set(tmp_path):
    """Unset, final_model is the guard's average; without the guard, the last state."""
    for glob, expected in (({}, "average"), ({"lr_guard": False}, "last"),
                           ({"lr_guard": False, "final_model": "best"}, "best")):
        path = write(tmp_path, with_(Global={"model_dir": "m", "data_dir": "d", **glob}))
        assert config.load(path).globals.final_model == expected


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_nested_keys(tmp_path):
    cfg = config.load(write(tmp_path, BASE), [
        "Global.batch_size=8", "TrainConfig.optimizer_builder.weight_decay=1e-4",
        "TrainConfig.learning_rate=1e-3", "Global.crop_scale=[0.5, 1.0]"])
    assert cfg.globals.batch_size == 8 and cfg.globals.crop_scale == (0.5, 1.0)
    assert cfg.train["learning_rate"] == pytest.approx(1e-3)
    # YAML 1.1 reads 1e-4 as a string; ACT must get a float, nested keys included
    assert cfg.train["optimizer_builder"]["weight_decay"] == pytest.approx(1e-4)


@pytest.mark.parametrize("override, message", [
    ("Global.batch_size", r"expected Section.key=value"),
    ("batch_size=3", r"expected Section.key=value"),
    ("Global.batch_sise=3", r"did you mean 'batch_size'"),
    ("Global.model_dir.x=3", r"Global.model_dir is not a section"),
])
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, BASE), [override])


def test_relative_local_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(write(tmp_path, BASE))
    assert cfg.globals.model_dir == str(tmp_path / "m")


def test_act_config_is_a_copy():
    cfg = config.validate(BASE)
    act = cfg.act_config()
    act.pop("TrainConfig")
    assert cfg.train == {"epochs": 1}


@pytest.mark.parametrize("section", [*schema.STRATEGIES, "TrainConfig"])
def test_schema_matches_installed_paddleslim(section):
    """The hand-kept schema must list exactly paddleslim's constructor arguments and defaults
    (plus the keys clsact resolves itself before ACT sees the section)."""
    from paddleslim.auto_compression import strategy_config

    params = inspect.signature(getattr(strategy_config, section).__init__).parameters
    upstream = {k: (schema.REQUIRED if p.default is inspect.Parameter.empty else p.default)
                for k, p in params.items() if k != "self"}
    ours = {k: d for k, (_t, d) in schema.all_sections()[section].items()
            if (section, k) not in schema.CLSACT_ONLY_KEYS}
    assert ours == upstream


# ---------------------------------------------------------------- the typed Global

def test_the_typed_global_has_every_schema_key_with_its_type():
    """runconfig.Global and schema.GLOBAL cannot drift: same keys, same order, types that
    admit exactly what the schema's type string admits."""
    import dataclasses
    import typing

    from clsact import runconfig, schema

    hints = typing.get_type_hints(runconfig.Global)
    fields = [f.name for f in dataclasses.fields(runconfig.Global)]
    assert fields == list(schema.GLOBAL)
    python = {"str": "str", "int": "int", "float": "float", "bool": "bool",
              "list": "tuple[float, ...]", "null": "None"}
    for key, (types, _default) in schema.GLOBAL.items():
        want = {python[t] for t in types.split("|")}
        if key == "final_model":
            want.discard("None")  # validation resolves null to average or last
        got = {a.__name__ if isinstance(a, type) and a is not type(None) else
               ("None" if a is type(None) else str(a).replace("typing.", ""))
               for a in (typing.get_args(hints[key]) if typing.get_origin(hints[key]) in
                         (typing.Union, __import__("types").UnionType) else (hints[key],))}
        assert got == want, f"Global.{key}: {got} vs schema {types}"


def test_the_typed_global_is_frozen_and_built_once(tmp_path):
    import dataclasses

    cfg = config.validate({"Global": {"model_dir": "m", "data_dir": "d", "crop_scale": [0.5, 1]},
                           "QuantAware": {}, "Distillation": {},
                           "TrainConfig": {"epochs": 1}})
    g = cfg.globals
    assert g is cfg.globals and g.crop_scale == (0.5, 1) and g.final_model == "average"
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.batch_size = 1
    assert g.to_section() == cfg.data["Global"]
    moved = cfg.with_global(output_dir="s3://b/run")
    assert moved.globals.output_dir == moved.data["Global"]["output_dir"] == "s3://b/run"
    assert cfg.globals.output_dir != "s3://b/run", "with_global copies"
    assert g.s3("http://flag:9000").endpoint_url == "http://flag:9000"
    assert g.replace(s3_endpoint="http://cfg:9000").s3().endpoint_url == "http://cfg:9000"
