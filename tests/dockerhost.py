"""A real Docker engine for the image tests: Debian's dockerd (started by docker/dockerd.sh
when none answers, stopped again by whoever started it), images built by docker/build.sh
exactly as `make image-cpu` / `make image` build them, and containers run hardened as on a
cluster: non-root, read-only root filesystem, tmpfs /tmp and /dev/shm, no capabilities."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clsact.launch import render
from tests.conftest import copy_images

REPO = Path(__file__).resolve().parent.parent
# where the rendered pod's ConfigMap volume puts the config
CONFIG_IN_POD = f"{render.CONFIG_MOUNT_DIR}/{render.CONFIG_FILE_NAME}"
DOCKER = "/usr/bin/docker"  # Debian's client; another `docker` may come first on PATH
# What a pod with readOnlyRootFilesystem, emptyDir /tmp and a memory emptyDir /dev/shm gets.
HARDENED = ["--read-only", "--tmpfs", "/tmp:rw,exec,size=4g", "--tmpfs", "/dev/shm:rw,size=2g",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
# Names only: docker copies the values from its own environment, so they never appear in a
# command line (or a test log).
S3_ENV = ["-e", "AWS_ACCESS_KEY_ID", "-e", "AWS_SECRET_ACCESS_KEY", "-e", "AWS_DEFAULT_REGION",
          "-e", "AWS_EC2_METADATA_DISABLED"]


def secret_dir(folder: Path) -> Path:
    """The S3 Secret as the kubelet mounts it: one file per key (this process's keys),
    readable by the image's user."""
    folder.mkdir(parents=True)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        (folder / key).write_text(os.environ[key])
        (folder / key).chmod(0o644)
    folder.chmod(0o755)
    return folder


def docker(*args: str, timeout: float = 600, check: bool = False,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the docker client; raises CalledProcessError (with its stderr) if ``check``."""
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


@dataclass
class Engine:
    """A Docker engine that answers; ``pid`` is set when this process started it."""

    pid: int | None

    def stop(self) -> None:
        """Stop dockerd if this process started it (and wait, at most 30 s)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(self.pid, signal.SIGKILL)


def start_engine() -> Engine:
    """Make a Docker engine answer (docker/dockerd.sh).

    Raises:
        RuntimeError: no engine could be had (the script's one-line reason).
    """
    proc = subprocess.run(["bash", str(REPO / "docker" / "dockerd.sh")], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"no Docker engine: {proc.stderr.strip()[-500:]}")
    out = proc.stdout.strip()
    return Engine(int(out.split()[1]) if out.startswith("started") else None)


def build_image(variant: str, timeout: float = 3600, **env: str) -> str:
    """Build the ``variant`` (cpu|gpu) image with docker/build.sh (``env``: its settings,
    e.g. GPU_ARCHS); returns its name.

    Raises:
        RuntimeError: the build failed (with the end of its log).
    """
    proc = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), variant],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"docker/build.sh {variant} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def inspect(ref: str, fmt: str) -> str:
    """``docker inspect --format FMT REF`` (an image or a container)."""
    return docker("inspect", "--format", fmt, ref, check=True).stdout.strip()


def run(image: str, *args: str, options: tuple[str, ...] = (), network: str = "host",
        timeout: float = 900) -> subprocess.CompletedProcess:
    """``docker run`` a hardened, throw-away container of ``image`` with ``args``."""
    return docker("run", "--rm", "--network", network, *HARDENED, *options, image, *args,
                  timeout=timeout)


def start(image: str, name: str, *args: str, options: tuple[str, ...] = (),
          network: str = "host") -> None:
    """Start a hardened container ``name`` in the background (remove it with :func:`remove`)."""
    docker("run", "-d", "--name", name, "--network", network, *HARDENED, *options, image,
           *args, check=True)


def wait(name: str, timeout: float = 900) -> int:
    """The exit code of container ``name`` once it has stopped."""
    return int(docker("wait", name, timeout=timeout, check=True).stdout.strip())


def logs(name: str) -> str:
    """Everything container ``name`` printed (stdout and stderr)."""
    proc = docker("logs", name)
    return proc.stdout + proc.stderr


def remove(*names: str) -> None:
    """Remove containers (running or not); missing ones are ignored."""
    docker("rm", "-f", *names)


def local_job_volumes(tmp_path: Path, cfg: Path, model: Path, data: Path,
                      lists: tuple[str, ...] = ("small_train.txt", "small_val.txt"),
                      ) -> tuple[tuple[str, ...], Path]:
    """``docker run`` options mounting a job's files as a pod's volumes would, for the image's
    user (10001): ``cfg`` where the ConfigMap goes, ``model`` and the images of ``lists`` in
    ``data`` read-only at /in/model and /in/data, and a writable /out; returns (options,
    the host folder behind /out)."""
    cfg.chmod(0o644)
    inputs = tmp_path / "in"
    shutil.copytree(model, inputs / "model")
    for name in lists:
        copy_images(data, inputs / "data", (data / name).read_text().splitlines())
        shutil.copy(data / name, inputs / "data" / name)
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    return ("-v", f"{cfg}:{CONFIG_IN_POD}:ro", "-v", f"{inputs}:/in:ro", "-v", f"{out}:/out"), out


class Registry:
    """A real image registry (Debian's docker-registry, the CNCF distribution server) on
    loopback, storing into ``root``; Docker pushes to 127.0.0.0/8 over plain HTTP."""

    def __init__(self, root: Path, port: int) -> None:
        if not shutil.which("docker-registry"):
            subprocess.run(["bash", str(REPO / "docker" / "apt.sh"), "install", "docker-registry"],
                           check=True, timeout=1800)
        self.address = f"127.0.0.1:{port}"
        config = root / "config.yml"
        config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                          f"http:\n  addr: {self.address}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not self._answers():
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"docker-registry did not start on {self.address}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2):
                return True
        except OSError:
            return False

    def get(self, path: str, accept: str = "application/json") -> tuple[dict, dict]:
        """GET /v2/PATH: (headers, JSON body)."""
        import json
        import urllib.request

        request = urllib.request.Request(f"http://{self.address}/v2/{path}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return dict(resp.headers), json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
