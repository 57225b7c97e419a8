"""What the submitter tells the cluster and the monitoring besides its own output.

* Kubernetes Events on the job (``kubectl describe`` and every event pipeline show them):
  ``Submitted``, ``NightRefused`` (on the earlier night that blocks the next), ``Pruned``
  (old nights deleted), ``Blessed`` / ``NotBlessed`` (the gate's verdict). The submitter's Role
  grants exactly ``create`` on events; without it the first refusal is one warning and the
  command goes on (an event is never worth failing a run for).
* The gate's verdict and the blessed top-1 pushed to a Prometheus Pushgateway
  (``--pushgateway URL`` / ``CLSACT_PUSHGATEWAY``; ``prometheus-client``), grouped by the
  nightly release, so that an alert can page someone when a night was not blessed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from clsact import __version__
from clsact.launch.cluster import Cluster, ClusterError, Forbidden, api_call
from clsact.launch.operators import Operator

PUSHGATEWAY_ENV = "CLSACT_PUSHGATEWAY"
PUSH_JOB = "clsact_gate"


class Events:
    """Records Events on jobs of one namespace; ``warn`` hears (once) that they cannot be."""

    def __init__(self, cluster: Cluster, namespace: str,
                 warn: Callable[[str], None] = lambda _m: None) -> None:
        self.cluster, self.namespace, self.warn = cluster, namespace, warn
        self.refused = False

    def record(self, operator: Operator, job: dict[str, Any] | str, reason: str, message: str,
               warning: bool = False) -> bool:
        """An Event on ``job`` (the object, or its name); False when it was not recorded."""
        if self.refused:
            return False
        meta = job["metadata"] if isinstance(job, dict) else {"name": job}
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": operator.api_version, "kind": operator.kind,
                    "name": meta["name"], "namespace": self.namespace}
        if meta.get("uid"):
            involved["uid"] = meta["uid"]
        event = {"metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
                 "involvedObject": involved, "reason": reason, "message": message[:1024],
                 "type": "Warning" if warning else "Normal", "count": 1,
                 "firstTimestamp": now, "lastTimestamp": now,
                 "source": {"component": "clsact"}, "reportingComponent": "clsact",
                 "reportingInstance": socket.gethostname()[:128]}
        try:
            api_call(self.cluster, f"recording the event {reason} on {meta['name']}",
                     self.cluster.core.create_namespaced_event, self.namespace, event)
        except Forbidden:
            self.refused = True
            self.warn(f"events not recorded in namespace {self.namespace}: the submitter may "
                      "not create events (the Role of `clsact rbac` grants it)")
            return False
        except ClusterError as exc:
            self.warn(f"event {reason} not recorded: {exc}")
            return False
        return True


def push_gate_metrics(url: str, release: str, run: str, blessed: bool, top1: float | None,
                      blessed_top1: float | None) -> None:
    """Push the gate's verdict to the Pushgateway at ``url`` (job ``clsact_gate``, grouped by
    ``release``): ``clsact_gate_blessed`` 1/0, ``clsact_run_top1`` (this run),
    ``clsact_blessed_top1`` (what ``latest`` now points at), ``clsact_gate_timestamp_seconds``.

    Raises:
        OSError: the Pushgateway cannot be reached or refused the push.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    info = {"run": run, "clsact": __version__}
    Gauge("clsact_gate_blessed", "1 if the gate blessed the release's last run, else 0",
          list(info), registry=registry).labels(**info).set(1 if blessed else 0)
    if top1 is not None:
        Gauge("clsact_run_top1", "top-1 of the release's last gated run", registry=registry
              ).set(top1)
    if blessed_top1 is not None:
        Gauge("clsact_blessed_top1", "top-1 of the release's blessed (latest) run",
              registry=registry).set(blessed_top1)
    Gauge("clsact_gate_timestamp_seconds", "when the release's last run was gated",
          registry=registry).set_to_current_time()
    push_to_gateway(url, job=PUSH_JOB, registry=registry, grouping_key={"release": release},
                    timeout=15)
