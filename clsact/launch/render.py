"""Render a compression config + launch values into Kubernetes objects (no cluster needed).

The templates are package data, ``clsact/launch/templates/*.yaml.j2`` (read one way, through
:mod:`importlib.resources`); ``k8s/`` holds rendered examples a user applies by hand. The
result is a :class:`Rendered`: the ConfigMap holding the resolved config, the Volcano
PodGroup of a gang-scheduled JobSet, then the job of the chosen operator (a PaddleJob or a
JobSet), all labelled with ``app.kubernetes.io/*`` and the run id, and the job annotated with
a hash of the whole spec (how ``submit`` recognises a resubmission).

A JobSet has no operator that tells the pods their peers: each pod's command
(:data:`JOBSET_LAUNCH`) gives ``paddle.distributed.launch`` the master (rank 0's stable name
``<job>-worker-0-0.<job>`` through the JobSet's headless Service; rank 0 itself serves the
rendezvous), its node rank (the Indexed Job's ``JOB_COMPLETION_INDEX``) and ``--nnodes``.
"""

from __future__ import annotations

import copy
import json
import posixpath
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from clsact import __version__
from clsact import config as config_mod
from clsact.errors import ConfigError
from clsact.gpuarch import node_affinity_terms
from clsact.launch.names import config_map_name, job_name, short_hash
from clsact.launch.operators import OPERATORS, Operator
from clsact.launch.values import QUEUE_LABEL, LaunchValues
from clsact.storage import is_uri
from clsact.storage.s3session import CREDENTIALS_DIR_ENV

CONFIG_MOUNT_DIR = "/etc/clsact"
CONFIG_FILE_NAME = "config.yaml"
LAUNCH_LOG_DIR = "/tmp/clsact-launch"
MASTER_PORT = 37777    # the rendezvous port of the Kubeflow operator and of a JobSet
JOBSET_REPLICATED_JOB = "worker"
GANG_SCHEDULER = "volcano"
POD_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
# a JobSet pod's launcher: paddle's HTTP master only serves the rendezvous on a node whose
# --master is 127.0.0.1 or its own IP, so rank 0 names itself by 127.0.0.1 and the others
# find it by its DNS name ($0: python, "$@": the launcher's remaining arguments)
JOBSET_LAUNCH = (
    'rank="${JOB_COMPLETION_INDEX:?not a pod of an Indexed Job (JobSet)}"; '
    'if [ "$rank" = 0 ]; then master=127.0.0.1; else master="$CLSACT_MASTER_HOST"; fi; '
    'exec "$0" -m paddle.distributed.launch --master "$master:$CLSACT_MASTER_PORT" '
    '--rank "$rank" "$@"')
# where the pods mount the S3 Secret (its keys as files; see clsact.storage.s3)
S3_CREDENTIALS_DIR = "/var/run/secrets/clsact/s3"
RUN_ID_LABEL = "clsact.io/run-id"
SPEC_HASH_ANNOTATION = "clsact.io/spec-hash"
# config locations a pod must be able to read (the save dir is checked on its own)
_LOCATION_KEYS = (("Global", "model_dir"), ("Global", "data_dir"), ("Global", "scratch_dir"),
                  ("Distillation", "teacher_model_dir"))


@dataclass(frozen=True)
class Rendered:
    """The objects of one launch, in creation order: ConfigMap, (PodGroup), then the job."""

    name: str
    namespace: str
    operator: Operator
    objects: list[dict[str, Any]]
    spec_hash: str
    secret: str | None = None   # the S3 Secret the pods mount (S3_CREDENTIALS_DIR)
    config: config_mod.Config | None = None   # the validated config the ConfigMap holds

    @property
    def job(self) -> dict[str, Any]:
        return self.objects[-1]

    @property
    def config_map(self) -> dict[str, Any]:
        return self.objects[0]

    @property
    def companions(self) -> list[dict[str, Any]]:
        """The objects that go with the job (owned by it once created): ConfigMap, PodGroup."""
        return self.objects[:-1]


