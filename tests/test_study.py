"""``make study``'s bookkeeping (tests.bench.study): the summary's targets, the variants' configs.
The study itself runs real ACT; its smallest instance is in tests/test_convergence.py."""

from __future__ import annotations

import yaml

from tests.bench import study


def _row(seed: int, final: float, variant: str = "shipped", fp32: float = 0.9) -> dict:
    return {"arch": "a", "size": 32, "seed": seed, "variant": variant, "fp32": fp32,
            "final": final, "best": final + 0.01, "evaluations": [final], "loss_curve": []}


def test_summary_holds_the_targets_only_within_tolerance_on_every_seed():
    rows = [_row(0, 0.895), _row(1, 0.902), _row(2, 0.899),
            _row(0, 0.85, "upstream"), _row(1, 0.90, "upstream"),
            _row(0, 0.905, "wide"), _row(1, 0.89, "wide"), _row(2, 0.9, "wide")]
    got = {s["variant"]: s for s in study.summarize(rows, 0.01)}
    assert got["shipped"]["meets_targets"] and got["shipped"]["spread"] == 0.7
    assert got["shipped"]["worst_change"] == -0.5
    assert not got["upstream"]["meets_targets"]  # 5 points lost on one seed
    assert not got["wide"]["meets_targets"]  # each within a point, the spread 1.5
    assert got["wide"]["spread"] == 1.5
    table = study.format_table(list(got.values()), 0.01)
    assert "shipped" in table and "NO" in table and "yes" in table


def test_a_failed_run_fails_its_group():
    rows = [_row(0, 0.9), {"arch": "a", "size": 32, "seed": 1, "variant": "shipped",
                           "error": "boom"}]
    (summary,) = study.summarize(rows, 0.01)
    assert summary["failed"] == 1 and not summary["meets_targets"]


def test_variants_change_only_what_they_name(tmp_path):
    assert study.recipe(tmp_path, ()) == study.RECIPE
    without = yaml.safe_load(study.recipe(tmp_path, ("QuantAware",)).read_text())
    shipped = yaml.safe_load(study.RECIPE.read_text())
    assert "QuantAware" not in without and without["TrainConfig"] == shipped["TrainConfig"]
    assert study.VARIANTS["shipped"] == ([], ())
    assert "Global.lr_guard=false" in study.VARIANTS["upstream"][0]
    assert "Global.final_model=best" in study.VARIANTS["upstream"][0]
