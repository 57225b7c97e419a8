"""`helm install` of charts/clsact (real Helm SDK) into a real single-node cluster
(tests/kubecluster.py: API server, controller-manager, scheduler and a kubelet running pods on
this machine's dockerd, all Kubernetes 1.20.2 from Debian's source).

Real: Helm's install/uninstall, the CronJob, Job, garbage-collector, service-account and token
controllers, the scheduler, the kubelet running the CPU image (ConfigMap volumes, /dev/shm,
env, downward API, the in-cluster service-account token), the submitter inside it. Played:
the PaddleJob operator (no operator builds here): the test creates the worker pod an operator
would (the kubelet runs it) and writes the PaddleJob's status.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from kubernetes import client

from clsact.launch import nightly
from tests import helmsdk, kubecluster
from tests.conftest import REPO, run_cli

if not helmsdk.AVAILABLE:
    pytest.skip("helm-python-sdk is not installed (make test installs it)",
                allow_module_level=True)

CHART = REPO / "charts" / "clsact"
GROUP, VERSION = "batch.paddlepaddle.org", "v1"
VALID_CONFIG = {"Global": {"model_dir": "s3://models/fp32", "data_dir": "s3://data/digits",
                           "img_size": 32, "resize_size": 36, "batch_size": 8},
                "Distillation": {"alpha": 1.0, "loss": "soft_label"},
                "QuantAware": {"onnx_format": True, "weight_bits": 8, "activation_bits": 8},
                "TrainConfig": {"train_iter": 4, "eval_iter": 2, "learning_rate": 1e-4}}


@pytest.fixture
def ns(cluster) -> str:
    return kubecluster.namespace_with_secret(cluster, "t", {
        "AWS_ACCESS_KEY_ID": "AKIDCLUSTER", "AWS_SECRET_ACCESS_KEY": "never-in-a-manifest"})


def helm(cluster, ns) -> helmsdk.Release:
    return helmsdk.Release(cluster.kubeconfig(), ns)


def paddlejobs(api, ns, selector=None) -> list[dict]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, "paddlejobs", label_selector=selector)["items"]
    return sorted(items, key=lambda o: o["metadata"]["creationTimestamp"])


def set_phase(api, ns, name, phase) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "paddlejobs", name, {"status": {"phase": phase}})


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def play_operator_pod(api, ns, job: dict) -> str:
    """Create the worker pod paddle-operator would (<job>-worker-0, owned by the job) from
    the PaddleJob's template; the kubelet runs it."""
    template = job["spec"]["worker"]["template"]
    name = f"{job['metadata']['name']}-worker-0"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": template["metadata"]["labels"],
                        "ownerReferences": [{
                            "apiVersion": f"{GROUP}/{VERSION}", "kind": "PaddleJob",
                            "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
                            "controller": True, "blockOwnerDeletion": True}]},
           "spec": {**template["spec"], "restartPolicy": "Never"}}
    client.CoreV1Api(api).create_namespaced_pod(ns, pod)
    return name


