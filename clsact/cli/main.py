"""clsact: compress image classifiers (QAT + distillation) and run them on Kubernetes.

The ``clsact`` command: the parser and the dispatch. Each concern registers its commands
from its own module: :mod:`~clsact.cli.job` (``compress``, ``eval``, ``verify``, ``dataset
pack``, ``demo``, ``doctor``), :mod:`~clsact.cli.registry` (``gate``, ``history``),
:mod:`~clsact.cli.deploy` (``bench``, ``report``, ``export``) and :mod:`~clsact.cli.launch`
(``render``, ``submit``, ``status``, ``list``, ``logs``, ``cancel``, ``rbac``). Nothing
outside ``clsact.cli`` imports it (``tests/test_architecture.py``).

User mistakes (:class:`~clsact.errors.ClsactError`) end with one ``clsact: error: ...`` line
on stderr and exit code 2; the exit codes are :mod:`clsact.exitcodes`; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from clsact import __version__, compat, exitcodes, logs
from clsact.cli import deploy, job, launch, registry
from clsact.errors import ClsactError
from clsact.process import unwind_on_sigterm

COMMANDS = {**job.COMMANDS, **registry.COMMANDS, **deploy.COMMANDS, **launch.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``clsact`` command."""
    parser = argparse.ArgumentParser(prog="clsact", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clsact {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    job.add_parsers(sub)
    registry.add_parsers(sub)
    deploy.add_parsers(sub)
    launch.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    compat.quiet_native_output()
    logs.setup(args.verbose)
    unwind_on_sigterm()
    try:
        return COMMANDS[args.command](args)
    except ClsactError as exc:
        print(f"clsact: error: {exc}", file=sys.stderr)
        return exitcodes.USER_ERROR
    except KeyboardInterrupt:
        from clsact.storage.publish import published

        done = published()
        print(f"clsact: interrupted after publishing to {', '.join(done)} (complete)" if done
              else "clsact: interrupted; nothing was published", file=sys.stderr)
        return exitcodes.INTERRUPTED
