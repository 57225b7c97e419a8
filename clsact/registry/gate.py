"""``clsact gate RUN --against PREFIX``: bless a run only if it may replace the last one.

The baseline is the last *blessed* run, named by ``PREFIX/latest``
(:mod:`clsact.registry.runs`), not simply the previous night. Checks (:func:`evaluate`),
every accuracy a fraction, higher is better:

* ``thresholds``: at least one threshold is configured (``Gate`` section or flags), and at
  least one of them applied to this run; otherwise nothing is blessed by accident;
* ``verified``: ``clsact verify`` passes on the run (every file matches its manifest);
* ``metrics``: compressed and fp32 top-1/top-5 are present and finite;
* ``val_set``: the run recorded its validation set's fingerprint, and it equals the
  baseline's (accuracies on different sets are not comparable);
* ``newer``: the run finished after the last blessed run (a straggler cannot move the
  pointer backwards);
* ``min_top1`` (floor), ``max_regression`` / ``max_regression_relative`` (change against the
  last blessed run; skipped, and said so, for the first run), ``max_drop_vs_fp32`` (anchor to
  the run's own fp32 baseline, so many small nightly losses cannot ratchet accuracy down).

Then ``blessing.json`` (the verdict, each check with its figures) is added to the run with
``manifest.blessing.json`` (so ``clsact verify`` still holds), and only if blessed,
``PREFIX/latest`` is replaced by one compare-and-swap write. When another gate moved the
pointer meanwhile, the gate starts over against the new pointer (its checks may change: a
newer blessed run makes this one a straggler). Older runs are never deleted.

Exit codes: 0 blessed, 1 not blessed, 2 an error (unreadable store, broken pointer, bad flags).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml

from clsact import __version__, exitcodes
from clsact import config as config_mod
from clsact.errors import ConfigError, StorageError
from clsact.registry.runs import (
    BLESSING,
    BLESSING_ADDENDUM,
    LATEST,
    Pointer,
    RunRecord,
    as_dict,
    as_list,
    finished_records,
    open_location,
    pointer_body,
    read_latest,
    read_pointed_run,
    read_run,
)
from clsact.storage import S3Settings, Store, VersionConflict
from clsact.storage.publish import SUCCESS, add_to_run, verify

log = logging.getLogger(__name__)
BLESSING_FORMAT = "clsact-blessing/1"
CAS_ATTEMPTS = 10
EPS = 1e-9  # accuracies are ratios of counts: compare them without float noise


@dataclass(frozen=True)
class Thresholds:
    """The gate's thresholds (None: not checked). See :data:`clsact.schema.GATE`."""

    min_top1: float | None = None
    max_regression: float | None = None
    max_regression_relative: float | None = None
    max_drop_vs_fp32: float | None = None

    @classmethod
    def from_section(cls, gate: dict[str, Any] | None) -> Thresholds:
        """From a validated ``Gate`` section (missing keys: None)."""
        gate = gate or {}
        return cls(**{k: gate.get(k) for k in cls.__dataclass_fields__})

    def merged(self, flags: dict[str, float | None]) -> Thresholds:
        """These thresholds with the flags that are set replacing them."""
        return Thresholds(**{**asdict(self), **{k: v for k, v in flags.items() if v is not None}})

    @property
    def configured(self) -> bool:
        """Whether any threshold is set."""
        return any(v is not None for v in asdict(self).values())


