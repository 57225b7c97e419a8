"""`clsact gate` and `clsact history` on local paths and on the S3 server on loopback.

The runs gated here are published with clsact's real publisher (manifest + _SUCCESS); their
metrics.json carries chosen accuracies, so every threshold can be put on either side of its
edge. `tests/test_demo.py` gates runs that `clsact compress` really made.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from clsact import storage
from clsact.errors import ConfigError, StorageError
from clsact.registry import gate as gate_mod
from clsact.registry import history, runs
from clsact.registry.gate import Thresholds, evaluate, gate
from clsact.registry.runs import RunRecord
from clsact.storage.publish import verify
from tests.conftest import GATE, VAL, publish_run, run_cli


@pytest.fixture(params=["local", "s3"])
def prefix(request, tmp_path):
    """A fresh prefix where runs are published and gated: a directory or an S3 prefix."""
    if request.param == "local":
        return str(tmp_path / "prefix")
    bucket = request.getfixturevalue("bucket")
    request.getfixturevalue("endpoint")
    return f"s3://{bucket}/nightly"


def latest(prefix: str) -> dict | None:
    try:
        return json.loads(storage.open_store(prefix, "p").read_bytes("latest"))
    except FileNotFoundError:
        return None


def blessing(run: str) -> dict:
    return json.loads(storage.open_store(run, "r").read_bytes("blessing.json"))


def statuses(out) -> dict[str, str]:
    return {c.name: c.status for c in out.checks}


def test_first_run_then_bless_then_regression_refused(prefix, tmp_path):
    n1 = publish_run(prefix, "n1", 0.945, tmp=tmp_path)
    out = gate(n1, prefix)
    assert out.blessed and out.latest == "moved" and out.baseline is None
    assert statuses(out)["max_regression"] == "skip"  # first run: said so ...
    assert statuses(out)["min_top1"] == "pass"  # ... and the floor still applies
    assert latest(prefix)["run_id"] == "n1" and latest(prefix)["previous"] is None
    doc = blessing(n1)
    assert doc["blessed"] and doc["first_run"] and doc["thresholds"] == {
        **GATE, "max_regression_relative": None}
    # the blessing is listed in manifest.blessing.json: verify holds, and checks it
    check = verify(storage.open_store(n1, "r"))
    assert check.ok and check.files == 4, check.problems
    assert check.addenda == ["manifest.blessing.json"]

    n2 = publish_run(prefix, "n2", 0.947, tmp=tmp_path)
    out = gate(n2, prefix)
    assert out.blessed and out.baseline.run_id == "n1"
    assert latest(prefix)["run_id"] == "n2" and latest(prefix)["previous"]["run_id"] == "n1"

    before = storage.open_store(prefix, "p").read_bytes("latest")
    n3 = publish_run(prefix, "n3", 0.940, tmp=tmp_path)  # 0.7 points below n2
    out = gate(n3, prefix)
    assert not out.blessed and out.exit_code == 1
    assert [c.name for c in out.checks if c.status == "fail"] == ["max_regression"]
    assert storage.open_store(prefix, "p").read_bytes("latest") == before
    assert blessing(n3)["failed"] == ["max_regression"]
    assert blessing(n3)["baseline"]["run_id"] == "n2"
    assert verify(storage.open_store(n3, "r")).ok


def test_fp32_anchor_stops_a_ratchet_of_small_losses(tmp_path):
    """Each night loses 0.4 points against the last blessed one (under max_regression 0.5):
    the anchor to the fp32 baseline refuses the night that ends up over 1 point below it;
    without the anchor every night would be blessed and top-1 would slide."""
    def nights(root: str, gate_section: dict) -> list[bool]:
        out = []
        for i, top1 in enumerate([0.948, 0.944, 0.940, 0.936, 0.932]):
            run = publish_run(root, f"n{i}", top1, gate_section=gate_section,
                              tmp=tmp_path / root.rsplit("/", 1)[-1])
            out.append(gate(run, root).blessed)
        return out

    assert nights(str(tmp_path / "anchored"), GATE) == [True, True, True, False, False]
    no_anchor = {k: v for k, v in GATE.items() if k != "max_drop_vs_fp32"}
    assert nights(str(tmp_path / "free"), no_anchor) == [True] * 5
    assert latest(str(tmp_path / "anchored"))["run_id"] == "n2"


def test_relative_regression(tmp_path):
    root = str(tmp_path / "p")
    rel = {"max_regression_relative": 0.01, "min_top1": 0.4}
    gate(publish_run(root, "a", 0.50, fp32=0.5, gate_section=rel, tmp=tmp_path), root)
    # 0.4 points absolute is 0.8 % of 0.50: passes 1 %; 0.6 points is 1.2 %: refused
    assert gate(publish_run(root, "b", 0.496, fp32=0.5, gate_section=rel, tmp=tmp_path),
                root).blessed
    out = gate(publish_run(root, "c", 0.4900, fp32=0.5, gate_section=rel, tmp=tmp_path), root)
    assert statuses(out)["max_regression_relative"] == "fail"


def test_no_thresholds_blesses_nothing(prefix, tmp_path):
    run = publish_run(prefix, "n1", 0.99, gate_section=None, tmp=tmp_path)
    out = gate(run, prefix)
    assert not out.blessed and statuses(out)["thresholds"] == "fail"
    assert latest(prefix) is None
    # flags alone are thresholds
    assert gate(run, prefix, {"min_top1": 0.9}, regate=True).blessed
    # only change thresholds, on a first run: nothing applied, nothing blessed
    other = publish_run(prefix + "-2", "n1", 0.99, gate_section={"max_regression": 0.01},
                        tmp=tmp_path / "2")
    out = gate(other, prefix + "-2")
    assert not out.blessed and "no threshold applied" in out.checks[0].detail


@pytest.mark.parametrize("metrics, failed", [
    ({"compressed": {"top1": float("nan"), "top5": 0.9}}, "metrics"),
    ({"compressed": {"top5": 0.9}}, "metrics"),
    ({"baseline": {"top1": "0.9", "top5": 0.9}}, "metrics"),
    ({"val_set": None}, "val_set"),
    ({"val_set": "sha256:abc"}, "val_set"),
    ({"compressed": "0.95"}, "metrics"),
])
def test_missing_or_nan_metric_is_not_blessed(tmp_path, metrics, failed):
    root = str(tmp_path / "p")
    run = publish_run(root, "n1", 0.95, extra=metrics, tmp=tmp_path)
    out = gate(run, root)
    assert not out.blessed and failed in blessing(run)["failed"] and latest(root) is None


def test_tampered_run_is_not_blessed(prefix, tmp_path):
    run = publish_run(prefix, "n1", 0.95, tmp=tmp_path)
    store = storage.open_store(run, "r")
    store.put_bytes("model/inference.pdmodel", b"swapped weights")
    out = gate(run, prefix)
    assert not out.blessed and statuses(out)["verified"] == "fail"
    assert "sha256 differs" in out.checks[0].detail or "size" in out.checks[0].detail
    assert latest(prefix) is None
    # a blessing altered after the fact fails verify (manifest.blessing.json lists it)
    good = publish_run(prefix, "n2", 0.95, tmp=tmp_path)
    gate(good, prefix)
    doc = blessing(good)
    doc["blessed"] = False
    storage.open_store(good, "r").put_bytes("blessing.json", json.dumps(doc).encode())
    assert any("blessing.json" in p for p in verify(storage.open_store(good, "r")).problems)


def test_different_validation_set_is_not_blessed(prefix, tmp_path):
    gate(publish_run(prefix, "n1", 0.95, tmp=tmp_path), prefix)
    out = gate(publish_run(prefix, "n2", 0.96, val="sha256:" + "b" * 64, tmp=tmp_path), prefix)
    assert not out.blessed and statuses(out)["val_set"] == "fail"
    assert latest(prefix)["run_id"] == "n1"


def test_same_images_evaluated_differently_are_not_blessed(tmp_path):
    """The same validation images at another crop size, resize or normalisation give other
    accuracies: the val_set check compares the evaluation settings too."""
    root = str(tmp_path / "p")
    settings = {"img_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225]}

    def run(name, **changes):
        return publish_run(root, name, 0.95, tmp=tmp_path, extra={"val_set": {
            "fingerprint": VAL, "evaluation": {**settings, **changes}}})

    assert gate(run("n1"), root).blessed
    out = gate(run("n2", img_size=192, resize_size=220), root)
    assert not out.blessed and statuses(out)["val_set"] == "fail"
    detail = next(c.detail for c in out.checks if c.name == "val_set")
    assert "Global.img_size 224 -> 192, Global.resize_size 256 -> 220" in detail
    assert gate(run("n3"), root).blessed, "the same settings pass"
    # a baseline of an older clsact (no settings recorded) is compared on its images only
    old = publish_run(str(tmp_path / "q"), "o1", 0.95, tmp=tmp_path)
    assert gate(old, str(tmp_path / "q")).blessed
    newer = publish_run(str(tmp_path / "q"), "o2", 0.95, tmp=tmp_path, extra={"val_set": {
        "fingerprint": VAL, "evaluation": settings}})
    out = gate(newer, str(tmp_path / "q"))
    assert out.blessed and "recorded no evaluation settings" in next(
        c.detail for c in out.checks if c.name == "val_set")


def test_unfinished_run_is_not_blessed_and_nothing_written(tmp_path):
    root = tmp_path / "p"
    (root / "runs" / "half").mkdir(parents=True)
    (root / "runs" / "half" / "metrics.json").write_text("{}")
    out = gate(str(root / "runs" / "half"), str(root), {"min_top1": 0.1})
    assert not out.blessed and not out.recorded
    assert not (root / "runs" / "half" / "blessing.json").exists() and latest(str(root)) is None


def test_gate_is_idempotent_and_finishes_an_interrupted_move(tmp_path):
    root = str(tmp_path / "p")
    n1 = publish_run(root, "n1", 0.95, tmp=tmp_path)
    gate(n1, root)
    again = gate(n1, root)
    assert again.blessed and again.latest == "already"
    n2 = publish_run(root, "n2", 0.90, tmp=tmp_path)
    assert not gate(n2, root).blessed
    assert gate(n2, root).previous_verdict["verdict"] == "not blessed"  # reported, not redone
    # blessed, but the gate died before moving the pointer: the next gate finishes it
    n3 = publish_run(root, "n3", 0.951, tmp=tmp_path)
    real = storage.LocalStore.replace_if

    def die(*a, **k):
        raise KeyboardInterrupt

    storage.LocalStore.replace_if = die
    try:
        with pytest.raises(KeyboardInterrupt):
            gate(n3, root)
    finally:
        storage.LocalStore.replace_if = real
    assert blessing(n3)["blessed"] and latest(root)["run_id"] == "n1"
    out = gate(n3, root)
    assert out.blessed and out.latest == "moved" and latest(root)["run_id"] == "n3"


class Interleave:
    """Makes gate ``first`` read the pointer, then wait until gate ``second`` has finished,
    so ``first`` writes against a pointer that moved (the race, made deterministic)."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.second_done = threading.Event()
        self.read_by_first = threading.Event()
        self.real = runs.read_latest

    def read_latest(self, prefix):
        pointer = self.real(prefix)
        if threading.current_thread().name == self.first and not self.read_by_first.is_set():
            self.read_by_first.set()
            assert self.second_done.wait(60)
        return pointer


