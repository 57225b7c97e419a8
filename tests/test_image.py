"""The CPU image, built by docker/build.sh and run by Debian's dockerd: what it contains, a
compress inside it (S3 in and out on the host's loopback; and with no network at all),
`docker stop` during training, and the launcher/image contract (two containers started with
the command and env of a `clsact render`ed PaddleJob pod train together and publish one run).

Every container runs as a pod would: the image's non-root user, read-only root filesystem,
tmpfs /tmp and /dev/shm, no capabilities."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

import clsact
from clsact.launch import render, validate, values
from tests import dockerhost
from tests.conftest import REPO, list_keys, run_cli, upload_tree
from tests.kubeserver import free_port
from tests.test_compress import small_config
from tests.test_distributed import pod_env

CONFIG_IN_POD = dockerhost.CONFIG_IN_POD


@pytest.fixture(scope="module")
def s3_inputs(s3_server, digits_dir, small_digits_dir, clas_model) -> str:
    """A bucket with the test model and the digits (all of them, and the short lists)."""
    name = f"image-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    upload_tree(client, name, "model", clas_model, ["inference.pdmodel", "inference.pdiparams"])
    upload_tree(client, name, "data", digits_dir)
    return name


def s3_config(tmp_path: Path, bucket: str, **train) -> Path:
    """The short test config reading model and data from s3://bucket."""
    path = small_config(tmp_path, Path("/unused"), Path("/unused"), **train)
    raw = yaml.safe_load(path.read_text())
    raw["Global"].update(model_dir=f"s3://{bucket}/model", data_dir=f"s3://{bucket}/data")
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o644)
    return path


def s3_metrics(s3_server, bucket: str, prefix: str) -> dict:
    body = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/metrics.json")["Body"]
    return json.loads(body.read())


