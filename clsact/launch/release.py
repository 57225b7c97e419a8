"""``clsact check-release``: are a release's objects there? (what the chart's ``helm test``
hook runs in the image).

Each object is named ``Kind/name`` (ConfigMap, Secret, ServiceAccount, CronJob, PaddleJob,
JobSet, PodGroup; a PaddleJob's group follows ``operator``) and read with one GET; a missing
one is named with how to fix it (a missing S3 Secret with the ``kubectl create secret``
command).
"""

from __future__ import annotations

from clsact.launch.cluster import Cluster, ClusterError, NotFound, api_call
from clsact.launch.jobs import check_secret
from clsact.launch.operators import JOBSET, OPERATORS, PODGROUP

CORE = ("ConfigMap", "Secret", "ServiceAccount")


def locations(kind: str, operator: str = "paddle") -> list[tuple[str, str, str]]:
    """(group, version, plural) an object of ``kind`` may be read at, in order (CronJob:
    batch/v1, else the v1beta1 of clusters older than 1.21).

    Raises:
        ClusterError: a kind clsact does not check.
    """
    if kind == "CronJob":
        return [("batch", "v1", "cronjobs"), ("batch", "v1beta1", "cronjobs")]
    kinds = {"PaddleJob": OPERATORS[operator], "JobSet": JOBSET, "PodGroup": PODGROUP}
    if kind not in kinds:
        raise ClusterError(f"check-release: cannot check a {kind}; kinds: "
                           f"{', '.join([*CORE, 'CronJob', *kinds])}")
    k = kinds[kind]
    return [(k.group, k.version, k.plural)]


def _exists(cluster: Cluster, namespace: str, kind: str, name: str, operator: str) -> bool:
    """Whether ``kind/name`` exists (one GET per candidate location).

    Raises:
        ClusterError: a request failed for another reason than 404.
    """
    what = f"reading {kind} {namespace}/{name}"
    try:
        if kind == "ConfigMap":
            api_call(cluster, what, cluster.core.read_namespaced_config_map, name, namespace)
            return True
        if kind == "ServiceAccount":
            api_call(cluster, what, cluster.core.read_namespaced_service_account, name,
                     namespace)
            return True
    except NotFound:
        return False
    for group, version, plural in locations(kind, operator):
        try:
            api_call(cluster, what, cluster.custom.get_namespaced_custom_object, group,
                     version, namespace, plural, name)
            return True
        except NotFound:
            continue
    return False


def check(cluster: Cluster, namespace: str, refs: list[str], operator: str = "paddle"
          ) -> list[str]:
    """Read every object of ``refs`` (``Kind/name``); return one line per object found.

    Raises:
        ClusterError: a malformed ref, an object that is missing (every missing one named,
            a missing S3 Secret with how to create it), a Secret we may not read, or a
            refused request.
    """
    found, missing = [], []
    for ref in refs:
        kind, _, name = ref.partition("/")
        if not kind or not name:
            raise ClusterError(f"check-release: {ref!r} is not Kind/name (e.g. "
                               "ConfigMap/mbv3-config)")
        if kind == "Secret":
            try:
                unchecked = check_secret(cluster, namespace, name)
            except ClusterError as exc:
                missing.append(str(exc))
                continue
            if unchecked:   # never "ok" for what was not looked at
                missing.append(unchecked)
            else:
                found.append(f"{kind} {namespace}/{name}")
            continue
        if _exists(cluster, namespace, kind, name, operator):
            found.append(f"{kind} {namespace}/{name}")
        else:
            missing.append(f"{kind} {namespace}/{name} does not exist (was the release "
                           "installed, or the object deleted by hand? `helm upgrade` "
                           "restores it)")
    if missing:
        raise ClusterError("; ".join(missing))
    return found