def templates_dir() -> Path:
    """The templates' folder, ``clsact/launch/templates`` (package data).

    Raises:
        ConfigError: the installation lacks them.
    """
    folder = Path(str(resources.files("clsact.launch") / "templates"))
    if not (folder / "paddlejob.yaml.j2").is_file():
        raise ConfigError(f"clsact's Kubernetes templates are missing from {folder}; "
                          "reinstall clsact")
    return folder


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def environment() -> jinja2.Environment:
    """The Jinja environment of the templates (strict: an undefined name is an error)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["to_json"] = _to_json
    env.filters["pull_secret"] = lambda name: {"name": name}
    return env


def render_template(template: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    """Render one template and parse its YAML documents."""
    text = environment().get_template(template).render(**context)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _is_under(path: str, mounts: list[str]) -> bool:
    return any(posixpath.commonpath([path, m]) == m for m in mounts if m.startswith("/"))


def check_pod_location(value: str, what: str, mounts: list[str]) -> None:
    """A location a pod must reach: ``s3://...`` or an absolute path under a mounted volume.

    Raises:
        ConfigError: a relative path, or a local path outside every ``volumeMounts`` path.
    """
    if is_uri(value):
        return
    if not value.startswith("/"):
        raise ConfigError(f"{what} is the relative path {value!r}: a pod cannot see your "
                          "working directory; use s3://bucket/prefix")
    if not _is_under(posixpath.normpath(value), mounts):
        raise ConfigError(f"{what} is the local path {value!r}, which no volume mounts in the "
                          "pod; use s3://bucket/prefix or mount it (volumes/volumeMounts)")


def resolve_config(config_path: str | Path, overrides: list[str], values: LaunchValues,
                   raw: dict[str, Any] | None = None) -> tuple[config_mod.Config, str]:
    """Load and validate the compression config as the pods will see it; return it and the
    save dir. ``raw``: the file's content already read (and overridden) by the caller.

    Raises:
        ConfigError: the config is invalid, or a location is not reachable from a pod.
    """
    if raw is None:
        raw = config_mod.read_yaml(config_path)
    raw = copy.deepcopy(raw)
    config_mod.apply_overrides(raw, overrides)
    if values["s3Endpoint"]:
        raw.setdefault("Global", {})
        if isinstance(raw["Global"], dict):
            raw["Global"]["s3_endpoint"] = values["s3Endpoint"]
    mounts = [m.get("mountPath", "") for m in values["volumeMounts"] if isinstance(m, dict)]
    for section, key in _LOCATION_KEYS:
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            check_pod_location(value, f"{config_path}: {section}.{key}", mounts)
    cfg = config_mod.validate(raw, source=str(config_path))
    save_dir = values["saveDir"] or raw.get("Global", {}).get("output_dir")
    if not save_dir:
        raise ConfigError("no save dir: pass --save-dir s3://bucket/prefix (or Global.output_dir)")
    check_pod_location(save_dir, "the save dir (--save-dir / Global.output_dir)", mounts)
    return cfg.with_global(output_dir=save_dir), save_dir


def container_command(values: LaunchValues, save_dir: str, run_id: str) -> list[str]:
    """The command of every worker: the launcher of paddle, then ``clsact compress`` (for a
    JobSet through :data:`JOBSET_LAUNCH`, which adds the master and the node rank)."""
    launcher = ["--log_dir", LAUNCH_LOG_DIR, "--nproc_per_node",
                str(max(values["gpusPerWorker"], 1))]
    job = [values["clsactBin"], "compress", "--config", f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE_NAME}",
           "--save-dir", save_dir, "--run-id", run_id]
    if values["operator"] == "jobset":
        return ["/bin/sh", "-c", JOBSET_LAUNCH, values["python"], "--nnodes",
                str(values["workers"]), *launcher, *job]
    return [values["python"], "-m", "paddle.distributed.launch", *launcher, *job]


def master_host(name: str) -> str:
    """Rank 0's stable DNS name in a JobSet: ``<jobset>-<replicated job>-<job index>-<pod
    index>.<subdomain>`` (the subdomain is the JobSet's headless Service, its own name)."""
    return f"{name}-{JOBSET_REPLICATED_JOB}-0-0.{name}"


def job_env(values: LaunchValues, name: str) -> list[dict[str, Any]]:
    """The training container's environment: clsact's, then the user's."""
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if values["s3Secret"]:
        env.append({"name": CREDENTIALS_DIR_ENV, "value": S3_CREDENTIALS_DIR})
    if values["operator"] == "jobset":
        env += [{"name": "CLSACT_MASTER_HOST", "value": master_host(name)},
                {"name": "CLSACT_MASTER_PORT", "value": str(MASTER_PORT)}]
    return env + values["env"]


def gang(values: LaunchValues, name: str) -> dict[str, Any] | None:
    """Volcano gang scheduling of the launch (None when off): every pod or none."""
    if not values["gangScheduling"]:
        return None
    return {"scheduler": GANG_SCHEDULER, "minAvailable": values["workers"],
            "queue": values["gangQueue"], "priorityClass": values["priorityClassName"],
            "podGroup": name if values["operator"] == "jobset" else None}


def pod_affinity(values: LaunchValues) -> dict[str, Any]:
    """The user's ``affinity`` with GPU pods kept to nodes whose GPUs the image runs
    (``gpuCompute``: GPU feature discovery's compute major/minor labels; ``gpuProducts``:
    ``nvidia.com/gpu.product``). Required terms are ORed, so each of the user's terms is
    combined with each GPU term."""
    affinity = copy.deepcopy(values["affinity"])
    gpu = node_affinity_terms(values["gpuCompute"]) if values["gpusPerWorker"] else []
    if values["gpusPerWorker"] and values["gpuProducts"]:
        product = {"key": "nvidia.com/gpu.product", "operator": "In",
                   "values": list(values["gpuProducts"])}
        gpu = [{"matchExpressions": [*t["matchExpressions"], product]} for t in gpu] or [
            {"matchExpressions": [product]}]
    if not gpu:
        return affinity
    required = affinity.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {})
    theirs = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [
        {**term, "matchExpressions": [*term.get("matchExpressions", []),
                                      *g["matchExpressions"]]} for term in theirs for g in gpu]
    return affinity


