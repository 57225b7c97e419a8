"""A fault-injecting HTTP proxy for S3 tests: sits between boto3 and the S3 server on
loopback and, per request, by seeded chance, drops the connection, answers 503 SlowDown or
500 InternalError, cuts the response body short, or delays it. Everything else is relayed
unchanged (one request per connection)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter

FAULTS = ("drop", "503", "500", "truncate", "slow")
_ERR = {"503": (b"503 Slow Down", b"SlowDown", b"Please reduce your request rate."),
        "500": (b"500 Internal Server Error", b"InternalError", b"We encountered an internal "
                b"error. Please try again.")}


def _recv_until(sock: socket.socket, buf: bytes, marker: bytes) -> tuple[bytes, bytes]:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    head, rest = buf.split(marker, 1)
    return head + marker, rest


def _recv_exact(sock: socket.socket, buf: bytes, n: int) -> tuple[bytes, bytes]:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf[:n], buf[n:]


def read_request(sock: socket.socket, drop: tuple[str, ...] = ()) -> bytes:
    """One HTTP request from ``sock`` (head with ``Connection: close``, no Expect, none of the
    headers named in ``drop`` (lower case), + body)."""
    head, rest = _recv_until(sock, b"", b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    kept = [h for h in lines[1:] if h.split(":")[0].strip().lower() not in ("connection",
                                                                           "expect", *drop)]
    out_head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
    if "content-length" in headers:
        body, _ = _recv_exact(sock, rest, int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line, rest = _recv_until(sock, rest, b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                trailer, rest = _recv_until(sock, rest, b"\r\n\r\n") if rest[:2] != b"\r\n" \
                    else (b"\r\n", rest[2:])
                body += size_line + trailer
                break
            data, rest = _recv_exact(sock, rest, size + 2)
            body += size_line + data
    else:
        body = b""
    return out_head + body


class FaultProxy:
    """``FaultProxy(upstream_url, rates={"503": 0.2, ...}, seed=0)``; ``start()`` returns the
    proxy's URL; ``counts`` tells what was injected."""

    def __init__(self, upstream: str, rates: dict[str, float] | None = None, seed: int = 0,
                 delay: float = 1.0, methods: tuple[str, ...] | None = None,
                 drop_headers: tuple[str, ...] = ()) -> None:
        host, port = upstream.split("://", 1)[-1].rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.rates = rates or {}
        self.delay = delay
        self.methods = methods
        self.drop_headers = tuple(h.lower() for h in drop_headers)  # a store that ignores them
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._stop = threading.Event()

    def start(self) -> str:
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def _choose(self, method: str) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self.methods and method not in self.methods:
                return None
            roll = self.rng.random()
            for fault in FAULTS:
                roll -= self.rates.get(fault, 0.0)
                if roll < 0:
                    self.counts[fault] += 1
                    return fault
            return None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            request = read_request(client, self.drop_headers)
            fault = self._choose(request.split(b" ", 1)[0].decode())
            if fault == "drop":
                return
            if fault in _ERR:
                status, code, msg = _ERR[fault]
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>" + code +
                        b"</Code><Message>" + msg + b"</Message></Error>")
                client.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                               b"Content-Length: " + str(len(body)).encode() +
                               b"\r\nConnection: close\r\n\r\n" + body)
                return
            response = self._forward(request)
            if fault == "slow":
                time.sleep(self.delay)
            if fault == "truncate":
                head, _, body = response.partition(b"\r\n\r\n")
                response = head + b"\r\n\r\n" + body[: len(body) // 2]
            client.sendall(response)
        except (ConnectionError, OSError):
            pass
        finally:
            client.close()

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self.upstream, timeout=30) as up:
            up.sendall(request)
            chunks = []
            while chunk := up.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)