@dataclass
class Check:
    """One check's outcome: ``pass``, ``fail`` or ``skip``, with its figures."""

    name: str
    status: str
    detail: str
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``blessing.json``)."""
        return {**asdict(self), "direction": "higher is better"
                if self.name in ("min_top1",) else "lower is better"
                if self.name.startswith("max_") else None}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:.2f} points"


def _threshold_checks(top1: float, fp32: float, base: RunRecord | None,
                      th: Thresholds) -> list[Check]:
    out = []
    if th.min_top1 is not None:
        ok = top1 >= th.min_top1 - EPS
        out.append(Check("min_top1", "pass" if ok else "fail",
                         f"top-1 {_pct(top1)} {'>=' if ok else '<'} floor {_pct(th.min_top1)}",
                         top1, th.min_top1))
    base_top1 = base.metric("compressed", "top1") if base is not None else None
    for name, limit in (("max_regression", th.max_regression),
                        ("max_regression_relative", th.max_regression_relative)):
        if limit is None:
            continue
        if base is None or base_top1 is None:
            out.append(Check(name, "skip", "first run: no blessed run to compare with",
                             None, limit))
            continue
        drop = base_top1 - top1
        rel = name.endswith("relative")
        value = drop / base_top1 if rel and base_top1 > 0 else drop
        ok = value <= limit + EPS
        what = (f"{_pct(value)} of its top-1 {'<=' if ok else '>'} {_pct(limit)}" if rel
                else f"{_pts(drop)} {'<=' if ok else '>'} {_pts(limit)}")
        out.append(Check(name, "pass" if ok else "fail",
                         f"top-1 {_pct(base_top1)} (run {base.run_id}) -> {_pct(top1)}: drop "
                         f"{what}", value, limit))
    if th.max_drop_vs_fp32 is not None:
        drop = fp32 - top1
        ok = drop <= th.max_drop_vs_fp32 + EPS
        out.append(Check("max_drop_vs_fp32", "pass" if ok else "fail",
                         f"fp32 {_pct(fp32)} -> compressed {_pct(top1)}: drop {_pts(drop)} "
                         f"{'<=' if ok else '>'} {_pts(th.max_drop_vs_fp32)}", drop,
                         th.max_drop_vs_fp32))
    return out


def _metric_check(run: RunRecord) -> tuple[Check, float | None, float | None]:
    names = [("compressed", "top1"), ("compressed", "top5"), ("baseline", "top1"),
             ("baseline", "top5")]
    missing = [f"{s}.{n}" for s, n in names if run.metric(s, n) is None]
    if run.metrics is None:
        return Check("metrics", "fail", "no readable metrics.json"), None, None
    if missing:
        return (Check("metrics", "fail", f"missing or not a finite number in metrics.json: "
                      f"{', '.join(missing)}"), None, None)
    top1, fp32 = run.metric("compressed", "top1"), run.metric("baseline", "top1")
    return Check("metrics", "pass", f"top-1 {_pct(top1)}, fp32 top-1 {_pct(fp32)}"), top1, fp32


def _section(run: RunRecord | None, name: str) -> dict[str, Any]:
    """``metrics[name]`` when it is an object, else {} (a malformed document fails the
    checks that need it, it does not crash the gate)."""
    return as_dict(((run.metrics if run else None) or {}).get(name))


def _val_set_check(run: RunRecord, base: RunRecord | None) -> Check:
    mine_set, their_set = _section(run, "val_set"), _section(base, "val_set")
    mine = mine_set.get("fingerprint")
    mine = mine if isinstance(mine, str) else None
    if not mine:
        return Check("val_set", "fail", "the run recorded no validation set fingerprint "
                     "(metrics.json val_set; runs of clsact < 0.2 cannot be gated)")
    if base is None:
        return Check("val_set", "pass", f"{mine[:19]}... (first run: nothing to compare)")
    theirs = their_set.get("fingerprint")
    if mine != theirs:
        return Check("val_set", "fail", f"validation set {mine[:19]}... differs from the last "
                     f"blessed run's ({str(theirs or 'none')[:19]}...): accuracies on different "
                     "sets are not comparable; gate against a prefix for this set")
    mine_eval, their_eval = mine_set.get("evaluation"), their_set.get("evaluation")
    if isinstance(mine_eval, dict) and isinstance(their_eval, dict) and their_eval:
        changed = sorted(k for k in set(mine_eval) | set(their_eval)
                         if mine_eval.get(k) != their_eval.get(k))
        if changed:
            return Check("val_set", "fail", "same images, evaluated differently: " + ", ".join(
                f"Global.{k} {their_eval.get(k)} -> {mine_eval.get(k)}" for k in changed) +
                "; accuracies are not comparable: gate against a prefix for these settings")
        how = "same images, same evaluation settings"
    else:
        how = "same images; the last blessed run recorded no evaluation settings"
    return Check("val_set", "pass", f"{how} as run {base.run_id} ({mine[:19]}...)")


def evaluate(run: RunRecord, verify_problems: list[str], base: RunRecord | None,
             th: Thresholds) -> list[Check]:
    """Every check of ``run`` against the last blessed run ``base`` (None: first run).

    Pure: the caller reads the runs and verifies ``run`` (``verify_problems``).
    """
    checks = [Check("verified", "pass" if not verify_problems else "fail",
                    "every file matches the manifest" if not verify_problems else
                    f"clsact verify fails: {'; '.join(verify_problems[:3])}")]
    metric, top1, fp32 = _metric_check(run)
    checks.append(metric)
    checks.append(_val_set_check(run, base))
    if base is not None:
        newer = run.order() > base.order()
        tie = " (same second: later by run id)" if newer and \
            run.finished_at == base.finished_at else ""
        checks.append(Check("newer", "pass" if newer else "fail",
                            f"finished {run.finished_at} {'after' if newer else 'not after'} "
                            f"the last blessed run {base.run_id} ({base.finished_at}){tie}"))
    applied: list[Check] = []
    if top1 is not None and fp32 is not None:
        applied = _threshold_checks(top1, fp32, base, th)
        checks += applied
    if not th.configured:
        checks.insert(0, Check("thresholds", "fail", "no threshold configured: nothing is "
                               "blessed by accident; set Gate.min_top1, Gate.max_regression, "
                               "Gate.max_regression_relative or Gate.max_drop_vs_fp32 in the "
                               "config (or the gate's flags)"))
    elif applied and all(c.status == "skip" for c in applied):
        checks.insert(0, Check("thresholds", "fail", "no threshold applied to this first run "
                               "(only change thresholds are set); set Gate.min_top1 or "
                               "Gate.max_drop_vs_fp32 too"))
    return checks


def blessed(checks: list[Check]) -> bool:
    """A run is blessed when no check failed (and at least one threshold applied: see
    :func:`evaluate`)."""
    return all(c.status != "fail" for c in checks)


@dataclass
class Outcome:
    """What one gate decided."""

    run: RunRecord
    against: str
    baseline: RunRecord | None
    checks: list[Check]
    blessed: bool
    latest: str  # what happened to the pointer
    thresholds: Thresholds = field(default_factory=Thresholds)
    recorded: bool = True  # blessing.json written into the run
    previous_verdict: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """0 blessed, 1 not blessed."""
        return exitcodes.OK if self.blessed else exitcodes.CHECK_FAILED


def blessing_document(out: Outcome) -> dict[str, Any]:
    """``blessing.json``'s content for ``out`` (a verdict given earlier: that one)."""
    if out.previous_verdict is not None and out.previous_verdict.get("format"):
        return out.previous_verdict
    def summary(rec: RunRecord | None) -> dict[str, Any] | None:
        if rec is None:
            return None
        return {"run": rec.location, "run_id": rec.run_id, "finished_at": rec.finished_at,
                "top1": rec.metric("compressed", "top1"), "top5": rec.metric("compressed", "top5"),
                "fp32_top1": rec.metric("baseline", "top1"),
                "val_fingerprint": _section(rec, "val_set").get("fingerprint")}

    return {"format": BLESSING_FORMAT, "blessed": out.blessed,
            "verdict": "blessed" if out.blessed else "not blessed",
            "failed": [c.name for c in out.checks if c.status == "fail"],
            "first_run": out.baseline is None,
            "checks": [c.to_dict() for c in out.checks], "thresholds": asdict(out.thresholds),
            "candidate": summary(out.run), "baseline": summary(out.baseline),
            "against": out.against,
            "gated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "clsact": __version__}


def thresholds_of_run(store: Store) -> tuple[Thresholds, str | None]:
    """The ``Gate`` section of the run's own ``config.yaml``: thresholds and ``against``.

    Raises:
        ConfigError: the section is invalid.
    """
    try:
        raw = config_mod.load_yaml(store.read_bytes("config.yaml").decode("utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, yaml.YAMLError):
        return Thresholds(), None
    section = raw.get("Gate") if isinstance(raw, dict) else None
    if section is None:
        return Thresholds(), None
    gate = config_mod.check_gate(section, store.describe("config.yaml"))
    return Thresholds.from_section(gate), gate["against"]


def _record(store: Store, out: Outcome) -> bool:
    """Write blessing.json + its addendum; False when the run is not finished."""
    if not out.run.finished:
        return False
    body = (json.dumps(blessing_document(out), indent=2) + "\n").encode()
    add_to_run(store, BLESSING_ADDENDUM, {BLESSING: body})
    return True


def _same_run(pointer: Pointer, run: RunRecord) -> bool:
    data = pointer.data or {}
    return data.get("run") == run.location and data.get("run_id") == run.run_id


def gate(run_location: str, against: str | None = None,
         flags: dict[str, float | None] | None = None, *, regate: bool = False,
         s3: S3Settings | None = None) -> Outcome:
    """Gate the published run at ``run_location`` against ``PREFIX/latest`` (stores reached
    with ``s3``).

    ``against`` defaults to the run config's ``Gate.against``; ``flags`` override its
    thresholds. A run that already holds a verdict keeps it (a retried gate answers the same;
    a blessed run whose pointer move was interrupted gets it finished) unless ``regate``.

    Raises:
        ConfigError: no prefix to gate against, or an invalid ``Gate`` section.
        StorageError: a location cannot be read or written, or the pointer (or the run it
            names) is broken.
    """
    store = open_location(run_location, "RUN", s3)
    if not store.exists(SUCCESS) and not store.list():
        raise StorageError(f"{store.describe()} holds nothing: no run was published there; "
                           "check the RUN location")
    configured, default_against = thresholds_of_run(store)
    th = configured.merged(flags or {})
    prefix_location = against or default_against
    if not prefix_location:
        raise ConfigError(f"no prefix to gate {store.describe()} against: pass --against "
                          "PREFIX (where the latest pointer lives) or set Gate.against")
    prefix = open_location(prefix_location, "--against", s3)
    for _attempt in range(CAS_ATTEMPTS):
        run = read_run(store)
        pointer = read_latest(prefix)
        if pointer.data is not None and _same_run(pointer, run):
            return _already_latest(run, prefix)
        if run.blessing is not None and not regate:
            done = _previous_verdict(run, prefix, pointer)
            if done is not None:
                return done
        base = read_pointed_run(pointer, s3) if pointer.data is not None else None
        problems = verify(store).problems
        checks = evaluate(run, problems, base, th)
        out = Outcome(run, prefix.describe(), base, checks, blessed(checks), "unchanged", th)
        if not out.blessed:
            out.recorded = _record(store, out)
            return out
        _record(store, out)
        run = read_run(store)  # the blessing is part of what the pointer names now
        try:
            prefix.replace_if(LATEST, pointer_body(run, pointer), pointer.version)
        except VersionConflict:
            log.warning("%s moved while gating %s; gating again against the new pointer",
                        prefix.describe(LATEST), run.location)
            regate = True  # the blessing just written was against the old pointer
            continue
        out.latest = "moved"
        return out
    raise StorageError(f"{prefix.describe(LATEST)} kept changing while gating "
                       f"{store.describe()} ({CAS_ATTEMPTS} attempts); run the gate again")


def never_gated(prefix_location: str, s3: S3Settings | None = None) -> list[str]:
    """The finished runs under ``prefix_location`` that hold no verdict yet, oldest first
    (nights that finished after their submitter stopped following them).

    Raises:
        StorageError: the prefix cannot be listed or read.
    """
    prefix = open_location(prefix_location, "--against", s3)
    return [rec.location for rec in finished_records(prefix) if rec.blessing is None]


def _already_latest(run: RunRecord, prefix: Store) -> Outcome:
    checks = [Check("latest", "pass", f"{prefix.describe(LATEST)} already names this run")]
    return Outcome(run, prefix.describe(), None, checks, True, "already", recorded=False,
                   previous_verdict=run.blessing or {"gated_at": "?"})


def _previous_verdict(run: RunRecord, prefix: Store, pointer: Pointer) -> Outcome | None:
    """The outcome of a run gated before, or None when it must be gated again: it was
    blessed but the pointer still names an older run (its gate was interrupted between
    writing the verdict and moving the pointer).

    Raises:
        StorageError: the pointer's run is broken.
    """
    verdict = run.blessing or {}
    was_blessed = verdict.get("blessed") is True
    checks = [Check(c.get("name", "?"), c.get("status", "?"), c.get("detail", ""),
                    c.get("value"), c.get("threshold")) for c in as_list(verdict.get("checks"))
              if isinstance(c, dict)]
    if was_blessed:
        # blessed, but the pointer does not name it: an interrupted gate, or a newer run
        # was blessed since (then it stays where it is)
        if pointer.data is not None:
            current = read_pointed_run(pointer)
            if current.order() >= run.order():
                return Outcome(run, prefix.describe(), current, checks, True,
                               "newer run is latest", recorded=False, previous_verdict=verdict)
        return None  # gate again: the checks are re-run and the pointer moved if they pass
    return Outcome(run, prefix.describe(), None, checks, False, "unchanged", recorded=False,
                   previous_verdict=verdict)


def format_outcome(out: Outcome) -> str:
    """The gate's report: one line per check, then the verdict and the pointer's state."""
    lines = []
    base = (f"last blessed run {out.baseline.run_id} (top-1 "
            f"{_pct(out.baseline.metric('compressed', 'top1') or 0.0)})"
            if out.baseline is not None else "no blessed run yet (first run)")
    if out.previous_verdict is not None:
        lines.append(f"gate {out.run.location}: already gated at "
                     f"{out.previous_verdict.get('gated_at', '?')} (pass --regate to gate "
                     "it again)")
    else:
        lines.append(f"gate {out.run.location} against {out.against}: {base}")
    for c in out.checks:
        lines.append(f"  {c.status.upper():4}  {c.name:<24} {c.detail}")
    pointer = f"{out.against.rstrip('/')}/{LATEST}"
    failed = [c.name for c in out.checks if c.status == "fail"]
    if out.blessed:
        tail = {"moved": f"{pointer} now names run {out.run.run_id}",
                "already": f"{pointer} names run {out.run.run_id}",
                "newer run is latest": f"{pointer} names a newer blessed run, "
                f"{out.baseline.run_id if out.baseline else '?'}",
                "unchanged": f"{pointer} unchanged"}[out.latest]
        lines.append(f"BLESSED run {out.run.run_id}: {tail}")
    else:
        kept = (f"{pointer} still names run {out.baseline.run_id}" if out.baseline is not None
                else f"{pointer} unchanged")
        lines.append(f"NOT BLESSED run {out.run.run_id or '?'} ({', '.join(failed) or '?'}): "
                     f"{kept}")
    if out.previous_verdict is None:
        lines.append(f"verdict recorded in {out.run.location.rstrip('/')}/{BLESSING}"
                     if out.recorded else "verdict not recorded: the run is not finished")
    return "\n".join(lines)
