"""The Helm chart (charts/clsact) through the real Helm SDK (helm-python-sdk, Helm 4's Go
library): strict lint, golden renders, every object valid for Kubernetes 1.29 and the
PaddleJob against its CRD, the values schema, no secret value anywhere, and the same objects
as `clsact render` for the same values.

Set CLSACT_UPDATE_GOLDEN=1 to rewrite tests/golden/chart-*.yaml after an intended change.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

import clsact
from clsact import config as config_mod
from clsact.errors import ConfigError
from clsact.launch import render, validate, values
from tests import helmsdk
from tests.conftest import REPO, SHARED

if not helmsdk.AVAILABLE:
    pytest.skip("helm-python-sdk is not installed (make test installs it)",
                allow_module_level=True)

CHART = REPO / "charts" / "clsact"
GOLDEN = Path(__file__).parent / "golden"
MBV3 = REPO / "configs" / "mbv3_qat_dis.yaml"
CRDS = {"paddle": SHARED / "reference" / "paddle-operator"
        / "crd-paddlejobs.batch.paddlepaddle.org.yaml",
        "kubeflow": SHARED / "reference" / "kubeflow" / "crd-paddlejobs.kubeflow.org-v1.9.4.yaml",
        "jobset": SHARED / "reference" / "jobset" / "crd-jobsets.jobset.x-k8s.io-v0.12.0.yaml",
        "volcano": SHARED / "reference" / "volcano" / "crd-podgroups.scheduling.volcano.sh.yaml"}
NAMESPACE = "ml"
IMAGE = "registry.example.com/ml/clsact:0.1.0"
# labels only Helm sets (render says managed-by clsact)
HELM_ONLY = {"helm.sh/chart"}


def mbv3_config(data: str = "s3://datasets/ilsvrc2012") -> dict:
    cfg = config_mod.read_yaml(MBV3)
    cfg["Global"].update(model_dir="s3://models/mbv3/fp32", data_dir=data)
    return cfg


RELEASE = "mbv3"


def helm_render(vals: dict, release: str = RELEASE, hooks: bool = False) -> list[dict]:
    """Objects the chart renders for ``vals`` (in template order); with ``hooks``, only the
    `helm test` hooks (templates/tests/), else everything but them."""
    out = helmsdk.render(CHART, vals, name=release, namespace=NAMESPACE, is_install=True)
    return [doc for path in sorted(out) if path.endswith(".yaml")
            and ("/templates/tests/" in path) == hooks
            for doc in yaml.safe_load_all(out[path]) if doc]


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in objects}


def clsact_render(vals: dict, cfg: dict, tmp_path: Path) -> list[dict]:
    """`clsact render` of the same launch values (as a values file) and config; the job name
    base defaults to the release name in the chart, so to it here."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launch = {k: v for k, v in vals.items() if k not in ("mode", "config", "existingConfigMap")}
    v = values.resolve({"name": RELEASE, **launch, "namespace": NAMESPACE}, {})
    return render.render(path, [], v).objects


def normalise(obj: dict) -> dict:
    """What must differ between the two renderers: who manages the object (Helm's labels),
    the spec hash (JSON of Python vs Go), and the config's text (clsact fills its defaults;
    Helm writes the mapping): the config is compared as clsact reads it."""
    obj = copy.deepcopy(obj)

    def labels(meta: dict) -> None:
        for key in HELM_ONLY:
            meta.get("labels", {}).pop(key, None)
        meta.get("labels", {}).pop("app.kubernetes.io/managed-by", None)
        if "clsact.io/spec-hash" in meta.get("annotations", {}):
            meta["annotations"]["clsact.io/spec-hash"] = "<hash>"

    labels(obj["metadata"])
    for _path, template in validate.pod_templates(obj):
        labels(template["metadata"])
    if obj["kind"] == "ConfigMap":
        text = obj["data"]["config.yaml"]
        # as data (1 == 1.0: Helm writes the float 1.0 as 1)
        obj["data"]["config.yaml"] = config_mod.load_yaml(
            config_mod.validate(config_mod.load_yaml(text)).to_yaml())
    return obj


# ---------------------------------------------------------------- value sets