def test_image_contents_and_contract(cpu_image):
    """What the launcher relies on, and what must not ship."""
    assert json.loads(dockerhost.inspect(cpu_image, "{{json .Config.Entrypoint}}")) == ["clsact"]
    assert dockerhost.inspect(cpu_image, "{{.Config.User}}") == "10001:10001"
    labels = json.loads(dockerhost.inspect(cpu_image, "{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] == clsact.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == (head or "unknown")
    assert "cpu" in labels["io.clsact.extras"]

    proc = dockerhost.run(cpu_image, "--version", network="none")
    assert proc.returncode == 0 and proc.stdout.strip() == f"clsact {clsact.__version__}"
    # the launcher's templates ship as package data in the installed (non-editable) package
    proc = dockerhost.run(cpu_image, "rbac", "-n", "ml", network="none")
    assert proc.returncode == 0, proc.stderr[-500:]
    assert [d["kind"] for d in yaml.safe_load_all(proc.stdout)] == [
        "ServiceAccount", "Role", "RoleBinding"]

    probe = """
import importlib.metadata as md, json, os, shutil, subprocess, sys
import paddle
print(json.dumps({
  "uid": os.getuid(), "python": sys.version_info[:2], "paddle": paddle.__version__,
  "cuda": paddle.is_compiled_with_cuda(),
  "clsact_bin": os.path.realpath(shutil.which("clsact") or ""),
  "python_bin": shutil.which("python"),
  "dists": sorted(d.metadata["Name"].lower() for d in md.distributions()),
  "pip_check": subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                              text=True).stdout.strip().splitlines(),
  "present": [p for p in ("/src", "/opt/clsact/lib/python3.11/site-packages/paddle/include",
              "/root/.cache") if os.path.exists(p)],
  "writable_root": os.access("/opt/clsact", os.W_OK),
  "tools": [t for t in ("gcc", "cc", "g++", "make", "git", "pytest", "ruff") if shutil.which(t)],
}))"""
    proc = dockerhost.run(cpu_image, "-c", probe, network="none",
                          options=("--entrypoint", "python"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["uid"] == 10001 and got["python"] == [3, 11]
    assert got["paddle"] == "2.6.2" and got["cuda"] is False
    defaults = {k: d for k, (_t, d) in values.VALUES.items()}
    assert got["clsact_bin"] == "/opt/clsact-app/bin/clsact"
    assert dockerhost.run(cpu_image, "-c", f"test -x {defaults['clsactBin']}", network="none",
                          options=("--entrypoint", "sh")).returncode == 0, \
        "the rendered PaddleJob's clsactBin exists in the image"
    assert got["python_bin"] == "/opt/clsact/bin/python", "the rendered `python` is the venv's"
    assert "opencv-python-headless" in got["dists"] and "opencv-python" not in got["dists"]
    assert not {"pytest", "ruff", "moto", "paddlepaddle-gpu", "wheel"} & set(got["dists"])
    assert got["pip_check"] == ["paddleslim 2.6.0 requires opencv-python, which is not "
                                "installed."], "only the documented OpenCV swap"
    assert got["present"] == [] and got["tools"] == [] and got["writable_root"] is False
    in_image = dockerhost.docker("run", "--rm", "--network", "none", "--entrypoint", "ls",
                                 cpu_image, "-A", "/tmp", check=True).stdout.split()
    assert in_image == [], "no caches left in the image's /tmp (HOME)"

    pins = dict(line.split("==") for line in (REPO / "docker" / "constraints.txt").read_text()
                .splitlines() if "==" in line)
    versions = dockerhost.run(cpu_image, "-c", "import importlib.metadata as md, json, re; print("
                              "json.dumps({re.sub('[-_.]+', '-', d.metadata['Name']).lower(): "
                              "d.version for d in md.distributions()}))",
                              network="none", options=("--entrypoint", "python"))
    shipped = json.loads(versions.stdout.splitlines()[-1])
    unpinned = {n: v for n, v in shipped.items() if pins.get(n) != v and n != "clsact"
                and n not in ("pip", "setuptools")}
    assert unpinned == {}, "every package in the image is at its docker/constraints.txt pin"


def test_demo_size_compress_from_and_to_s3(cpu_image, s3_server, s3_inputs, tmp_path):
    """The shipped demo config (all the digits, 60 steps) as the container's user, reading the
    model and the data from S3 and publishing there; verified from the host."""
    shipped = REPO / "configs" / "demo_digits.yaml"
    options = ("-v", f"{shipped}:{CONFIG_IN_POD}:ro", *dockerhost.S3_ENV)
    started = time.time()
    proc = dockerhost.run(
        cpu_image, "compress", "--config", CONFIG_IN_POD,
        "--set", f"Global.model_dir=s3://{s3_inputs}/model",
        "--set", f"Global.data_dir=s3://{s3_inputs}/data", "--set", "Global.device=cpu",
        "--save-dir", f"s3://{s3_inputs}/runs/demo", "--s3-endpoint", s3_server.endpoint,
        options=options)
    seconds = time.time() - started
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert run_cli("verify", f"s3://{s3_inputs}/runs/demo", "--s3-endpoint",
                   s3_server.endpoint).returncode == 0
    m = s3_metrics(s3_server, s3_inputs, "runs/demo")
    assert m["baseline"]["samples"] == m["compressed"]["samples"] == 359, "the whole val set"
    assert m["act"]["train_steps"] == 60
    assert m["compressed"]["top1"] > 0.5, m["compressed"]
    print(f"\ndemo-size compress in the CPU image: {seconds:.0f} s, baseline top-1 "
          f"{m['baseline']['top1']:.4f} -> int8 {m['compressed']['top1']:.4f}")


def test_compress_with_no_network(cpu_image, tmp_path, clas_model, small_digits_dir):
    """With --network none a compress of mounted local files runs to a published run: nothing
    is downloaded or pip-installed at run time."""
    cfg = small_config(tmp_path, Path("/in/model"), Path("/in/data"))
    options, out = dockerhost.local_job_volumes(tmp_path, cfg, clas_model, small_digits_dir)
    proc = dockerhost.run(cpu_image, "compress", "--config", CONFIG_IN_POD, "--save-dir",
                          "/out/run", network="none", options=options)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert run_cli("verify", str(out / "run")).returncode == 0
    assert (out / "run" / "_SUCCESS").exists()


def test_docker_stop_during_training(cpu_image, s3_server, s3_inputs, tmp_path):
    """`docker stop` (SIGTERM to the image's ENTRYPOINT, PID 1) mid-training: the container
    exits within the grace period with 130 and publishes nothing."""
    cfg = s3_config(tmp_path, s3_inputs, train_iter=100000, eval_iter=100000)
    name = f"clsact-stop-{uuid.uuid4().hex[:8]}"
    save = f"s3://{s3_inputs}/runs/stopped"
    dockerhost.start(cpu_image, name, "compress", "--config", CONFIG_IN_POD, "--save-dir", save,
                     "--s3-endpoint", s3_server.endpoint,
                     options=("-v", f"{cfg}:{CONFIG_IN_POD}:ro", *dockerhost.S3_ENV))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and "training:" not in dockerhost.logs(name):
            assert dockerhost.inspect(name, "{{.State.Running}}") == "true", dockerhost.logs(name)
            time.sleep(1)
        assert "training:" in dockerhost.logs(name), dockerhost.logs(name)[-3000:]
        time.sleep(3)  # inside the training loop
        grace = 30
        started = time.time()
        dockerhost.docker("stop", "-t", str(grace), name, check=True, timeout=grace + 30)
        took = time.time() - started
        code = int(dockerhost.inspect(name, "{{.State.ExitCode}}"))
        out = dockerhost.logs(name)
    finally:
        dockerhost.remove(name)
    assert code == 130 and took < grace, (code, took, out[-3000:])
    assert "interrupted; nothing was published" in out
    keys = list_keys(s3_server.client(), s3_inputs, "runs/stopped/")
    assert not [k for k in keys if k.endswith(("_SUCCESS", "metrics.json", "manifest.json"))], keys


def rendered_pod(tmp_path: Path, operator: str, image: str, cfg: Path, save: str,
                 endpoint: str) -> tuple[dict, Path]:
    """containers[0] of the PaddleJob `clsact render` makes (2 CPU workers, the launcher's
    defaults for `python` and `clsactBin`), and the ConfigMap's config file."""
    v = values.resolve({}, {"image": image, "workers": 2, "gpusPerWorker": 0, "saveDir": save,
                            "operator": "paddle" if operator == "paddle-operator"
                            else "kubeflow", "s3Endpoint": endpoint})
    rendered = render.render(cfg, [], v)
    validate.validate_objects(rendered.objects)
    pod = validate.pod_templates(rendered.job)[0][1]["spec"]
    mounted = tmp_path / "configmap" / render.CONFIG_FILE_NAME
    mounted.parent.mkdir()
    mounted.write_text(rendered.config_map["data"][render.CONFIG_FILE_NAME])
    mounted.chmod(0o644)
    return pod, mounted


@pytest.mark.parametrize("operator", ["paddle-operator", "kubeflow"])
def test_two_containers_run_the_rendered_paddlejob(cpu_image, s3_server, s3_inputs, tmp_path,
                                                   operator):
    """Two containers with exactly the image, command and env of the rendered pod, the S3
    Secret's keys as files where its volume puts them, the config where the ConfigMap volume
    puts it, and the env the operator injects: they train together, end with equal weights
    and publish one run."""
    save = f"s3://{s3_inputs}/runs/{operator}"
    cfg = s3_config(tmp_path, s3_inputs, train_iter=4, eval_iter=2)
    raw = yaml.safe_load(cfg.read_text())
    raw["Global"].update(batch_size=8, num_workers=1, collective_timeout=120)
    cfg.write_text(yaml.safe_dump(raw))
    pod, mounted = rendered_pod(tmp_path, operator, cpu_image, cfg, save, s3_server.endpoint)
    container = pod["containers"][0]
    assert container["image"] == cpu_image
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "s3-credentials")
    creds = dockerhost.secret_dir(tmp_path / "s3-secret")
    port = free_port()
    names = [f"clsact-{operator}-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    try:
        for i, name in enumerate(names):
            env = {**{e["name"]: e["value"] for e in container["env"]},
                   **pod_env(operator, i, port)}
            options = ["--entrypoint", container["command"][0],
                       "-v", f"{mounted}:{CONFIG_IN_POD}:ro",
                       "-v", f"{creds}:{secret_mount['mountPath']}:ro",
                       "-e", "AWS_DEFAULT_REGION", "-e", "AWS_EC2_METADATA_DISABLED"]
            for key, value in env.items():
                options += ["-e", f"{key}={value}"]
            dockerhost.start(container["image"], name, *container["command"][1:],
                             options=tuple(options))
        codes = [dockerhost.wait(name) for name in names]
        out = [dockerhost.logs(name) for name in names]
    finally:
        dockerhost.remove(*names)
    assert codes == [0, 0], "\n".join(o[-3000:] for o in out)
    prefix = f"runs/{operator}"
    assert run_cli("verify", save, "--s3-endpoint", s3_server.endpoint).returncode == 0
    m = s3_metrics(s3_server, s3_inputs, prefix)
    assert m["distributed"]["world_size"] == 2
    digests = m["act"]["state_digests_last_eval"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with equal weights"
    assert m["baseline"]["samples"] == m["compressed"]["samples"] == 64
    run_id = container["command"][container["command"].index("--run-id") + 1]
    assert m["run_id"] == run_id, "the run id the launcher put in the command"
    keys = list_keys(s3_server.client(), s3_inputs, f"{prefix}/")
    assert f"{prefix}/logs/rank-1.log" in keys and f"{prefix}/clsact.log" in keys, keys


def test_make_push_to_a_registry(cpu_image, tmp_path):
    """`make push` tags the image for REGISTRY and pushes it: the registry then serves the
    manifest Docker recorded for it. Without REGISTRY it stops with one line."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    refused = subprocess.run(["make", "--no-print-directory", "push", "VARIANTS=cpu"], cwd=REPO,
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "set REGISTRY=" in refused.stderr
    registry = dockerhost.Registry(tmp_path, free_port())
    try:
        pushed = subprocess.run(["make", "--no-print-directory", "push", "VARIANTS=cpu",
                                 f"REGISTRY={registry.address}/ml"], cwd=REPO,
                                capture_output=True, text=True, env=env, timeout=1800)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        name = pushed.stdout.strip().splitlines()[-1].removeprefix("pushed ")
        assert name == f"{registry.address}/ml/{cpu_image}"
        tag = name.rsplit(":", 1)[1]
        _, tags = registry.get("ml/clsact/tags/list")
        assert tag in tags["tags"]
        headers, _ = registry.get(f"ml/clsact/manifests/{tag}",
                                  "application/vnd.docker.distribution.manifest.v2+json")
        digests = json.loads(dockerhost.inspect(name, "{{json .RepoDigests}}"))
        assert f"{registry.address}/ml/clsact@{headers['Docker-Content-Digest']}" in digests
    finally:
        registry.stop()
        dockerhost.docker("rmi", f"{registry.address}/ml/{cpu_image}")
