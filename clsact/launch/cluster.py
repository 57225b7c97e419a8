"""Talking to a Kubernetes API server: connecting, and turning its failures into one line.

:func:`connect` takes a kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)
and context, or the in-cluster service account. :func:`api_call` wraps every request so
that an unreachable server, rejected credentials, RBAC refusals, missing namespaces and
invalid objects end as a :class:`ClusterError` naming what failed and how to fix it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from clsact.errors import ClsactError
from clsact.launch.operators import OPERATORS, Operator

REQUEST_TIMEOUT = 30.0
T = TypeVar("T")


class ClusterError(ClsactError):
    """The cluster cannot be reached, refuses a request, or lacks what a job needs."""


class NotFound(ClusterError):
    """The object asked for does not exist (HTTP 404)."""


class Forbidden(ClusterError):
    """RBAC refused the request (HTTP 403)."""


class Conflict(ClusterError):
    """The object already exists (HTTP 409)."""


class CrdMissing(ClusterError):
    """The cluster does not serve the PaddleJob kind of the chosen operator."""


class Unavailable(ClusterError):
    """The API server cannot be reached or is overloaded (connection errors, 429, 5xx):
    worth retrying while following a job."""


@dataclass
class Cluster:
    """The API clients of one connection, and where it points (for messages)."""

    api: client.ApiClient
    host: str
    context: str | None

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def _kubeconfig_path(explicit: str | None) -> str | None:
    if explicit:
        if not Path(explicit).is_file():
            raise ClusterError(f"kubeconfig {explicit} does not exist (--kubeconfig PATH)")
        return explicit
    env = os.environ.get("KUBECONFIG")
    if env:
        files = [f for f in env.split(os.pathsep) if f and Path(f).is_file()]
        if not files:
            raise ClusterError(f"KUBECONFIG={env} names no existing file; fix or unset it")
        return files[0]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


def connect(kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """Connect to the cluster of a kubeconfig context, else the in-cluster service account.

    Nothing is sent yet: an unreachable server shows at the first :func:`api_call`.

    Raises:
        ClusterError: no kubeconfig and not in a pod, unreadable kubeconfig, unknown context.
    """
    path = _kubeconfig_path(kubeconfig)
    try:
        if path is None:
            if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise ClusterError(
                    "no Kubernetes cluster configured: no kubeconfig (--kubeconfig, KUBECONFIG "
                    "or ~/.kube/config) and not running in a pod")
            config.load_incluster_config()
            api = client.ApiClient()
        else:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            names = [c["name"] for c in contexts or []]
            if context and context not in names:
                raise ClusterError(f"kubeconfig {path} has no context {context!r}; contexts: "
                                   f"{', '.join(names) or '(none)'}")
            api = config.new_client_from_config(config_file=path, context=context)
            context = context or (active or {}).get("name")
    except ConfigException as exc:
        where = f"kubeconfig {path}" if path else "in-cluster config"
        raise ClusterError(f"{where} cannot be used: {str(exc).splitlines()[0]}") from None
    return Cluster(api=api, host=api.configuration.host, context=context)


def _server_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def translate(exc: Exception, cluster: Cluster, what: str) -> ClusterError:
    """One clear error for a failed request (``what`` says what was being done)."""
    if isinstance(exc, ApiException):
        msg = _server_message(exc)
        if exc.status == 0 or exc.status is None:
            return Unavailable(f"{what}: no answer from {cluster.host}: {msg}")
        if exc.status == 401:
            return ClusterError(f"{what}: the API server at {cluster.host} rejected our "
                                "credentials (401 Unauthorized): renew the token or "
                                "certificate of the kubeconfig context")
        if exc.status == 403:
            return Forbidden(f"{what}: forbidden: {msg} (bind the clsact submitter Role: "
                                "`clsact rbac --namespace NS | kubectl apply -f -`)")
        if exc.status == 404:
            return NotFound(f"{what}: not found: {msg}")
        if exc.status == 409:
            return Conflict(f"{what}: {msg}")
        if exc.status == 422:
            return ClusterError(f"{what}: the API server refused the object: {msg}")
        cls = Unavailable if exc.status == 429 or exc.status >= 500 else ClusterError
        return cls(f"{what}: the API server answered {exc.status}: {msg}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = getattr(exc, "reason", None) or exc
        return Unavailable(f"{what}: cannot reach the Kubernetes API server at {cluster.host} "
                            f"({str(reason).splitlines()[0][:200]}); check the kubeconfig "
                            f"context{f' {cluster.context!r}' if cluster.context else ''} and "
                            "that the cluster is up")
    raise exc


def api_call(cluster: Cluster, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` (a kubernetes client method) with a timeout; failures as ClusterError.

    Raises:
        NotFound: HTTP 404.
        ClusterError: unreachable server, 401, 403 (the refused verb and resource), 422, ...
    """
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    try:
        return fn(*args, **kwargs)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, cluster, what) from None


def ensure_crd(cluster: Cluster, operator: Operator) -> None:
    """Check that the cluster serves the operator's job kind (or another custom kind).

    Raises:
        CrdMissing: the API group or the kind is missing (with how to install the operator).
        ClusterError: the server cannot be reached or refuses the request.
    """
    missing = CrdMissing(
        f"the cluster at {cluster.host} does not know {operator.kind} "
        f"({operator.api_version}): {operator.install_hint}, or choose the installed operator "
        f"with --operator {'|'.join(OPERATORS)}")
    try:
        resources = api_call(cluster, f"looking up {operator.api_version}",
                             cluster.custom.get_api_resources, operator.group, operator.version)
    except NotFound:
        raise missing from None
    if not any(r.name == operator.plural for r in resources.resources or []):
        raise missing
