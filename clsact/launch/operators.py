"""The two PaddleJob flavours clsact renders: their API coordinates and how to read a status.

* ``paddle``: paddle-operator's ``batch.paddlepaddle.org/v1`` PaddleJob; ``status.phase`` is
  one of Pending, Starting, Running, Restarting, Completing, Completed, Succeed, Failed,
  Aborting, Aborted, Terminating, Terminated, Scaling, Unknown.
* ``kubeflow``: the training-operator's ``kubeflow.org/v1`` PaddleJob; ``status.conditions``
  (Created, Running, Restarting, Suspended, Succeeded, Failed), the last true one wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUCCEEDED, FAILED = "succeeded", "failed"


@dataclass(frozen=True)
class Operator:
    """Where a PaddleJob kind lives in the API and how to install it."""

    key: str
    group: str
    version: str
    plural: str
    kind: str
    template: str
    container: str
    install_hint: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


PADDLE = Operator(
    key="paddle", group="batch.paddlepaddle.org", version="v1", plural="paddlejobs",
    kind="PaddleJob", template="paddlejob.yaml.j2", container="clsact",
    install_hint="install paddle-operator (https://github.com/PaddleFlow/paddle-operator: "
    "kubectl create -f deploy/v1/crd.yaml -f deploy/v1/operator.yaml)")
KUBEFLOW = Operator(
    key="kubeflow", group="kubeflow.org", version="v1", plural="paddlejobs",
    kind="PaddleJob", template="kubeflow-paddlejob.yaml.j2", container="paddle",
    install_hint="install the Kubeflow training-operator (kubectl apply -k "
    "'github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.2')")
OPERATORS = {op.key: op for op in (PADDLE, KUBEFLOW)}

_PADDLE_DONE = {"Completed": SUCCEEDED, "Succeed": SUCCEEDED, "Failed": FAILED,
                "Aborted": FAILED, "Terminated": FAILED}


@dataclass(frozen=True)
class JobState:
    """What a job is doing: ``phase`` as the operator says it, ``outcome`` once finished."""

    phase: str
    outcome: str | None = None   # SUCCEEDED, FAILED or None (still going)
    message: str = ""


def job_state(operator: Operator, obj: dict[str, Any]) -> JobState:
    """Read the state of a PaddleJob object (``Submitted`` before the operator wrote any)."""
    status = obj.get("status") or {}
    if operator.key == "paddle":
        phase = status.get("phase") or "Submitted"
        return JobState(phase, _PADDLE_DONE.get(phase))
    conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    if not conditions:
        return JobState("Submitted")
    last = conditions[-1]
    for c in conditions:  # a terminal condition wins whatever its position
        if c.get("type") in ("Succeeded", "Failed"):
            last = c
    phase = last.get("type", "Unknown")
    outcome = {"Succeeded": SUCCEEDED, "Failed": FAILED}.get(phase)
    return JobState(phase, outcome, last.get("message") or last.get("reason") or "")
