"""Deterministic, valid Kubernetes names and labels for a launch."""

from __future__ import annotations

import hashlib
import re

# The operators name pods "<job>-worker-<i>" (and paddle-operator Services likewise), which
# must stay DNS-1035 labels (<= 63 characters): keep room for the suffix.
MAX_JOB_NAME = 48
_INVALID = re.compile(r"[^a-z0-9-]+")


def short_hash(text: str, n: int = 6) -> str:
    """The first ``n`` hex digits of sha256(text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def config_map_name(job: str) -> str:
    """The ConfigMap that holds a job's config."""
    return f"{job}-config"


def job_name(base: str, operator: str = "paddle") -> str:
    """``<sanitised base>-<6 hex of sha256(operator/base)>``: the same base and operator give
    the same name.

    The result is a DNS-1035 label of at most :data:`MAX_JOB_NAME` characters (lower-case
    letters, digits, '-', starting with a letter); the hash keeps bases that sanitise alike
    ("My_Job" and "my-job") apart, and the two operators' jobs of one base (their pods would
    both be named <job>-worker-<i>).
    """
    suffix = short_hash(f"{operator}/{base}")
    stem = _INVALID.sub("-", base.lower()).strip("-")
    stem = re.sub(r"-{2,}", "-", stem)
    if not stem or not stem[0].isalpha():
        stem = f"clsact-{stem}".rstrip("-")
    stem = stem[: MAX_JOB_NAME - len(suffix) - 1].rstrip("-")
    return f"{stem}-{suffix}"
