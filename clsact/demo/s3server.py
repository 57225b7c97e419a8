"""An S3-compatible server on loopback (moto server) for the demo, the benchmark and tests.

It runs in its own process (``python -m clsact.demo.s3server``), so its CPU use does not steal
the GIL from the job, just as a real object store would not. Production runs talk to a real
store (AWS S3, MinIO, Ceph RGW) instead; nothing in clsact depends on this module.

``moto[server]`` is a development dependency (``pip install clsact[dev]``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.request

from clsact.errors import ClsactError

# Credentials the embedded server accepts (it does not check them unless ``auth_after``).
DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "clsact-demo", "AWS_SECRET_ACCESS_KEY": "clsact-demo",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class LocalS3Server:
    """A moto S3 server on 127.0.0.1 (or ``host``; a free port) in a child process.

    ``auth_after``: when set, the server enforces IAM authentication after that many
    unauthenticated requests (enough to create users and policies), so tests can see real
    403 / InvalidAccessKeyId answers.
    """

    def __init__(self, auth_after: int | None = None, host: str = "127.0.0.1") -> None:
        self.auth_after = auth_after
        self.host = host
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the server; returns its endpoint URL.

        Raises:
            ClsactError: moto is not installed or the server did not start.
        """
        env = {**os.environ, **DEMO_CREDENTIALS}
        if self.auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_after)
        self._proc = subprocess.Popen([sys.executable, "-m", "clsact.demo.s3server", self.host],
                                      env=env, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                                      text=True)
        line = self._proc.stdout.readline().strip() if self._proc.stdout else ""
        if not line.startswith("http://"):
            self.stop()
            raise ClsactError("the embedded S3 server did not start (is moto[server] "
                              "installed? `pip install 'moto[server]'`)")
        self.endpoint = line
        return line

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def client(self, **credentials: str):
        """A boto3 S3 client for this server (demo credentials unless given)."""
        import boto3

        creds = {"aws_access_key_id": DEMO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                 "aws_secret_access_key": DEMO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                 **credentials}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **creds)

    def stop(self) -> None:
        """Stop the server (its data is gone)."""
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()  # the child exits when its stdin closes
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Child process: serve on a free port of the address in argv (default loopback), print
    the URL, run until stdin closes."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"http://{host}:{port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    try:
        main()
    except ModuleNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
