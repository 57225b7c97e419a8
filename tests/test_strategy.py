"""Strategy combinations, stages and the pruning settings checked from the config alone
(clsact.strategy): each mistake is one line before any work."""

from __future__ import annotations

import copy

import pytest

from clsact import config, strategy
from clsact.errors import ConfigError

BASE = {"Global": {"model_dir": "m", "data_dir": "d"},
        "Distillation": {"alpha": 1.0, "loss": "l2"},
        "TrainConfig": {"epochs": 2, "learning_rate": 0.01}}
GMP = {"prune_strategy": "gmp", "ratio": 0.75, "gmp_config": {
    "stable_iterations": 0, "pruning_iterations": 4500, "tunning_iterations": 4500,
    "pruning_steps": 100, "initial_ratio": 0.15}}


def cfg(**sections):
    raw = copy.deepcopy(BASE)
    raw.update(copy.deepcopy(sections))
    return raw


def refused(raw) -> str:
    with pytest.raises(ConfigError) as err:
        config.validate(raw, "c.yaml")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_chain_runs_pruning_then_qat_with_acts_share_of_the_training():
    c = config.validate(cfg(ChannelPrune={"pruned_ratio": 0.25}, QuantAware={}), "c.yaml")
    first, second = strategy.plan(c.data)
    assert (first.name, first.sections) == ("channel_prune_dis", ("ChannelPrune", "Distillation"))
    assert (second.name, second.sections) == ("qat_dis", ("QuantAware", "Distillation"))
    assert first.train == {"epochs": 2, "learning_rate": 0.01}
    assert second.train == {"epochs": 1, "learning_rate": pytest.approx(0.001)}
    assert [s.name for s in strategy.plan(config.validate(cfg(QuantAware={}), "c").data)] \
        == ["qat_dis"]
    assert [s.name for s in strategy.plan(
        config.validate(cfg(UnstructurePrune=GMP), "c").data)] == ["unstructure_prune_dis"]


@pytest.mark.parametrize("train, expected", [
    ({"epochs": 20, "learning_rate": 0.1}, {"epochs": 2, "learning_rate": 0.01}),
    # ACT's int(0.1 * 5) is 0 steps, after which ACT trains 100 epochs: at least 1 here
    ({"train_iter": 5, "learning_rate": 0.1}, {"train_iter": 1, "learning_rate": 0.01}),
    ({"epochs": 1, "learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": 0.1}},
     {"epochs": 1, "learning_rate": {"type": "CosineAnnealingDecay", "learning_rate": 0.01}}),
    ({"epochs": 1, "learning_rate": {"type": "PiecewiseDecay", "boundaries": [9],
                                     "values": [0.1, 0.01]}},
     {"epochs": 1, "learning_rate": {"type": "PiecewiseDecay", "boundaries": [9],
                                     "values": [0.01, 0.001]}}),
])
def test_the_qat_stage_gets_a_tenth(train, expected):
    out = strategy.qat_train(train)
    lr = out.pop("learning_rate")
    want = expected.pop("learning_rate")
    assert out == expected
    assert lr == (pytest.approx(want) if isinstance(want, float) else {
        k: pytest.approx(v) for k, v in want.items()})


@pytest.mark.parametrize("sections, message", [
    ({"ChannelPrune": {"pruned_ratio": 0.2}, "ASPPrune": {}},
     "ChannelPrune and ASPPrune in one config: clsact runs one pruning strategy per run"),
    ({"ASPPrune": {}, "QuantAware": {}}, "ASPPrune followed by QuantAware would lose the "
     "sparsity"),
    ({"UnstructurePrune": {}, "QuantAware": {}}, "UnstructurePrune followed by QuantAware"),
    ({"ChannelPrune": {"pruned_ratio": 1.2}}, "ChannelPrune.pruned_ratio must be a fraction in "
     "(0, 1) (0.25 = a quarter), got 1.2"),
    ({"ChannelPrune": {"pruned_ratio": 0}}, "ChannelPrune.pruned_ratio must be a fraction"),
    ({"ChannelPrune": {"pruned_ratio": [0.2, 0.3]}}, "is a list of 2 ratios: give "
     "ChannelPrune.prune_params_name with as many names"),
    ({"ChannelPrune": {"pruned_ratio": 0.2, "criterion": "l2"}}, "ChannelPrune.criterion must "
     "be one of l1_norm, bn_scale, geometry_median, got 'l2'"),
    ({"ChannelPrune": {"pruned_ratio": 0.2, "prune_params_type": "pointwise"}},
     "ChannelPrune.prune_params_type must be conv1x1_only"),
    ({"ChannelPrune": {"pruned_ratio": 0.2, "prune_params_type": "conv1x1_only",
                       "prune_params_name": ["a"]}}, "not both"),
    # the AssertionError paddleslim's GMP pruner raises after the graphs are built
    ({"UnstructurePrune": {**GMP, "gmp_config": {**GMP["gmp_config"], "pruning_iterations": 4,
                                                 "pruning_steps": 2}}},
     "pruning_iterations (4) must exceed 10 x pruning_steps (2), as paddleslim's GMP pruner "
     "requires"),
    ({"UnstructurePrune": {**GMP, "gmp_config": {**GMP["gmp_config"], "pruning_step": 1}}},
     "gmp_config: unknown key 'pruning_step'"),
    ({"UnstructurePrune": {**GMP, "gmp_config": {"pruning_iterations": 4500}}},
     "gmp_config needs stable_iterations, tunning_iterations, pruning_steps, initial_ratio"),
    ({"UnstructurePrune": {**GMP, "gmp_config": {**GMP["gmp_config"], "resume_iteration": 9}}},
     "resume_iteration is set by clsact"),
    ({"UnstructurePrune": {**GMP, "gmp_config": {**GMP["gmp_config"], "initial_ratio": 0.9}}},
     "initial_ratio (0.9) is above the target ratio (0.75)"),
    ({"UnstructurePrune": {"prune_mode": "threshold", "local_sparsity": True}},
     "local_sparsity needs prune_mode: ratio"),
    ({"UnstructurePrune": {"prune_strategy": "gmp", "prune_mode": "threshold"}},
     "the gmp strategy prunes by ratio"),
    ({"UnstructurePrune": {"ratio": 1.0}}, "UnstructurePrune.ratio must be a fraction"),
    ({"UnstructurePrune": {"gmp_config": GMP["gmp_config"]}}, "gmp_config is set but "
     "prune_strategy is not gmp"),
    ({"TransformerPrune": {"pruned_ratio": 0.2}}, "strategy TransformerPrune is not supported"),
])
def test_pruning_mistakes_are_one_line(sections, message):
    assert message in refused(cfg(**sections))


