"""Launch values: how a compression run becomes a job (workers, GPUs, image, pod settings,
queue and gang scheduling).

Values come from an optional YAML file (``--values FILE``, keys named like the Kubernetes
fields they fill: ``nodeSelector``, ``tolerations``, ...) overridden by command-line flags
(``--workers``, ``--gpus-per-worker``, ``--image``, ...). :func:`resolve` checks them all and
returns a :class:`LaunchValues`; nothing here talks to a cluster.

Secrets never appear as values: S3 credentials come from the Secret named by ``s3Secret``
(mounted as files at ``render.S3_CREDENTIALS_DIR``), and a literal ``env`` value whose name
looks like a credential is refused.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clsact.config import check_section, parse_yaml_file
from clsact.errors import ConfigError
from clsact.launch.operators import OPERATORS

# key -> (type, default); types as in clsact.schema. Defaults of None are filled per operator.
VALUES: dict[str, tuple[str, Any]] = {
    "name": ("str|null", None),             # job name base (default: the config file's stem)
    "namespace": ("str", "default"),
    # paddle: paddle-operator; kubeflow: training-operator v1; jobset: kubernetes-sigs/jobset
    "operator": ("str", "paddle"),
    "image": ("str|null", None),            # required
    "imagePullPolicy": ("str", "IfNotPresent"),
    "workers": ("int", 1),                  # pods (nodes)
    "gpusPerWorker": ("int", 1),            # one rank per GPU; 0: one CPU rank per pod
    "gpuResource": ("str", "nvidia.com/gpu"),
    "saveDir": ("str|null", None),          # default: Global.output_dir of the config
    "s3Secret": ("str|null", "clsact-s3"),  # Secret with AWS_ACCESS_KEY_ID/... ; null: none
    "s3Endpoint": ("str|null", None),       # written into the config (Global.s3_endpoint)
    "resources": ("dict", {}),              # requests/limits of the training container
    "shmSize": ("str", "8Gi"),              # memory emptyDir at /dev/shm (loader workers)
    "nodeSelector": ("dict", {}),
    "tolerations": ("list", []),
    "affinity": ("dict", {}),
    # GPU nodes the image runs on: auto (the image's recorded matrix when this runs in the
    # image, e.g. the nightly; else no constraint), any, or compute capabilities ["8.0", ...]
    "gpuCompute": ("str|list", "auto"),
    "gpuProducts": ("list", []),            # nvidia.com/gpu.product values (GPU feature discovery)
    "imagePullSecrets": ("list", []),       # Secret names
    "serviceAccountName": ("str|null", None),
    "priorityClassName": ("str|null", None),
    "queueName": ("str|null", None),        # Kueue LocalQueue (jobset, kubeflow): queued
    # Volcano gang scheduling: all the pods or none (schedulerName volcano, minAvailable)
    "gangScheduling": ("bool", False),
    "gangQueue": ("str|null", None),        # the Volcano queue (default: Volcano's default)
    "env": ("dict|list", {}),               # NAME: value, or a list of EnvVar objects
    "labels": ("dict", {}),
    "annotations": ("dict", {}),
    "volumes": ("list", []),
    "volumeMounts": ("list", []),
    "cleanPodPolicy": ("str|null", None),   # paddle: OnCompletion, kubeflow: Running, jobset: -
    "ttlSecondsAfterFinished": ("int|null", 259200),
    "activeDeadlineSeconds": ("int|null", None),
    "backoffLimit": ("int", 3),
    "clsactBin": ("str", "/usr/local/bin/clsact"),  # the console script inside the image
    "python": ("str", "python"),
    # what the pods may reach beyond the S3 Secret; refused unless allowed here (whoever may
    # create pods in a namespace can read its Secrets through them: docs/kubernetes.md,
    # Permissions)
    "allow": ("dict", {}),
}
ALLOW: dict[str, tuple[str, Any]] = {
    "hostPath": ("bool", False),        # hostPath volumes (the node's files)
    "secrets": ("list", []),            # Secret names env/volumes may reference
    "serviceAccount": ("bool", False),  # serviceAccountName (the pods act with its token)
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("values", "operator"): tuple(OPERATORS),
    ("values", "imagePullPolicy"): ("Always", "IfNotPresent", "Never"),
}
CLEAN_POD_POLICIES = {"paddle": ("OnCompletion", "OnFailure", "Always", "Never"),
                      "kubeflow": ("Running", "All", "None"), "jobset": ()}
DEFAULT_CLEAN_POD_POLICY = {"paddle": "OnCompletion", "kubeflow": "Running", "jobset": None}
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# operators whose jobs Kueue can hold suspended (paddle-operator's PaddleJob has no suspend)
QUEUEABLE = ("jobset", "kubeflow")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
_SECRET_LIKE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY",
                          re.IGNORECASE)


@dataclass(frozen=True)
class LaunchValues:
    """Every setting of one launch, checked (see :data:`VALUES` for the meaning of each)."""

    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def read_values_file(path: str | Path) -> dict[str, Any]:
    """Parse a values YAML file.

    Raises:
        ConfigError: missing, unreadable, not YAML or not a mapping.
    """
    data = parse_yaml_file(path, "values", "--values")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"values file {path} must be a mapping, got {type(data).__name__}")
    return data


def _check_env(env: Any, src: str) -> list[dict[str, Any]]:
    # a mapping is sorted by name (as the Helm chart, whose maps are sorted, renders it)
    items = ([{"name": str(k), "value": env[k]} for k in sorted(env, key=str)]
             if isinstance(env, dict) else copy.deepcopy(env))
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{src}: env entries need a name: {item!r}")
        name = item["name"]
        if not _ENV_NAME.match(name):
            raise ConfigError(f"{src}: env name {name!r} is not a valid variable name")
        if "value" in item:
            if _SECRET_LIKE.search(name):
                raise ConfigError(
                    f"{src}: env {name} looks like a secret; never put its value in values: "
                    "put it in a Secret and use s3Secret or valueFrom.secretKeyRef")
            value = item["value"]
            if isinstance(value, bool) or value is None:
                raise ConfigError(f"{src}: env {name} must be a string or number, got {value!r}")
            # a whole number is written without a fraction or an exponent, as the chart does
            # (Helm reads every YAML number as a float: 3 and 3.0 are the same there)
            whole = isinstance(value, float) and value.is_integer() and abs(value) < 2**63
            item["value"] = str(int(value)) if whole else str(value)
        out.append(item)
    return out


def _secret_refs(v: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, Secret name) of every Secret the pod spec would reference, but s3Secret."""
    refs = []
    for item in v["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if isinstance(ref, dict):
            refs.append((f"env {item['name']}", str(ref.get("name"))))
    for i, vol in enumerate(v["volumes"]):
        if not isinstance(vol, dict):
            continue
        if "secret" in vol:
            refs.append((f"volumes[{i}]", str((vol["secret"] or {}).get("secretName"))))
        for source in (vol.get("projected") or {}).get("sources") or []:
            if isinstance(source, dict) and "secret" in source:
                refs.append((f"volumes[{i}] (projected)", str(source["secret"].get("name"))))
    return refs


def _check_access(v: dict[str, Any], src: str) -> dict[str, Any]:
    """Refuse what would let the pods read more than the S3 Secret, unless ``allow``s it.

    Raises:
        ConfigError: a hostPath volume, a reference to another Secret, a service-account
            token volume, or a serviceAccountName that ``allow`` does not permit.
    """
    allow = check_section("allow", v["allow"], ALLOW, src)
    allow = {k: allow.get(k, default) for k, (_t, default) in ALLOW.items()}
    how = ("in the values if submitters of this namespace may do that (docs/kubernetes.md: "
           "Permissions)")
    for i, vol in enumerate(v["volumes"]):
        if isinstance(vol, dict) and "hostPath" in vol and not allow["hostPath"]:
            raise ConfigError(f"{src}: volumes[{i}] mounts the node's path "
                              f"{(vol['hostPath'] or {}).get('path')}: set allow.hostPath: "
                              f"true {how}")
        sources = (vol.get("projected") or {}).get("sources") or [] if isinstance(vol, dict) \
            else []
        if any(isinstance(x, dict) and "serviceAccountToken" in x for x in sources) \
                and not allow["serviceAccount"]:
            raise ConfigError(f"{src}: volumes[{i}] mounts a service-account token: set "
                              f"allow.serviceAccount: true {how}")
    permitted = {v["s3Secret"], *allow["secrets"]}
    for where, name in _secret_refs(v):
        if name not in permitted:
            raise ConfigError(f"{src}: {where} reads the Secret {name!r}: list it in "
                              f"allow.secrets {how}")
    if v["serviceAccountName"] and not allow["serviceAccount"]:
        raise ConfigError(f"{src}: serviceAccountName {v['serviceAccountName']!r} makes the "
                          "pods act with that account's token: set allow.serviceAccount: "
                          f"true {how}")
    return allow


def _check_names(v: dict[str, Any], src: str) -> None:
    for key in ("namespace", "s3Secret", "serviceAccountName", "priorityClassName",
                "queueName", "gangQueue"):
        value = v[key]
        if value is not None and (len(value) > 63 or not _DNS_LABEL.match(value)):
            raise ConfigError(
                f"{src}: {key} {value!r} is not a valid Kubernetes name (lower-case letters, "
                "digits and '-', at most 63 characters)")
    for i, secret in enumerate(v["imagePullSecrets"]):
        if not isinstance(secret, str) or not _DNS_LABEL.match(secret):
            raise ConfigError(f"{src}: imagePullSecrets[{i}] must be a Secret name, got {secret!r}")


def _check_numbers(v: dict[str, Any], src: str) -> None:
    if v["workers"] < 1:
        raise ConfigError(f"{src}: workers must be >= 1, got {v['workers']}")
    if v["gpusPerWorker"] < 0:
        raise ConfigError(f"{src}: gpus per worker must be >= 0, got {v['gpusPerWorker']}")
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        if v[key] is not None and v[key] < (0 if key.startswith("ttl") else 1):
            raise ConfigError(f"{src}: {key} must be a positive number of seconds, got {v[key]}")
    if v["backoffLimit"] < 0:
        raise ConfigError(f"{src}: backoffLimit must be >= 0, got {v['backoffLimit']}")
    if not _QUANTITY.match(v["shmSize"]):
        raise ConfigError(f"{src}: shmSize {v['shmSize']!r} is not a quantity such as 8Gi")


def _check_maps(v: dict[str, Any], src: str) -> None:
    for key in ("nodeSelector", "labels", "annotations"):
        for k, val in v[key].items():
            if not isinstance(k, str) or not isinstance(val, str):
                raise ConfigError(f"{src}: {key} must map strings to strings; quote {k}: {val!r}")
    extra = set(v["resources"]) - {"requests", "limits"}
    if extra:
        raise ConfigError(f"{src}: resources takes requests and limits, not {sorted(extra)}")


_CAPABILITY = re.compile(r"^[0-9]+\.[0-9]+$")


def _gpu_compute(v: dict[str, Any], src: str) -> list[str]:
    """The compute capabilities GPU pods are kept to ([]: no constraint).

    Raises:
        ConfigError: not auto, any or a list of capabilities such as "8.0"; or the image's
            record is unreadable.
    """
    value = v["gpuCompute"]
    if v["gpusPerWorker"] == 0 or value == "any":
        return []
    if value == "auto":
        from clsact import gpuarch

        try:
            record = gpuarch.recorded()
        except gpuarch.ArchError as exc:
            raise ConfigError(f"{src}: gpuCompute auto: {exc}") from None
        return list(record.get("supported") or []) if record and record.get("cuda") else []
    if not isinstance(value, list) or not value or not all(
            isinstance(x, str) and _CAPABILITY.match(x) for x in value):
        raise ConfigError(f"{src}: gpuCompute must be auto, any, or a list of compute "
                          f"capabilities such as [\"8.0\", \"9.0\"], got {value!r}")
    return value


def resolve(file_values: dict[str, Any], flags: dict[str, Any],
            src: str = "values") -> LaunchValues:
    """Merge a values file with command-line flags (flags win) and check every value.

    Raises:
        ConfigError: unknown key (with a did-you-mean), wrong type, workers < 1, GPUs < 0,
            an invalid Kubernetes name or quantity, no image, a literal secret in ``env``,
            pod access beyond the S3 Secret that ``allow`` does not permit.
    """
    merged = dict(file_values)
    merged.update({k: v for k, v in flags.items() if v is not None})
    checked = check_section("values", merged, VALUES, src, CHOICES)
    v = {k: copy.deepcopy(checked.get(k, default)) for k, (_t, default) in VALUES.items()}
    v["s3Secret"] = v["s3Secret"] or None   # "" (or null): no S3 Secret (e.g. IRSA)
    if not v["image"]:
        raise ConfigError(f"{src}: no image: pass --image REGISTRY/clsact:TAG (or image: in "
                          "--values)")
    _check_numbers(v, src)
    _check_names(v, src)
    _check_maps(v, src)
    v["env"] = _check_env(v["env"], src)
    v["gpuCompute"] = _gpu_compute(v, src)
    if not all(isinstance(x, str) and x for x in v["gpuProducts"]):
        raise ConfigError(f"{src}: gpuProducts lists nvidia.com/gpu.product values (strings), "
                          f"got {v['gpuProducts']!r}")
    v["allow"] = _check_access(v, src)
    v["cleanPodPolicy"] = _clean_pod_policy(v, src)
    _check_scheduling(v, src)
    return LaunchValues(v)


def _clean_pod_policy(v: dict[str, Any], src: str) -> str | None:
    """The operator's cleanPodPolicy (its default when unset).

    Raises:
        ConfigError: a policy the operator does not know (JobSet has none).
    """
    allowed = CLEAN_POD_POLICIES[v["operator"]]
    if v["cleanPodPolicy"] is None:
        return DEFAULT_CLEAN_POD_POLICY[v["operator"]]
    if not allowed:
        raise ConfigError(f"{src}: cleanPodPolicy: a JobSet has none (its pods go with it: "
                          "ttlSecondsAfterFinished); remove it")
    if v["cleanPodPolicy"] not in allowed:
        raise ConfigError(f"{src}: cleanPodPolicy {v['cleanPodPolicy']!r} is not one of "
                          f"{', '.join(allowed)} ({v['operator']} operator)")
    return v["cleanPodPolicy"]


def _check_scheduling(v: dict[str, Any], src: str) -> None:
    """Queue and gang settings that the chosen operator can honour.

    Raises:
        ConfigError: queueName with paddle-operator (Kueue cannot suspend its PaddleJob),
            gangQueue without gangScheduling, or gang scheduling together with a Kueue queue.
    """
    if v["queueName"] and v["operator"] not in QUEUEABLE:
        raise ConfigError(f"{src}: queueName {v['queueName']!r}: Kueue cannot hold a "
                          "paddle-operator PaddleJob (it has no suspend); use operator: "
                          "jobset (or kubeflow), or drop queueName")
    if v["gangQueue"] and not v["gangScheduling"]:
        raise ConfigError(f"{src}: gangQueue {v['gangQueue']!r} is a Volcano queue: set "
                          "gangScheduling: true too (or drop gangQueue)")
    if v["gangScheduling"] and v["queueName"]:
        raise ConfigError(f"{src}: gangScheduling (Volcano) and queueName (Kueue) both "
                          "decide when the pods start: pick one (with Kueue, all-or-nothing "
                          "comes from its waitForPodsReady setting)")
