"""``clsact history PREFIX``: every finished run under a prefix, oldest first.

For each run: when it finished, its id, fp32 (baseline) and compressed top-1/top-5, the
gate's verdict (``blessed``, ``not blessed`` and the failed checks, or ``-`` when it was never
gated) and which run ``PREFIX/latest`` names. As a table, JSON, or a PNG plot of top-1 over
the runs (blessed runs marked, the floor drawn) with matplotlib's headless Agg backend.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clsact.errors import StorageError
from clsact.plotting import figure
from clsact.registry.runs import as_dict, as_list, finished_records, open_location, read_latest
from clsact.storage import S3Settings, Store


@dataclass
class Row:
    """One finished run as the history shows it."""

    run: str
    run_id: str | None
    finished_at: str | None
    fp32_top1: float | None
    fp32_top5: float | None
    top1: float | None
    top5: float | None
    verdict: str  # "blessed", "not blessed" or "-" (never gated)
    failed: list[str]
    latest: bool
    floor: float | None  # the gate's min_top1 when it was gated


def collect(prefix: Store) -> list[Row]:
    """The history rows of the finished runs under ``prefix``, oldest first.

    Raises:
        StorageError: the prefix cannot be listed or read, or its pointer is broken.
    """
    pointer = read_latest(prefix)
    rows = []
    for rec in finished_records(prefix):
        b = rec.blessing or {}
        verdict = "-" if rec.blessing is None else ("blessed" if b.get("blessed") is True
                                                    else "not blessed")
        latest = (pointer.data is not None and pointer.run == rec.location
                  and pointer.data.get("run_id") == rec.run_id)
        rows.append(Row(rec.location, rec.run_id, rec.finished_at,
                        rec.metric("baseline", "top1"), rec.metric("baseline", "top5"),
                        rec.metric("compressed", "top1"),
                        rec.metric("compressed", "top5"), verdict,
                        [str(x) for x in as_list(b.get("failed"))], latest,
                        as_dict(b.get("thresholds")).get("min_top1")))
    return rows


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table (accuracies in percent)."""
    head = ("finished (UTC)", "run id", "fp32 top-1", "fp32 top-5", "top-1", "top-5", "gate",
            "latest")
    body = [((r.finished_at or "-").replace("+00:00", "")[:19], r.run_id or "-",
             _acc(r.fp32_top1), _acc(r.fp32_top5), _acc(r.top1), _acc(r.top5),
             r.verdict + (f" ({', '.join(r.failed)})" if r.failed else ""),
             "*" if r.latest else "") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
             for x in [head, *body]]
    lines.insert(1, "-" * max(len(line) for line in lines))
    if not rows:
        lines.append("(no finished runs)")
    return "\n".join(lines)


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (accuracies as fractions)."""
    return [asdict(r) for r in rows]


def plot(rows: list[Row], path: Path, floor: float | None = None, title: str = "") -> None:
    """Write a PNG of compressed and fp32 top-1 over the runs: blessed runs filled, runs not
    blessed crossed, never-gated hollow, the latest ringed, ``floor`` (default: the last
    gate's ``min_top1``) as a dashed line.

    Raises:
        ClsactError: matplotlib is missing or the file cannot be written.
    """
    if floor is None:
        floor = next((r.floor for r in reversed(rows) if r.floor is not None), None)
    xs = list(range(len(rows)))
    pct = [100 * r.top1 if r.top1 is not None else math.nan for r in rows]
    with figure(path, (max(6.0, 0.6 * len(rows) + 3), 4)) as ax:
        ax.plot(xs, [100 * r.fp32_top1 if r.fp32_top1 is not None else math.nan for r in rows],
                color="0.6", linestyle=":", marker=".", label="fp32 baseline top-1")
        ax.plot(xs, pct, color="tab:blue", linewidth=1, label="compressed top-1")
        for kind, marker, color in (("blessed", "o", "tab:green"),
                                    ("not blessed", "X", "tab:red"), ("-", "o", "none")):
            pick = [i for i, r in enumerate(rows) if r.verdict == kind]
            if pick:
                ax.scatter([xs[i] for i in pick], [pct[i] for i in pick], marker=marker,
                           s=60, zorder=3, facecolors=color, edgecolors="tab:blue"
                           if color == "none" else color,
                           label={"-": "not gated"}.get(kind, kind))
        latest = [i for i, r in enumerate(rows) if r.latest]
        if latest:
            ax.scatter(latest, [pct[i] for i in latest], s=220, facecolors="none",
                       edgecolors="black", zorder=4, label="latest")
        if floor is not None:
            ax.axhline(100 * floor, color="tab:red", linestyle="--", linewidth=1,
                       label=f"floor {100 * floor:.2f}%")
        ax.set_xticks(xs)
        ax.set_xticklabels([(r.run_id or "?")[-24:] for r in rows],
                           rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title or "top-1 over runs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")


def history(prefix_location: str, s3: S3Settings | None = None) -> tuple[Store, list[Row]]:
    """The prefix's store and its rows (see :func:`collect`).

    Raises:
        StorageError: the prefix is malformed, unreachable, or its pointer is broken.
    """
    prefix = open_location(prefix_location, "PREFIX", s3)
    if not prefix.list():
        raise StorageError(f"{prefix.describe()} holds nothing: no run was published under "
                           "it (check the PREFIX)")
    return prefix, collect(prefix)
