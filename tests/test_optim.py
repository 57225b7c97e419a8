"""Optimizer and learning-rate settings for N ranks: exact or refused, every LR scaled."""

import os

import pytest
import yaml

from clsact import config
from clsact.errors import ConfigError
from clsact.optim import check_data_parallel, complete_schedule, scale_learning_rate
from tests.conftest import run_cli


def cfg_with(lr_scaling="linear", **train):
    return config.validate({"Global": {"model_dir": "m", "data_dir": "d",
                                       "lr_scaling": lr_scaling},
                            "Distillation": {}, "QuantAware": {},
                            "TrainConfig": {"train_iter": 10, **train}})


@pytest.mark.parametrize("train, message", [
    ({"optimizer_builder": {"optimizer": {"type": "Adam"}}}, "type is Adam: with 2 ranks"),
    ({"optimizer_builder": {"optimizer": {"type": "AdamW"}}}, "use Momentum or SGD"),
    ({"optimizer_builder": {"optimizer": {"type": "Momentum"},
                            "grad_clip": {"type": "ClipGradByGlobalNorm", "clip_norm": 1.0}}},
     "grad_clip is set"),
    ({"amp_config": {"use_pure_fp16": True}}, "amp_config is set"),
    ({"learning_rate": {"type": "ReduceOnPlateau", "learning_rate": 0.1}},
     "'ReduceOnPlateau' cannot be scaled to 2 ranks"),
])
def test_inexact_data_parallel_settings_are_refused(train, message):
    cfg = cfg_with(**train)
    with pytest.raises(ConfigError, match=message):
        check_data_parallel(cfg, 2)
    check_data_parallel(cfg, 1)  # one rank: anything ACT accepts


def test_gradient_all_reduce_lifts_the_optimizer_limits_but_not_amp():
    adam = cfg_with(optimizer_builder={"optimizer": {"type": "Adam"}, "grad_clip": {
        "type": "ClipGradByGlobalNorm", "clip_norm": 1.0}})
    with pytest.raises(ConfigError, match="set Global.rank_sync: gradients"):
        check_data_parallel(adam, 2, "state")
    check_data_parallel(adam, 2, "gradients")
    with pytest.raises(ConfigError, match="amp_config is set"):
        check_data_parallel(cfg_with(amp_config={"use_pure_fp16": True}), 2, "gradients")


def test_exact_settings_pass():
    for kind in ("SGD", "Momentum"):
        check_data_parallel(cfg_with(optimizer_builder={"optimizer": {"type": kind},
                                                        "weight_decay": 4e-5}), 8)
    check_data_parallel(cfg_with("none", learning_rate={"type": "ReduceOnPlateau"}), 2)


@pytest.mark.parametrize("lr, scaled", [
    (0.01, 0.04),
    ({"type": "PiecewiseDecay", "boundaries": [5], "values": [0.1, 0.01]},
     {"values": [0.4, 0.04]}),
    ({"type": "LinearWarmup", "learning_rate": 0.1, "warmup_steps": 5, "start_lr": 0.0,
      "end_lr": 0.1}, {"learning_rate": 0.4, "start_lr": 0.0, "end_lr": 0.4}),
    ({"type": "CosineAnnealingDecay", "learning_rate": 0.1, "T_max": 10, "eta_min": 0.001},
     {"learning_rate": 0.4, "eta_min": 0.004}),
    ({"type": "PolynomialDecay", "learning_rate": 0.1, "decay_steps": 10},  # end_lr default
     {"learning_rate": 0.4, "end_lr": 0.0004}),
    ({"type": "OneCycleLR", "max_learning_rate": 0.1, "total_steps": 10},
     {"max_learning_rate": 0.4, "end_learning_rate": 0.0004}),
])
def test_every_learning_rate_value_is_scaled(lr, scaled):
    cfg = cfg_with(learning_rate=lr)
    assert scale_learning_rate(cfg, 4) == 4.0
    got = cfg.train["learning_rate"]
    if isinstance(scaled, float):
        assert got == pytest.approx(scaled)
    else:
        for key, value in scaled.items():
            assert got[key] == pytest.approx(value), key


def test_schedule_lengths_default_to_the_run():
    train = {"learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": 0.1}}
    assert complete_schedule(train, 120) == [
        "TrainConfig.learning_rate.T_max=120 (the run's steps)"]
    assert train["learning_rate"]["T_max"] == 120
    train = {"learning_rate": 1}
    complete_schedule(train, 5)
    assert train["learning_rate"] == 1.0 and isinstance(train["learning_rate"], float)


def test_the_command_refuses_adam_on_two_ranks(tmp_path, mbv3_model, small_digits_dir):
    from tests.test_compress import small_config

    cfg = small_config(tmp_path, mbv3_model, small_digits_dir)
    raw = yaml.safe_load(cfg.read_text())
    raw["TrainConfig"]["optimizer_builder"] = {"optimizer": {"type": "Adam"}}
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", str(tmp_path / "run"),
                   env={**os.environ, "PADDLE_TRAINERS_NUM": "2",
                        "PADDLE_TRAINER_ID": "0"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"clsact: error: {cfg}: TrainConfig.optimizer_builder.optimizer.type is Adam")
    assert not (tmp_path / "run").exists(), "refused before anything was created"
