"""`clsact submit/status/list/logs/cancel` against a real kube-apiserver 1.20.2 + etcd with
both PaddleJob CRDs installed (tests/kubeserver.py). No operator, scheduler or kubelet runs:
the tests play the operator (status subresource, worker pods) and a kubelet (logs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from kubernetes import client

from clsact.launch import jobs, render, values
from clsact.launch.cluster import ClusterError, connect
from clsact.launch.names import job_name
from tests import kubeserver
from tests.conftest import REPO, run_cli

MBV3 = REPO / "configs" / "mbv3_qat_dis.yaml"
SPEC = ["--config", str(MBV3), "--image", "reg.example.com/clsact:1", "--save-dir",
        "s3://ml-models/clsact/run", "--set", "Global.model_dir=s3://models/mbv3",
        "--set", "Global.data_dir=s3://datasets/ilsvrc2012"]
GROUPS = {"paddle": ("batch.paddlepaddle.org", "v1"), "kubeflow": ("kubeflow.org", "v1")}


def cli(kube, *args, kubeconfig=None, **kw) -> subprocess.CompletedProcess:
    return run_cli(*args, "--kubeconfig", str(kubeconfig or kube.kubeconfig()), **kw)


def get_job(admin, ns, name, operator="paddle"):
    group, version = GROUPS[operator]
    try:
        return client.CustomObjectsApi(admin).get_namespaced_custom_object(
            group, version, ns, "paddlejobs", name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_config_map(admin, ns, name):
    try:
        return client.CoreV1Api(admin).read_namespaced_config_map(f"{name}-config", ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def set_status(admin, ns, name, status, operator="paddle"):
    """Play the operator: write the job's status subresource."""
    group, version = GROUPS[operator]
    client.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        group, version, ns, "paddlejobs", name, {"status": status})


def wait_for_job(admin, ns, name, operator="paddle", timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_job(admin, ns, name, operator) is not None:
            return
        time.sleep(0.1)
    raise AssertionError(f"job {ns}/{name} never appeared")


def one_line_error(proc, message):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("clsact: valid:")]
    assert len(lines) == 1 and lines[0].startswith("clsact: error:"), proc.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- submit


