"""`clsact render`: launch values, names, the rendered ConfigMap + PaddleJob, validation
(Kubernetes schemas, the real CRDs from ../shared), golden files, and the packaged templates.

Set CLSACT_UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from clsact import config as config_mod
from clsact.errors import ConfigError
from clsact.launch import render, validate, values
from clsact.launch.names import MAX_JOB_NAME, job_name
from tests.conftest import REPO, SHARED, run_cli

GOLDEN = Path(__file__).parent / "golden"
MBV3 = REPO / "configs" / "mbv3_qat_dis.yaml"
S3_PATHS = ["Global.model_dir=s3://models/mbv3/fp32", "Global.data_dir=s3://datasets/ilsvrc2012"]
PADDLE_CRD = SHARED / "reference" / "paddle-operator" / "crd-paddlejobs.batch.paddlepaddle.org.yaml"
KUBEFLOW_CRD = SHARED / "reference" / "kubeflow" / "crd-paddlejobs.kubeflow.org-v1.9.4.yaml"
needs_crds = pytest.mark.skipif(not PADDLE_CRD.is_file() or not KUBEFLOW_CRD.is_file(),
                                reason="the PaddleJob CRDs live in ../shared/reference, absent")

FULL_VALUES = {
    "namespace": "ml-compression", "workers": 4, "gpusPerWorker": 8,
    "image": "registry.example.com/ml/clsact:0.1.0", "saveDir": "s3://ml-models/clsact/mbv3",
    "s3Endpoint": "https://minio.storage.svc:9000",
    "resources": {"requests": {"cpu": "16", "memory": "96Gi"},
                  "limits": {"cpu": "32", "memory": "128Gi"}},
    "shmSize": "16Gi", "nodeSelector": {"nvidia.com/gpu.product": "A100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
    "gpuCompute": ["6.1", "7.0", "7.5", "8.0", "8.6", "8.9"],
    "imagePullSecrets": ["registry-pull"], "serviceAccountName": "clsact-job",
    "priorityClassName": "batch-low", "env": {"FLAGS_cudnn_deterministic": "0", "N": 3},
    "labels": {"team": "vision"}, "annotations": {"owner": "ml-platform@example.com"},
    "activeDeadlineSeconds": 86400, "allow": {"serviceAccount": True},
}


def make(flags=None, file_values=None, overrides=S3_PATHS, config=MBV3) -> render.Rendered:
    v = values.resolve(file_values or {}, {"image": "reg.example.com/clsact:1",
                                           "saveDir": "s3://out-bucket/run", **(flags or {})})
    return render.render(config, list(overrides), v)


def container(rendered: render.Rendered) -> dict:
    return pod_spec(rendered)["containers"][0]


def pod_spec(rendered: render.Rendered) -> dict:
    return validate.pod_templates(rendered.job)[0][1]["spec"]


# ---------------------------------------------------------------- values and names


@pytest.mark.parametrize("flags, message", [
    ({"workers": 0}, "workers must be >= 1"),
    ({"gpusPerWorker": -1}, "gpus per worker must be >= 0"),
    ({"namespace": "ML_Team"}, "namespace 'ML_Team' is not a valid Kubernetes name"),
    ({"nodeselector": {"a": "b"}},
     "unknown key values.nodeselector (did you mean 'nodeSelector'?)"),
    ({"operator": "volcano"}, "choose one of paddle, kubeflow, jobset"),
    ({"env": {"AWS_SECRET_ACCESS_KEY": "hunter2"}},
     "env AWS_SECRET_ACCESS_KEY looks like a secret"),
    ({"env": [{"name": "DB_PASSWORD", "value": "x"}]}, "looks like a secret"),
    ({"shmSize": "lots"}, "shmSize 'lots' is not a quantity"),
    ({"imagePullSecrets": [{"name": "x"}]}, "imagePullSecrets[0] must be a Secret name"),
    ({"cleanPodPolicy": "Sometimes"}, "cleanPodPolicy 'Sometimes' is not one of"),
    ({"workers": "2"}, "values.workers must be int"),
    ({"labels": {"tier": 1}}, "labels must map strings to strings"),
    ({"resources": {"limit": {}}}, "resources takes requests and limits"),
    ({"queueName": "team-a"}, "Kueue cannot hold a paddle-operator PaddleJob"),
    ({"gangQueue": "gpu"}, "set gangScheduling: true too"),
    ({"operator": "jobset", "queueName": "q", "gangScheduling": True}, "pick one"),
    ({"operator": "jobset", "cleanPodPolicy": "Running"}, "a JobSet has none"),
    ({"operator": "jobset", "queueName": "Team A"}, "queueName 'Team A' is not a valid"),
])
def test_bad_values_are_named(flags, message):
    with pytest.raises(ConfigError) as err:
        values.resolve({}, {"image": "i", **flags})
    assert message in str(err.value)


def test_an_image_is_required():
    with pytest.raises(ConfigError, match="no image: pass --image"):
        values.resolve({}, {})


def test_flags_win_over_the_values_file():
    v = values.resolve({"workers": 2, "image": "a"}, {"workers": 3, "namespace": None})
    assert (v["workers"], v["image"], v["namespace"]) == (3, "a", "default")


def test_secret_env_may_come_from_an_allowed_secret_ref():
    ref = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    v = values.resolve({"allow": {"secrets": ["hf"]}}, {"image": "i", "env": [ref]})
    assert v["env"] == [ref]
    s3 = {"name": "K", "valueFrom": {"secretKeyRef": {"name": "clsact-s3", "key": "k"}}}
    assert values.resolve({}, {"image": "i", "env": [s3]})["env"] == [s3], "the S3 Secret is"


@pytest.mark.parametrize("given, message", [
    ({"volumes": [{"name": "h", "hostPath": {"path": "/var/lib"}}]},
     "volumes[0] mounts the node's path /var/lib: set allow.hostPath: true in the values"),
    ({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]},
     "env T reads the Secret 'db': list it in allow.secrets"),
    ({"volumes": [{"name": "s", "secret": {"secretName": "tls"}}]},
     "volumes[0] reads the Secret 'tls': list it in allow.secrets"),
    ({"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}}]},
     "volumes[0] (projected) reads the Secret 'x'"),
    ({"volumes": [{"name": "p", "projected": {"sources": [
        {"serviceAccountToken": {"path": "t"}}]}}]}, "mounts a service-account token"),
    ({"serviceAccountName": "admin-sa"},
     "serviceAccountName 'admin-sa' makes the pods act with that account's token"),
    ({"allow": {"hostpath": True}}, "unknown key allow.hostpath (did you mean 'hostPath'?)"),
])
def test_pod_access_beyond_the_s3_secret_is_refused_unless_allowed(given, message):
    """Whoever creates pods in a namespace can read its Secrets through them; the values
    refuse it unless `allow` says this namespace's submitters may."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        values.resolve(given, {"image": "i"})
    key = next(iter(given))
    if key != "allow":
        allow = {"hostPath": True, "secrets": ["db", "tls", "x"], "serviceAccount": True}
        values.resolve({**given, "allow": allow}, {"image": "i"})


