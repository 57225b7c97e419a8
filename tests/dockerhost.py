"""A real Docker engine for the image tests: Debian's dockerd (started by docker/dockerd.sh
when none answers, stopped again by whoever started it), images built by docker/build.sh
exactly as `make image-cpu` / `make image` build them, and containers run hardened as on a
cluster: non-root, read-only root filesystem, tmpfs /tmp and /dev/shm, no capabilities."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"  # Debian's client; another `docker` may come first on PATH
# What a pod with readOnlyRootFilesystem, emptyDir /tmp and a memory emptyDir /dev/shm gets.
HARDENED = ["--read-only", "--tmpfs", "/tmp:rw,exec,size=4g", "--tmpfs", "/dev/shm:rw,size=2g",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
# Names only: docker copies the values from its own environment, so they never appear in a
# command line (or a test log).
S3_ENV = ["-e", "AWS_ACCESS_KEY_ID", "-e", "AWS_SECRET_ACCESS_KEY", "-e", "AWS_DEFAULT_REGION",
          "-e", "AWS_EC2_METADATA_DISABLED"]


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


def build_image(variant: str, timeout: float = 3600) -> str:
    """Build the ``variant`` (cpu|gpu) image with docker/build.sh; returns its name.

    Raises:
        RuntimeError: the build failed (with the end of its log).
    """
    proc = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), variant],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
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