def test_submit_creates_the_job_and_its_config_map(kube, admin, ns):
    proc = cli(kube, "submit", *SPEC, "--namespace", ns, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    name = job_name("mbv3_qat_dis")
    assert f"PaddleJob {ns}/{name} created" in proc.stdout
    job, cm = get_job(admin, ns, name), get_config_map(admin, ns, name)
    v = values.resolve({}, {"image": "reg.example.com/clsact:1", "namespace": ns, "workers": 2,
                            "saveDir": "s3://ml-models/clsact/run"})
    expected = render.render(MBV3, ["Global.model_dir=s3://models/mbv3",
                                    "Global.data_dir=s3://datasets/ilsvrc2012"], v)
    assert job["spec"] == expected.job["spec"], "the server keeps every field we send"
    assert cm.data == expected.config_map["data"]
    assert cm.metadata.owner_references[0].uid == job["metadata"]["uid"]
    assert job["metadata"]["labels"]["clsact.io/run-id"] == name
    assert "never-rendered" not in yaml.safe_dump(job) + yaml.safe_dump(cm.data)


def test_resubmitting_the_same_spec_creates_nothing(kube, admin, ns):
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    name = job_name("mbv3_qat_dis")
    before = get_job(admin, ns, name)["metadata"]
    proc = cli(kube, "submit", *SPEC, "-n", ns)
    assert proc.returncode == 0, proc.stderr
    assert "already submitted with this spec; nothing created" in proc.stdout
    after = get_job(admin, ns, name)["metadata"]
    assert (after["uid"], after["resourceVersion"]) == (before["uid"], before["resourceVersion"])
    client.CoreV1Api(admin).delete_namespaced_config_map(f"{name}-config", ns)
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    cm = get_config_map(admin, ns, name)
    assert cm is not None and cm.metadata.owner_references[0].uid == before["uid"], \
        "a ConfigMap deleted by hand is restored for the running job"


def test_a_changed_spec_conflicts_unless_replaced(kube, admin, ns):
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    name = job_name("mbv3_qat_dis")
    uid = get_job(admin, ns, name)["metadata"]["uid"]
    one_line_error(cli(kube, "submit", *SPEC, "-n", ns, "--workers", "3"),
                   "already exists with a different spec")
    assert get_job(admin, ns, name)["spec"]["worker"]["replicas"] == 1, "left untouched"
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--workers", "3", "--replace")
    assert proc.returncode == 0, proc.stderr
    assert f"PaddleJob {ns}/{name} replaced" in proc.stdout
    job = get_job(admin, ns, name)
    assert job["spec"]["worker"]["replicas"] == 3 and job["metadata"]["uid"] != uid
    cm = get_config_map(admin, ns, name)
    assert cm.metadata.owner_references[0].uid == job["metadata"]["uid"]


def test_dry_run_touches_nothing(kube, admin, ns):
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [d["kind"] for d in yaml.safe_load_all(proc.stdout)] == ["ConfigMap", "PaddleJob"]
    assert get_job(admin, ns, job_name("mbv3_qat_dis")) is None


# ---------------------------------------------------------------- --wait


def play_operator(admin, ns, name, statuses, operator="paddle", pause=0.6):
    def run():
        wait_for_job(admin, ns, name, operator)
        for status in statuses:
            time.sleep(pause)
            set_status(admin, ns, name, status, operator)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_follows_paddle_operator_phases_to_completed(kube, admin, ns):
    name = job_name("mbv3_qat_dis")
    phases = ["Pending", "Starting", "Running", "Completed"]
    thread = play_operator(admin, ns, name, [{"phase": p} for p in phases])
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--wait", "--timeout", "60", "--poll", "0.1")
    thread.join()
    assert proc.returncode == 0, proc.stderr
    seen = [line.split(": ", 1)[1] for line in proc.stdout.splitlines()
            if line[:2].isdigit() and f" {name}: " in line]
    assert seen[0] == "Submitted" and seen[-1] == "Completed"
    assert [p for p in phases if p in seen] == [p for p in seen if p in phases], "in order"
    assert "Running" in seen
    assert proc.stdout.rstrip().endswith(f"PaddleJob {ns}/{name} Completed")


def test_wait_reports_a_failed_kubeflow_job(kube, admin, ns):
    name = job_name("mbv3_qat_dis", "kubeflow")
    now = "2026-11-28T00:00:00Z"

    def cond(kind, message=None):
        c = {"type": kind, "status": "True", "reason": f"PaddleJob{kind}",
             "lastUpdateTime": now, "lastTransitionTime": now}
        return {**c, "message": message} if message else c
    running = [cond("Created"), cond("Running")]
    failed = [cond("Created"), {**cond("Running"), "status": "False"},
              cond("Failed", "PaddleJob mbv3 has failed because 1 Worker replica(s) failed.")]
    thread = play_operator(admin, ns, name, [{"conditions": running},
                                             {"conditions": failed}], "kubeflow")
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--operator", "kubeflow", "--wait",
               "--timeout", "60", "--poll", "0.1")
    thread.join()
    assert proc.returncode == 4, (proc.stdout, proc.stderr)  # exitcodes.JOB_FAILED
    assert f"{name}: Running" in proc.stdout
    assert "1 Worker replica(s) failed" in proc.stderr
    assert f"clsact logs {name}" in proc.stderr


def test_wait_timeout_cancels_the_job(kube, admin, ns):
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--wait", "--timeout", "2", "--poll", "0.2")
    assert proc.returncode == 124, (proc.stdout, proc.stderr)
    assert "did not finish within 2s; cancelled it" in proc.stderr
    name = job_name("mbv3_qat_dis")
    assert get_job(admin, ns, name) is None and get_config_map(admin, ns, name) is None