def test_job_mode_install_run_and_uninstall(cluster, ns, cpu_image, capsys):
    """The release creates the ConfigMap and PaddleJob `helm template` shows; the worker pod
    made from it runs in the image on the kubelet, and a broken config fails there at once
    with clsact's one-line error in `kubectl logs`; uninstall removes the release's objects
    and the garbage collector the pod they own."""
    api = cluster.admin_client()
    broken = yaml.safe_load(yaml.safe_dump(VALID_CONFIG))
    broken["TrainConfig"]["learning_rat"] = broken["TrainConfig"].pop("learning_rate")
    vals = {"image": cpu_image, "imagePullPolicy": "Never", "gpusPerWorker": 0,
            "shmSize": "256Mi", "saveDir": "s3://results/mbv3", "config": broken}
    with helm(cluster, ns) as h:
        release = h.install(str(CHART), "mbv3", vals, namespace=ns, timeout=120)
        with capsys.disabled():
            print("\n--- helm install (mode job) NOTES:\n" + release["notes"])
        expected = {o["kind"]: o for o in yaml.safe_load_all(release["manifest"]) if o}
        jobs = paddlejobs(api, ns)
        assert [j["metadata"]["name"] for j in jobs] == [expected["PaddleJob"]["metadata"]["name"]]
        job = jobs[0]
        assert job["spec"] == expected["PaddleJob"]["spec"]
        cm = client.CoreV1Api(api).read_namespaced_config_map(
            expected["ConfigMap"]["metadata"]["name"], ns)
        assert cm.data == expected["ConfigMap"]["data"]
        assert job["metadata"]["annotations"]["meta.helm.sh/release-name"] == "mbv3"
        assert "never-in-a-manifest" not in release["manifest"]

        pod = play_operator_pod(api, ns, job)
        core = client.CoreV1Api(api)
        phase = wait_for(f"pod {pod} to end", lambda: core.read_namespaced_pod(pod, ns)
                         .status.phase in ("Succeeded", "Failed")
                         and core.read_namespaced_pod(pod, ns).status.phase, 240)
        assert phase == "Failed"
        status = core.read_namespaced_pod(pod, ns).status.container_statuses[0]
        assert status.state.terminated.exit_code != 0
        # `clsact logs` (as `kubectl logs`: API server -> the kubelet -> docker)
        proc = run_cli("logs", job["metadata"]["name"], "-n", ns, "--kubeconfig",
                       str(cluster.kubeconfig()))
        assert proc.returncode == 0, proc.stderr
        logs = proc.stdout
        prefix = f"[{pod}] "
        assert all(line.startswith(prefix) for line in logs.splitlines()), logs[:500]
        logs = "\n".join(line.removeprefix(prefix) for line in logs.splitlines())
        errors = [line for line in logs.splitlines() if line.startswith("clsact: error:")]
        assert errors and all(e == errors[0] for e in errors), logs[-3000:]
        assert ("/etc/clsact/config.yaml: unknown key TrainConfig.learning_rat (did you mean "
                "'learning_rate'?)") in errors[0]
        assert "Traceback" not in logs
        # paddle's launcher prints the failed worker's whole environment: the S3 keys are
        # files, not env, so neither appears (they did, as envFrom, before)
        assert "LAUNCH ERROR" in logs and "CLSACT_S3_CREDENTIALS_DIR" in logs
        assert "never-in-a-manifest" not in logs and "AKIDCLUSTER" not in logs
        # what the kubelet ran: the image's user, the ConfigMap mounted, /dev/shm a tmpfs
        spec = core.read_namespaced_pod(pod, ns).spec
        assert spec.volumes[1].empty_dir.medium == "Memory"

        h.uninstall("mbv3", timeout=120)
    wait_for("the release's objects to go", lambda: not paddlejobs(api, ns) and not [
        c for c in core.list_namespaced_config_map(ns).items
        if c.metadata.name.endswith("-config")], 60)
    wait_for("the garbage collector to delete the worker pod", lambda: pod not in [
        p.metadata.name for p in core.list_namespaced_pod(ns).items], 120)


class Operator(threading.Thread):
    """Plays paddle-operator for the nightly test: each new PaddleJob of the release goes
    Running; ``finish`` names the ones to complete."""

    def __init__(self, api, ns, release):
        super().__init__(daemon=True)
        self.api, self.ns, self.release = api, ns, release
        self.finish: set[str] = set()
        self.seen: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        selector = f"{nightly.NIGHTLY_LABEL}={self.release}"
        while not self.stop.is_set():
            try:
                for job in paddlejobs(self.api, self.ns, selector):
                    name = job["metadata"]["name"]
                    phase = (job.get("status") or {}).get("phase")
                    if name not in self.seen:
                        self.seen.append(name)
                    if phase is None:
                        set_phase(self.api, self.ns, name, "Running")
                    elif phase == "Running" and (name in self.finish or "*" in self.finish):
                        set_phase(self.api, self.ns, name, "Completed")
            except client.ApiException:
                pass
            self.stop.wait(1)


