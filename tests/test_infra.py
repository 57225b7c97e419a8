"""The set-up scripts `make test` and `make demo` run on a fresh machine: every Debian package
goes through docker/apt.sh, which serialises its callers (they run at once under `make -j3`).

The concurrency tests put stand-ins for apt-get, apt-cache and dpkg-query first on PATH: the
apt-get stand-in holds a lock the way apt holds /var/lib/apt/lists/lock and fails like apt
("E: Could not get lock", exit 100) when another apt-get runs, so a race is seen, not assumed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

APT = REPO / "docker" / "apt.sh"
PACKAGES = ("etcd-server", "docker.io", "debootstrap")  # what the set-up targets install

STUB_APT_GET = r"""#!/bin/bash
# apt-get stand-in: one at a time, as apt's own lock makes it
if ! mkdir "$STATE/apt-lock" 2>/dev/null; then
    echo "E: Could not get lock $STATE/apt-lock" >&2; exit 100
fi
trap 'rmdir "$STATE/apt-lock"' EXIT
sleep 0.3
for arg in "$@"; do
    case "$arg" in
        update) echo update >> "$STATE/calls" ;;
        install) mode=install ;;
        -*|DPkg::*|Acquire::*) ;;
        *) if [ "${mode:-}" = install ]; then
               touch "$STATE/installed/$arg"; echo "install $arg" >> "$STATE/calls"
           fi ;;
    esac
done
"""
STUB_APT_CACHE = r"""#!/bin/bash
# apt-cache policy PKG: a candidate for every package but nosuchpkg
[ "$2" = nosuchpkg ] && { echo "$2:"; echo "  Candidate: (none)"; exit 0; }
echo "$2:"; echo "  Installed: (none)"; echo "  Candidate: 1.0-1"
"""
STUB_DPKG_QUERY = r"""#!/bin/bash
pkg="${@: -1}"
[ -e "$STATE/installed/$pkg" ] && { printf installed; exit 0; }
exit 1
"""


@pytest.fixture
def apt_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose apt-get, apt-cache and dpkg-query are the stand-ins above."""
    bin_dir, state, sources = tmp_path / "bin", tmp_path / "state", tmp_path / "apt"
    for folder in (bin_dir, state / "installed", sources / "sources.list.d"):
        folder.mkdir(parents=True)
    (sources / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    for name, text in (("apt-get", STUB_APT_GET), ("apt-cache", STUB_APT_CACHE),
                       ("dpkg-query", STUB_DPKG_QUERY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state),
            "CLSACT_APT_LOCK": str(tmp_path / "clsact-apt.lock"),
            "CLSACT_APT_STAMP": str(tmp_path / "updated"), "CLSACT_APT_SOURCES": str(sources),
            "CLSACT_APT_WAIT": "60"}


def _run_at_once(commands: list[list[str]], env: dict[str, str]
                 ) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for cmd in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), p.stdout.read(),
                                        p.stderr.read()) for p in procs]


@pytest.mark.skipif(os.geteuid() != 0, reason="apt.sh installs as root")
def test_parallel_installs_are_serialised_with_one_update(apt_env, tmp_path):
    """What `make -j3 venv kube test-image-cpu` does on a fresh machine: three installers at
    once. All succeed, and apt's lists are updated once."""
    jobs = [["bash", str(APT), "install", pkg] for pkg in PACKAGES]
    results = _run_at_once(jobs, apt_env)
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    calls = (tmp_path / "state" / "calls").read_text().split("\n")
    assert calls.count("update") == 1, calls
    assert sorted(c for c in calls if c.startswith("install")) == [
        "install debootstrap", "install docker.io", "install etcd-server"]
    # already installed: nothing runs, not even the lock
    again = subprocess.run(["bash", str(APT), "install", "docker.io"], env=apt_env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and calls == (tmp_path / "state" / "calls").read_text().split("\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="apt.sh installs as root")
def test_without_the_lock_the_installers_race(apt_env, tmp_path):
    """The stand-in sees the race when the helper's lock is off (flock replaced by `true`):
    the failure the issue reported, so the test above can fail."""
    (Path(apt_env["PATH"].split(":")[0]) / "flock").write_text("#!/bin/sh\nexit 0\n")
    (Path(apt_env["PATH"].split(":")[0]) / "flock").chmod(0o755)
    jobs = [["bash", str(APT), "install", pkg] for pkg in PACKAGES]
    results = _run_at_once(jobs, apt_env)
    assert any(r.returncode != 0 for r in results)
    assert any("Could not get lock" in r.stderr for r in results)


@pytest.mark.skipif(os.geteuid() != 0, reason="apt.sh installs as root")
def test_a_package_the_sources_lack_is_named_in_one_line(apt_env, tmp_path):
    proc = subprocess.run(["bash", str(APT), "install", "docker.io", "nosuchpkg"], env=apt_env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("apt.sh: error: package nosuchpkg cannot be had from the apt sources")
    assert not (tmp_path / "state" / "installed" / "docker.io").exists(), "nothing installed"


def test_bad_usage_is_refused(apt_env):
    proc = subprocess.run(["bash", str(APT), "remove", "x"], env=apt_env, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "usage: apt.sh" in proc.stderr


def test_every_system_package_goes_through_apt_sh():
    """No script of the repository calls apt-get install/update itself, except apt.sh and
    the image's own system-packages.sh (it installs into the image's root file system)."""
    allowed = {APT, REPO / "docker" / "system-packages.sh"}
    pattern = re.compile(r"\bapt-get\b.*\b(install|update|source)\b")
    offenders = []
    for path in [*REPO.glob("docker/*"), *REPO.glob("tests/**/*.py"), *REPO.glob("tests/infra/*"),
                 *REPO.glob("clsact/**/*.py"), REPO / "Makefile", REPO / ".ci" / "run"]:
        if path in allowed or not path.is_file() or path.name == Path(__file__).name:
            continue
        code = [line for line in path.read_text(errors="replace").splitlines()
                if not line.lstrip().startswith("#")]
        if any(pattern.search(line) for line in code):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