def test_waiting_on_a_finished_identical_job_returns_at_once(kube, admin, ns):
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    set_status(admin, ns, job_name("mbv3_qat_dis"), {"phase": "Failed"})
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--wait", "--timeout", "30")
    assert proc.returncode == 4 and "nothing created" in proc.stdout


# ---------------------------------------------------------------- status, list, logs, cancel


def make_pods(admin, ns, name, count, node=None, phase="Running", container="clsact"):
    """Play the operator: worker pods carrying the template's labels."""
    core = client.CoreV1Api(admin)
    for i in range(count):
        pod = f"{name}-worker-{i}"
        spec = {"containers": [{"name": container, "image": "reg.example.com/clsact:1"}]}
        if node:
            spec["nodeName"] = node
        core.create_namespaced_pod(ns, {"metadata": {
            "name": pod, "labels": {"clsact.io/run-id": name}}, "spec": spec})
        core.patch_namespaced_pod_status(pod, ns, {"status": {"phase": phase}})


def test_status_list_and_cancel(kube, admin, ns):
    assert cli(kube, "submit", *SPEC, "-n", ns, "--workers", "2").returncode == 0
    assert cli(kube, "submit", *SPEC, "-n", ns, "--operator", "kubeflow").returncode == 0
    paddle, kubeflow = job_name("mbv3_qat_dis"), job_name("mbv3_qat_dis", "kubeflow")
    set_status(admin, ns, paddle, {"phase": "Running"})
    make_pods(admin, ns, paddle, 2)
    proc = cli(kube, "list", "-n", ns)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in proc.stdout.splitlines()[1:]}
    assert rows == {paddle: ["paddle", "Running"], kubeflow: ["kubeflow", "Submitted"]}
    proc = cli(kube, "status", "mbv3_qat_dis", "-n", ns)   # the base name finds the job
    assert proc.returncode == 0, proc.stderr
    assert "phase:    Running" in proc.stdout and "pods:     2" in proc.stdout
    assert f"{paddle}-worker-1  Running" in proc.stdout
    proc = cli(kube, "cancel", paddle, "-n", ns)
    assert proc.returncode == 0 and "cancelled" in proc.stdout
    assert get_job(admin, ns, paddle) is None and get_config_map(admin, ns, paddle) is None
    assert get_job(admin, ns, kubeflow, "kubeflow") is not None, "the other job stays"
    one_line_error(cli(kube, "cancel", paddle, "-n", ns), f"no PaddleJob (batch.paddlepaddle"
                   f".org/v1) named '{paddle}' in namespace {ns}")


@pytest.fixture(scope="module")
def kubelet(kube, admin, tmp_path_factory):
    fake = kubeserver.FakeKubelet(tmp_path_factory.mktemp("kubelet"), delay=0.05)
    fake.register_node(admin, "node-1")
    yield fake
    fake.stop()


def test_logs_of_every_worker_prefixed_with_the_pod(kube, admin, ns, kubelet):
    assert cli(kube, "submit", *SPEC, "-n", ns, "--workers", "2").returncode == 0
    name = job_name("mbv3_qat_dis")
    make_pods(admin, ns, name, 2, node="node-1")
    for i in range(2):
        kubelet.logs[(ns, f"{name}-worker-{i}")] = [f"rank {i} step {s}" for s in range(5)]
    for follow in ([], ["--follow"]):
        proc = cli(kube, "logs", name, "-n", ns, *follow)
        assert proc.returncode == 0, proc.stderr
        for i in range(2):
            mine = [line for line in proc.stdout.splitlines()
                    if line.startswith(f"[{name}-worker-{i}] ")]
            assert mine == [f"[{name}-worker-{i}] rank {i} step {s}" for s in range(5)]
    assert any("follow=true" in r for r in kubelet.requests), "streamed through pods/log"


