"""Launcher latency, side by side in one run on a real kube-apiserver 1.20.2 + etcd (loopback):
render (in process and as a command), submit (new job / unchanged resubmit), status, cancel.

Run: ``python -m tests.bench.launch --output bench-results/launch.json`` (``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clsact.launch import jobs, render, values
from clsact.launch.cluster import connect
from clsact.launch.names import job_name
from tests import kubeserver
from tests.bench.provenance import header, write_result
from tests.conftest import REPO, SHARED

CONFIG = REPO / "configs" / "mbv3_qat_dis.yaml"
OVERRIDES = ["Global.model_dir=s3://models/mbv3", "Global.data_dir=s3://datasets/ilsvrc2012"]


KUBE_IMPORT = "python -c 'import kubernetes.client'"


def _median_ms(fn, repeat: int) -> float:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _launch_values(name: str, workers: int = 4) -> values.LaunchValues:
    return values.resolve({}, {"image": "reg.example.com/clsact:1", "name": name,
                               "workers": workers, "gpusPerWorker": 8,
                               "saveDir": "s3://ml-models/clsact/bench", "s3Secret": ""})


def _cli(*args: str, kubeconfig: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "clsact", *args, "--kubeconfig",
                           str(kubeconfig)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)


def run(repeat: int) -> dict[str, float]:
    """Every measurement in ms (medians)."""
    with tempfile.TemporaryDirectory(prefix="clsact-bench-kube-") as tmp:
        (Path(tmp) / "crds").mkdir()
        crds, _upstream = kubeserver.crd_files(SHARED / "reference", Path(tmp) / "crds")
        server = kubeserver.start(Path(tmp) / "kube")
        try:
            kubeserver.install_crd(server.admin_client(), crds[0])
            kc = server.kubeconfig()
            cluster = connect(str(kc))
            op = render.OPERATORS["paddle"]
            r = {}
            r["render (in process)"] = _median_ms(
                lambda i: render.render(CONFIG, OVERRIDES, _launch_values("b")), repeat)
            r["submit: new job (in process)"] = _median_ms(
                lambda i: jobs.submit(cluster, render.render(CONFIG, OVERRIDES,
                                                             _launch_values(f"n{i}"))), repeat)
            r["submit: unchanged resubmit (in process)"] = _median_ms(
                lambda i: jobs.submit(cluster, render.render(CONFIG, OVERRIDES,
                                                             _launch_values("n0"))), repeat)
            r["cancel (in process)"] = _median_ms(
                lambda i: jobs.delete_job(cluster, op, "default",
                                          job_name(f"n{i}")), repeat)
            spec = ["--config", str(CONFIG), "--image", "reg.example.com/clsact:1",
                    "--save-dir", "s3://ml-models/clsact/bench", "--s3-secret", "",
                    *[x for o in OVERRIDES for x in ("--set", o)]]
            cli_repeat = max(3, repeat // 4)
            r["clsact --version (python start)"] = _median_ms(
                lambda i: subprocess.run([sys.executable, "-m", "clsact", "--version"],
                                         capture_output=True, cwd=REPO), cli_repeat)
            r[KUBE_IMPORT] = _median_ms(
                lambda i: subprocess.run([sys.executable, "-c", "import kubernetes.client"],
                                         capture_output=True, cwd=REPO), cli_repeat)
            r["clsact render (command)"] = _median_ms(
                lambda i: subprocess.run([sys.executable, "-m", "clsact", "render", *spec],
                                         capture_output=True, cwd=REPO, check=True), cli_repeat)
            r["clsact submit (command, new job)"] = _median_ms(
                lambda i: _cli("submit", *spec, "--name", f"c{i}", kubeconfig=kc), cli_repeat)
            r["clsact status (command)"] = _median_ms(
                lambda i: _cli("status", "c0", kubeconfig=kc), cli_repeat)
            return r
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--output", default="bench-results/launch.json")
    args = parser.parse_args(argv)
    print(header())
    results = run(args.repeat)
    print(f"{'launcher operation':<42} {'median ms':>10}")
    for key, ms in results.items():
        print(f"{key:<42} {ms:>10.1f}")
    submit, render_ms = (results["clsact submit (command, new job)"],
                         results["clsact render (command)"])
    print(f"\nclsact submit command = {submit / render_ms:.2f}x clsact render; importing the "
          f"kubernetes client alone takes {results[KUBE_IMPORT]:.0f} ms of it")
    write_result(args.output, {"median_ms": results, "repeat": args.repeat})
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
