"""Where a benchmark figure comes from: the date, the commit and the CPU (its instruction
sets) it was measured on; every ``make bench`` / ``make study`` result carries them."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def commit() -> str:
    """The checkout's commit (short), ``-dirty`` when it has uncommitted changes; ``unknown``
    outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False, timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "clsact", "tests")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("-dirty" if head and dirty else "")


def provenance() -> dict[str, Any]:
    """The ``measured`` record of a result: UTC date, commit, machine (CPU, ISA, CPUs)."""
    from clsact.deploy import machine

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "machine": machine.describe()}


def header(record: dict[str, Any] | None = None) -> str:
    """One line: ``measured <date> on commit <sha>, <CPU (ISA), N CPU(s)>``."""
    from clsact.deploy import machine

    record = record or provenance()
    return (f"measured {record['date'][:10]} on commit {record['commit']}, "
            f"{machine.headline(record['machine'])}")


def write_result(path: str | Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` as JSON to ``path`` with its provenance first; returns the record."""
    record = provenance()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"measured": record, **data}, indent=1) + "\n")
    return record
