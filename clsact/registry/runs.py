"""Published runs as the gate and the history read them, and the ``latest`` pointer.

* A finished run is a save dir holding ``_SUCCESS`` (see :mod:`clsact.storage.publish`);
  its ``metrics.json`` has the accuracies, its ``blessing.json`` (written by ``clsact gate``,
  listed in ``manifest.blessing.json``) the gate's verdict.
* ``PREFIX/latest`` is a small JSON pointer to the last blessed run: its location, run id,
  when it finished, the sha256 of its ``metrics.json`` (so a baseline changed after it was
  blessed is noticed) and the pointer it replaced. It is only ever replaced with a
  compare-and-swap write (:meth:`~clsact.storage.base.Store.replace_if`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clsact.errors import StorageError
from clsact.storage import S3Settings, Store, is_uri, open_store
from clsact.storage.publish import SUCCESS

LATEST = "latest"
METRICS = "metrics.json"
BLESSING = "blessing.json"
BLESSING_ADDENDUM = "blessing"  # its files are listed in manifest.blessing.json
POINTER_FORMAT = "clsact-latest/1"


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else {} (documents read from a store may be of
    any shape: a malformed one fails the checks that need it, it crashes nothing)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def open_location(location: str, what: str, s3: S3Settings | None = None) -> Store:
    """The Store of ``location`` with a local path made absolute (the pointer records runs
    by location, which must not depend on the directory a command ran in), reached with
    ``s3``.

    Raises:
        StorageError: the location is malformed or uses an unsupported scheme.
    """
    return open_store(location if is_uri(location) else os.path.abspath(location), what, s3)


@dataclass
class RunRecord:
    """What a published run says about itself (fields are None when missing/unreadable)."""

    location: str
    finished: bool = False
    run_id: str | None = None
    finished_at: str | None = None
    metrics: dict[str, Any] | None = None
    metrics_sha256: str | None = None
    blessing: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def order(self) -> tuple[str, str]:
        """Sort key: when the run finished (UTC ISO time), then its id."""
        return (self.finished_at or "", self.run_id or "")

    def metric(self, section: str, name: str) -> float | None:
        """``metrics[section][name]`` as a finite float, else None."""
        value = as_dict(as_dict(self.metrics).get(section)).get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None


def _json(store: Store, rel: str, problems: list[str]) -> tuple[dict | None, bytes | None]:
    try:
        body = store.read_bytes(rel)
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(body)
    except ValueError:
        problems.append(f"{rel} is not JSON")
        return None, body
    if not isinstance(data, dict):
        problems.append(f"{rel} is not a JSON object")
        return None, body
    return data, body


def read_run(store: Store) -> RunRecord:
    """The record of the run in ``store`` (finished or not).

    Raises:
        StorageError: the location cannot be read (credentials, bucket, network).
    """
    rec = RunRecord(store.describe())
    marker, _ = _json(store, SUCCESS, rec.problems)
    rec.finished = marker is not None
    metrics, body = _json(store, METRICS, rec.problems)
    rec.metrics = metrics
    rec.metrics_sha256 = hashlib.sha256(body).hexdigest() if body is not None else None
    rec.blessing, _ = _json(store, BLESSING, rec.problems)
    rec.run_id = (marker or {}).get("run_id") or (metrics or {}).get("run_id")
    rec.finished_at = (marker or {}).get("finished_at") or (metrics or {}).get("finished_at")
    return rec


def finished_runs(prefix: Store) -> list[str]:
    """The locations (relative to ``prefix``, "" for itself) of the finished runs under it.

    Raises:
        StorageError: the prefix cannot be listed.
    """
    out = []
    for rel, _size in prefix.list():
        if rel == SUCCESS:
            out.append("")
        elif rel.endswith("/" + SUCCESS):
            out.append(rel[: -len(SUCCESS) - 1])
    return sorted(out)


def finished_records(prefix: Store) -> list[RunRecord]:
    """The records of the finished runs under ``prefix``, oldest first (:meth:`RunRecord.order`).

    Raises:
        StorageError: the prefix cannot be listed or a run cannot be read.
    """
    records = [read_run(prefix.child(rel) if rel else prefix) for rel in finished_runs(prefix)]
    return sorted(records, key=RunRecord.order)


@dataclass
class Pointer:
    """The ``latest`` pointer as read: its content and version token (None: no pointer)."""

    data: dict[str, Any] | None
    version: str | None

    @property
    def run(self) -> str | None:
        """The location of the run it names."""
        return (self.data or {}).get("run")


def read_latest(prefix: Store) -> Pointer:
    """``PREFIX/latest`` (``Pointer(None, None)`` when there is none yet).

    Raises:
        StorageError: it cannot be read, or is not a clsact pointer.
    """
    try:
        body, version = prefix.read_versioned(LATEST)
    except FileNotFoundError:
        return Pointer(None, None)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != POINTER_FORMAT or not data.get("run"):
        raise StorageError(f"{prefix.describe(LATEST)} is not a clsact latest pointer "
                           f"({POINTER_FORMAT}); move it away or choose another --against")
    return Pointer(data, version)


def pointer_body(run: RunRecord, previous: Pointer) -> bytes:
    """The new ``latest`` content naming ``run`` (which replaces ``previous``)."""
    prev = previous.data
    body = {"format": POINTER_FORMAT, "run": run.location, "run_id": run.run_id,
            "finished_at": run.finished_at, "metrics_sha256": run.metrics_sha256,
            "top1": run.metric("compressed", "top1"),
            "blessed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "previous": {"run": prev["run"], "run_id": prev.get("run_id")} if prev else None}
    return (json.dumps(body, indent=2) + "\n").encode()


def parent_location(location: str) -> str | None:
    """The location one level above ``location`` (None at a bucket's or a disk's root)."""
    trimmed = location.rstrip("/")
    head, sep, _tail = trimmed.rpartition("/")
    if not sep or head in ("s3:/", "s3:", ""):
        return None
    return head


def blessed_here(location: str, levels: int = 2, s3: S3Settings | None = None) -> str | None:
    """The ``latest`` pointer that names the run at ``location`` as blessed, if one does,
    looking ``levels`` folders up (``PREFIX/<run>`` and ``PREFIX/runs/<run>``, where
    ``clsact gate --against PREFIX`` and the nightly keep it).

    Raises:
        StorageError: a parent cannot be read.
    """
    location = (location if is_uri(location) else os.path.abspath(location)).rstrip("/")
    parent = parent_location(location)
    for _level in range(levels):
        if parent is None:
            return None
        prefix = open_location(parent, "the save dir's parent", s3)
        try:
            data = json.loads(prefix.read_bytes(LATEST))
        except (FileNotFoundError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("run"), str) \
                and data["run"].rstrip("/") == location:
            return prefix.describe(LATEST)
        parent = parent_location(parent)
    return None


def read_pointed_run(pointer: Pointer, s3: S3Settings | None = None) -> RunRecord:
    """The run ``pointer`` names (reached with ``s3``), checked against what the pointer
    recorded.

    Raises:
        StorageError: the run is gone or unfinished, or its ``metrics.json`` changed since it
            was blessed.
    """
    rec = read_run(open_location(pointer.run, "the latest pointer's run", s3))
    data = pointer.data or {}
    if not rec.finished:
        raise StorageError(f"the latest pointer names {pointer.run}, which holds no finished "
                           f"run ({SUCCESS}); restore that run or the pointer")
    if rec.metrics_sha256 != data.get("metrics_sha256"):
        raise StorageError(f"{pointer.run}/{METRICS} changed after the run was blessed "
                           "(its sha256 differs from the latest pointer's); restore it, or "
                           "gate against a fresh prefix")
    return rec