def submitter_jobs(api, ns, release) -> list:
    items = client.BatchV1Api(api).list_namespaced_job(
        ns, label_selector=f"app.kubernetes.io/instance={release},"
        "app.kubernetes.io/component=nightly").items
    return sorted(items, key=lambda j: j.metadata.creation_timestamp)


def job_outcome(job) -> str | None:
    for cond in job.status.conditions or []:
        if cond.status == "True" and cond.type in ("Complete", "Failed"):
            return cond.type
    return None


def pod_log(api, ns, pod: str) -> str:
    resp = client.CoreV1Api(api).read_namespaced_pod_log(pod, ns, _preload_content=False)
    return resp.data.decode("utf-8", "replace")


def job_logs(api, ns, job) -> str:
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={job.metadata.name}").items
    return "\n".join(pod_log(api, ns, p.metadata.name) for p in pods)


def test_nightly_mode_on_a_real_cronjob(cluster, ns, cpu_image, capsys):
    """Every minute the real CronJob controller makes a Job whose pod (run by the kubelet)
    runs `clsact submit --nightly --wait` with the chart's ServiceAccount: night 1 runs and
    its submitter exits 0; night 2 is left running by the operator, its submitter stops
    following at its deadline (exit 124) and deletes night 1 (keepJobs 1); night 3 is
    refused while night 2 is active (exit 5, one line); uninstall removes everything."""
    api = cluster.admin_client()
    release = "nightly"
    vals = {"mode": "nightly", "image": cpu_image, "imagePullPolicy": "Never",
            "gpusPerWorker": 0, "saveDir": "s3://results/nightly", "config": VALID_CONFIG,
            "nightly": {"schedule": "*/1 * * * *", "stamp": "%Y-%m-%d-%H%M", "keepJobs": 1,
                        "deadlineSeconds": 55, "startingDeadlineSeconds": 30,
                        "successfulJobsHistoryLimit": 5, "failedJobsHistoryLimit": 5,
                        # the played operator publishes no run: the gate after a night
                        # is tested by tests/test_nightly.py (real submit + S3 server)
                        "gate": False}}
    operator = Operator(api, ns, release)
    operator.finish.add("*")           # night 1 completes as soon as it runs
    operator.start()
    custom = client.CustomObjectsApi(api)    # batch/v1beta1 CronJobs (1.20 has no v1)
    try:
        with helm(cluster, ns) as h:
            rel = h.install(str(CHART), release, vals, namespace=ns, timeout=120)
            with capsys.disabled():
                print("\n--- helm install (mode nightly) NOTES:\n" + rel["notes"])
            cron = custom.get_namespaced_custom_object("batch", "v1beta1", ns, "cronjobs",
                                                       release)
            assert cron["spec"]["concurrencyPolicy"] == "Forbid"
            manifest = rel["manifest"]
            assert "apiVersion: batch/v1beta1" in manifest and "timeZone" not in manifest

            # night 1: submitted by the pod, completed by the operator, submitter exit 0
            first = wait_for("the first submitter Job to succeed", lambda: [
                j for j in submitter_jobs(api, ns, release) if job_outcome(j)], 200, 2)[0]
            logs = job_logs(api, ns, first)
            assert job_outcome(first) == "Complete", logs
            night1 = operator.seen[0]
            assert f"PaddleJob {ns}/{night1} created" in logs and "Completed" in logs
            job1 = paddlejobs(api, ns)[0]
            cmd = job1["spec"]["worker"]["template"]["spec"]["containers"][0]["command"]
            save = cmd[cmd.index("--save-dir") + 1]
            assert save.startswith("s3://results/nightly/runs/") and save.endswith("/")
            # the stamp is the scheduled time the 1.20 CronJob controller put in its Job's
            # name (seconds since the epoch), in the time zone (UTC)
            scheduled = int(first.metadata.name.rsplit("-", 1)[1])
            assert abs(scheduled - time.time()) < 300
            stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime(scheduled))
            assert save == f"s3://results/nightly/runs/{stamp}/"

            # night 2 is held running: its submitter gives up following at its deadline
            operator.finish.clear()
            second = wait_for("the second submitter Job to end", lambda: [
                j for j in submitter_jobs(api, ns, release)[1:] if job_outcome(j)], 200, 2)[0]
            logs2 = job_logs(api, ns, second)
            assert job_outcome(second) == "Failed"
            assert "it goes on" in logs2, logs2
            night2 = operator.seen[1]
            assert f"deleted PaddleJob {ns}/{night1}" in logs2     # keepJobs 1
            assert [j["metadata"]["name"] for j in paddlejobs(api, ns)] == [night2]

            # night 3 while night 2 runs: refused, one line, nothing submitted
            third = wait_for("the third submitter Job to end", lambda: [
                j for j in submitter_jobs(api, ns, release)[2:] if job_outcome(j)], 200, 2)[0]
            logs3 = job_logs(api, ns, third)
            assert job_outcome(third) == "Failed"
            errors = [x for x in logs3.splitlines() if x.startswith("clsact: error:")]
            assert len(errors) == 1 and night2 in errors[0] and "still Running" in errors[0]
            assert "Traceback" not in logs3
            assert [j["metadata"]["name"] for j in paddlejobs(api, ns)] == [night2]
            pod = client.CoreV1Api(api).list_namespaced_pod(
                ns, label_selector=f"job-name={third.metadata.name}").items[0]
            assert pod.status.container_statuses[0].state.terminated.exit_code == 5
            assert pod.spec.service_account_name == f"{release}-submitter"

            h.uninstall(release, timeout=120)
        wait_for("the CronJob and the submitter Jobs to go", lambda: not custom.
                 list_namespaced_custom_object("batch", "v1beta1", ns, "cronjobs")["items"]
                 and not submitter_jobs(api, ns, release), 120, 2)
    finally:
        operator.stop.set()


