"""The registry's commands: ``gate`` and ``history`` over published runs. Errors are
:class:`~clsact.errors.ClsactError`: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clsact.cli.common import add_s3_endpoint, add_threshold_flags, s3_settings, threshold_flags
from clsact.errors import ClsactError
from clsact.storage.s3session import S3Settings


def add_parsers(sub) -> None:
    """Add ``gate`` and ``history`` to the subcommands ``sub``."""
    _add_gate(sub)
    _add_history(sub)


def _add_gate(sub) -> None:
    p = sub.add_parser("gate", help="bless a published run if it may replace the last "
                       "blessed one (PREFIX/latest)",
                       description="Check RUN against the last blessed run named by "
                       "PREFIX/latest and the thresholds of its config's Gate section (or the "
                       "flags); record blessing.json in RUN and, if blessed, move "
                       "PREFIX/latest to it (compare-and-swap). Exit 0 blessed, 1 not "
                       "blessed, 2 error.")
    p.add_argument("run", metavar="RUN", help="a published run: path or s3://bucket/prefix")
    p.add_argument("--against", metavar="PREFIX", help="where the latest pointer lives "
                   "(default: the run config's Gate.against)")
    add_threshold_flags(p)
    p.add_argument("--regate", action="store_true", help="gate a run that holds a verdict "
                   "again (default: report its verdict)")
    p.add_argument("--json", action="store_true", help="print blessing.json's content")
    add_s3_endpoint(p)


def _add_history(sub) -> None:
    p = sub.add_parser("history", help="every finished run under a prefix: accuracy, gate "
                       "verdict, latest", description="List the finished runs under PREFIX "
                       "(oldest first) with their fp32 and compressed accuracy, the gate's "
                       "verdict and the run PREFIX/latest names.")
    p.add_argument("prefix", metavar="PREFIX", help="path or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw top-1 over the runs")
    p.add_argument("--floor", type=float, help="the floor drawn (default: the last gate's "
                   "min_top1)")
    add_s3_endpoint(p)


def gate_and_print(run: str, against: str | None, flags: dict[str, float | None], *,
                   regate: bool = False, as_json: bool = False, s3: S3Settings | None = None):
    """Gate ``run``, print the report and return the :class:`clsact.registry.gate.Outcome`.

    Raises:
        ClsactError: see :func:`clsact.registry.gate.gate`.
    """
    from clsact.registry.gate import blessing_document, format_outcome, gate

    out = gate(run, against, flags, regate=regate, s3=s3)
    if as_json:
        print(json.dumps(blessing_document(out), indent=2))
    else:
        print(format_outcome(out))
    return out


def run_gate(run: str, against: str | None, flags: dict[str, float | None], *,
             regate: bool = False, as_json: bool = False, s3: S3Settings | None = None) -> int:
    """Gate ``run`` and print the report; returns the gate's exit code (0 or 1).

    Raises:
        ClsactError: see :func:`clsact.registry.gate.gate`.
    """
    return gate_and_print(run, against, flags, regate=regate, as_json=as_json,
                          s3=s3).exit_code


def cmd_gate(args: argparse.Namespace) -> int:
    """``clsact gate``: 0 blessed, 1 not blessed."""

    return run_gate(args.run, args.against, threshold_flags(args), regate=args.regate,
                    as_json=args.json, s3=s3_settings(args))


def cmd_history(args: argparse.Namespace) -> int:
    """``clsact history``."""
    from clsact.registry import history

    if args.floor is not None and not 0.0 <= args.floor <= 1.0:
        raise ClsactError(f"--floor is a top-1 fraction in [0, 1], got {args.floor}")
    prefix, rows = history.history(args.prefix, s3_settings(args))
    if args.json:
        print(json.dumps(history.to_json(rows), indent=2))
    else:
        print(history.table(rows))
    if args.plot:
        history.plot(rows, Path(args.plot), args.floor, title=f"top-1 of {prefix.describe()}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


COMMANDS = {"gate": cmd_gate, "history": cmd_history}