def test_kubeflow_logs_read_the_paddle_container(kube, admin, ns, kubelet):
    assert cli(kube, "submit", *SPEC, "-n", ns, "--operator", "kubeflow").returncode == 0
    name = job_name("mbv3_qat_dis", "kubeflow")
    make_pods(admin, ns, name, 1, node="node-1", container="paddle")
    kubelet.logs[(ns, f"{name}-worker-0")] = ["from kubeflow"]
    proc = cli(kube, "logs", "mbv3_qat_dis", "-n", ns, "--operator", "kubeflow")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[{name}-worker-0] from kubeflow\n"
    assert kubelet.requests[-1].startswith(f"/containerLogs/{ns}/{name}-worker-0/paddle")


def test_logs_before_any_pod_is_clear(kube, ns):
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    one_line_error(cli(kube, "logs", "mbv3_qat_dis", "-n", ns),
                   "has no pods yet (phase Submitted)")


# ---------------------------------------------------------------- least privilege


def apply(admin, objects):
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for obj in objects:
        ns = obj["metadata"]["namespace"]
        {"ServiceAccount": lambda o, n=ns: core.create_namespaced_service_account(n, o),
         "Role": lambda o, n=ns: rbac.create_namespaced_role(n, o),
         "RoleBinding": lambda o, n=ns: rbac.create_namespaced_role_binding(n, o)}[obj["kind"]](obj)


def test_the_shipped_role_is_enough_and_no_more(kube, admin, ns, kubelet, tmp_path):
    proc = run_cli("rbac", "--namespace", ns)
    assert proc.returncode == 0, proc.stderr
    apply(admin, list(yaml.safe_load_all(proc.stdout)))
    token = kubeserver.service_account_token(admin, ns, "clsact-submitter")
    kc = kubeserver.write_kubeconfig(tmp_path / "kc", kube.url, kube.ca_file, token, ns)
    name = job_name("mbv3_qat_dis")
    thread = play_operator(admin, ns, name, [{"phase": "Running"}, {"phase": "Completed"}])
    proc = cli(kube, "submit", *SPEC, "-n", ns, "--wait", "--timeout", "60", "--poll", "0.1",
               kubeconfig=kc)
    thread.join()
    assert proc.returncode == 0, proc.stderr
    for args in (["submit", *SPEC, "-n", ns], ["list", "-n", ns], ["status", name, "-n", ns]):
        assert cli(kube, *args, kubeconfig=kc).returncode == 0
    make_pods(admin, ns, name, 1, node="node-1")
    kubelet.logs[(ns, f"{name}-worker-0")] = ["hello"]
    proc = cli(kube, "logs", name, "-n", ns, "--follow", kubeconfig=kc)
    assert proc.returncode == 0 and f"[{name}-worker-0] hello" in proc.stdout, proc.stderr
    assert cli(kube, "submit", *SPEC, "-n", ns, "--workers", "2", "--replace",
               kubeconfig=kc).returncode == 0
    assert cli(kube, "cancel", name, "-n", ns, kubeconfig=kc).returncode == 0
    assert get_job(admin, ns, name) is None and get_config_map(admin, ns, name) is None
    # a leftover ConfigMap of an earlier job of this name is replaced (the Role's `update`)
    client.CoreV1Api(admin).create_namespaced_config_map(
        ns, {"metadata": {"name": f"{name}-config"}, "data": {"stale": "yes"}})
    proc = cli(kube, "submit", *SPEC, "-n", ns, kubeconfig=kc)
    assert proc.returncode == 0, proc.stderr
    cm = get_config_map(admin, ns, name)
    assert "stale" not in cm.data and cm.metadata.owner_references[0].name == name

    # and nothing more: other Secrets, other kinds, other verbs, other namespaces
    api = connect(str(kc))
    core, apps = client.CoreV1Api(api.api), client.AppsV1Api(api.api)
    client.CoreV1Api(admin).create_namespaced_secret(ns, {"metadata": {"name": "other"}})
    refused = [lambda: core.read_namespaced_secret("other", ns),
               lambda: core.list_namespaced_secret(ns),
               lambda: core.delete_namespaced_pod(f"{name}-worker-0", ns),
               lambda: core.create_namespaced_pod(ns, {"metadata": {"name": "x"}, "spec": {
                   "containers": [{"name": "x", "image": "x"}]}}),
               lambda: apps.list_namespaced_deployment(ns),
               lambda: core.list_namespaced_config_map("default"),
               lambda: core.patch_namespaced_config_map("x", ns, {})]
    for call in refused:
        with pytest.raises(client.ApiException) as err:
            call()
        assert err.value.status == 403


