"""`clsact submit/status/cancel --operator jobset`, Kueue queues, gang scheduling and progress
on the real test cluster (tests/kubecluster.py: API server, controller-manager, scheduler and
kubelet 1.20.2 running the CPU image on this machine's dockerd).

Real: the API server (the JobSet, PodGroup and PaddleJob CRDs; server-side dry runs), the
endpoints controller (the headless Service's Endpoints with each pod's hostname), the
garbage collector, the scheduler (its Unschedulable reason), the kubelet running the image
(pod hostname and subdomain in /etc/hosts, the cluster DNS in resolv.conf), the S3 server
the pods publish to (moto, on the docker bridge), `clsact compress` in the pods.
Played, since none builds here: the JobSet controller (:class:`JobSetController`: the headless
Service, one pod per completion index as its Indexed Job would make it, the status), Kueue
(toggling ``spec.suspend``) and CoreDNS (tests/kubedns.py, answering from the real
Endpoints).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import yaml
from kubernetes import client

from clsact.demo.s3server import DEMO_CREDENTIALS, LocalS3Server
from clsact.launch import jobs, render
from clsact.launch.cluster import connect
from clsact.launch.operators import JOBSET
from tests import dockerhost, kubecluster
from tests.conftest import REPO, run_cli, upload_tree
from tests.test_compress import small_config

GROUP, VERSION, PLURAL = JOBSET.group, JOBSET.version, JOBSET.plural
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@pytest.fixture(scope="module")
def bridge_s3(clas_model, digits_dir):
    """An S3 server the pods reach (on the docker bridge) holding the test model and digits."""
    with LocalS3Server(host=kubecluster.BRIDGE_IP) as server:
        s3 = server.client()
        s3.create_bucket(Bucket="inputs")
        upload_tree(s3, "inputs", "model", clas_model,
                    ["inference.pdmodel", "inference.pdiparams"])
        upload_tree(s3, "inputs", "data", digits_dir)
        yield server


@pytest.fixture
def ns(cluster) -> str:
    return kubecluster.namespace_with_secret(cluster, "js", {
        k: v for k, v in DEMO_CREDENTIALS.items() if k.startswith("AWS_") and "REGION" not in k})


def jobsets(api, ns) -> list[dict]:
    return client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL)["items"]


def set_status(api, ns, name, status) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status})


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobSetController(threading.Thread):
    """Plays the JobSet controller (and the Indexed Job controller under it) in ``ns``: for
    an unsuspended JobSet, the headless Service named after it and, per completion index i,
    the pod ``<js>-worker-0-<i>-<random>`` (hostname ``<js>-worker-0-<i>``, subdomain the
    Service, the index annotation and ``JOB_COMPLETION_INDEX`` env from it, the JobSet's
    labels, ``jobset.sigs.k8s.io/restart-attempt``), all owned by the JobSet; then its status:
    Suspended while suspended, Completed (terminalState) when every pod succeeded; when a pod
    failed, a restart while ``status.restarts`` < ``failurePolicy.maxRestarts`` (every pod
    deleted and gone, then all recreated under the next attempt), else Failed.
    ``run_pods`` False: an admitted JobSet completes at once without pods."""

    def __init__(self, api, ns: str, run_pods: bool = True):
        super().__init__(daemon=True)
        self.api, self.ns, self.run_pods = api, ns, run_pods
        self.stop = threading.Event()
        self.started: set[str] = set()
        self.restarted: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for js in jobsets(self.api, self.ns):
                    self.reconcile(js)
            except Exception as exc:  # noqa: BLE001 - shown by the test that needed it
                self.errors.append(repr(exc))
            self.stop.wait(0.5)

    def owner(self, js: dict) -> list[dict]:
        return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "JobSet",
                 "name": js["metadata"]["name"], "uid": js["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}]

    def reconcile(self, js: dict) -> None:
        name, status = js["metadata"]["name"], js.get("status") or {}
        if status.get("terminalState"):
            return
        if js["spec"].get("suspend"):
            if not any(c["type"] == "Suspended" for c in status.get("conditions") or []):
                set_status(self.api, self.ns, name, {"conditions": [{
                    "type": "Suspended", "status": "True", "reason": "SuspendedJobs",
                    "message": "jobset is suspended", "lastTransitionTime": now()}]})
            return
        rj = js["spec"]["replicatedJobs"][0]
        job_spec = rj["template"]["spec"]
        if name not in self.started:
            self.started.add(name)
            if self.run_pods:
                self.create_objects(js, rj["name"], job_spec)
        pods = self.pods(name)
        phases = [p.status.phase for p in pods]
        allowed = (js["spec"].get("failurePolicy") or {}).get("maxRestarts") or 0
        if "Failed" in phases and status.get("restarts", 0) < allowed:
            self.restart(js, rj["name"], job_spec, pods, status.get("restarts", 0) + 1)
            return
        done = "Failed" if "Failed" in phases else (
            "Completed" if not self.run_pods or (
                len(phases) == job_spec["completions"]
                and all(ph == "Succeeded" for ph in phases)) else None)
        counts = {"name": rj["name"], "active": int(done is None), "ready": 0,
                  "succeeded": int(done == "Completed"), "failed": int(done == "Failed"),
                  "suspended": 0}
        new = {"replicatedJobsStatus": [counts], "conditions": [
            c for c in status.get("conditions") or [] if c["type"] != "Suspended"] + [
            {"type": "Suspended", "status": "False", "reason": "ResumeJobs",
             "message": "jobset is resumed", "lastTransitionTime": now()}]}
        if done:
            new["terminalState"] = done
            new["conditions"].append({"type": done, "status": "True", "reason": f"All{done}",
                                      "message": f"jobset {done.lower()}",
                                      "lastTransitionTime": now()})
        if new != {k: status.get(k) for k in new}:
            set_status(self.api, self.ns, name, new)

    def pods(self, name: str) -> list:
        return client.CoreV1Api(self.api).list_namespaced_pod(
            self.ns, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}").items

    def restart(self, js: dict, rj: str, job_spec: dict, pods: list, attempt: int) -> None:
        """What JobSet does on a failed child Job under its failure policy: delete every
        child (the pods get their SIGTERM and grace period), wait until they are gone, count
        the restart and create them all again."""
        name = js["metadata"]["name"]
        core = client.CoreV1Api(self.api)
        for pod in pods:
            core.delete_namespaced_pod(pod.metadata.name, self.ns)
        deadline = time.monotonic() + 120
        while self.pods(name) and time.monotonic() < deadline:
            time.sleep(0.5)
        set_status(self.api, self.ns, name, {"restarts": attempt})
        self.restarted.append(name)
        self.create_pods(js, rj, job_spec, attempt)

    def create_objects(self, js: dict, rj: str, job_spec: dict) -> None:
        name = js["metadata"]["name"]
        core = client.CoreV1Api(self.api)
        network = js["spec"].get("network") or {}
        core.create_namespaced_service(self.ns, {"metadata": {
            "name": name, "ownerReferences": self.owner(js)}, "spec": {
            "clusterIP": "None", "selector": {"jobset.sigs.k8s.io/jobset-name": name},
            "publishNotReadyAddresses": bool(network.get("publishNotReadyAddresses"))}})
        self.create_pods(js, rj, job_spec, 0)

    def create_pods(self, js: dict, rj: str, job_spec: dict, attempt: int) -> None:
        name = js["metadata"]["name"]
        core = client.CoreV1Api(self.api)
        template = job_spec["template"]
        for i in range(job_spec["completions"]):
            labels = {**template["metadata"]["labels"], "jobset.sigs.k8s.io/jobset-name": name,
                      "jobset.sigs.k8s.io/replicatedjob-name": rj,
                      "jobset.sigs.k8s.io/job-index": "0", INDEX_ANNOTATION: str(i),
                      "jobset.sigs.k8s.io/restart-attempt": str(attempt)}
            annotations = {**(template["metadata"].get("annotations") or {}),
                           INDEX_ANNOTATION: str(i)}
            spec = json.loads(json.dumps(template["spec"]))
            spec.update(hostname=f"{name}-{rj}-0-{i}", subdomain=name)
            for c in spec["containers"]:
                c["env"] = [*c.get("env", []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}}]
            core.create_namespaced_pod(self.ns, {"metadata": {
                "name": f"{name}-{rj}-0-{i}-{secrets.token_hex(3)[:5]}", "labels": labels,
                "annotations": annotations, "ownerReferences": self.owner(js)}, "spec": spec})


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def s3_run_config(tmp_path, train_iter: int) -> str:
    path = small_config(tmp_path, "unused", "unused", train_iter=train_iter, eval_iter=4)
    raw = yaml.safe_load(path.read_text())
    raw["Global"].update(model_dir="s3://inputs/model", data_dir="s3://inputs/data",
                         batch_size=8, num_workers=1, collective_timeout=300)
    return write(path, raw)


def cli(cluster, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return run_cli(*args, "--kubeconfig", str(cluster.kubeconfig()), env=env, timeout=timeout)


def kill_container(ns: str, pod: str) -> None:
    """SIGKILL the pod's container on the node (an OOM kill, a lost process)."""
    names = dockerhost.docker("ps", "--format", "{{.Names}}", "--filter",
                              f"name=_{pod}_{ns}_").stdout.split()
    mine = [n for n in names if not n.startswith("k8s_POD_")]
    assert len(mine) == 1, names
    dockerhost.docker("kill", mine[0], check=True)