VALUE_SETS = {
    "minimal": {"saveDir": "s3://ml-models/clsact/mbv3"},
    "paddle-full": {
        "name": "MBV3_large.int8 nightly", "workers": 4, "gpusPerWorker": 7,
        "gpuResource": "nvidia.com/mig-3g.40gb", "saveDir": "s3://ml-models/clsact/mbv3/",
        "s3Endpoint": "https://minio.storage.svc:9000", "s3Secret": "",
        "resources": {"requests": {"cpu": "16", "memory": "96Gi"},
                      "limits": {"cpu": "32", "memory": "128Gi"}},
        "shmSize": "16Gi", "nodeSelector": {"nvidia.com/gpu.product": "A100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a", "b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In",
                                  "values": ["gpu-1"]}]}]}}},
        "gpuCompute": ["8.6", "7.0", "8.0", "10.0", "7.5"],
        "gpuProducts": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"],
        "imagePullSecrets": ["registry-pull", "mirror-pull"], "priorityClassName": "batch-low",
        "env": {"N": 3, "FLAGS_cudnn_deterministic": "0", "A": "x",
                "NCCL_BUFFSIZE": 16777216, "RATIO": 0.25, "WHOLE": 3.0},
        "labels": {"team": "vision", "app.kubernetes.io/name": "not-ours"},
        "annotations": {"owner": "ml-platform@example.com"},
        "activeDeadlineSeconds": 86400, "cleanPodPolicy": "Never",
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
    "kubeflow": {
        "name": "2024 run", "operator": "kubeflow", "workers": 2, "gpusPerWorker": 8,
        "saveDir": "s3://ml-models/clsact/kf", "cleanPodPolicy": "All",
        "gpuCompute": ["8.9", "9.0"],
        "ttlSecondsAfterFinished": None, "backoffLimit": 1, "activeDeadlineSeconds": 7200,
        "serviceAccountName": "clsact-job",
        "env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "wandb", "key": "key"}}}, {"name": "LOG_LEVEL", "value": 2}],
        "allow": {"serviceAccount": True, "secrets": ["wandb"]}},
    "jobset-queued": {
        "name": "js", "operator": "jobset", "workers": 3, "gpusPerWorker": 8,
        "saveDir": "s3://ml-models/clsact/js", "queueName": "team-a", "backoffLimit": 2,
        "priorityClassName": "batch-high", "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": None},
    "jobset-gang": {
        "name": "jsg", "operator": "jobset", "workers": 2, "saveDir": "s3://ml-models/g",
        "gangScheduling": True, "gangQueue": "gpu", "annotations": {"a": "b"}},
    "paddle-gang": {"name": "pg", "workers": 4, "saveDir": "s3://ml-models/g",
                    "gangScheduling": True, "priorityClassName": "batch-low"},
    "kubeflow-gang": {"name": "kg", "operator": "kubeflow", "workers": 3,
                      "saveDir": "s3://ml-models/k", "gangScheduling": True, "gangQueue": "q1"},
    "kubeflow-queued": {"name": "kq", "operator": "kubeflow", "workers": 2,
                        "saveDir": "s3://ml-models/k", "queueName": "team-b"},
    "cpu-volume": {
        "name": "cpu", "workers": 2, "gpusPerWorker": 0, "saveDir": "/results/mbv3",
        "imagePullPolicy": "Never",
        "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
        "volumeMounts": [{"name": "results", "mountPath": "/results"}]},
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_same_objects_as_clsact_render(name, tmp_path):
    vals = {"image": IMAGE, **VALUE_SETS[name]}
    cfg = mbv3_config()
    ours = clsact_render(vals, cfg, tmp_path)
    helm = helm_render({**vals, "config": cfg})
    kind = "JobSet" if vals.get("operator") == "jobset" else "PaddleJob"
    group = ["PodGroup"] if vals.get("gangScheduling") and kind == "JobSet" else []
    assert [o["kind"] for o in helm] == ["ConfigMap", *group, kind]
    assert [normalise(o) for o in helm] == [normalise(o) for o in ours]
    # what was normalised is still there, and Helm's own labels say Helm
    assert helm[-1]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert len(helm[-1]["metadata"]["annotations"]["clsact.io/spec-hash"]) == 16
    crds = [validate.load_crd(p) for p in CRDS.values() if p.is_file()]
    checked = validate.validate_objects(ours, crds)
    if len(crds) == len(CRDS):   # the upstream CRDs: every custom object checked by its own
        assert all("openAPIV3Schema" in line for line in checked if "ConfigMap" not in line)