def test_events_need_the_roles_create_verb_and_never_fail_a_submit(kube, admin, ns, tmp_path):
    """With the Role `clsact rbac` prints, submit records a Submitted Event on the job; with
    the same Role minus `create` on events, the API server refuses it: one warning, and the
    job is submitted all the same."""
    from tests.test_nightly import events_of

    objects = list(yaml.safe_load_all(run_cli("rbac", "--namespace", ns).stdout))
    apply(admin, objects)
    role = objects[1]
    assert {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]} in role["rules"]
    for obj in objects:   # the same identity, Role without the events rule
        obj = {**obj, "metadata": {**obj["metadata"], "name": "no-events"}}
        if obj["kind"] == "Role":
            obj["rules"] = [r for r in obj["rules"] if r["resources"] != ["events"]]
        if obj["kind"] == "RoleBinding":
            obj["roleRef"] = {**obj["roleRef"], "name": "no-events"}
            obj["subjects"] = [{**obj["subjects"][0], "name": "no-events"}]
        apply(admin, [obj])
    for account, name in (("clsact-submitter", "with"), ("no-events", "without")):
        token = kubeserver.service_account_token(admin, ns, account)
        kc = kubeserver.write_kubeconfig(tmp_path / account, kube.url, kube.ca_file, token, ns)
        proc = cli(kube, "submit", *SPEC, "-n", ns, "--name", name, kubeconfig=kc)
        assert proc.returncode == 0, proc.stderr
        said = events_of(admin, ns, job_name(name))
        if account == "clsact-submitter":
            assert said["Submitted"].startswith("clsact ") and "warning" not in proc.stderr
        else:
            assert said == {} and "warning: events not recorded" in proc.stderr, proc.stderr
            assert "forbidden" not in proc.stdout


def test_a_user_without_the_role_gets_the_refused_verb_named(kube, admin, ns, tmp_path):
    client.CoreV1Api(admin).create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    token = kubeserver.service_account_token(admin, ns, "nobody")
    kc = kubeserver.write_kubeconfig(tmp_path / "kc", kube.url, kube.ca_file, token, ns)
    one_line_error(cli(kube, "submit", *SPEC, "-n", ns, kubeconfig=kc),
                   f'forbidden: paddlejobs.batch.paddlepaddle.org "{job_name("mbv3_qat_dis")}" '
                   f'is forbidden: User "system:serviceaccount:{ns}:nobody" cannot get resource '
                   f'"paddlejobs" in API group "batch.paddlepaddle.org" in the namespace "{ns}"')


# ---------------------------------------------------------------- errors


def test_missing_secret(kube, admin, ns):
    one_line_error(cli(kube, "submit", *SPEC, "-n", ns, "--s3-secret", "minio-creds"),
                   f"Secret 'minio-creds' (S3 credentials, values s3Secret) does not exist in "
                   f"namespace {ns}: kubectl -n {ns} create secret generic minio-creds")
    assert get_job(admin, ns, job_name("mbv3_qat_dis")) is None


