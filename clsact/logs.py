"""Logging: one format for clsact and paddleslim, to stderr and to the run's log file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("botocore", "boto3", "s3transfer", "urllib3", "werkzeug")


def setup(verbose: bool = False) -> None:
    """Send INFO (DEBUG with ``verbose``) records of every logger to stderr, once."""
    root = logging.getLogger()
    level = logging.DEBUG if verbose else logging.INFO
    root.setLevel(level)
    # importing paddle resets the root level; clsact's own level survives that
    logging.getLogger("clsact").setLevel(level)
    # the AWS SDK logs every credential lookup and retry at INFO/DEBUG: keep it to warnings
    # (a retry that finally fails surfaces as clsact's own error)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 warns about every connection retry (the Kubernetes client's too); the request
    # that finally fails is reported as one clsact error
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    if not any(getattr(h, "_clsact", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        handler._clsact = True  # type: ignore[attr-defined]
        root.addHandler(handler)


# paddleslim lines that dump whole config dicts with object reprs (~1,000 characters each)
DEBUG_PREFIXES = ("quant_aware config", "convert config")


class _DemoteToDebug(logging.Filter):
    """Turn paddleslim's config dumps into DEBUG records (shown only with --verbose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(DEBUG_PREFIXES):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("clsact").isEnabledFor(logging.DEBUG)


def adopt_paddleslim_loggers() -> None:
    """paddleslim gives each module logger its own stdout handler and no propagation; route
    them through ours instead (one format, and into the run's log file), with its config
    dumps demoted to DEBUG."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("paddleslim") and isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.propagate = True
            if not any(isinstance(f, _DemoteToDebug) for f in logger.filters):
                logger.addFilter(_DemoteToDebug())


@contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Also write every log record to ``path`` while the block runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