def test_the_comparison_sees_a_difference(tmp_path):
    """The equivalence check is not vacuous: one value changed on one side only shows."""
    cfg = mbv3_config()
    vals = {"image": IMAGE, **VALUE_SETS["minimal"]}
    ours = clsact_render(vals, cfg, tmp_path)
    for change in ({"shmSize": "9Gi"}, {"name": "other"}, {"env": {"A": "1"}},
                   {"gpusPerWorker": 2}, {"gpuCompute": ["8.0"]}, {"gpuProducts": ["X"]},
                   {"gangScheduling": True}):
        helm = helm_render({**vals, **change, "config": cfg})
        assert [normalise(o) for o in helm] != [normalise(o) for o in ours], change
    changed = copy.deepcopy(cfg)
    changed["TrainConfig"]["learning_rate"] = 0.5
    helm = helm_render({**vals, "config": changed})
    assert normalise(helm[0]) != normalise(ours[0])


def test_config_from_file_text_and_yaml12_floats(tmp_path):
    """--set-file config=FILE gives the text; floats Helm writes as 4e-05 stay floats."""
    text = MBV3.read_text().replace("learning_rate: 0.001", "learning_rate: 1e-4")
    vals = {"image": IMAGE, "saveDir": "s3://bucket/p"}
    cfg = config_mod.load_yaml(text)
    cfg["Global"].update(model_dir="s3://models/fp32", data_dir="s3://data/imagenet")
    vals["config"] = yaml.safe_dump(cfg).replace("0.0001", "1e-4")
    helm = helm_render(vals)
    data = config_mod.load_yaml(helm[0]["data"]["config.yaml"])
    assert data["TrainConfig"]["learning_rate"] == pytest.approx(1e-4)
    assert data["Global"]["output_dir"] == "s3://bucket/p"
    assert [normalise(o) for o in helm] == [normalise(o) for o in clsact_render(
        {k: v for k, v in vals.items() if k != "config"}, cfg, tmp_path)]
    # PyYAML alone (YAML 1.1) would have read Helm's 4e-05 as a string
    assert isinstance(yaml.safe_load("x: 4e-05")["x"], str)
    assert config_mod.load_yaml("x: 4e-05")["x"] == pytest.approx(4e-05)


def test_existing_config_map(tmp_path):
    objs = helm_render({"image": IMAGE, "saveDir": "s3://b/p", "existingConfigMap": "my-cfg",
                        "s3Endpoint": "http://minio:9000"})
    assert [o["kind"] for o in objs] == ["PaddleJob"]
    pod = objs[0]["spec"]["worker"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "clsact-config", "configMap": {"name": "my-cfg"}}
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--save-dir") + 1] == "s3://b/p"
    assert cmd[-2:] == ["--s3-endpoint", "http://minio:9000"]


# ---------------------------------------------------------------- refusals

