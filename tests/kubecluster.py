"""A real single-node Kubernetes 1.20 cluster for the tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and a kubelet (dockershim, running pods on this
machine's dockerd), all built from Debian's source by ``tests/infra/kubernetes.sh``.

What acts is real: the CronJob, Job, garbage-collector, service-account and token
controllers, the scheduler, the kubelet (pods run as containers of the images we build, with
their ConfigMap volumes, /dev/shm, env, downward API, service-account token). What is played
(nothing else runs them): the PaddleJob operators (tests create the pods an operator would),
kube-proxy for the one Service pods use, ``kubernetes`` (10.0.0.1:443), by an iptables
DNAT rule to the API server on the docker bridge (172.17.0.1), which is where the API server
listens: pods on the default bridge reach it there; and the cluster DNS (tests/kubedns.py,
on the bridge address, answering from the real Services and Endpoints), which the kubelet
gives the pods (``--cluster-dns``). Nothing listens outside this machine.

See ../shared/notes/TEST-INFRA.md for the recipe (the kubelet patch, the node IP, what the
kubelet changes on the host and this harness restores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import dockerhost, kubeserver
from tests.kubeserver import ADMIN_TOKEN, CACHE, KubeServer, free_port, write_kubeconfig

VERSION = "1.20.2"
BINARIES = {"kube-apiserver": f"kube-apiserver-{VERSION}",
            "kube-controller-manager": f"kube-controller-manager-{VERSION}",
            "kube-scheduler": f"kube-scheduler-{VERSION}",
            "kubelet": f"kubelet-{VERSION}-oom0"}
NODE = "node-1"
BRIDGE_IP = "172.17.0.1"             # docker0, made by the dockerd the tests start
SERVICE_IP = "10.0.0.1"              # the `kubernetes` Service (first of 10.0.0.0/24)
PAUSE_IMAGE = "clsact-test-pause:1"
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
TOKENS = {"controller-manager": ("system:kube-controller-manager", ""),
          "scheduler": ("system:kube-scheduler", ""),
          "kubelet": (f"system:node:{NODE}", "system:nodes")}


def missing_binaries() -> list[str]:
    """The component binaries not yet built (``bash tests/infra/kubernetes.sh`` builds them)."""
    return [name for name in BINARIES.values() if not (CACHE / name).is_file()]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA; the API server's serving certificate (for the bridge address, the Service IP and
    kubernetes.default.svc) and its client certificate for kubelets; the service-account
    key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
             "-out", str(d / "ca.crt"), "-days", "2", "-subj", "/CN=clsact-test-ca")
    sans = (f"subjectAltName=IP:{BRIDGE_IP},IP:{SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local")
    for name, subj, ext in (("apiserver", "/CN=kube-apiserver", sans),
                            ("kubelet-client", "/CN=kube-apiserver-kubelet-client/O=system:masters",
                             "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"), "-subj", subj)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.crt"),
                 "-days", "2", "-extfile", str(d / f"{name}.ext"))
    _openssl("genrsa", "-out", str(d / "sa.key"), "2048")


def _iptables(action: str, chain: str, port: int) -> list[str]:
    return ["iptables", "-t", "nat", action, chain, "-d", f"{SERVICE_IP}/32", "-p", "tcp",
            "--dport", "443", "-j", "DNAT", "--to-destination", f"{BRIDGE_IP}:{port}"]


def ensure_pause_image() -> str:
    """The pod sandbox image: our Debian base with a CMD that sleeps (no registry here)."""
    if dockerhost.docker("image", "inspect", PAUSE_IMAGE).returncode == 0:
        return PAUSE_IMAGE
    base = subprocess.run(["bash", str(dockerhost.REPO / "docker" / "base-image.sh")],
                          capture_output=True, text=True, check=True, timeout=1800)
    base_tag = base.stdout.strip().splitlines()[-1]
    proc = subprocess.run([dockerhost.DOCKER, "build", "-t", PAUSE_IMAGE, "-"],
                          input=f'FROM {base_tag}\nCMD ["sleep", "infinity"]\n', text=True,
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building {PAUSE_IMAGE} failed: {proc.stderr[-1000:]}")
    return PAUSE_IMAGE


@dataclass
class Cluster(KubeServer):
    """A :class:`KubeServer` whose controllers, scheduler and kubelet run too."""

    kubelet_root: Path = field(default_factory=Path)
    dnat_port: int = 0
    dns: object = None
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop every component, remove the pods' containers, the DNAT rules and the
        kubelet's mounts, and restore the sysctls the kubelet changed."""
        self.stop_processes(timeout=30)
        if self.dns is not None:
            self.dns.stop()
        names = dockerhost.docker("ps", "-aq", "--filter", "name=^k8s_").stdout.split()
        if names:
            dockerhost.docker("rm", "-f", *names, timeout=300)
        if self.dnat_port:
            for chain in ("PREROUTING", "OUTPUT"):
                subprocess.run(_iptables("-D", chain, self.dnat_port), capture_output=True)
        for key, value in self.saved_sysctls.items():
            try:
                Path("/proc/sys", key).write_text(value)
            except OSError:
                pass
        if self.kubelet_root.is_dir():
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(self.kubelet_root))]
            for mount in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_node_ready(cluster: Cluster, timeout: float = 120) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.admin_client())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}); logs in "
                                   f"{cluster.workdir}:\n" + _tail(cluster.workdir))
        try:
            node = core.read_node(NODE)
            if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                return
        except client.ApiException:
            pass
        time.sleep(1)
    raise RuntimeError(f"node {NODE} not Ready after {timeout}s:\n" + _tail(cluster.workdir))