def race(monkeypatch, prefix: str, stale: str, other: str, locations: dict[str, str]) -> dict:
    """Gate ``stale`` and ``other`` at once; ``stale`` reads the pointer before ``other``
    moves it and writes after. Returns the outcomes by name."""
    inter = Interleave(stale)
    monkeypatch.setattr(gate_mod, "read_latest", inter.read_latest)
    outcomes: dict = {}

    def run(name: str) -> None:
        if name != stale:
            assert inter.read_by_first.wait(60)
        try:
            outcomes[name] = gate(locations[name], prefix)
        finally:
            if name != stale:
                inter.second_done.set()

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in (stale, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes


def blessed_never_newer_than_latest(prefix: str, names: list[str], locations: dict) -> bool:
    newest = max((runs.read_run(storage.open_store(locations[n], "r")) for n in names
                  if blessing(locations[n])["blessed"]), key=RunRecord.order)
    return latest(prefix)["run_id"] == newest.run_id


@pytest.mark.parametrize("stale", ["older", "newer"])
def test_racing_gates_never_move_the_pointer_backwards(prefix, tmp_path, monkeypatch, stale):
    base = publish_run(prefix, "n0", 0.95, tmp=tmp_path)
    gate(base, prefix)
    locations = {"older": publish_run(prefix, "n1", 0.951, tmp=tmp_path),
                 "newer": publish_run(prefix, "n2", 0.952, tmp=tmp_path)}
    other = "newer" if stale == "older" else "older"
    out = race(monkeypatch, prefix, stale, other, locations)
    assert latest(prefix)["run_id"] == "n2"  # the newest blessed run, whoever wrote first
    if stale == "older":
        # the newer run won; the older one found the pointer moved, gated again against
        # the newer run and refused: it is older than the last blessed run
        assert out["newer"].blessed and not out["older"].blessed
        assert [c.name for c in out["older"].checks if c.status == "fail"] == ["newer"]
        assert not blessing(locations["older"])["blessed"]
    else:
        # the older run won first; the newer one gated again against it and won too
        assert out["older"].blessed and out["newer"].blessed
        assert out["newer"].baseline.run_id == "n1"
    assert blessed_never_newer_than_latest(prefix, ["older", "newer"], locations)


def test_the_race_test_fails_without_compare_and_swap(tmp_path, monkeypatch):
    """The same race with the conditional write turned into a plain write: the stale gate
    moves the pointer back to the older run."""
    prefix = str(tmp_path / "p")
    gate(publish_run(prefix, "n0", 0.95, tmp=tmp_path), prefix)
    locations = {"older": publish_run(prefix, "n1", 0.951, tmp=tmp_path),
                 "newer": publish_run(prefix, "n2", 0.952, tmp=tmp_path)}
    monkeypatch.setattr(storage.LocalStore, "replace_if",
                        lambda self, rel, data, version: self.put_bytes(rel, data))
    race(monkeypatch, prefix, "older", "newer", locations)
    assert latest(prefix)["run_id"] == "n1"
    assert not blessed_never_newer_than_latest(prefix, ["older", "newer"], locations)


def test_many_gates_racing_freely(tmp_path):
    """Eight gates of eight runs at once (flock-based CAS on a local prefix): the pointer
    ends on the newest run and every run is blessed or refused (also) as a straggler."""
    prefix = str(tmp_path / "p")
    names = [f"n{i}" for i in range(8)]
    locations = {n: publish_run(prefix, n, 0.95 + i / 1000, tmp=tmp_path)
                 for i, n in enumerate(names)}
    outcomes: dict = {}
    threads = [threading.Thread(target=lambda n=n: outcomes.update({n: gate(locations[n],
                                                                            prefix)}))
               for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == 8 and outcomes["n7"].blessed
    assert latest(prefix)["run_id"] == "n7"
    for out in outcomes.values():
        assert out.blessed or "newer" in {c.name for c in out.checks if c.status == "fail"}
    assert blessed_never_newer_than_latest(prefix, names, locations)


def test_broken_pointer_and_changed_baseline_are_errors(tmp_path):
    root = tmp_path / "p"
    n1 = publish_run(str(root), "n1", 0.95, tmp=tmp_path)
    gate(n1, str(root))
    n2 = publish_run(str(root), "n2", 0.95, tmp=tmp_path)
    metrics = json.loads((Path(n1) / "metrics.json").read_text())
    metrics["compressed"]["top1"] = 0.5  # the baseline lowered after it was blessed
    (Path(n1) / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(StorageError, match="changed after the run was blessed"):
        gate(n2, str(root))
    (root / "latest").write_text("not json")
    with pytest.raises(StorageError, match="is not a clsact latest pointer"):
        gate(n2, str(root))


def test_evaluate_is_pure_and_checks_direction():
    run = RunRecord("r", True, "r", "2026-01-02", {"baseline": {"top1": 0.9, "top5": 1},
                                                  "compressed": {"top1": 0.95, "top5": 1},
                                                  "val_set": {"fingerprint": VAL}})
    base = RunRecord("b", True, "b", "2026-01-01", {"compressed": {"top1": 0.90},
                                                   "val_set": {"fingerprint": VAL}})
    checks = evaluate(run, [], base, Thresholds(max_regression=0.0, max_drop_vs_fp32=0.0))
    assert all(c.status == "pass" for c in checks)  # improvements pass a zero tolerance
    checks = evaluate(run, ["x: missing"], base, Thresholds(min_top1=0.96))
    assert {c.name for c in checks if c.status == "fail"} == {"verified", "min_top1"}


def test_gate_section_is_validated():
    from clsact import config

    with pytest.raises(ConfigError, match="unknown key Gate.min_top_1.*did you mean 'min_top1'"):
        config.check_gate({"min_top_1": 0.7}, "c.yaml")
    with pytest.raises(ConfigError, match=r"Gate.max_regression is a top-1 fraction in \[0, 1\]"):
        config.check_gate({"max_regression": 5}, "c.yaml")
    with pytest.raises(ConfigError, match="Gate.against"):
        config.check_gate({"against": "gs://x"}, "c.yaml")


def test_history_table_json_and_plot(prefix, tmp_path):
    for name, top1 in (("n1", 0.945), ("n2", 0.947), ("n3", 0.930)):
        gate(publish_run(prefix, name, top1, tmp=tmp_path), prefix)
    publish_run(prefix, "n4", 0.95, tmp=tmp_path)  # never gated
    rows = history.collect(storage.open_store(prefix, "p"))
    assert [(r.run_id, r.verdict, r.latest) for r in rows] == [
        ("n1", "blessed", False), ("n2", "blessed", True), ("n3", "not blessed", False),
        ("n4", "-", False)]
    text = history.table(rows)
    assert "not blessed (max_regression, max_drop_vs_fp32)" in text and "94.70" in text
    png = tmp_path / "h.png"
    history.plot(rows, png)
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 600


def test_cli_exit_codes_and_one_line_errors(tmp_path):
    root = tmp_path / "p"
    n1 = publish_run(str(root), "n1", 0.95, tmp=tmp_path)
    proc = run_cli("gate", n1, "--against", str(root))
    assert proc.returncode == 0 and "BLESSED run n1" in proc.stdout, proc.stderr
    n2 = publish_run(str(root), "n2", 0.90, tmp=tmp_path)
    proc = run_cli("gate", n2, "--against", str(root), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["verdict"] == "not blessed"
    proc = run_cli("history", str(root), "--json", "--plot", str(tmp_path / "h.png"))
    assert proc.returncode == 0 and [r["run_id"] for r in json.loads(proc.stdout)] == ["n1", "n2"]
    for args, fragment in (
        ([n2], "no prefix to gate"),
        ([n2, "--against", "gs://bucket/x"], "unsupported scheme"),
        ([n2, "--against", str(root), "--min-top1", "75"], "--min-top1 is a top-1 fraction"),
    ):
        proc = run_cli("gate", *args)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    # relative locations are recorded absolute (the pointer must not depend on the cwd)
    publish_run(str(root), "n3", 0.951, tmp=tmp_path)
    proc = run_cli("gate", "runs/n3", "--against", ".", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert latest(str(root))["run"] == str(root / "runs" / "n3")
    (root / "latest").write_text("{}")
    proc = run_cli("history", str(root))
    assert proc.returncode == 2 and "is not a clsact latest pointer" in proc.stderr
    # nothing there is an error (2), not "not blessed" (1) or an empty history (0)
    for args in (["gate", str(tmp_path / "none"), "--against", str(root)],
                 ["history", str(tmp_path / "none")]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "holds nothing" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