def test_missing_namespace(kube):
    one_line_error(cli(kube, "submit", *SPEC, "-n", "no-such-ns"), 'namespaces "no-such-ns" '
                   "not found")


def test_missing_crd_names_the_operator_to_install(kube, admin, ns):
    ext = client.ApiextensionsV1Api(admin)
    ext.delete_custom_resource_definition("paddlejobs.kubeflow.org")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            proc = cli(kube, "submit", *SPEC, "-n", ns, "--operator", "kubeflow")
            if proc.returncode == 2 and "does not know" in proc.stderr:
                break
            time.sleep(0.5)
        one_line_error(proc, "does not know PaddleJob (kubeflow.org/v1): install the Kubeflow "
                       "training-operator")
    finally:
        while True:
            try:
                kubeserver.install_crd(admin, kube.crd_files[1])
                break
            except client.ApiException as exc:   # still being deleted
                if exc.status != 409:
                    raise
                time.sleep(0.5)


def test_unreachable_cluster_and_bad_credentials(kube, tmp_path):
    port = kubeserver.free_port()
    kc = kubeserver.write_kubeconfig(tmp_path / "down", f"https://127.0.0.1:{port}",
                                     kube.ca_file, "x")
    one_line_error(cli(kube, "submit", *SPEC, kubeconfig=kc),
                   f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}")
    kc = kubeserver.write_kubeconfig(tmp_path / "bad", kube.url, kube.ca_file, "wrong-token")
    one_line_error(cli(kube, "status", "x", kubeconfig=kc), "rejected our credentials (401")


def test_no_kubeconfig_anywhere(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    proc = run_cli("list", env=env)
    one_line_error(proc, "no Kubernetes cluster configured: no kubeconfig (--kubeconfig, "
                   "KUBECONFIG or ~/.kube/config) and not running in a pod")
    proc = run_cli("list", "--kubeconfig", str(tmp_path / "nope"), env=env)
    one_line_error(proc, f"kubeconfig {tmp_path / 'nope'} does not exist")


def test_in_cluster_service_account(kube, admin, ns, tmp_path, monkeypatch):
    """No kubeconfig, but the environment and files a pod has: the service account is used."""
    import kubernetes.config.incluster_config as incluster

    from clsact.launch.operators import OPERATORS

    apply(admin, render.render_rbac(ns, "clsact-submitter", "clsact-s3"))
    token = tmp_path / "token"
    token.write_text(kubeserver.service_account_token(admin, ns, "clsact-submitter"))
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(kube.ca_file))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", kube.url.rsplit(":", 1)[1])
    cluster = connect()
    assert cluster.host == kube.url
    assert jobs.list_jobs(cluster, [OPERATORS["paddle"]], ns) == []


def test_unknown_context(kube):
    one_line_error(cli(kube, "list", "--context", "prod"),
                   "has no context 'prod'; contexts: test")


def test_invalid_values_fail_before_the_cluster_is_asked(tmp_path):
    kc = kubeserver.write_kubeconfig(tmp_path / "down", "https://127.0.0.1:1",
                                     tmp_path / "ca", "x")
    proc = run_cli("submit", *SPEC, "--workers", "0", "--kubeconfig", str(kc))
    one_line_error(proc, "workers must be >= 1")


def test_fields_the_server_would_drop_are_reported():
    sent = {"worker": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "a", "newField": 1}]}}}, "cleanPodPolicy": "Never"}
    got = {"worker": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}}
    assert jobs._dropped_fields(sent, got, "spec") == [
        "spec.worker.template.spec.containers[0].newField", "spec.cleanPodPolicy"]


def test_the_python_api_raises_cluster_errors(kube, ns):
    cluster = connect(str(kube.kubeconfig()))
    with pytest.raises(ClusterError, match="no PaddleJob"):
        jobs.find_job(cluster, render.OPERATORS["paddle"], ns, "nothing-here")
    assert sys.modules["clsact.launch.cluster"].REQUEST_TIMEOUT > 0