def _tail(workdir: Path) -> str:
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace")
                                                     .splitlines()[-15:])
                     for log in sorted(workdir.glob("*.log")))


def start(workdir: Path) -> Cluster:
    """Start the whole cluster under ``workdir`` (a dockerd must answer) and wait until the
    node is Ready and the default ServiceAccount has its token.

    Raises:
        RuntimeError: a binary is missing (with how to build it), not root, or a component
            failed to start (with the end of every log).
    """
    missing = missing_binaries()
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing in {CACHE}: run `bash "
                           f"{kubeserver.BUILD_SCRIPT}` (make test does)")
    if os.geteuid() != 0:
        raise RuntimeError("the kubelet needs root")
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    make_pki(pki)
    pause = ensure_pause_image()
    client_port, peer_port, secure = free_port(), free_port(), free_port()
    procs = [_spawn(kubeserver.etcd_argv(workdir, client_port, peer_port), workdir / "etcd.log")]
    tokens = [f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"']
    kubeconfigs = {}
    for name, (user, group) in TOKENS.items():
        token = f"clsact-test-{name}-token"
        tokens.append(f'{token},{user},{name}-uid,"{group}"' if group else
                      f"{token},{user},{name}-uid")
        kubeconfigs[name] = write_kubeconfig(workdir / f"kubeconfig-{name}",
                                             f"https://{BRIDGE_IP}:{secure}", pki / "ca.crt",
                                             token)
    (workdir / "tokens.csv").write_text("\n".join(tokens) + "\n")
    apiserver = [
        str(CACHE / BINARIES["kube-apiserver"]), "--etcd-servers",
        f"http://127.0.0.1:{client_port}", "--bind-address", BRIDGE_IP,
        "--advertise-address", BRIDGE_IP, "--secure-port", str(secure), "--insecure-port", "0",
        "--tls-cert-file", str(pki / "apiserver.crt"),
        "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"),
        "--token-auth-file", str(workdir / "tokens.csv"),
        "--authorization-mode", "Node,RBAC", "--allow-privileged=true",
        "--service-account-key-file", str(pki / "sa.key"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-account-issuer", "https://kubernetes.default.svc",
        "--api-audiences", "https://kubernetes.default.svc",
        "--service-cluster-ip-range", "10.0.0.0/24",
        "--kubelet-preferred-address-types", "InternalIP",
        "--kubelet-client-certificate", str(pki / "kubelet-client.crt"),
        "--kubelet-client-key", str(pki / "kubelet-client.key"),
        "--logtostderr", "--v", "0"]
    procs.append(_spawn(apiserver, workdir / "apiserver.log"))
    cluster = Cluster(workdir, f"https://{BRIDGE_IP}:{secure}", pki / "ca.crt", procs, apiserver,
                      kubelet_root=workdir / "kubelet")
    try:
        kubeserver.wait_ready(cluster.url, cluster.ca_file, procs[-1], workdir / "apiserver.log")
        for chain in ("PREROUTING", "OUTPUT"):
            subprocess.run(_iptables("-I", chain, secure), check=True, capture_output=True)
        cluster.dnat_port = secure
        kc = str(kubeconfigs["controller-manager"])
        procs.append(_spawn([
            str(CACHE / BINARIES["kube-controller-manager"]), "--kubeconfig", kc,
            "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"), "--use-service-account-credentials=true",
            "--controllers=*", "--leader-elect=false", "--bind-address=127.0.0.1", "--port=0",
            "--secure-port=0", "--service-cluster-ip-range=10.0.0.0/24",
            "--cluster-signing-cert-file", str(pki / "ca.crt"),
            "--cluster-signing-key-file", str(pki / "ca.key"), "--logtostderr", "--v", "1"],
            workdir / "controller-manager.log"))
        ks = str(kubeconfigs["scheduler"])
        procs.append(_spawn([
            str(CACHE / BINARIES["kube-scheduler"]), "--kubeconfig", ks,
            "--authentication-kubeconfig", ks, "--authorization-kubeconfig", ks,
            "--leader-elect=false", "--bind-address=127.0.0.1", "--port=0",
            "--secure-port=0", "--logtostderr", "--v", "1"], workdir / "scheduler.log"))
        from tests.kubedns import ClusterDNS

        cluster.dns = ClusterDNS(cluster.admin_client(), BRIDGE_IP)
        cluster.saved_sysctls = {key: Path("/proc/sys", key).read_text()
                                 for key in SYSCTLS if Path("/proc/sys", key).exists()}
        root = cluster.kubelet_root
        root.mkdir()
        procs.append(_spawn([
            str(CACHE / BINARIES["kubelet"]), "--kubeconfig", str(kubeconfigs["kubelet"]),
            "--container-runtime=docker", "--docker-endpoint=unix:///var/run/docker.sock",
            f"--pod-infra-container-image={pause}", "--cgroup-driver=cgroupfs",
            "--fail-swap-on=false", "--oom-score-adj=0", "--root-dir", str(root),
            "--cert-dir", str(workdir / "kubelet-pki"), "--client-ca-file", str(pki / "ca.crt"),
            "--anonymous-auth=false", "--authorization-mode=Webhook",
            "--resolv-conf=/etc/resolv.conf", f"--node-ip={BRIDGE_IP}",
            f"--cluster-dns={BRIDGE_IP}", "--cluster-domain=cluster.local",
            f"--address={BRIDGE_IP}",
            f"--hostname-override={NODE}", "--read-only-port=0",
            "--healthz-bind-address=127.0.0.1", "--healthz-port=0",
            # a test node shares this machine's disk: no image garbage collection (it deleted
            # the images under test when the disk passed 85%) and no disk-pressure evictions
            "--image-gc-high-threshold=100", "--image-gc-low-threshold=99",
            "--eviction-hard=memory.available<100Mi",
            "--logtostderr", "--v", "1"], workdir / "kubelet.log"))
        _wait_node_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_service_account(api_client, namespace: str, name: str, timeout: float = 60) -> None:
    """Wait until the token controller gave a ServiceAccount its token Secret (pods using it
    are refused by the admission plugin until then)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if core.read_namespaced_service_account(name, namespace).secrets:
                return
        except client.ApiException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ServiceAccount {namespace}/{name} has no token after {timeout}s")


def namespace_with_secret(cluster: Cluster, prefix: str, credentials: dict[str, str]) -> str:
    """A fresh namespace ``<prefix>-<6 hex>`` holding the S3 Secret ``clsact-s3`` with
    ``credentials``, once its default ServiceAccount has its token."""
    import uuid

    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.admin_client())
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, {"metadata": {"name": "clsact-s3"},
                                         "stringData": credentials})
    wait_service_account(cluster.admin_client(), name, "default")
    return name
