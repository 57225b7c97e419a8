"""Flags more than one command takes (the S3 endpoint, the gate's thresholds)."""

from __future__ import annotations

import argparse

from clsact.errors import ClsactError
from clsact.storage.s3session import S3Settings


def s3_settings(args: argparse.Namespace) -> S3Settings:
    """How a command reaches S3: its ``--s3-endpoint``, else the environment's endpoint."""
    return S3Settings(endpoint_url=args.s3_endpoint)


def add_s3_endpoint(p) -> None:
    """``--s3-endpoint URL``."""
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph "
                   "RGW, ...); default Global.s3_endpoint, then AWS_ENDPOINT_URL, then AWS")


def add_threshold_flags(p) -> None:
    """The gate's threshold flags (they override the run config's ``Gate`` section)."""
    for name, text in (("min-top1", "floor on the compressed top-1 (fraction, 0.75 = 75%%)"),
                       ("max-regression", "largest top-1 drop against the last blessed run "
                        "(absolute fraction, 0.005 = half a point)"),
                       ("max-regression-relative", "largest top-1 drop against the last "
                        "blessed run as a fraction of its top-1"),
                       ("max-drop-vs-fp32", "largest drop below the run's own fp32 top-1")):
        p.add_argument(f"--{name}", type=float, metavar="X", help=text)


def threshold_flags(args: argparse.Namespace) -> dict[str, float | None]:
    """The threshold flags given (None: not given).

    Raises:
        ClsactError: a value outside [0, 1].
    """
    out = {k: getattr(args, k) for k in ("min_top1", "max_regression",
                                         "max_regression_relative", "max_drop_vs_fp32")}
    for key, value in out.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise ClsactError(f"--{key.replace('_', '-')} is a top-1 fraction in [0, 1] (0.75 = "
                              f"75%), got {value}")
    return out