def test_make_submit_maps_its_variables_to_flags(kube, admin, ns):
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig())}
    proc = subprocess.run(
        ["make", "--no-print-directory", "submit", "IMAGE=reg.example.com/clsact:2",
         "WORKERS=2", "GPUS=4", f"NAMESPACE={ns}", "OPERATOR=kubeflow",
         "SAVE_DIR=s3://ml-models/clsact/make",
         "ARGS=--set Global.model_dir=s3://models/mbv3 --set Global.data_dir=s3://datasets/in"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = get_job(admin, ns, job_name("mbv3_qat_dis", "kubeflow"), "kubeflow")
    worker = job["spec"]["paddleReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert worker["replicas"] == 2 and container["image"] == "reg.example.com/clsact:2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "s3://ml-models/clsact/make" in container["command"]


def test_wait_rides_out_an_api_server_restart(kube, admin, ns):
    """The API server goes away for a few seconds mid-wait (an upgrade): --wait warns once,
    keeps polling, and still sees the job complete."""
    name = job_name("mbv3_qat_dis")
    assert cli(kube, "submit", *SPEC, "-n", ns).returncode == 0
    set_status(admin, ns, name, {"phase": "Running"})
    waiter = subprocess.Popen(
        [sys.executable, "-m", "clsact", "submit", *SPEC, "-n", ns, "--wait", "--timeout",
         "120", "--poll", "0.2", "--kubeconfig", str(kube.kubeconfig())],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    kube.restart_apiserver(down_for=3)
    set_status(kube.admin_client(), ns, name, {"phase": "Completed"})
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, (out, err)
    assert "cannot reach the Kubernetes API server" in err and "retrying for up to" in err
    assert err.count("retrying for up to") == 1
    assert out.rstrip().endswith(f"PaddleJob {ns}/{name} Completed")


def test_a_submitter_racing_another_ends_unchanged(kube, ns, monkeypatch):
    """Another submitter creates the same job between our look and our create (409): we
    compare with theirs instead of failing."""
    cluster = connect(str(kube.kubeconfig()))
    v = values.resolve({}, {"image": "reg.example.com/clsact:1", "namespace": ns,
                            "saveDir": "s3://ml-models/clsact/run"})
    rendered = render.render(MBV3, ["Global.model_dir=s3://models/mbv3",
                                    "Global.data_dir=s3://datasets/ilsvrc2012"], v)
    assert jobs.submit(cluster, rendered).action == "created"
    real_get, calls = jobs.get_job, []

    def stale_first_look(*args):
        calls.append(args)
        return None if len(calls) == 1 else real_get(*args)
    monkeypatch.setattr(jobs, "get_job", stale_first_look)
    assert jobs.submit(cluster, rendered).action == "unchanged"
    assert len(calls) == 2


def test_check_release_names_every_missing_object(kube, admin, ns):
    """`clsact check-release` (the chart's `helm test`): objects found are listed; missing
    ones are named in one error line, the S3 Secret with how to create it."""
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "sub"}})
    found = cli(kube, "check-release", "-n", ns, "ConfigMap/cfg", "Secret/clsact-s3",
                "ServiceAccount/sub")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [f"ok: ConfigMap {ns}/cfg", f"ok: Secret {ns}/clsact-s3",
                                         f"ok: ServiceAccount {ns}/sub"]
    missing = cli(kube, "check-release", "-n", ns, "ConfigMap/cfg", "JobSet/gone",
                  "Secret/nope", "CronJob/nightly")
    one_line_error(missing, f"JobSet {ns}/gone does not exist")
    assert "Secret 'nope' (S3 credentials" in missing.stderr
    assert f"CronJob {ns}/nightly does not exist" in missing.stderr
    bad = cli(kube, "check-release", "-n", ns, "Deployment/x")
    one_line_error(bad, "cannot check a Deployment")