REFUSED = {
    "hostPath": ({"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}],
                  "volumeMounts": [{"name": "h", "mountPath": "/h"}]}, "allow.hostPath"),
    "other secret": ({"volumes": [{"name": "k", "secret": {"secretName": "db"}}]},
                     "allow.secrets"),
    "env secret ref": ({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {
        "name": "db", "key": "k"}}}]}, "allow.secrets"),
    "literal secret": ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "looks like a secret"),
    "boolean env": ({"env": [{"name": "DEBUG", "value": True}]}, "must be a string or number"),
    "service account": ({"serviceAccountName": "admin"}, "allow.serviceAccount"),
    "clean policy": ({"operator": "kubeflow", "cleanPodPolicy": "OnCompletion"},
                     "is not one of Running, All, None"),
    "relative save dir": ({"saveDir": "results"}, "relative path"),
    "unmounted save dir": ({"saveDir": "/results"}, "which no volume mounts"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_by_both(case, tmp_path):
    change, words = REFUSED[case]
    vals = {"image": IMAGE, "saveDir": "s3://b/p", **change}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        clsact_render(vals, mbv3_config(), tmp_path)
    with pytest.raises(helmsdk.HelmError, match=words.replace(".", r"\.")):
        helm_render({**vals, "config": mbv3_config()})


def test_relative_config_location_refused():
    with pytest.raises(helmsdk.HelmError, match="config Global.data_dir is the relative"):
        helm_render({"image": IMAGE, "saveDir": "s3://b/p", "config": mbv3_config("data")})


@pytest.mark.parametrize("vals, words", [
    ({"saveDir": "s3://b/p", "config": {"Global": {}}}, "no image: set image="),
    ({"image": IMAGE, "saveDir": "s3://b/p"}, "no compression config"),
    ({"image": IMAGE, "saveDir": "s3://b/p", "config": {"Global": {}},
      "existingConfigMap": "x"}, "not both"),
    ({"image": IMAGE, "config": {"Global": {}}}, "no save dir"),
    ({"image": IMAGE, "saveDir": "s3://b/p", "config": "Global: [unclosed"},
     "is not a YAML mapping"),
])
def test_missing_or_conflicting_inputs(vals, words):
    with pytest.raises(helmsdk.HelmError, match=words):
        helm_render(vals)


@pytest.mark.parametrize("vals, words", [
    ({"wrokers": 2}, "wrokers"),
    ({"nightly": {"schedulee": "0 2 * * *"}}, "schedulee"),
    ({"resources": {"limit": {"cpu": "1"}}}, "limit"),
    ({"tolerations": [{"key": "a", "efect": "NoSchedule"}]}, "efect"),
    ({"workers": 0}, "workers"),
    ({"operator": "volcano"}, "operator"),
    ({"shmSize": "lots"}, "shmSize"),
    ({"s3Secret": "Not_A_Name"}, "s3Secret"),
    ({"namespace": "ml"}, "namespace"),
])
def test_schema_refuses_typos_and_bad_values(vals, words):
    with pytest.raises(helmsdk.HelmValuesError, match=words):
        helmsdk.validate_schema(CHART, {"image": IMAGE, **vals})
    helmsdk.validate_schema(CHART, {"image": IMAGE})   # and the defaults pass


def _closed(schema: dict, path: str = "") -> list[str]:
    """Paths of object schemas with named properties that accept unknown keys."""
    out = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            out.append(path or "(top)")
        for key, sub in schema.items():
            out += _closed(sub, f"{path}.{key}" if path else key)
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            out += _closed(sub, f"{path}[{i}]")
    return out


def test_schema_closed_at_every_level_and_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _closed(schema) == []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) == set(schema["properties"]) - {"global"}
    assert set(defaults["nightly"]) == set(schema["properties"]["nightly"]["properties"])
    # every launch value of clsact is a chart value (the namespace is the release's)
    assert set(values.VALUES) - {"namespace"} <= set(defaults)


# ---------------------------------------------------------------- lint, golden, validity

def test_strict_lint_clean():
    vals = {"image": IMAGE, "saveDir": "s3://b/p", "config": mbv3_config()}
    for mode in ("job", "nightly"):
        report = helmsdk.lint(CHART, {**vals, "mode": mode}, strict=True,
                              namespace=NAMESPACE)
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not bad, bad
    # and lint does fail on a broken value set (lint mode logs `fail` calls instead of
    # failing: the render tests above cover those)
    report = helmsdk.lint(CHART, {**vals, "workers": 0}, strict=True)
    assert any(m["severity"] == 3 and "/workers" in m["error"] for m in report["messages"])


def test_chart_versions():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == clsact.__version__
    for rel in ("values.yaml", "values.schema.json", "README.md", "templates/NOTES.txt",
                "templates/_helpers.tpl", ".helmignore"):
        assert (CHART / rel).is_file(), rel