def _resources(values: LaunchValues) -> dict[str, Any]:
    res = copy.deepcopy(values["resources"])
    if values["gpusPerWorker"] > 0:
        res.setdefault("limits", {})[values["gpuResource"]] = values["gpusPerWorker"]
    return res


def standard_labels(name: str, user: dict[str, str]) -> dict[str, str]:
    """The user's labels plus ``app.kubernetes.io/*`` and the run id (ours win)."""
    return {**user, "app.kubernetes.io/name": "clsact", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "compress", "app.kubernetes.io/managed-by": "clsact",
            "app.kubernetes.io/version": __version__, RUN_ID_LABEL: name}


def render(config_path: str | Path, overrides: list[str], values: LaunchValues,
           raw: dict[str, Any] | None = None) -> Rendered:
    """Render the ConfigMap and PaddleJob of one launch (``raw``: the config file as the
    caller read it, see :func:`resolve_config`).

    Raises:
        ConfigError: invalid config or values (see :func:`resolve_config`).
    """
    operator = OPERATORS[values["operator"]]
    name = job_name(values["name"] or Path(config_path).stem, operator.key)
    cfg, save_dir = resolve_config(config_path, overrides, values, raw)
    env = job_env(values, name)
    labels = standard_labels(name, values["labels"])
    gang_spec = gang(values, name)
    context = {
        "v": values.data, "name": name, "labels": labels,
        "job_labels": ({**labels, QUEUE_LABEL: values["queueName"]} if values["queueName"]
                       else labels),
        "suspend": bool(values["queueName"]), "gang": gang_spec,
        "gang_policy": ({k: gang_spec[k] for k in ("minAvailable", "queue", "priorityClass")
                         if gang_spec[k] is not None} if gang_spec else None),
        "pod_annotations": ({**values["annotations"], POD_GROUP_ANNOTATION: name}
                            if gang_spec and gang_spec["podGroup"] else values["annotations"]),
        "restart_policy": "Never" if operator.key == "jobset" else None,
        "replicated_job": JOBSET_REPLICATED_JOB,
        "user_annotations": values["annotations"], "annotations": dict(values["annotations"]),
        "command": container_command(values, save_dir, name), "env": env,
        "resources": _resources(values), "config_map_name": config_map_name(name),
        "affinity": pod_affinity(values),
        "config_mount_dir": CONFIG_MOUNT_DIR, "config_file_name": CONFIG_FILE_NAME,
        "config_text": cfg.to_yaml(), "s3_credentials_dir": S3_CREDENTIALS_DIR,
        "ports": ([{"name": "master", "containerPort": MASTER_PORT}]
                  if operator.key in ("kubeflow", "jobset") else []),
        "pod_deadline": values["activeDeadlineSeconds"] if operator.key == "paddle" else None,
    }
    objects = render_template("configmap.yaml.j2", context)
    if context["gang"] and context["gang"]["podGroup"]:
        objects += render_template("podgroup.yaml.j2", context)
    objects += render_template(operator.template, context)
    spec_hash = short_hash(json.dumps(objects, sort_keys=True), 16)
    objects[-1]["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash
    return Rendered(name=name, namespace=values["namespace"], operator=operator,
                    objects=objects, spec_hash=spec_hash,
                    secret=values["s3Secret"], config=cfg)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config in the ConfigMap) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A YAML stream (``---`` between documents), keys in template order."""
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                                  allow_unicode=True) for o in objects)


def write_dir(objects: list[dict[str, Any]], directory: str | Path) -> list[Path]:
    """Write one ``<index>-<kind>-<name>.yaml`` per object into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, obj in enumerate(objects):
        path = out / f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(to_yaml([obj]), encoding="utf-8")
        paths.append(path)
    return paths


def render_rbac(namespace: str, service_account: str, secret: str | None) -> list[dict]:
    """The ServiceAccount, Role and RoleBinding a submitter needs (``templates/rbac.yaml.j2``)."""
    labels = {"app.kubernetes.io/name": "clsact", "app.kubernetes.io/component": "submitter",
              "app.kubernetes.io/managed-by": "clsact"}
    return render_template("rbac.yaml.j2", {"namespace": namespace, "labels": labels,
                                            "service_account": service_account,
                                            "secret": secret})