def test_a_two_pod_jobset_survives_a_killed_pod_and_publishes_one_verified_run(
        cluster, ns, cpu_image, bridge_s3, tmp_path, capsys):
    """`clsact submit --operator jobset` on two CPU pods: rank 1 finds rank 0 through the
    headless Service's DNS name and they train together; `clsact status` shows the run's
    progress. Rank 1's container is killed after the first checkpoint: the JobSet restarts
    the set (failurePolicy.maxRestarts = backoffLimit 1), the new pods resume the run by its
    run id from the checkpoint and publish one run that verifies; status counts the
    restart."""
    api = cluster.admin_client()
    controller = JobSetController(api, ns)
    controller.start()
    save = "s3://inputs/runs/jobset"
    values = write(tmp_path / "values.yaml", {
        "operator": "jobset", "workers": 2, "gpusPerWorker": 0, "image": cpu_image,
        "imagePullPolicy": "Never", "shmSize": "256Mi", "namespace": ns,
        "s3Endpoint": bridge_s3.endpoint, "backoffLimit": 1})
    s3 = bridge_s3.client()
    env = {**os.environ, "AWS_ENDPOINT_URL": bridge_s3.endpoint, **DEMO_CREDENTIALS}
    try:
        sub = cli(cluster, "submit", "--config", s3_run_config(tmp_path, 24), "--values", values,
                  "--save-dir", save, "--name", "two-pods", env=env)
        assert sub.returncode == 0, sub.stderr
        name = jobsets(api, ns)[0]["metadata"]["name"]
        shown, deadline = [], time.monotonic() + 600
        while time.monotonic() < deadline:
            st = cli(cluster, "status", name, "-n", ns, "--operator", "jobset", env=env)
            shown.append(st.stdout)
            if "phase:      training" in st.stdout or "Completed" in st.stdout:
                break
            time.sleep(2)
        running = shown[-1]
        assert "phase:      training" in running, running + str(controller.errors)
        assert "stage:      1 of 1 (qat_dis)" in running and "of 24" in running, running
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "Contents" not in s3.list_objects_v2(
                Bucket="inputs", Prefix="runs/jobset/_checkpoint/progress.json"):
            time.sleep(0.3)
        first = {p.metadata.labels[INDEX_ANNOTATION]: p.metadata.name
                 for p in controller.pods(name)}
        kill_container(ns, first["1"])
        end = jobs.wait(connect(str(cluster.kubeconfig())), JOBSET, ns, name, 600,
                        lambda _s: None, poll=2)
        final = cli(cluster, "status", name, "-n", ns, "--operator", "jobset", env=env).stdout
        with capsys.disabled():
            print(f"\n--- clsact status, running:\n{running}--- clsact status, finished:\n"
                  f"{final}")
        logs = cli(cluster, "logs", name, "-n", ns, "--operator", "jobset").stdout
        assert end is not None and end.outcome == "succeeded", logs[-4000:]
    finally:
        controller.stop.set()
    assert "phase:      published" in final and "Completed" in final, final
    assert controller.restarted == [name] and "restarts: 1 of 1" in final, final
    assert not set(first.values()) & {p.metadata.name for p in controller.pods(name)}
    assert run_cli("verify", save, "--s3-endpoint", bridge_s3.endpoint,
                   env=env).returncode == 0
    m = json.loads(bridge_s3.client().get_object(
        Bucket="inputs", Key="runs/jobset/metrics.json")["Body"].read())
    assert m["distributed"]["world_size"] == 2 and m["run_id"] == name
    assert m["resumed"] and m["resumed"]["from_step"] >= 4, "the restart resumed the run"
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with equal weights"
    master = render.master_host(name)
    assert f"{master}.{ns}.svc.cluster.local" in cluster.dns.queries, \
        "rank 1 resolved rank 0's name through the cluster DNS"