GOLDEN_SETS = {
    "chart-job-minimal": {"saveDir": "s3://ml-models/clsact/mbv3"},
    "chart-job-kubeflow": VALUE_SETS["kubeflow"],
    "chart-job-jobset": VALUE_SETS["jobset-queued"],
    "chart-job-jobset-gang": VALUE_SETS["jobset-gang"],
    "chart-nightly": {"mode": "nightly", "saveDir": "s3://ml-models/clsact/nightly",
                      "s3Endpoint": "https://minio.storage.svc:9000", "workers": 2,
                      "gpusPerWorker": 8, "imagePullSecrets": ["registry-pull"],
                      "nightly": {"schedule": "30 1 * * *", "timeZone": "Europe/Berlin",
                                  "keepJobs": 14}},
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SETS))
def test_golden_and_valid(name):
    vals = {"image": IMAGE, "config": mbv3_config(), **GOLDEN_SETS[name]}
    objects = helm_render(vals)
    text = render.to_yaml(objects)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("CLSACT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with CLSACT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"the chart's output changed: diff against {path}"
    crds = [validate.load_crd(p) for p in CRDS.values() if p.is_file()]
    checked = validate.validate_objects(objects, crds, "1.29")
    assert len(checked) == len(objects)
    if len(crds) == len(CRDS) and any(o["kind"] in ("PaddleJob", "JobSet") for o in objects):
        assert all("openAPIV3Schema" in line for line in checked
                   if not line.startswith("ConfigMap")), checked


@pytest.mark.parametrize("vals, objects", [
    ({"saveDir": "s3://b/p"}, ["ConfigMap/mbv3-{h}-config", "PaddleJob/mbv3-{h}",
                               "Secret/clsact-s3"]),
    ({"saveDir": "s3://b/p", "operator": "jobset", "gangScheduling": True, "s3Secret": ""},
     ["ConfigMap/mbv3-{h}-config", "JobSet/mbv3-{h}", "PodGroup/mbv3-{h}"]),
    ({"saveDir": "s3://b/p", "mode": "nightly"},
     ["CronJob/mbv3", "ConfigMap/mbv3-nightly", "ServiceAccount/mbv3-submitter",
      "Secret/clsact-s3"]),
])
def test_the_helm_test_hook_checks_the_releases_objects_and_may_read_only_them(vals, objects):
    hooks = helm_render({"image": IMAGE, "config": mbv3_config(), **vals}, hooks=True)
    assert [o["kind"] for o in hooks] == ["ServiceAccount", "Role", "RoleBinding", "Pod"]
    validate.validate_objects(hooks)
    assert all(o["metadata"]["annotations"]["helm.sh/hook"] == "test" for o in hooks)
    job = next(o for o in helm_render({"image": IMAGE, "config": mbv3_config(), **vals})
               if o["kind"] in ("PaddleJob", "JobSet", "CronJob"))["metadata"]["name"]
    h = job.rsplit("-", 1)[1] if vals.get("mode") != "nightly" else ""
    expected = [o.format(h=h) for o in objects]
    command = hooks[3]["spec"]["containers"][0]["command"]
    assert command[1] == "check-release" and command[-len(expected):] == expected
    rules = hooks[1]["rules"]
    assert all(r["verbs"] == ["get"] and len(r["resourceNames"]) == 1 for r in rules)
    assert sorted(r["resourceNames"][0] for r in rules) == sorted(
        o.split("/")[1] for o in expected), "exactly the checked objects, nothing else"


def test_a_broken_object_fails_validation():
    """The validity check can fail: a pod field of the wrong type is caught."""
    objects = helm_render({"image": IMAGE, "config": mbv3_config(), "saveDir": "s3://b/p"})
    job = objects[1]
    job["spec"]["worker"]["template"]["spec"]["containers"][0]["resources"] = {"limits": [1]}
    with pytest.raises(ConfigError):
        validate.validate_objects(objects)


def test_nightly_objects():
    vals = {"image": IMAGE, "config": mbv3_config(), **GOLDEN_SETS["chart-nightly"]}
    objs = by_kind(helm_render(vals))
    assert set(objs) == {"ConfigMap", "CronJob", "ServiceAccount", "Role", "RoleBinding"}
    cron = objs["CronJob"]
    assert cron["apiVersion"] == "batch/v1"          # offline: Helm's default capabilities
    assert cron["spec"]["timeZone"] == "Europe/Berlin"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] == 82800
    cmd = job["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["/usr/local/bin/clsact", "submit"]
    assert cmd[cmd.index("--nightly") + 1] == RELEASE
    assert cmd[cmd.index("--keep-jobs") + 1] == "14"
    assert cmd[cmd.index("--timeout") + 1] == "82500s"    # stops following before the deadline
    # the gate (on by default) reads and writes the bucket with the Secret as files
    container = job["template"]["spec"]["containers"][0]
    assert cmd[-1] == "--gate"
    assert {"name": "CLSACT_S3_CREDENTIALS_DIR",
            "value": "/var/run/secrets/clsact/s3"} in container["env"]
    assert {"name": "s3-credentials", "mountPath": "/var/run/secrets/clsact/s3",
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "s3-credentials", "secret": {"secretName": "clsact-s3"}} in \
        job["template"]["spec"]["volumes"]
    off = by_kind(helm_render({**vals, "nightly": {**vals["nightly"], "gate": False}}))
    off_pod = off["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "--gate" not in off_pod["containers"][0]["command"]
    assert "s3-credentials" not in json.dumps(off_pod)
    launch = yaml.safe_load(objs["ConfigMap"]["data"]["values.yaml"])
    v = values.resolve(launch, {})                         # what the submitter will resolve
    assert v["namespace"] == NAMESPACE and v["workers"] == 2 and v["name"] == RELEASE


def test_nightly_rbac_is_clsact_rbac():
    objs = by_kind(helm_render({"image": IMAGE, "config": mbv3_config(), "mode": "nightly",
                                "saveDir": "s3://b/p", "s3Secret": "team-s3"}))
    ours = by_kind(render.render_rbac(NAMESPACE, "mbv3-submitter", "team-s3"))
    assert objs["Role"]["rules"] == ours["Role"]["rules"]
    assert objs["RoleBinding"]["subjects"] == ours["RoleBinding"]["subjects"]
    assert objs["RoleBinding"]["roleRef"] == ours["RoleBinding"]["roleRef"]
    cron_pod = objs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron_pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    no_secret = by_kind(helm_render({"image": IMAGE, "config": mbv3_config(),
                                     "mode": "nightly", "saveDir": "s3://b/p",
                                     "s3Secret": ""}))
    assert no_secret["Role"]["rules"] == by_kind(render.render_rbac(
        NAMESPACE, "x", None))["Role"]["rules"]


def test_no_secret_value_in_any_object(s3_server):
    """Credentials exist only as a Secret's name: render every value set and mode with the
    session's real credentials in the environment and look for them."""
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    for vals in [*VALUE_SETS.values(), *GOLDEN_SETS.values()]:
        text = json.dumps(helm_render({"image": IMAGE, "config": mbv3_config(), **vals}))
        assert "clsact-s3" in text or vals.get("s3Secret") == ""
        for secret in secrets:
            assert secret not in text
    # the check can fail: a secret in env is refused, not rendered
    with pytest.raises(helmsdk.HelmError, match="looks like a secret"):
        helm_render({"image": IMAGE, "config": mbv3_config(), "saveDir": "s3://b/p",
                     "env": {"MY_TOKEN": secrets[1]}})


def test_notes(tmp_path):
    for mode, words in (("job", "clsact status mbv3-"), ("nightly", "refused while")):
        out = helmsdk.render(CHART, {"image": IMAGE, "config": mbv3_config(),
                                     "saveDir": "s3://b/p", "mode": mode},
                             name=RELEASE, namespace=NAMESPACE, is_install=True)
        notes = out["clsact/templates/NOTES.txt"]
        assert words in notes, notes


def test_shipped_chart_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in defaults if f"`{k}`" not in readme]
    missing += [f"nightly.{k}" for k in defaults["nightly"] if f"`nightly.{k}`" not in readme]
    assert not missing, missing



def test_make_chart_push_to_a_registry(tmp_path):
    """`make chart-push` packages the chart and pushes it as an OCI artifact: the loopback
    registry (the one the image tests use) then serves it, and `helm pull` gets back the
    same chart. Without REGISTRY, or with the registry gone, it stops with one line."""
    import subprocess

    from tests import dockerhost
    from tests.kubeserver import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", "chart-push", *args], cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=300)

    refused = make()
    assert refused.returncode != 0 and "set REGISTRY=" in refused.stderr, refused.stderr
    (tmp_path / "registry").mkdir()
    registry = dockerhost.Registry(tmp_path / "registry", free_port())
    try:
        pushed = make(f"REGISTRY={registry.address}/ml")
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
        line = pushed.stdout.strip().splitlines()[-1]
        assert line.startswith(f"pushed oci://{registry.address}/ml/clsact:{version}@sha256:")
        _, tags = registry.get("ml/clsact/tags/list")
        assert tags["tags"] == [version]
        helmsdk.pull(f"oci://{registry.address}/ml/clsact", version=version,
                     destination=str(tmp_path), untar=True, untar_dir=str(tmp_path / "x"),
                     plain_http=True)
        got = tmp_path / "x" / "clsact"
        assert yaml.safe_load((got / "Chart.yaml").read_text()) == yaml.safe_load(
            (CHART / "Chart.yaml").read_text()), "Chart.yaml (as Helm writes it)"
        for rel in ("values.yaml", "values.schema.json", "templates/paddlejob.yaml",
                    "templates/tests/release-check.yaml"):
            assert (got / rel).read_text() == (CHART / rel).read_text(), rel
    finally:
        registry.stop()
    gone = make(f"REGISTRY={registry.address}/ml")
    errors = [x for x in gone.stderr.splitlines() if x.startswith("chart-push: error:")]
    assert gone.returncode != 0 and len(errors) == 1, gone.stderr


def test_helm_runs_outside_the_test_process():
    """The Go runtime of the Helm SDK never loads beside Paddle in the pytest process
    (tests/helmsdk.py says why)."""
    import sys

    assert helmsdk.render(CHART, {"image": IMAGE, "saveDir": "s3://b/p",
                                  "config": mbv3_config()}, name=RELEASE, namespace=NAMESPACE)
    assert "helm_python" not in sys.modules
