"""Jobs on a cluster: submit (idempotent), wait, status, list, logs and cancel.

A job is what :mod:`clsact.launch.render` renders: a PaddleJob or JobSet and its companions,
the ConfigMap and (gang-scheduled JobSet) the Volcano PodGroup, owned by the job so that the
cluster's garbage collector removes them with it (``cancel`` deletes the ConfigMap itself).
Resubmitting the same spec changes nothing: the job carries the hash of its spec (annotation
``clsact.io/spec-hash``); a different spec under the same name is refused unless ``replace``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from clsact.launch.cluster import (
    Cluster,
    ClusterError,
    Conflict,
    CrdMissing,
    Forbidden,
    NotFound,
    Unavailable,
    api_call,
    ensure_crd,
)
from clsact.launch.names import config_map_name, job_name
from clsact.launch.operators import PODGROUP, JobState, Operator, job_state
from clsact.launch.render import RUN_ID_LABEL, SPEC_HASH_ANNOTATION, Rendered

# what both `clsact render` and the Helm chart set (the chart says managed-by: Helm)
MANAGED_SELECTOR = f"app.kubernetes.io/name=clsact,{RUN_ID_LABEL}"


@dataclass(frozen=True)
class SubmitOutcome:
    """What ``submit`` did: ``created``, ``replaced`` or ``unchanged`` (already there)."""

    name: str
    namespace: str
    action: str
    state: JobState


def get_job(cluster: Cluster, operator: Operator, namespace: str, name: str
            ) -> dict[str, Any] | None:
    """The PaddleJob object, or None when there is none of that name.

    Raises:
        ClusterError: the request failed (unreachable, forbidden, ...).
    """
    try:
        return api_call(cluster, f"reading {operator.kind} {namespace}/{name}",
                        cluster.custom.get_namespaced_custom_object, operator.group,
                        operator.version, namespace, operator.plural, name)
    except NotFound:
        return None


def find_job(cluster: Cluster, operator: Operator, namespace: str, name: str
             ) -> dict[str, Any]:
    """The job named ``name``, or the one ``submit --name NAME`` (or config stem) produced.

    Raises:
        ClusterError: no such job in the namespace (or the request failed).
    """
    ensure_crd(cluster, operator)
    for candidate in dict.fromkeys([name, job_name(name, operator.key)]):
        obj = get_job(cluster, operator, namespace, candidate)
        if obj is not None:
            return obj
    raise ClusterError(f"no {operator.kind} ({operator.api_version}) named {name!r} in "
                       f"namespace {namespace}: `clsact list --namespace {namespace}` shows "
                       "the jobs (and --operator picks the other kind)")


def check_secret(cluster: Cluster, namespace: str, secret: str | None) -> str | None:
    """Check the S3 Secret exists; return a warning when we may not look.

    Raises:
        ClusterError: the Secret does not exist (with how to create it).
    """
    if not secret:
        return None
    try:
        api_call(cluster, f"reading Secret {namespace}/{secret}",
                 cluster.core.read_namespaced_secret, secret, namespace)
    except NotFound:
        raise ClusterError(
            f"Secret {secret!r} (S3 credentials, values s3Secret) does not exist in namespace "
            f"{namespace}: kubectl -n {namespace} create secret generic {secret} "
            "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...") \
            from None
    except Forbidden:
        return (f"cannot check that Secret {secret!r} exists (no get permission); the "
                "pods will wait for it if it is missing")
    return None


def _dropped_fields(sent: Any, got: Any, path: str = "") -> list[str]:
    """Fields of ``sent`` that ``got`` lacks (what the server pruned as unknown)."""
    if isinstance(sent, dict) and isinstance(got, dict):
        out = []
        for key, value in sent.items():
            sub = f"{path}.{key}" if path else str(key)
            out += [sub] if key not in got else _dropped_fields(value, got[key], sub)
        return out
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        return [f for i, (s, g) in enumerate(zip(sent, got, strict=True))
                for f in _dropped_fields(s, g, f"{path}[{i}]")]
    return []


def server_dry_run(cluster: Cluster, rendered: Rendered, replacing: bool = False) -> None:
    """Have the API server validate the job (``dryRun=All``) and refuse fields it would prune.

    When ``replacing`` an existing job, the dry run creates it under a generated name (the
    Role grants create, not update).

    Raises:
        ClusterError: the server refuses the object, or drops fields its CRD does not know
            (an operator older than the templates).
    """
    op, job = rendered.operator, rendered.job
    if replacing:
        meta = {k: v for k, v in job["metadata"].items() if k != "name"}
        job = {**job, "metadata": {**meta, "generateName": f"{rendered.name}-"}}
    got = api_call(cluster, f"validating {op.kind} {rendered.namespace}/{rendered.name}",
                   cluster.custom.create_namespaced_custom_object, op.group, op.version,
                   rendered.namespace, op.plural, job, dry_run="All")
    dropped = _dropped_fields(job.get("spec"), got.get("spec"), "spec")
    if dropped:
        raise ClusterError(
            f"the installed {op.crd_name} CRD does not know {', '.join(dropped[:5])}: the API "
            "server would silently drop it; upgrade the operator or remove the setting")


def _config_map_exists(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        api_call(cluster, f"reading ConfigMap {namespace}/{name}",
                 cluster.core.read_namespaced_config_map, name, namespace)
    except NotFound:
        return False
    return True


def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``owner`` (a created object) as its owner, for the garbage collector."""
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": False, "controller": False}]}}


