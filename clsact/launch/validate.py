"""Check rendered objects before they reach a cluster.

* Built-in kinds (ConfigMap, RBAC, ...) against the Kubernetes OpenAPI schemas shipped by
  ``kubernetes-validate`` (strict: unknown fields are errors).
* The worker pod template of a PaddleJob or JobSet the same way (as a ``v1`` PodTemplate), so
  a typo in ``tolerations`` or ``resources`` is caught offline whatever the operator.
* A PaddleJob (JobSet, PodGroup) against its CRD's ``openAPIV3Schema`` (``--crd FILE``, e.g.
  ``kubectl get crd paddlejobs.batch.paddlepaddle.org -o yaml``), with unknown fields refused
  as a strict API server would; ``clsact submit`` also asks the server (dry run).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from clsact.errors import ConfigError

DEFAULT_K8S_VERSION = "1.29"


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _first_line(error: jsonschema.ValidationError) -> str:
    return error.message.splitlines()[0][:300]


def validate_builtin(obj: dict[str, Any], k8s_version: str = DEFAULT_K8S_VERSION,
                     where: str = "") -> None:
    """Validate a built-in object strictly against Kubernetes ``k8s_version``.

    Raises:
        ConfigError: the object does not match its schema (field path named), or the kind or
            version is unknown to kubernetes-validate.
    """
    label = where or f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ConfigError(f"{label}: invalid at {_path(exc)}: {_first_line(exc)}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise ConfigError(f"{label}: no Kubernetes {k8s_version} schema for "
                          f"{obj.get('apiVersion')}/{obj.get('kind')}") from None
    except kubernetes_validate.VersionNotSupportedError:
        raise ConfigError(f"Kubernetes version {k8s_version} is not known to kubernetes-validate "
                          f"(choose 1.2x-{kubernetes_validate.latest_version()})") from None


def pod_templates(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The pod templates of a PaddleJob of either operator or of a JobSet, with their field
    paths."""
    spec = job.get("spec") or {}
    out = []
    for role in ("worker", "ps", "heter"):  # paddle-operator
        if isinstance(spec.get(role), dict) and "template" in spec[role]:
            out.append((f"spec.{role}.template", spec[role]["template"]))
    for role, rs in (spec.get("paddleReplicaSpecs") or {}).items():  # kubeflow
        if isinstance(rs, dict) and "template" in rs:
            out.append((f"spec.paddleReplicaSpecs.{role}.template", rs["template"]))
    for i, rj in enumerate(spec.get("replicatedJobs") or []):  # JobSet
        template = ((rj.get("template") or {}).get("spec") or {}).get("template") \
            if isinstance(rj, dict) else None
        if isinstance(template, dict):
            out.append((f"spec.replicatedJobs[{i}].template.spec.template", template))
    return out


def validate_pod_templates(job: dict[str, Any], k8s_version: str = DEFAULT_K8S_VERSION) -> None:
    """Validate every pod template of a PaddleJob as a Kubernetes PodTemplateSpec.

    Raises:
        ConfigError: see :func:`validate_builtin`; the message names the template's path.
    """
    name = (job.get("metadata") or {}).get("name")
    for path, template in pod_templates(job):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": name or "x"}, "template": template}
        validate_builtin(wrapper, k8s_version, where=f"{job.get('kind')}/{name} {path}")


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema that refuses unknown fields (as pruning would drop them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crd(path: str | Path) -> dict[str, Any]:
    """Read a CustomResourceDefinition (the first CRD document of a YAML file).

    Raises:
        ConfigError: missing file, not YAML, or no CRD in it.
    """
    p = Path(path)
    try:
        docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--crd {path}: cannot be read: {exc}") from None
    except yaml.YAMLError:
        raise ConfigError(f"--crd {path}: not valid YAML") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            return doc
    raise ConfigError(f"--crd {path}: no CustomResourceDefinition in it")


def crd_schema(crd: dict[str, Any], api_version: str, kind: str) -> dict[str, Any] | None:
    """The ``openAPIV3Schema`` of ``api_version``/``kind`` in a CRD, or None if it is another."""
    spec = crd.get("spec") or {}
    group = spec.get("group")
    if (spec.get("names") or {}).get("kind") != kind:
        return None
    for version in spec.get("versions") or []:
        if f"{group}/{version.get('name')}" == api_version:
            return (version.get("schema") or {}).get("openAPIV3Schema")
    return None


def validate_custom(obj: dict[str, Any], crds: list[dict[str, Any]]) -> bool:
    """Validate a custom object against the matching CRD of ``crds``; False if none matches.

    Raises:
        ConfigError: the object does not match the CRD's schema (field path named).
    """
    for crd in crds:
        schema = crd_schema(crd, obj.get("apiVersion", ""), obj.get("kind", ""))
        if schema is None:
            continue
        body = copy.deepcopy(obj)
        body.pop("metadata", None)   # checked by the API server's own rules
        schema = _strict(copy.deepcopy(schema))
        schema.get("properties", {}).pop("metadata", None)
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            raise ConfigError(f"{obj.get('kind')}/{obj['metadata'].get('name')}: does not match "
                              f"the CRD {crd['metadata']['name']} at {_path(e)}: "
                              f"{_first_line(e)}")
        return True
    return False


def validate_objects(objects: list[dict[str, Any]], crds: list[dict[str, Any]] | None = None,
                     k8s_version: str = DEFAULT_K8S_VERSION) -> list[str]:
    """Validate rendered objects; return what was checked, one line per object.

    Raises:
        ConfigError: the first invalid object.
    """
    checked = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        group = obj["apiVersion"].rpartition("/")[0]
        if "." not in group or group.endswith(".k8s.io"):  # core, apps, batch, rbac...
            validate_builtin(obj, k8s_version)
            checked.append(f"{name}: Kubernetes {k8s_version} schema")
            continue
        validate_pod_templates(obj, k8s_version)
        how = f"pod template: Kubernetes {k8s_version} schema"
        if validate_custom(obj, crds or []):
            how += f"; CRD {obj['apiVersion']} openAPIV3Schema"
        checked.append(f"{name}: {how}")
    return checked