def test_a_pruning_section_needs_distillation():
    raw = cfg(ChannelPrune={"pruned_ratio": 0.25})
    del raw["Distillation"]
    assert "ChannelPrune needs a Distillation section (ACT ignores a pruning section without " \
           "one)" in refused(raw)


def test_the_gmp_schedule_must_reach_its_ratio_within_the_run():
    section = config.validate(cfg(UnstructurePrune=GMP), "c").data["UnstructurePrune"]
    with pytest.raises(ConfigError, match="after stable_iterations \\+ pruning_iterations = "
                                          "4500 steps but the run trains 1000"):
        strategy.gmp_schedule(section, 1000)
    assert strategy.gmp_schedule(section, 4500)["pruning_iterations"] == 4500
    derived = strategy.gmp_schedule({"prune_strategy": "gmp"}, 100)  # ACT's 45 % / 45 %
    assert (derived["pruning_iterations"], derived["tunning_iterations"],
            derived["pruning_steps"]) == (45, 45, 1)
    assert strategy.gmp_schedule({"prune_strategy": "gmp"}, 12)["pruning_iterations"] == 11
    with pytest.raises(ConfigError, match="needs at least 11 training steps"):
        strategy.gmp_schedule({"prune_strategy": "gmp"}, 10)


def test_asp_on_several_ranks_synchronises_the_state():
    data = {"ASPPrune": {}}
    assert strategy.rank_sync_for(data, "gradients", "auto", 2) == "state"
    assert strategy.rank_sync_for(data, "gradients", "gradients", 1) == "gradients"
    assert strategy.rank_sync_for({"ChannelPrune": {}}, "gradients", "gradients", 2) \
        == "gradients"
    with pytest.raises(ConfigError, match="ASPPrune cannot run with Global.rank_sync: gradients"):
        strategy.rank_sync_for(data, "gradients", "gradients", 2)


def test_clsact_s_own_keys_never_reach_paddleslim():
    c = config.validate(cfg(ChannelPrune={"pruned_ratio": 0.25,
                                          "prune_params_type": "conv1x1_only"}), "c")
    assert c.data["ChannelPrune"]["prune_params_type"] == "conv1x1_only"
    assert "prune_params_type" not in c.act_config()["ChannelPrune"]
    from paddleslim.auto_compression.strategy_config import ChannelPrune

    ChannelPrune(**c.act_config()["ChannelPrune"])  # what ACT's config helper calls


def test_upstream_act_configs_validate_with_their_strategies():
    """PaddleSlim's own image-classification configs (../shared/reference) are accepted as
    written, with the stages ACT would run."""
    from tests.conftest import SHARED

    folder = SHARED / "reference" / "paddleslim"
    if not folder.is_dir():
        pytest.skip("../shared/reference is not here (a fresh clone)")
    stages = {p.name: [s.name for s in strategy.plan(config.load(p).data)]
              for p in sorted(folder.glob("paddleslim_*.yaml"))}
    assert stages["paddleslim_MobileNetV3_large_x1_0_prune_dis.yaml"] == ["unstructure_prune_dis"]
    assert stages["paddleslim_MobileNetV3_large_x1_0_qat_dis.yaml"] == ["qat_dis"]