def _create_companion(cluster: Cluster, ns: str, obj: dict[str, Any]) -> None:
    """Create a ConfigMap or PodGroup; a leftover of an earlier job of the same name (the job
    itself is gone) is replaced.

    Raises:
        ClusterError: the request failed.
    """
    name, kind = obj["metadata"]["name"], obj["kind"]
    k = PODGROUP
    try:
        if kind == "ConfigMap":
            api_call(cluster, f"creating ConfigMap {ns}/{name}",
                     cluster.core.create_namespaced_config_map, ns, obj)
        else:
            api_call(cluster, f"creating {kind} {ns}/{name}",
                     cluster.custom.create_namespaced_custom_object, k.group, k.version, ns,
                     k.plural, obj)
    except Conflict:
        if kind == "ConfigMap":
            api_call(cluster, f"replacing ConfigMap {ns}/{name}",
                     cluster.core.replace_namespaced_config_map, name, ns, obj)
            return
        api_call(cluster, f"replacing {kind} {ns}/{name}",
                 cluster.custom.delete_namespaced_custom_object, k.group, k.version, ns,
                 k.plural, name)
        api_call(cluster, f"creating {kind} {ns}/{name}",
                 cluster.custom.create_namespaced_custom_object, k.group, k.version, ns,
                 k.plural, obj)


def _create_companions(cluster: Cluster, rendered: Rendered, owner: dict[str, Any]) -> None:
    for obj in rendered.companions:
        _create_companion(cluster, rendered.namespace, _owned(obj, owner))


def delete_job(cluster: Cluster, operator: Operator, namespace: str, name: str,
               timeout: float = 120.0) -> bool:
    """Delete a job and its ConfigMap, waiting until the job is gone; False if there was none.

    Raises:
        ClusterError: a request failed, or the job is still there after ``timeout`` seconds.
    """
    existed = True
    try:
        api_call(cluster, f"deleting {operator.kind} {namespace}/{name}",
                 cluster.custom.delete_namespaced_custom_object, operator.group,
                 operator.version, namespace, operator.plural, name,
                 propagation_policy="Background")
    except NotFound:
        existed = False
    try:
        api_call(cluster, f"deleting ConfigMap {namespace}/{config_map_name(name)}",
                 cluster.core.delete_namespaced_config_map, config_map_name(name), namespace)
    except NotFound:
        pass
    deadline = time.monotonic() + timeout
    while existed and get_job(cluster, operator, namespace, name) is not None:
        if time.monotonic() > deadline:
            raise ClusterError(f"{operator.kind} {namespace}/{name} is still there "
                               f"{timeout:.0f}s after deletion (a finalizer of the operator?)")
        time.sleep(0.5)
    return existed


