"""A real Kubernetes API server (kube-apiserver 1.20.2 + etcd) on loopback, for the tests.

The binary is built once by ``tests/infra/kubernetes.sh`` (``make test`` runs it) and
cached outside the checkout. No controllers, scheduler or kubelet run here: nothing acts on
the objects, so tests play the operator by writing the ``status`` subresource
(``tests/kubecluster.py`` runs a whole cluster where controllers must act).

Authentication: a static admin token (group ``system:masters``) and service-account tokens
from the TokenRequest API; authorization: RBAC.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CACHE = Path(os.environ.get("CLSACT_CACHE", Path.home() / ".cache" / "clsact"))
APISERVER = CACHE / "kube-apiserver-1.20.2"
BUILD_SCRIPT = Path(__file__).parent / "infra" / "kubernetes.sh"
ADMIN_TOKEN = "clsact-test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str,
                     namespace: str = "default", context: str = "test") -> Path:
    """A kubeconfig with one context using a bearer token."""
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
           "clusters": [{"name": "test", "cluster": {"server": server,
                                                     "certificate-authority": str(ca_file)}}],
           "users": [{"name": context, "user": {"token": token}}],
           "contexts": [{"name": context, "context": {"cluster": "test", "user": context,
                                                      "namespace": namespace}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def strip_validations(schema: Any) -> Any:
    """What a 1.20 API server cannot take from a newer CRD: ``x-kubernetes-validations`` (CEL
    rules), and ``default: ""`` (JobSet v0.12.0 has it on the pod template's object names,
    which 1.20 reads as null and refuses) with the list-map markings that then require one
    (the lists become atomic: merging does not matter to the tests)."""
    if isinstance(schema, dict):
        out = {k: strip_validations(v) for k, v in schema.items()
               if k not in ("x-kubernetes-validations", "x-kubernetes-list-map-keys")
               and not (k == "default" and v == "")}
        if out.get("x-kubernetes-list-type") == "map":
            out["x-kubernetes-list-type"] = "atomic"
        return out
    if isinstance(schema, list):
        return [strip_validations(v) for v in schema]
    return schema


@dataclass
class KubeServer:
    """A running etcd + kube-apiserver pair; ``stop()`` ends both and removes their files."""

    workdir: Path
    url: str
    ca_file: Path
    procs: list[subprocess.Popen]
    apiserver_argv: list[str] = field(default_factory=list)
    crd_files: list[Path] = field(default_factory=list)
    upstream_crds: bool = True

    def restart_apiserver(self, down_for: float) -> None:
        """Stop kube-apiserver, wait ``down_for`` seconds, start it again (etcd keeps the
        objects) and wait until it is ready: an outage as an upgrade would cause."""
        old = self.procs[-1]
        old.terminate()
        old.wait(timeout=30)
        time.sleep(down_for)
        log = self.workdir / "apiserver.log"
        self.procs[-1] = subprocess.Popen(self.apiserver_argv, stdout=log.open("a"),
                                          stderr=subprocess.STDOUT)
        wait_ready(self.url, self.ca_file, self.procs[-1], log)

    def kubeconfig(self, name: str = "admin", token: str = ADMIN_TOKEN,
                   namespace: str = "default") -> Path:
        return write_kubeconfig(self.workdir / f"kubeconfig-{name}", self.url, self.ca_file,
                                token, namespace)

    def admin_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig()))

    def stop_processes(self, timeout: float = 20) -> None:
        """Stop every process, the last started first (SIGTERM, then SIGKILL)."""
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self.stop_processes()
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_ready(url: str, ca_file: Path, proc: subprocess.Popen, log: Path,
                timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited ({proc.returncode}):\n"
                               + log.read_text()[-3000:])
        if ca_file.exists():
            ctx = ssl.create_default_context(cafile=str(ca_file))
            req = urllib.request.Request(f"{url}/readyz",
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.5)
    raise RuntimeError(f"kube-apiserver not ready after {timeout}s:\n" + log.read_text()[-3000:])


def etcd_argv(workdir: Path, client: int, peer: int) -> list[str]:
    """etcd on loopback ports with its data under ``workdir``."""
    return ["etcd", "--name", "clsact-test", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"clsact-test=http://127.0.0.1:{peer}", "--log-level", "error"]


def start(workdir: Path) -> KubeServer:
    """Start etcd and kube-apiserver on free loopback ports under ``workdir``.

    Raises:
        RuntimeError: the binary is missing (with how to build it) or the server never
            became ready (with the end of its log).
    """
    if not APISERVER.is_file():
        raise RuntimeError(f"{APISERVER} is missing: run `bash {BUILD_SCRIPT}` (make test does)")
    if not shutil.which("etcd"):
        raise RuntimeError(f"etcd is not installed: run `bash {BUILD_SCRIPT}` (make test does)")
    workdir.mkdir(parents=True, exist_ok=True)
    client, peer, secure = free_port(), free_port(), free_port()
    etcd_log = (workdir / "etcd.log").open("w")
    etcd = subprocess.Popen(etcd_argv(workdir, client, peer), stdout=etcd_log,
                            stderr=subprocess.STDOUT)
    key = workdir / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    (workdir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n')
    certs = workdir / "certs"
    log = workdir / "apiserver.log"
    argv = [str(APISERVER), "--etcd-servers", f"http://127.0.0.1:{client}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(secure), "--insecure-port", "0", "--cert-dir", str(certs),
            "--token-auth-file", str(workdir / "tokens.csv"), "--authorization-mode", "RBAC",
            "--service-account-key-file", str(key),
            "--service-account-signing-key-file", str(key),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--api-audiences", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--disable-admission-plugins", "ServiceAccount", "--logtostderr", "--v", "0"]
    apiserver = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = KubeServer(workdir, f"https://127.0.0.1:{secure}", certs / "apiserver.crt",
                        [etcd, apiserver], argv)
    try:
        wait_ready(server.url, server.ca_file, apiserver, log)
    except BaseException:
        server.stop()
        raise
    return server


def minimal_crd(operator) -> dict:
    """The PaddleJob CRD of ``operator`` (:mod:`clsact.launch.operators`) as clsact uses it:
    group, version, kind, plural, namespaced, a status subresource, fields kept as sent.

    For a checkout without ../shared/reference (the upstream CRDs): the cluster tests still
    run against the real API server; only checks of the upstream schemas skip.
    """
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": operator.crd_name},
        "spec": {"group": operator.group, "scope": "Namespaced",
                 "names": {"kind": operator.kind, "plural": operator.plural,
                           "singular": operator.kind.lower(),
                           "listKind": f"{operator.kind}List"},
                 "versions": [{"name": operator.version, "served": True, "storage": True,
                               "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {
                                   "type": "object", "properties": {
                                       "spec": open_object, "status": open_object}}}}]}}


def crd_files(reference: Path, folder: Path) -> tuple[list[Path], bool]:
    """The CRD files to install (paddle-operator's PaddleJob, Kubeflow's, JobSet, Volcano's
    PodGroup): the upstream ones under ``reference`` when present, else :func:`minimal_crd`
    ones written to ``folder``; and whether they are the upstream ones."""
    from clsact.launch.operators import JOBSET, KUBEFLOW, PADDLE, PODGROUP

    upstream = [reference / "paddle-operator" / "crd-paddlejobs.batch.paddlepaddle.org.yaml",
                reference / "kubeflow" / "crd-paddlejobs.kubeflow.org-v1.9.4.yaml",
                reference / "jobset" / "crd-jobsets.jobset.x-k8s.io-v0.12.0.yaml",
                reference / "volcano" / "crd-podgroups.scheduling.volcano.sh.yaml"]
    if all(p.is_file() for p in upstream):
        return upstream, True
    files = []
    for op in (PADDLE, KUBEFLOW, JOBSET, PODGROUP):
        path = folder / f"{op.crd_name}.yaml"
        path.write_text(yaml.safe_dump(minimal_crd(op)))
        files.append(path)
    return files, False


def install_crd(api_client, path: Path) -> str:
    """Create the CRD of a YAML file (:func:`strip_validations`) and wait until it is
    served."""
    from kubernetes import client

    crd = next(d for d in yaml.safe_load_all(path.read_text())
               if d and d.get("kind") == "CustomResourceDefinition")
    crd = strip_validations(copy.deepcopy(crd))
    crd["metadata"] = {"name": crd["metadata"]["name"]}
    ext = client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        if any(c.type == "Established" and c.status == "True"
               for c in (got.status.conditions or [])):
            group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
            # the discovery document follows the Established condition by a moment
            try:
                client.CustomObjectsApi(api_client).get_api_resources(group, version)
                return crd["metadata"]["name"]
            except client.ApiException:
                pass
        time.sleep(0.3)
    raise RuntimeError(f"CRD {crd['metadata']['name']} not established after 30s")


def service_account_token(api_client, namespace: str, name: str) -> str:
    """A token of a ServiceAccount from the TokenRequest API (no token controller runs)."""
    from kubernetes import client

    req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
           "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}
    resp = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        name, namespace, req)
    return resp.status.token


class FakeKubelet:
    """Serves ``/containerLogs/<ns>/<pod>/<container>`` over TLS as a kubelet does, so the
    API server's real ``pods/log`` proxy has something to read (no kubelet runs here).

    ``logs[(namespace, pod)]`` is the list of lines; with ``?follow=true`` they are sent one
    by one, ``delay`` seconds apart, as a streaming kubelet would.
    """

    def __init__(self, workdir: Path, delay: float = 0.1):
        import http.server
        import threading

        self.logs: dict[tuple[str, str], list[str]] = {}
        self.requests: list[str] = []
        cert, key = workdir / "kubelet.crt", workdir / "kubelet.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")
                lines = outer.logs.get((parts[1], parts[2])) if len(parts) == 4 else None
                if parts[0] != "containerLogs" or lines is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines:
                    data = f"{line}\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    if "follow=true" in query:
                        time.sleep(delay)
                self.wfile.write(b"0\r\n\r\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register_node(self, api_client, name: str = "node-1") -> str:
        """Create a Node whose kubelet endpoint is this server."""
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        core.create_node({"metadata": {"name": name}})
        core.patch_node_status(name, {"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}})
        return name

    def stop(self) -> None:
        self.server.shutdown()
