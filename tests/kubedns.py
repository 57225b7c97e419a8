"""Plays the cluster DNS (CoreDNS's kubernetes plugin) for the test cluster: A records of
Services and of the pods behind a headless Service, answered from the Services and
Endpoints the real API server holds (the real endpoints controller fills them, with each
pod's hostname when its ``spec.subdomain`` names the Service).

* ``<svc>.<ns>.svc.cluster.local``: the ClusterIP, or (headless) every endpoint address;
* ``<hostname>.<svc>.<ns>.svc.cluster.local``: that pod's address.

Anything else is NXDOMAIN (no upstream: nothing leaves this machine). The kubelet points pods
at it with ``--cluster-dns`` (tests/kubecluster.py); it listens on the docker bridge's
address, UDP port 53.
"""

from __future__ import annotations

import socketserver
import struct
import threading

DOMAIN = "cluster.local"
A, AAAA = 1, 28


def parse_query(data: bytes) -> tuple[int, str, int, int]:
    """(id, lower-case name without the final dot, qtype, end of the question)."""
    qid = struct.unpack("!H", data[:2])[0]
    labels, i = [], 12
    while data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    return qid, ".".join(labels).lower(), qtype, i + 5


def answer(data: bytes, addresses: list[str] | None) -> bytes:
    """The response to the query ``data``: A records of ``addresses`` (None: NXDOMAIN)."""
    qid, _name, qtype, end = parse_query(data)
    rcode = 3 if addresses is None else 0
    records = [a for a in addresses or []] if qtype == A else []
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(records), 0, 0)
    body = data[12:end]
    for ip in records:
        body += struct.pack("!HHHIH", 0xC00C, A, 1, 5, 4) + bytes(int(x) for x in ip.split("."))
    return header + body


class ClusterDNS:
    """The DNS server; :meth:`lookup` is what it answers (None: no such name)."""

    def __init__(self, api_client, host: str, port: int = 53):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.queries: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                try:
                    _qid, name, _qtype, _end = parse_query(data)
                    outer.queries.append(name)
                    sock.sendto(answer(data, outer.lookup(name)), self.client_address)
                except Exception:  # noqa: BLE001 - a malformed query gets no answer
                    pass

        self.server = socketserver.ThreadingUDPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lookup(self, name: str) -> list[str] | None:
        from kubernetes import client

        suffix = f".svc.{DOMAIN}"
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        if len(parts) not in (2, 3):
            return None
        host, (svc, ns) = (parts[0] if len(parts) == 3 else None), parts[-2:]
        try:
            service = self.core.read_namespaced_service(svc, ns)
            endpoints = self.core.read_namespaced_endpoints(svc, ns)
        except client.ApiException:
            return None
        if host is None and service.spec.cluster_ip not in (None, "None"):
            return [service.spec.cluster_ip]
        ips = [a for subset in endpoints.subsets or []
               for a in [*(subset.addresses or []), *(subset.not_ready_addresses or [])]
               if host is None or a.hostname == host]
        return [a.ip for a in ips] if ips else None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