def submit(cluster: Cluster, rendered: Rendered, replace: bool = False,
           warn: Callable[[str], None] = lambda _msg: None,
           _retried: bool = False) -> SubmitOutcome:
    """Create the job and its ConfigMap, unless the same spec is already there.

    Raises:
        ClusterError: CRD missing, Secret missing, a different spec under the same name (and
            not ``replace``), forbidden, invalid object, unreachable server.
    """
    op, ns, name = rendered.operator, rendered.namespace, rendered.name
    ensure_crd(cluster, op)
    if any(o["kind"] == PODGROUP.kind for o in rendered.companions):
        ensure_crd(cluster, PODGROUP)
    existing = get_job(cluster, op, ns, name)
    action = "created"
    if existing is not None:
        old_hash = (existing["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if old_hash == rendered.spec_hash:
            if not _config_map_exists(cluster, ns, rendered.config_map["metadata"]["name"]):
                _create_companions(cluster, rendered, existing)   # deleted by hand: restore
            return SubmitOutcome(name, ns, "unchanged", job_state(op, existing))
        if not replace:
            raise ClusterError(
                f"{op.kind} {ns}/{name} already exists with a different spec (hash {old_hash} "
                f"vs {rendered.spec_hash}, created {existing['metadata'].get('creationTimestamp')}"
                "): pass --replace to delete and resubmit it, or --name for a new job")
        action = "replaced"
    try:
        server_dry_run(cluster, rendered, replacing=existing is not None)  # namespace, schema
        warning = check_secret(cluster, ns, rendered.secret)
        if warning:
            warn(warning)
        if existing is not None:
            delete_job(cluster, op, ns, name)
        created = api_call(cluster, f"creating {op.kind} {ns}/{name}",
                           cluster.custom.create_namespaced_custom_object, op.group,
                           op.version, ns, op.plural, rendered.job)
    except Conflict:
        if _retried:
            raise
        # another submitter created the job since we looked: compare with theirs
        return submit(cluster, rendered, replace=False, warn=warn, _retried=True)
    try:
        _create_companions(cluster, rendered, created)
    except ClusterError:
        delete_job(cluster, op, ns, name)   # nothing half-submitted
        raise
    return SubmitOutcome(name, ns, action, job_state(op, created))


def wait(cluster: Cluster, operator: Operator, namespace: str, name: str, timeout: float,
         on_change: Callable[[JobState], None], poll: float = 2.0,
         max_outage: float = 300.0, on_outage: Callable[[str], None] = lambda _msg: None
         ) -> JobState | None:
    """Follow a job until it succeeds or fails; None after ``timeout`` seconds not queued.

    Time the job spends queued (suspended until Kueue admits it) does not count against
    ``timeout``: a run that waits two hours for GPUs still gets its whole budget.
    ``on_change`` is called with every new state (phase or message), the first one included.
    An API server that is unreachable or overloaded (restart, upgrade, network blip) is
    retried for up to ``max_outage`` seconds in a row; ``on_outage`` hears of it once.

    Raises:
        ClusterError: the job disappeared (cancelled elsewhere), a request was refused, or the
            server stayed unavailable longer than ``max_outage``.
    """
    clock = _Budget(timeout)
    last: JobState | None = None
    outage_since: float | None = None
    while True:
        try:
            obj = get_job(cluster, operator, namespace, name)
        except Unavailable as exc:
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                on_outage(f"{exc}; retrying for up to {max_outage:.0f}s")
            if now - outage_since > max_outage:
                raise ClusterError(f"{exc} (for {now - outage_since:.0f}s, giving up; the job "
                                   "may still be running)") from None
            if clock.spent(last is not None and last.queued):
                return None
            time.sleep(min(poll, 5.0))
            continue
        outage_since = None
        if obj is None:
            raise ClusterError(f"{operator.kind} {namespace}/{name} disappeared while waiting "
                               "(cancelled or deleted by someone else)")
        state = job_state(operator, obj)
        if state != last:
            on_change(state)
            last = state
        if state.outcome is not None:
            return state
        if clock.spent(state.queued):
            return None
        time.sleep(min(poll, max(clock.left, 0.05)))


class _Budget:
    """A timeout that only runs while the job is not queued."""

    def __init__(self, seconds: float):
        self.left = seconds
        self._at = time.monotonic()

    def spent(self, queued: bool) -> bool:
        """Charge the time since the last call (unless the job was queued); True when none
        is left."""
        now = time.monotonic()
        if not queued:
            self.left -= now - self._at
        self._at = now
        return self.left <= 0


def list_jobs(cluster: Cluster, operators: Iterable[Operator], namespace: str,
              selector: str = MANAGED_SELECTOR) -> list[tuple[Operator, dict[str, Any]]]:
    """clsact's jobs (or those matching the label ``selector``) of each operator whose kind
    the cluster serves.

    Raises:
        ClusterError: a request failed, or no listed operator's kind is installed.
    """
    out, installed = [], 0
    for op in operators:
        try:
            ensure_crd(cluster, op)
        except CrdMissing:
            continue
        installed += 1
        items = api_call(cluster, f"listing {op.kind} ({op.api_version}) in {namespace}",
                         cluster.custom.list_namespaced_custom_object, op.group, op.version,
                         namespace, op.plural, label_selector=selector)
        out += [(op, item) for item in items.get("items", [])]
    if not installed:
        raise ClusterError(f"the cluster at {cluster.host} has no job kind clsact runs "
                           "(PaddleJob or JobSet): install paddle-operator, the Kubeflow "
                           "training-operator or JobSet")
    return out


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    """The worker pods of a job (by its run-id label), sorted by name.

    Raises:
        ClusterError: the request failed.
    """
    pods = api_call(cluster, f"listing the pods of {namespace}/{name}",
                    cluster.core.list_namespaced_pod, namespace,
                    label_selector=f"{RUN_ID_LABEL}={name}")
    return sorted(pods.items, key=lambda p: p.metadata.name)


def _stream_pod(cluster: Cluster, namespace: str, pod: str, container: str, follow: bool,
                out: TextIO, lock: threading.Lock, errors: list[ClusterError]) -> None:
    try:
        resp = api_call(cluster, f"reading the log of pod {namespace}/{pod}",
                        cluster.core.read_namespaced_pod_log, pod, namespace,
                        container=container, follow=follow, _preload_content=False,
                        _request_timeout=None if follow else 60)
        pending = b""
        for chunk in resp.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with lock:
                for line in lines:
                    out.write(f"[{pod}] {line.decode('utf-8', 'replace')}\n")
                out.flush()
        if pending:
            with lock:
                out.write(f"[{pod}] {pending.decode('utf-8', 'replace')}\n")
    except ClusterError as exc:
        errors.append(exc)


def stream_logs(cluster: Cluster, operator: Operator, namespace: str, name: str,
                follow: bool, out: TextIO) -> int:
    """Print the log of every worker pod, each line prefixed with ``[pod]``; the pod count.

    With ``follow`` the pods are streamed side by side until they all end.

    Raises:
        ClusterError: no pods yet (with the job's phase), or a log cannot be read.
    """
    obj = find_job(cluster, operator, namespace, name)
    name = obj["metadata"]["name"]
    pods = job_pods(cluster, namespace, name)
    if not pods:
        raise ClusterError(f"{operator.kind} {namespace}/{name} has no pods yet (phase "
                           f"{job_state(operator, obj).phase}); try again when it runs")
    lock, errors = threading.Lock(), []
    threads = [threading.Thread(target=_stream_pod, daemon=True,
                                args=(cluster, namespace, p.metadata.name, operator.container,
                                      follow, out, lock, errors)) for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(pods)
