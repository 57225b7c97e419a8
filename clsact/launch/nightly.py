"""One night of a scheduled compression (``clsact submit --nightly RELEASE``, what the Helm
chart's CronJob runs).

A night is stamped with its *scheduled* time in the schedule's time zone (the CronJob
controller names each Job ``<cronjob>-<scheduled time since the epoch>``; the pod reads its
Job's name from the ``job-name`` label): the job name, run id and save dir
``<saveDir>/runs/<stamp>/`` all carry the stamp, so a late start or a retry is still the same
night. ``concurrencyPolicy: Forbid`` only sees the submitter pod, so before submitting,
:func:`check_no_active_night` refuses while an earlier night's PaddleJob of the release is
still running; after submitting, :func:`prune` deletes the release's finished PaddleJobs
beyond the newest ``keep``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clsact.errors import ConfigError
from clsact.launch.cluster import Cluster, ClusterError
from clsact.launch.jobs import delete_job, list_jobs
from clsact.launch.operators import Operator, job_state

NIGHTLY_LABEL = "clsact.io/nightly"
SCHEDULED_JOB_ENV = "CLSACT_SCHEDULED_JOB"
_JOB_TIME = re.compile(r"-(\d{8,})$")
_STAMP_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class NightBusy(ClusterError):
    """An earlier night of the same release is still running (``blocking``: its job)."""

    blocking: dict[str, Any] | None = None


@dataclass(frozen=True)
class Night:
    """One night: its stamp (strftime of the scheduled time), when, and where it goes."""

    release: str
    stamp: str
    scheduled: datetime

    def job_base(self, base: str) -> str:
        """The job name base of this night (``clsact.launch.names.job_name`` adds a hash)."""
        return f"{base}-{self.stamp}"

    def save_dir(self, base: str) -> str:
        """``<base>/runs/<stamp>/``."""
        return f"{base.rstrip('/')}/runs/{self.stamp}/"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises:
        ConfigError: unknown zone (with an example of a valid one).
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--time-zone {name!r} is not an IANA time zone (e.g. Etc/UTC, "
                          "Europe/Berlin, America/New_York)") from None


def scheduled_time(job_name: str | None, now: datetime) -> datetime:
    """When this night was scheduled, from the name the CronJob controller gave its Job:
    ``<cronjob>-<scheduled time>``, in minutes since the epoch (batch/v1, Kubernetes >= 1.21)
    or in seconds (the batch/v1beta1 controller of older clusters), whichever falls within
    the two days before ``now``. A Job created by hand has no such suffix: ``now``.
    Timezone-aware (UTC)."""
    m = _JOB_TIME.search(job_name or "")
    if m:
        number = int(m.group(1))
        for seconds in (number * 60, number):
            when = datetime.fromtimestamp(seconds, tz=timezone.utc)
            if now - timedelta(days=2) <= when <= now + timedelta(minutes=5):
                return when
    return now


def night(release: str, time_zone: str, stamp_format: str, job_name: str | None,
          now: datetime | None = None) -> Night:
    """The night a submitter started at ``now`` (default: the current time) belongs to.

    Raises:
        ConfigError: unknown time zone, or a stamp format that gives no usable text.
    """
    now = now or datetime.now(timezone.utc)
    when = scheduled_time(job_name, now).astimezone(zone(time_zone))
    stamp = _STAMP_CHARS.sub("-", when.strftime(stamp_format)).strip("-")
    if not stamp or "%" not in stamp_format:
        raise ConfigError(f"--stamp {stamp_format!r} must be a strftime format such as "
                          "%Y-%m-%d (it names each night)")
    return Night(release, stamp, when)


@dataclass(frozen=True)
class NightPlan:
    """Tonight's launch: the night, the prefix every night of the release goes under (what
    its gate moves ``latest`` in), and the launch values it sets."""

    night: Night
    prefix: str
    values: dict[str, Any]


def plan(release: str, time_zone: str, stamp_format: str, keep_jobs: int, base_name: str,
         save_dir: str | None, labels: dict[str, str], job_name: str | None = None,
         now: datetime | None = None) -> NightPlan:
    """Plan tonight's job of ``release``: its name ``<base_name>-<stamp>``, its save dir
    ``<save_dir>/runs/<stamp>/`` and the release label (``job_name``: the CronJob's Job, whose
    name carries the scheduled time).

    Raises:
        ConfigError: ``keep_jobs`` < 1, unknown time zone, bad stamp format, no save dir.
    """
    if keep_jobs < 1:
        raise ConfigError(f"--keep-jobs must be >= 1, got {keep_jobs}")
    tonight = night(release, time_zone, stamp_format, job_name, now)
    if not save_dir:
        raise ConfigError("no save dir: pass --save-dir s3://bucket/prefix (or saveDir in "
                          "--values, or Global.output_dir); each night goes to <it>/runs/"
                          "<stamp>/")
    return NightPlan(tonight, save_dir, {
        "name": tonight.job_base(base_name), "saveDir": tonight.save_dir(save_dir),
        "labels": {**labels, NIGHTLY_LABEL: release}})


def _created(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("creationTimestamp") or ""


def release_jobs(cluster: Cluster, operator: Operator, namespace: str, release: str
                 ) -> list[dict[str, Any]]:
    """The PaddleJobs of a nightly release, newest first.

    Raises:
        ClusterError: a request failed or the PaddleJob kind is not installed.
    """
    items = list_jobs(cluster, [operator], namespace, selector=f"{NIGHTLY_LABEL}={release}")
    return sorted((obj for _op, obj in items), key=_created, reverse=True)


def check_no_active_night(cluster: Cluster, operator: Operator, namespace: str,
                          this_night: Night, job_name: str) -> None:
    """Refuse to start while an earlier night of the release is still running (this night's
    own job, e.g. a retried submitter, is followed instead).

    Raises:
        NightBusy: an earlier night's PaddleJob has not finished.
        ClusterError: a request failed.
    """
    for obj in release_jobs(cluster, operator, namespace, this_night.release):
        name = obj["metadata"]["name"]
        state = job_state(operator, obj)
        if name != job_name and state.outcome is None:
            busy = NightBusy(
                f"nightly {this_night.release}: not starting night {this_night.stamp}: the "
                f"earlier night's {operator.kind} {namespace}/{name} (created "
                f"{_created(obj)}) is still {state.phase}; it goes on, and the next night "
                f"starts once it ends (stop it: clsact cancel {name} -n {namespace})")
            busy.blocking = obj
            raise busy


def prune(cluster: Cluster, operator: Operator, namespace: str, release: str, keep: int,
          note: Callable[[str], None]) -> list[str]:
    """Delete the release's finished PaddleJobs (and their ConfigMaps) beyond the newest
    ``keep``; running ones are never deleted. Returns the names deleted.

    Raises:
        ClusterError: a request failed.
    """
    deleted = []
    for obj in release_jobs(cluster, operator, namespace, release)[keep:]:
        name = obj["metadata"]["name"]
        if job_state(operator, obj).outcome is None:
            continue
        delete_job(cluster, operator, namespace, name)
        note(f"deleted {operator.kind} {namespace}/{name} (nightly {release} keeps the last "
             f"{keep})")
        deleted.append(name)
    return deleted