def test_queued_jobs_wait_for_admission_without_spending_their_timeout(cluster, ns, cpu_image,
                                                                       tmp_path):
    """Kueue played by toggling `suspend`: a job with queueName is created suspended and
    shows as Queued in `status`; `submit --wait` does not count queued time against its
    timeout; a queued night refuses the next night; a job running past its timeout is still
    given up on (the mechanism only excuses queued time)."""
    api = cluster.admin_client()
    controller = JobSetController(api, ns, run_pods=False)
    controller.start()
    values = write(tmp_path / "values.yaml", {
        "operator": "jobset", "workers": 2, "gpusPerWorker": 0, "image": cpu_image,
        "namespace": ns, "queueName": "team-a"})
    cfg = s3_run_config(tmp_path, 4)
    today = int(time.time() // 60)
    env = {**os.environ, "CLSACT_SCHEDULED_JOB": f"nightly-{today - 24 * 60}"}
    waiting = None
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "clsact", "submit", "--config", cfg, "--values", values,
             "--save-dir", "s3://inputs/nightly", "--nightly", "rel", "--wait", "--timeout",
             "6s", "--poll", "1", "--kubeconfig", str(cluster.kubeconfig())],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not jobsets(api, ns):
            time.sleep(0.5)
        job = jobsets(api, ns)[0]
        name = job["metadata"]["name"]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        time.sleep(10)   # queued longer than the submitter's whole timeout
        st = cli(cluster, "status", name, "-n", ns, "--operator", "jobset")
        assert "phase:    Queued for" in st.stdout and "queue team-a" in st.stdout, st.stdout
        # the next night is refused while this one is queued
        nxt = cli(cluster, "submit", "--config", cfg, "--values", values, "--save-dir",
                  "s3://inputs/nightly", "--nightly", "rel",
                  env={**os.environ, "CLSACT_SCHEDULED_JOB": f"nightly-{today}"})
        assert nxt.returncode == 5 and "is still Queued" in nxt.stderr, nxt.stderr
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, {"spec": {"suspend": False}})   # admitted
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert "Queued" in out and "Completed" in out, out
    except BaseException:
        controller.stop.set()
        raise
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
    # the exemption is what let it wait: counting queued time, the same wait gives up
    c = connect(str(cluster.kubeconfig()))
    for exempt in (True, False):
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, {"spec": {"suspend": True}})
        set_status(api, ns, name, {"terminalState": None, "conditions": None})
        got: list = []
        budget = jobs._Budget.spent
        if not exempt:
            jobs._Budget.spent = lambda self, queued, f=budget: f(self, False)
        try:
            t = threading.Thread(target=lambda out=got: out.append(
                jobs.wait(c, JOBSET, ns, name, 2, lambda _s: None, poll=0.3)))
            t.start()
            time.sleep(4)   # queued for twice the timeout
            client.CustomObjectsApi(api).patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, {"spec": {"suspend": False}})
            t.join(60)
        finally:
            jobs._Budget.spent = budget
        if exempt:
            assert got and got[0] is not None and got[0].outcome == "succeeded", got
        else:
            assert got == [None], "counting queued time, the wait times out"
    controller.stop.set()


