"""The job kinds clsact renders: their API coordinates and how to read a status.

* ``paddle``: paddle-operator's ``batch.paddlepaddle.org/v1`` PaddleJob; ``status.phase`` is
  one of Pending, Starting, Running, Restarting, Completing, Completed, Succeed, Failed,
  Aborting, Aborted, Terminating, Terminated, Scaling, Unknown.
* ``kubeflow``: the training-operator's ``kubeflow.org/v1`` PaddleJob; ``status.conditions``
  (Created, Running, Restarting, Suspended, Succeeded, Failed), the last true one wins;
  ``spec.runPolicy.suspend`` true is a job Kueue has not admitted yet (queued).
* ``jobset``: kubernetes-sigs/jobset's ``jobset.x-k8s.io/v1alpha2`` JobSet; ``status``
  ``terminalState`` (Completed, Failed) or the conditions Completed / Failed; ``spec.suspend``
  true is queued (Kueue admits a job by setting it false).
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
JOBSET = Operator(
    key="jobset", group="jobset.x-k8s.io", version="v1alpha2", plural="jobsets",
    kind="JobSet", template="jobset.yaml.j2", container="clsact",
    install_hint="install JobSet (kubectl apply --server-side -f https://github.com/"
    "kubernetes-sigs/jobset/releases/download/v0.12.0/manifests.yaml)")
OPERATORS = {op.key: op for op in (PADDLE, KUBEFLOW, JOBSET)}
# not an operator, a kind clsact creates beside a gang-scheduled JobSet
PODGROUP = Operator(
    key="volcano", group="scheduling.volcano.sh", version="v1beta1", plural="podgroups",
    kind="PodGroup", template="podgroup.yaml.j2", container="",
    install_hint="install Volcano (https://volcano.sh/en/docs/installation/) or set "
    "gangScheduling: false")
QUEUED = "Queued"

_PADDLE_DONE = {"Completed": SUCCEEDED, "Succeed": SUCCEEDED, "Failed": FAILED,
                "Aborted": FAILED, "Terminated": FAILED}


@dataclass(frozen=True)
class JobState:
    """What a job is doing: ``phase`` as the operator says it, ``outcome`` once finished."""

    phase: str
    outcome: str | None = None   # SUCCEEDED, FAILED or None (still going)
    message: str = ""

    @property
    def queued(self) -> bool:
        """Suspended until a queue (Kueue) admits it: no pods, and no time spent running."""
        return self.phase == QUEUED


def suspended(operator: Operator, obj: dict[str, Any]) -> bool:
    """Whether the job is suspended (Kueue holds a job suspended until it admits it)."""
    spec = obj.get("spec") or {}
    if operator.key == "jobset":
        return bool(spec.get("suspend"))
    if operator.key == "kubeflow":
        return bool((spec.get("runPolicy") or {}).get("suspend"))
    return False   # paddle-operator's PaddleJob cannot be suspended


def _last_condition(conditions: list[dict[str, Any]], terminal: dict[str, str]
                    ) -> dict[str, Any] | None:
    """The last true condition, a terminal one (a key of ``terminal``) winning wherever it is."""
    true = [c for c in conditions if c.get("status") == "True"]
    done = [c for c in true if c.get("type") in terminal]
    return (done or true or [None])[-1]


_KUBEFLOW_DONE = {"Succeeded": SUCCEEDED, "Failed": FAILED}
_JOBSET_DONE = {"Completed": SUCCEEDED, "Failed": FAILED}


def job_state(operator: Operator, obj: dict[str, Any]) -> JobState:
    """Read the state of a job object (``Submitted`` before its controller wrote any,
    :data:`QUEUED` while suspended and not finished)."""
    status = obj.get("status") or {}
    if operator.key == "paddle":
        phase = status.get("phase") or "Submitted"
        return JobState(phase, _PADDLE_DONE.get(phase))
    terminal = _KUBEFLOW_DONE if operator.key == "kubeflow" else _JOBSET_DONE
    last = _last_condition(status.get("conditions") or [], terminal)
    ended = status.get("terminalState") if operator.key == "jobset" else None
    if ended in terminal and (last or {}).get("type") != ended:
        last = {"type": ended}   # the terminal state, its condition not (yet) written
    phase = (last or {}).get("type", "Submitted")
    if phase not in terminal and suspended(operator, obj):
        return JobState(QUEUED, None, (last or {}).get("message") or "waiting for admission")
    if operator.key == "jobset" and phase == "Submitted" and any(
            (r.get("active") or 0) + (r.get("ready") or 0) > 0
            for r in status.get("replicatedJobsStatus") or []):
        phase = "Running"
    message = (last or {}).get("message") or (last or {}).get("reason") or ""
    return JobState(phase, terminal.get(phase), message)