def test_job_names_are_deterministic_valid_and_distinct():
    names = {base: job_name(base) for base in ("mbv3_qat_dis", "My_Job", "my-job", "123", "",
                                               "x" * 300, "Ünïcode run")}
    assert job_name("mbv3_qat_dis") == names["mbv3_qat_dis"]
    assert len(set(names.values())) == len(names)
    assert job_name("a") != job_name("a", "kubeflow"), "the operators' pods would collide"
    for name in names.values():
        assert len(name) <= MAX_JOB_NAME
        assert name[0].isalpha() and name.replace("-", "").isalnum() and name == name.lower()


# ---------------------------------------------------------------- what is rendered


@pytest.mark.parametrize("operator, name", [("paddle", "clsact"), ("kubeflow", "paddle")])
def test_the_job_runs_clsact_compress_under_the_paddle_launcher(operator, name):
    r = make({"operator": operator, "workers": 3, "gpusPerWorker": 8,
              "saveDir": "s3://out-bucket/run"})
    c = container(r)
    assert c["name"] == name, "paddle-operator injects its env into containers[0]"
    assert c["command"] == ["python", "-m", "paddle.distributed.launch", "--log_dir",
                            "/tmp/clsact-launch", "--nproc_per_node", "8",
                            "/usr/local/bin/clsact", "compress", "--config",
                            "/etc/clsact/config.yaml", "--save-dir", "s3://out-bucket/run",
                            "--run-id", r.name]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "envFrom" not in c, "keys as env would be printed by paddle's launcher"
    assert {"name": "CLSACT_S3_CREDENTIALS_DIR", "value": render.S3_CREDENTIALS_DIR} in c["env"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[render.S3_CREDENTIALS_DIR]["readOnly"] is True
    assert mounts["/etc/clsact"]["readOnly"] is True
    vols = {v["name"]: v for v in pod_spec(r)["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert vols[mounts[render.S3_CREDENTIALS_DIR]["name"]]["secret"] == {
        "secretName": "clsact-s3"}
    config_volume = vols[mounts["/etc/clsact"]["name"]]
    assert config_volume["configMap"]["name"] == r.config_map["metadata"]["name"]
    if operator == "paddle":
        assert r.job["spec"]["worker"]["replicas"] == 3
        assert r.job["spec"]["cleanPodPolicy"] == "OnCompletion"
    else:
        spec = r.job["spec"]
        assert spec["paddleReplicaSpecs"]["Worker"]["replicas"] == 3
        assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3,
                                     "ttlSecondsAfterFinished": 259200}
        assert c["ports"] == [{"name": "master", "containerPort": 37777}]


def test_the_config_map_holds_the_resolved_config_the_pods_read(tmp_path):
    r = make({"saveDir": "s3://out-bucket/run", "s3Endpoint": "http://minio:9000"},
             overrides=[*S3_PATHS, "TrainConfig.epochs=1"])
    text = r.config_map["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    cfg = config_mod.load(tmp_path / "config.yaml")
    assert cfg.globals.model_dir == "s3://models/mbv3/fp32"
    assert cfg.globals.s3_endpoint == "http://minio:9000"
    assert cfg.globals.output_dir == "s3://out-bucket/run"
    assert cfg.train["epochs"] == 1
    assert "QuantAware" in cfg.data, "the resolved config keeps its strategies"


def test_labels_and_annotations_are_on_every_object():
    r = make({"labels": {"team": "vision"}, "annotations": {"owner": "me"}})
    template = validate.pod_templates(r.job)[0][1]
    for meta in (r.config_map["metadata"], r.job["metadata"], template["metadata"]):
        assert meta["labels"]["clsact.io/run-id"] == r.name
        assert meta["labels"]["app.kubernetes.io/instance"] == r.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "clsact"
        assert meta["labels"]["team"] == "vision"
        assert meta["annotations"]["owner"] == "me"
    assert r.job["metadata"]["annotations"]["clsact.io/spec-hash"] == r.spec_hash


def test_pass_throughs_reach_the_pod():
    r = make(FULL_VALUES)
    spec, c = pod_spec(r), container(r)
    for key in ("nodeSelector", "tolerations", "serviceAccountName", "priorityClassName"):
        assert spec[key] == FULL_VALUES[key]
    # the user's affinity term, combined with each GPU term (one per compute major)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    zone = FULL_VALUES["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]
    assert [t["matchExpressions"][0] for t in terms] == [zone] * 3
    assert [t["matchExpressions"][1:] for t in terms] == [
        [{"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["6"]},
         {"key": "nvidia.com/gpu.compute.minor", "operator": "Gt", "values": ["0"]}],
        [{"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["7"]}],
        [{"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["8"]}]]
    assert spec["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert spec["activeDeadlineSeconds"] == 86400
    assert {"name": "N", "value": "3"} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "16", "memory": "96Gi"},
                              "limits": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": 8}}
    assert r.namespace == "ml-compression" == r.job["metadata"]["namespace"]


def test_the_spec_hash_is_stable_and_follows_every_change():
    base = make({"workers": 2})
    assert make({"workers": 2}).spec_hash == base.spec_hash
    assert make({"workers": 3}).spec_hash != base.spec_hash
    assert make({"workers": 2}, overrides=[*S3_PATHS, "TrainConfig.epochs=1"]).spec_hash \
        != base.spec_hash


def test_no_secret_value_is_ever_rendered(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-from-env")
    out = render.to_yaml(make(FULL_VALUES).objects)
    assert "s3cr3t-value-from-env" not in out
    assert "AWS_SECRET_ACCESS_KEY" not in out and "secretName: clsact-s3" in out


def test_a_jobset_gives_the_launcher_master_rank_and_nodes():
    """No operator injects peers into a JobSet's pods: the command does, from the Indexed
    Job's completion index and rank 0's stable name through the JobSet's headless Service;
    run by sh as the pod would (rank 0 serves the rendezvous on 127.0.0.1)."""
    import subprocess

    r = make({"operator": "jobset", "workers": 3, "gpusPerWorker": 2,
              "saveDir": "s3://out-bucket/run"})
    c, spec = container(r), r.job["spec"]
    job = spec["replicatedJobs"][0]["template"]["spec"]
    assert (job["completions"], job["parallelism"], job["completionMode"],
            job["backoffLimit"]) == (3, 3, "Indexed", 0)
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert spec["failurePolicy"] == {"maxRestarts": 3} and "suspend" not in spec
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["CLSACT_MASTER_HOST"] == f"{r.name}-worker-0-0.{r.name}"
    for index, master in (("0", "127.0.0.1"), ("2", env["CLSACT_MASTER_HOST"])):
        shown = subprocess.run([*c["command"][:3], "echo", *c["command"][4:]],
                               env={**env, "JOB_COMPLETION_INDEX": index},
                               capture_output=True, text=True).stdout.split()
        assert shown[:6] == ["-m", "paddle.distributed.launch", "--master",
                             f"{master}:37777", "--rank", index], shown
        assert shown[6:10] == ["--nnodes", "3", "--log_dir", "/tmp/clsact-launch"]
        assert shown[-2:] == ["--run-id", r.name]
    bad = subprocess.run([*c["command"][:3], "echo", *c["command"][4:]], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not a pod of an Indexed Job" in bad.stderr


@pytest.mark.parametrize("operator", ["jobset", "kubeflow"])
def test_a_queue_name_labels_the_job_and_creates_it_suspended(operator):
    r = make({"operator": operator, "queueName": "team-a"})
    assert r.job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    spec = r.job["spec"]
    assert (spec if operator == "jobset" else spec["runPolicy"])["suspend"] is True
    pod_labels = validate.pod_templates(r.job)[0][1]["metadata"]["labels"]
    assert "kueue.x-k8s.io/queue-name" not in pod_labels, "Kueue admits the job, not pods"


@pytest.mark.parametrize("operator", ["paddle", "kubeflow", "jobset"])
def test_gang_scheduling_fills_each_operators_fields(operator):
    r = make({"operator": operator, "workers": 4, "gangScheduling": True, "gangQueue": "gpu",
              "priorityClassName": "batch-high"})
    assert pod_spec(r)["schedulerName"] == "volcano"
    policy = {"minAvailable": 4, "queue": "gpu", "priorityClass": "batch-high"}
    if operator == "paddle":
        assert r.job["spec"]["schedulingPolicy"] == policy
    elif operator == "kubeflow":
        assert r.job["spec"]["runPolicy"]["schedulingPolicy"] == policy
    else:
        group = r.objects[1]
        assert group["kind"] == "PodGroup" and group["metadata"]["name"] == r.name
        assert group["spec"] == {"minMember": 4, "queue": "gpu",
                                 "priorityClassName": "batch-high"}
        assert validate.pod_templates(r.job)[0][1]["metadata"]["annotations"][
            "scheduling.k8s.io/group-name"] == r.name
    off = make({"operator": operator, "workers": 4})
    assert "schedulerName" not in pod_spec(off) and len(off.objects) == 2


def test_job_state_reads_each_kind_and_a_suspended_job_is_queued():
    from clsact.launch.operators import JOBSET, KUBEFLOW, job_state

    js = {"spec": {"suspend": True}, "status": {}}
    assert job_state(JOBSET, js).queued and job_state(JOBSET, js).outcome is None
    js = {"spec": {}, "status": {"replicatedJobsStatus": [{"active": 2}]}}
    assert job_state(JOBSET, js).phase == "Running"
    js = {"spec": {"suspend": True}, "status": {"terminalState": "Failed"}}
    assert job_state(JOBSET, js).outcome == "failed", "finished wins over suspended"
    js = {"spec": {}, "status": {"conditions": [{"type": "Completed", "status": "True"}]}}
    assert job_state(JOBSET, js).outcome == "succeeded"
    kf = {"spec": {"runPolicy": {"suspend": True}}, "status": {"conditions": [
        {"type": "Created", "status": "True"}]}}
    assert job_state(KUBEFLOW, kf).queued
    kf["spec"]["runPolicy"]["suspend"] = False
    assert job_state(KUBEFLOW, kf).phase == "Created"


@pytest.mark.parametrize("override, message", [
    ("Global.model_dir=./models/mbv3", "Global.model_dir is the relative path './models/mbv3'"),
    ("Global.data_dir=/data/imagenet", "which no volume mounts in the pod"),
    ("Global.bogus=1", "unknown key Global.bogus"),
])
def test_locations_a_pod_cannot_reach_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make(overrides=[*S3_PATHS, override])


@pytest.mark.parametrize("operator", ["paddle", "kubeflow"])
def test_the_example_values_file_renders_valid_jobs(operator):
    file_values = values.read_values_file(REPO / "configs" / "launch-values.yaml")
    if operator == "kubeflow":
        file_values["cleanPodPolicy"] = "Running"
    v = values.resolve(file_values, {"operator": operator})
    r = render.render(MBV3, S3_PATHS, v)
    crds = [validate.load_crd(p) for p in (PADDLE_CRD, KUBEFLOW_CRD) if p.is_file()]
    validate.validate_objects(r.objects, crds)
    assert container(r)["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_local_paths_under_a_mounted_volume_are_allowed():
    vol = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}],
           "volumeMounts": [{"name": "data", "mountPath": "/data"}], "saveDir": "/data/out"}
    r = make(vol, overrides=["Global.model_dir=/data/mbv3", "Global.data_dir=/data/imagenet"])
    assert "/data/out" in container(r)["command"]


# ---------------------------------------------------------------- validation


@needs_crds
@pytest.mark.parametrize("operator, crd", [("paddle", PADDLE_CRD), ("kubeflow", KUBEFLOW_CRD)])
def test_rendered_jobs_match_the_real_crds(operator, crd):
    flags = dict(FULL_VALUES, operator=operator,
                 cleanPodPolicy="OnCompletion" if operator == "paddle" else "Running")
    r = make(flags)
    checked = validate.validate_objects(r.objects, [validate.load_crd(crd)])
    assert checked[-1].endswith(f"CRD {r.job['apiVersion']} openAPIV3Schema")


@needs_crds
def test_a_field_unknown_to_the_crd_is_refused():
    r = make()
    r.job["spec"]["worker"]["replica"] = 2
    with pytest.raises(ConfigError, match=r"does not match the CRD paddlejobs.batch.paddlepaddle"
                       r".org at spec.worker: .*'replica' was unexpected"):
        validate.validate_objects(r.objects, [validate.load_crd(PADDLE_CRD)])


def test_a_bad_pod_field_is_caught_by_the_kubernetes_schema():
    r = make({"tolerations": [{"key": "gpu", "operater": "Exists"}]})
    with pytest.raises(ConfigError, match=r"spec.worker.template: invalid at "
                       r"template.spec.tolerations.0: .*'operater'"):
        validate.validate_objects(r.objects)


def test_the_rbac_manifests_validate():
    objects = render.render_rbac("ml", "clsact-submitter", "clsact-s3")
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding"]
    validate.validate_objects(objects)
    rules = objects[1]["rules"]
    assert {"resources": ["secrets"], "resourceNames": ["clsact-s3"], "verbs": ["get"],
            "apiGroups": [""]} in rules
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)


# ---------------------------------------------------------------- golden files

MINIMAL = {"saveDir": "s3://ml-models/clsact/run"}   # golden: k8s/paddlejob.example.yaml
GOLDEN_SPECS = {
    "paddle-cpu-volume": {
        "workers": 2, "gpusPerWorker": 0, "saveDir": "/results/mbv3", "s3Secret": "",
        "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
        "volumeMounts": [{"name": "results", "mountPath": "/results"}],
        "cleanPodPolicy": "Never"},
    "kubeflow-full": dict(FULL_VALUES, operator="kubeflow", cleanPodPolicy="All",
                          ttlSecondsAfterFinished=3600, backoffLimit=1),
}


@pytest.mark.parametrize("spec", sorted(GOLDEN_SPECS))
def test_golden_files(spec):
    text = render.to_yaml(make(GOLDEN_SPECS[spec]).objects)
    path = GOLDEN / f"{spec}.yaml"
    if os.environ.get("CLSACT_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with CLSACT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"rendering changed: diff against {path}"
    for doc in yaml.safe_load_all(text):
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "clsact"


K8S_EXAMPLES = {
    "rbac.yaml": ("# What `clsact rbac` prints (namespace default): the submitter's "
                  "least-privilege\n# identity. kubectl apply -f k8s/rbac.yaml, or `clsact rbac "
                  "-n NS | kubectl apply -f -`.\n",
                  lambda: render.render_rbac("default", "clsact-submitter", "clsact-s3")),
    "paddlejob.example.yaml": ("# What `clsact render` prints for configs/mbv3_qat_dis.yaml "
                               "on paddle-operator: read\n# it to see what a submit "
                               "creates.\n", lambda: make(MINIMAL).objects),
    "jobset.example.yaml": ("# What `clsact render --operator jobset --workers 2` prints for "
                            "configs/mbv3_qat_dis.yaml:\n# a JobSet (kubernetes-sigs/jobset) "
                            "of two indexed pods.\n",
                            lambda: make({**MINIMAL, "operator": "jobset", "workers": 2}).objects),
}


@pytest.mark.parametrize("name", sorted(K8S_EXAMPLES))
def test_the_examples_in_k8s_are_fresh_renders(name):
    """k8s/ holds rendered examples a user applies or reads by hand; they cannot drift."""
    header, objects = K8S_EXAMPLES[name]
    text = header + "# Generated by tests/test_launch_render.py; do not edit.\n" + \
        render.to_yaml(objects())
    path = REPO / "k8s" / name
    if os.environ.get("CLSACT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with CLSACT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"rendering changed: CLSACT_UPDATE_GOLDEN=1 rewrites {path}"
    validate.validate_objects(list(yaml.safe_load_all(path.read_text())))


# ---------------------------------------------------------------- the command


def test_render_cli_prints_a_valid_stream_and_writes_files(tmp_path):
    args = ["render", "--config", str(MBV3), "--image", "reg/clsact:1", "--workers", "2",
            "--save-dir", "s3://out-bucket/run", *[x for s in S3_PATHS for x in ("--set", s)]]
    if PADDLE_CRD.is_file():
        args += ["--crd", str(PADDLE_CRD)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PaddleJob"]
    assert "clsact: valid: PaddleJob/" in proc.stderr
    proc = run_cli(*args, "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"00-configmap-{docs[0]['metadata']['name']}.yaml",
                     f"01-paddlejob-{docs[1]['metadata']['name']}.yaml"]


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "workers must be >= 1"),
    (["--gpus-per-worker", "-2"], "gpus per worker must be >= 0"),
    (["--namespace", "Bad_NS"], "is not a valid Kubernetes name"),
    (["--values", "missing.yaml"], "values file missing.yaml does not exist"),
    (["--crd", "nope.yaml"], "--crd nope.yaml: cannot be read"),
    (["--set", "Global.model_dir=models"], "Global.model_dir is the relative path 'models'"),
])
def test_render_cli_errors_are_one_line(extra, message):
    proc = run_cli("render", "--config", str(MBV3), "--image", "i", "--save-dir",
                   "s3://out-bucket/run", *[x for s in S3_PATHS for x in ("--set", s)], *extra)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_the_wheel_ships_the_templates(tmp_path):
    src = tmp_path / "src"   # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "clsact", src / "clsact", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "-q", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("clsact-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("paddlejob.yaml.j2", "kubeflow-paddlejob.yaml.j2", "_pod.yaml.j2",
                     "configmap.yaml.j2", "rbac.yaml.j2"):
        assert f"clsact/launch/templates/{template}" in names
    # every module of the source tree ships (pyproject lists the packages by name)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "clsact").rglob("*.py")}
    assert modules - set(names) == set(), "add the missing package to [tool.setuptools]"


def test_submit_reads_the_config_once_with_the_overrides(tmp_path):
    """`submit --gate` takes Gate.against and `--nightly` Global.output_dir from --set, as
    render does (they were read from the file as written, without the overrides)."""
    base = ["submit", "--dry-run", "--config", str(MBV3), "--image", "reg.example.com/c:1",
            *(x for o in S3_PATHS for x in ("--set", o))]
    gated = run_cli(*base, "--save-dir", "s3://bkt/run", "--wait", "--gate",
                    "--set", "Gate.against=s3://bkt/gated")
    assert gated.returncode == 0, gated.stderr
    night = run_cli(*base, "--nightly", "rel", "--stamp", "%Y%m%d",
                    "--set", "Global.output_dir=s3://bkt/nightly")
    assert night.returncode == 0, night.stderr
    jobs = [d for d in yaml.safe_load_all(night.stdout) if d and d["kind"] == "PaddleJob"]
    command = jobs[0]["spec"]["worker"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--save-dir") + 1].startswith("s3://bkt/nightly/runs/")


def test_list_and_status_select_what_render_and_the_chart_both_label():
    """The selector of `clsact list` matches the PaddleJob `clsact render` writes and the one
    the Helm chart writes (managed-by says clsact in one and Helm in the other)."""
    from clsact.launch.jobs import MANAGED_SELECTOR
    from tests.test_chart import IMAGE, VALUE_SETS, helm_render, mbv3_config

    def matches(labels: dict) -> bool:
        for term in MANAGED_SELECTOR.split(","):
            key, _, value = term.partition("=")
            if key not in labels or (value and labels[key] != value):
                return False
        return True

    ours = render.render(MBV3, S3_PATHS, values.resolve({}, {
        "image": "reg.example.com/c:1", "saveDir": "s3://bkt/r"}))
    helm = helm_render({"image": IMAGE, **VALUE_SETS["minimal"], "config": mbv3_config()})
    for job in (ours.objects[-1], helm[1]):
        assert job["kind"] == "PaddleJob" and matches(job["metadata"]["labels"]), job["metadata"]
    assert not matches({"app.kubernetes.io/managed-by": "clsact"}), "the selector can fail"


def test_gpu_pods_are_kept_to_nodes_whose_gpus_the_image_runs(tmp_path, monkeypatch):
    """gpuCompute: an explicit list, `auto` from the image's record (what the nightly's
    submitter in the image reads), `any`; CPU pods never get a GPU term; bad values refused."""
    import json

    from clsact import gpuarch

    def terms(flags: dict) -> list | None:
        spec = pod_spec(make(flags))
        return (spec.get("affinity") or {}).get("nodeAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms")

    hopper = [{"matchExpressions": [{"key": "nvidia.com/gpu.compute.major", "operator": "In",
                                     "values": ["9"]}]}]
    assert terms({"gpuCompute": ["9.0"]}) == hopper
    assert terms({"gpuCompute": ["9.0"], "gpusPerWorker": 0}) is None
    assert terms({"gpuCompute": "any"}) is None
    monkeypatch.setenv(gpuarch.RECORD_ENV, str(tmp_path / "none.json"))
    assert terms({}) is None, "auto without a record: the image is unknown here"
    record = tmp_path / "gpu-archs.json"
    record.write_text(json.dumps({"format": gpuarch.FORMAT, "cuda": True,
                                  "supported": ["8.9", "9.0"]}))
    monkeypatch.setenv(gpuarch.RECORD_ENV, str(record))
    assert terms({}) == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": ["8"]},
        {"key": "nvidia.com/gpu.compute.minor", "operator": "Gt", "values": ["8"]}]}, *hopper]
    assert terms({"gpuProducts": ["NVIDIA-H100-80GB-HBM3"]})[1]["matchExpressions"][-1] == {
        "key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
    for bad in (["9"], "hopper", [], [9.0]):
        with pytest.raises(ConfigError, match="gpuCompute must be auto, any, or a list"):
            make({"gpuCompute": bad})


def test_render_says_when_gpu_nodes_are_not_constrained(tmp_path, monkeypatch):
    from clsact import gpuarch

    env = {**os.environ, gpuarch.RECORD_ENV: str(tmp_path / "none.json")}
    base = ["render", "--config", str(MBV3), "--image", "r.example.com/c:1", "--save-dir",
            "s3://bkt/run", *(x for o in S3_PATHS for x in ("--set", o))]
    auto = run_cli(*base, env=env)
    assert auto.returncode == 0 and "note: GPU nodes: any (gpuCompute auto" in auto.stderr
    listed = run_cli(*base, "--values", str(_values_file(tmp_path, {"gpuCompute": ["8.0"]})),
                     env=env)
    assert listed.returncode == 0 and "note: GPU nodes" not in listed.stderr, listed.stderr


def _values_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