def test_gang_scheduled_jobset_owns_its_pod_group_and_pending_pods_say_why(
        cluster, ns, cpu_image, tmp_path):
    """gangScheduling with operator jobset: the Volcano PodGroup (minMember = the pods) is
    created beside the JobSet, owned by it, and goes with it (the real garbage collector);
    `clsact status` says why pods wait: for their gang scheduler, or the real scheduler's
    Unschedulable reason."""
    api = cluster.admin_client()
    controller = JobSetController(api, ns)
    controller.start()
    base = {"operator": "jobset", "workers": 2, "gpusPerWorker": 0, "image": cpu_image,
            "imagePullPolicy": "Never", "namespace": ns}
    gang = write(tmp_path / "gang.yaml", {**base, "gangScheduling": True, "gangQueue": "gpu"})
    nowhere = write(tmp_path / "nowhere.yaml", {**base, "nodeSelector": {"pool": "none"}})
    cfg = s3_run_config(tmp_path, 4)
    try:
        names = {}
        for key, values in (("gang", gang), ("nowhere", nowhere)):
            sub = cli(cluster, "submit", "--config", cfg, "--values", values, "--save-dir",
                      f"s3://inputs/{key}", "--name", key)
            assert sub.returncode == 0, sub.stderr
            names[key] = next(j["metadata"]["name"] for j in jobsets(api, ns)
                              if j["metadata"]["name"].startswith(key))
        group = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", ns, "podgroups", names["gang"])
        assert group["spec"]["minMember"] == 2 and group["spec"]["queue"] == "gpu"
        assert group["metadata"]["ownerReferences"][0]["name"] == names["gang"]
        said = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(said) < 2:
            for key, name in names.items():
                st = cli(cluster, "status", name, "-n", ns, "--operator", "jobset").stdout
                if st.count("Pending  ") == 2:
                    said[key] = st
            time.sleep(1)
        assert "waiting for scheduler volcano" in said.get("gang", ""), said
        assert "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match" in \
            said.get("nowhere", ""), said
        for name in names.values():
            cancel = cli(cluster, "cancel", name, "-n", ns, "--operator", "jobset")
            assert cancel.returncode == 0, cancel.stderr
    finally:
        controller.stop.set()
    deadline, left = time.monotonic() + 120, [None]
    while time.monotonic() < deadline and left:
        left = client.CustomObjectsApi(api).list_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", ns, "podgroups")["items"]
        time.sleep(1)
    assert not left, "the garbage collector removed the PodGroup with its JobSet"
