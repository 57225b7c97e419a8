"""``clsact check-release``: are a release's objects there? (what the chart's ``helm test``
hook runs in the image).

Each object is named ``Kind/name`` (ConfigMap, Secret, ServiceAccount, CronJob, PaddleJob,
JobSet, PodGroup; a PaddleJob's group follows ``operator``) and read with one GET; a missing
one is named with how to fix it (a missing S3 Secret with the ``kubectl create secret``
command).
"""

from __future__ import annotations

from typing import Any

from clsact.launch.cluster import Cluster, ClusterError, NotFound, api_call
from clsact.launch.jobs import check_secret
from clsact.launch.operators import JOBSET, OPERATORS, PODGROUP

# kind -> the API path prefixes to try, in order (CronJob: batch/v1, else the v1beta1 of
# clusters older than 1.21), and the resource
CORE = {"ConfigMap": "configmaps", "Secret": "secrets", "ServiceAccount": "serviceaccounts"}


def paths(kind: str, namespace: str, name: str, operator: str = "paddle") -> list[str]:
    """The API paths an object ``kind/name`` may be read at.

    Raises:
        ClusterError: a kind clsact does not check.
    """
    if kind in CORE:
        return [f"/api/v1/namespaces/{namespace}/{CORE[kind]}/{name}"]
    if kind == "CronJob":
        return [f"/apis/batch/{v}/namespaces/{namespace}/cronjobs/{name}"
                for v in ("v1", "v1beta1")]
    kinds = {"PaddleJob": OPERATORS[operator], "JobSet": JOBSET, "PodGroup": PODGROUP}
    if kind not in kinds:
        raise ClusterError(f"check-release: cannot check a {kind}; kinds: "
                           f"{', '.join([*CORE, 'CronJob', *kinds])}")
    k = kinds[kind]
    return [f"/apis/{k.group}/{k.version}/namespaces/{namespace}/{k.plural}/{name}"]


def _get(cluster: Cluster, path: str, what: str) -> dict[str, Any]:
    return api_call(cluster, f"reading {what}", cluster.api.call_api, path, "GET",
                    auth_settings=["BearerToken"], response_type="object",
                    _return_http_data_only=True)


def check(cluster: Cluster, namespace: str, refs: list[str], operator: str = "paddle"
          ) -> list[str]:
    """Read every object of ``refs`` (``Kind/name``); return one line per object found.

    Raises:
        ClusterError: a malformed ref, an object that is missing (every missing one named,
            a missing S3 Secret with how to create it), or a refused request.
    """
    found, missing = [], []
    for ref in refs:
        kind, _, name = ref.partition("/")
        if not kind or not name:
            raise ClusterError(f"check-release: {ref!r} is not Kind/name (e.g. "
                               "ConfigMap/mbv3-config)")
        if kind == "Secret":
            try:
                check_secret(cluster, namespace, name)
            except ClusterError as exc:
                missing.append(str(exc))
                continue
            found.append(f"{kind} {namespace}/{name}")
            continue
        for path in paths(kind, namespace, name, operator):
            try:
                _get(cluster, path, f"{kind} {namespace}/{name}")
            except NotFound:
                continue
            found.append(f"{kind} {namespace}/{name}")
            break
        else:
            missing.append(f"{kind} {namespace}/{name} does not exist (was the release "
                           "installed, or the object deleted by hand? `helm upgrade` "
                           "restores it)")
    if missing:
        raise ClusterError("; ".join(missing))
    return found