def test_helm_test_checks_the_release_and_names_a_missing_secret(cluster, ns, cpu_image):
    """`helm test` runs the chart's hook: a pod of the image, as an identity that may only
    read the release's objects, runs `clsact check-release`; it passes on a whole release
    and fails, naming the Secret and how to create it, once the S3 Secret is gone."""
    core = client.CoreV1Api(cluster.admin_client())
    vals = {"mode": "nightly", "image": cpu_image, "imagePullPolicy": "Never",
            "saveDir": "s3://results/checked", "config": VALID_CONFIG,
            "nightly": {"suspend": True, "gate": False}}
    with helm(cluster, ns) as h:
        h.install(str(CHART), "chk", vals, namespace=ns, timeout=120)
        try:
            result = h.test("chk", timeout=240, logs=True)
        except helmsdk.HelmError:
            raise AssertionError(pod_log(cluster.admin_client(), ns, "chk-test")) from None
        logs = json.dumps(result)
        for obj in ("CronJob", "ConfigMap", "ServiceAccount", "Secret"):
            assert f"ok: {obj} {ns}/" in logs, logs[-2000:]
        core.delete_namespaced_secret("clsact-s3", ns)
        with pytest.raises(helmsdk.HelmError):
            h.test("chk", timeout=240, logs=True)
        log = pod_log(cluster.admin_client(), ns, "chk-test")   # a failed test pod is kept
        errors = [line for line in log.splitlines() if line.startswith("clsact: error:")]
        assert len(errors) == 1 and "Secret 'clsact-s3' (S3 credentials" in errors[0], log
        assert f"kubectl -n {ns} create secret generic clsact-s3" in errors[0]
        assert "Traceback" not in log
        h.uninstall("chk", timeout=120)
