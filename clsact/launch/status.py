"""What ``clsact status`` shows beyond the job's phase: why it waits and how far it got.

* queued: a suspended job (Kueue has not admitted it) and since when;
* restarts: a JobSet's restarts of the whole set against its ``failurePolicy.maxRestarts``, a
  pod's container restarts (the operators that restart pods in place);
* pending pods: the scheduler's reason (``PodScheduled`` false: Unschedulable and its
  message), a container's waiting reason (ImagePullBackOff, CreateContainerConfigError, ...)
  and the pod's last warning Event;
* progress: the run's ``_progress.json`` (:mod:`clsact.progress`) in the save dir the job's
  command names, read with the submitter's own S3 credentials.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import yaml

from clsact.launch.cluster import Cluster, ClusterError, Forbidden, api_call
from clsact.launch.names import config_map_name
from clsact.launch.operators import Operator, suspended
from clsact.launch.validate import pod_templates


def _since(stamp: Any) -> datetime | None:
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    if isinstance(stamp, str) and stamp:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return None


def queued_since(operator: Operator, obj: dict[str, Any]) -> datetime | None:
    """When a suspended job was last suspended (its Suspended condition, else its creation);
    None when it is not suspended."""
    if not suspended(operator, obj):
        return None
    for c in reversed((obj.get("status") or {}).get("conditions") or []):
        if c.get("type") == "Suspended" and c.get("status") == "True":
            return _since(c.get("lastTransitionTime"))
    return _since(obj["metadata"].get("creationTimestamp"))


def restarts(operator: Operator, obj: dict[str, Any]) -> str | None:
    """A JobSet's restarts of the whole set, "N of M" (None for other kinds, or a JobSet
    that may not restart and has not)."""
    if operator.key != "jobset":
        return None
    done = int((obj.get("status") or {}).get("restarts") or 0)
    allowed = int(((obj.get("spec") or {}).get("failurePolicy") or {}).get("maxRestarts") or 0)
    if not done and not allowed:
        return None
    return (f"{done} of {allowed} (a restart recreates every pod; the run resumes from its "
            "last checkpoint)")


def container_restarts(pod: Any) -> int:
    """How often the pod's containers restarted in place."""
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return sum(cs.restart_count or 0 for cs in statuses)


def pod_reason(pod: Any, events: list[Any]) -> str:
    """Why a pod is not running yet, or how its container ended ("" when nothing to say)."""
    status = pod.status
    for cond in (status.conditions or []) if status else []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return f"{cond.reason or 'not scheduled'}: {cond.message or ''}".strip(": ")
    for cs in (status.container_statuses or []) if status else []:
        state = cs.state
        if state and state.waiting and state.waiting.reason:
            return f"{state.waiting.reason}: {state.waiting.message or ''}".strip(": ")
        if state and state.terminated and state.terminated.exit_code:
            return (f"exited {state.terminated.exit_code} "
                    f"({state.terminated.reason or 'Error'})")
    if status and status.phase == "Pending" and not status.conditions and \
            pod.spec.scheduler_name not in (None, "default-scheduler"):
        return (f"waiting for scheduler {pod.spec.scheduler_name} (a gang starts when all "
                "its pods fit)")
    warnings = [e for e in events if e.type == "Warning"]
    if warnings and status and status.phase == "Pending":
        last = warnings[-1]
        return f"{last.reason}: {last.message}"
    return ""


def pod_events(cluster: Cluster, namespace: str, pod: str) -> list[Any]:
    """The Events of a pod, oldest first ([] when Events may not be read).

    Raises:
        ClusterError: the request failed for another reason than permission.
    """
    try:
        items = api_call(cluster, f"listing the events of pod {namespace}/{pod}",
                         cluster.core.list_namespaced_event, namespace,
                         field_selector=f"involvedObject.name={pod}").items
    except Forbidden:
        return []
    return sorted(items, key=lambda e: str(e.last_timestamp or e.event_time or ""))


def save_dir_of(obj: dict[str, Any]) -> str | None:
    """The ``--save-dir`` of the job's training command (every clsact job has one)."""
    for _path, template in pod_templates(obj):
        for container in (template.get("spec") or {}).get("containers") or []:
            command = list(container.get("command") or []) + list(container.get("args") or [])
            if "--save-dir" in command[:-1]:
                return command[command.index("--save-dir") + 1]
    return None


def s3_endpoint_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The run's ``Global.s3_endpoint`` from the job's ConfigMap (None: none or unreadable)."""
    try:
        cm = api_call(cluster, f"reading ConfigMap {namespace}/{config_map_name(name)}",
                      cluster.core.read_namespaced_config_map, config_map_name(name), namespace)
    except ClusterError:   # missing (NotFound) or not readable: no endpoint known
        return None
    try:
        cfg = yaml.safe_load((cm.data or {}).get("config.yaml") or "") or {}
    except yaml.YAMLError:
        return None
    glob = cfg.get("Global") if isinstance(cfg, dict) else None
    return glob.get("s3_endpoint") if isinstance(glob, dict) else None


def read_progress(save_dir: str, endpoint: str | None) -> dict[str, Any] | None:
    """The run's progress record (None: not written yet).

    Raises:
        ClsactError: the save dir cannot be read (credentials, network, bad URI).
    """
    from clsact import progress, storage
    from clsact.storage import S3Settings

    # a status line, not a transfer: two attempts, short timeouts
    settings = S3Settings(endpoint_url=endpoint, max_attempts=2, connect_timeout=5.0,
                          read_timeout=15.0)
    store = storage.open_store(save_dir, "the job's --save-dir", settings)
    return progress.read(store)
