"""Shared fixtures: a real JPEG dataset (sklearn digits) and a real exported MobileNetV3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("GLOG_minloglevel", "2")
# S3 traffic stays on loopback: credentials the embedded server accepts, and no instance
# metadata lookups (169.254.169.254) when a test removes the credentials.
os.environ.update({"AWS_ACCESS_KEY_ID": "clsact-demo", "AWS_SECRET_ACCESS_KEY": "clsact-demo",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
    os.environ.pop(_var, None)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """sklearn digits rendered as an ImageNet-layout JPEG tree (1,438 train / 359 val)."""
    from clsact.demo.digits import build_digits_dataset

    root = tmp_path_factory.mktemp("digits")
    build_digits_dataset(root)
    return root


@pytest.fixture(scope="session")
def small_digits_dir(digits_dir: Path) -> Path:
    """The same images with short list files (96 train / 64 val) for fast end-to-end runs."""
    for name, n in (("small_train.txt", 96), ("small_val.txt", 64)):
        src = "train_list.txt" if "train" in name else "val_list.txt"
        lines = (digits_dir / src).read_text().splitlines()[:n]
        (digits_dir / name).write_text("\n".join(lines) + "\n")
    return digits_dir


@pytest.fixture(scope="session")
def mbv3_model(tmp_path_factory) -> Path:
    """An untrained MobileNetV3Small x0.5 (10 classes, 32x32) saved by ``paddle.jit.save``,
    so its dropout op lacks the Mask output (paddleslim issue #1927)."""
    import paddle

    from clsact.demo.digits import build_model

    paddle.disable_static()
    out = tmp_path_factory.mktemp("mbv3")
    model = build_model()
    model.eval()
    spec = paddle.static.InputSpec([None, 3, 32, 32], "float32", "inputs")
    paddle.jit.save(model, str(out / "inference"), input_spec=[spec])
    return out


@pytest.fixture(scope="session")
def clas_model(tmp_path_factory, small_digits_dir) -> Path:
    """A small conv net (conv, BN, depthwise + pointwise conv, linear) trained ~10 s on the
    digits and exported ending in a softmax, as PaddleClas exports its inference models (the
    shipped configs name that output, ``softmax_0.tmp_0``, as a distillation node); 10
    classes, 32x32. ACT builds its graphs in seconds, where the MobileNetV3 of
    :func:`mbv3_model` takes a minute: for tests about the job, not the net."""
    import paddle

    from clsact import config
    from clsact.demo.digits import train_baseline

    paddle.disable_static()  # earlier tests may have left static mode on
    paddle.seed(0)
    nn = paddle.nn
    out = tmp_path_factory.mktemp("clas")
    net = nn.Sequential(nn.Conv2D(3, 16, 3, stride=2, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
                        nn.Conv2D(16, 16, 3, groups=16, padding=1), nn.Conv2D(16, 32, 1),
                        nn.ReLU(), nn.AdaptiveAvgPool2D(2), nn.Flatten(), nn.Linear(128, 10))
    g = config.complete_global({"model_dir": str(out), "data_dir": str(small_digits_dir),
                                "img_size": 32, "resize_size": 36, "num_workers": 0,
                                "batch_size": 64, "random_flip": False}, "clas_model")
    top1 = train_baseline(g, out, epochs=3, model=net, head=nn.Softmax(), lr=0.02)
    assert top1 > 0.5, f"the test model did not learn ({top1})"
    return out


def compress_clas(tmp: Path, clas_model: Path, data: Path, report: bool) -> Path:
    """A run `clsact compress` makes from the small conv net (QAT of conv2d,
    depthwise_conv2d and matmul_v2 for 3 steps), with or without its deploy report."""
    from tests.test_compress import small_config

    out = tmp / "run"
    proc = run_cli("compress", "--config", str(small_config(tmp, clas_model, data)),
                   "--save-dir", str(out), "--set", f"Global.report={str(report).lower()}",
                   "--set", "Global.report_budget=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("deployed: fastest on " in proc.stdout) == report, proc.stdout
    assert "[Paddle2ONNX]" not in proc.stdout
    return out


@pytest.fixture(scope="session")
def compressed_run(tmp_path_factory, clas_model, small_digits_dir) -> Path:
    """A published run of the small conv net without a deploy report."""
    return compress_clas(tmp_path_factory.mktemp("plain"), clas_model, small_digits_dir, False)


@pytest.fixture(scope="session")
def lite_python() -> str:
    """A Python 3.8-3.10 for Paddle Lite's optimizer (pyenv here), or the test skips."""
    from clsact.deploy import export

    try:
        return export.find_lite_python()
    except export.ExportRefused as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto server) on loopback for the whole session."""
    from clsact.demo.s3server import LocalS3Server

    with LocalS3Server() as server:
        yield server


@pytest.fixture
def endpoint(s3_server, monkeypatch):
    """Make the S3 server the environment's endpoint for the test (AWS_ENDPOINT_URL, which
    S3Settings without an endpoint use; restored after)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server.endpoint


# the thresholds of the runs publish_run makes, and their validation set's fingerprint
GATE = {"min_top1": 0.80, "max_regression": 0.005, "max_drop_vs_fp32": 0.01}
VAL = "sha256:" + "a" * 64


def publish_run(prefix: str, name: str, top1: float, *, fp32: float = 0.95,
                val: str | None = VAL, gate_section: dict | None = GATE,
                extra: dict | None = None, tmp: Path, location: str | None = None) -> str:
    """Publish a run with id ``name`` and these accuracies at ``location`` (default
    ``prefix/runs/name``) with clsact's real publisher; returns its location. Its
    config.yaml holds ``gate_section`` as its Gate section."""
    import json

    from clsact import storage
    from clsact.storage.publish import publish

    stage = tmp / f"stage-{name}"
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "inference.pdmodel").write_bytes(name.encode() * 100)
    metrics = {"run_id": name, "baseline": {"top1": fp32, "top5": 0.99},
               "compressed": {"top1": top1, "top5": 0.98},
               "val_set": {"fingerprint": val} if val else None, **(extra or {})}
    (stage / "metrics.json").write_text(json.dumps(metrics))
    cfg: dict = {"Global": {"model_dir": "m", "data_dir": "d"}}
    if gate_section is not None:
        cfg["Gate"] = gate_section
    (stage / "config.yaml").write_text(json.dumps(cfg))
    location = location or f"{prefix.rstrip('/')}/runs/{name}"
    publish(stage, storage.open_store(location, "run"), name)
    return storage.open_store(location, "run").describe()


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"test-{os.getpid()}-{next(_bucket_counter)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def upload_tree(client, bucket: str, prefix: str, root: Path, names: list[str] | None = None):
    """Upload the files under ``root`` (or just ``names``, relative) to s3://bucket/prefix/."""
    rels = names if names is not None else [p.relative_to(root).as_posix()
                                            for p in root.rglob("*") if p.is_file()]
    for rel in rels:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=(root / rel).read_bytes())


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` in ``bucket``."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def copy_images(src: Path, dst: Path, lines: list[str]) -> None:
    """Copy the images named by list-file ``lines`` from data dir ``src`` into ``dst``."""
    for line in lines:
        rel = line.rsplit(maxsplit=1)[0]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes((src / rel).read_bytes())


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m clsact ARGS`` as a user would (in ``env``, default this process's
    environment); returns the completed process."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "clsact", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """A real kube-apiserver 1.20.2 + etcd on loopback with both PaddleJob CRDs installed:
    the upstream ones from ../shared/reference, or (a fresh clone without it) minimal ones
    clsact defines with the group, version, kind, scope and status subresource it uses."""
    from tests import kubeserver

    crds, upstream = kubeserver.crd_files(SHARED / "reference", tmp_path_factory.mktemp("crds"))
    server = kubeserver.start(tmp_path_factory.mktemp("kube"))
    try:
        api = server.admin_client()
        for path in crds:
            kubeserver.install_crd(api, path)
        server.crd_files = list(crds)
        server.upstream_crds = upstream
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, cpu_image):
    """A real single-node cluster (tests/kubecluster.py: API server, controller-manager,
    scheduler, kubelet on this machine's dockerd, the played cluster DNS) with the PaddleJob,
    JobSet and PodGroup CRDs installed, shared by the cluster tests of the session."""
    from tests import kubecluster, kubeserver

    missing = kubecluster.missing_binaries()
    if missing:
        pytest.fail(f"{missing} not built: run `bash tests/infra/kubernetes.sh` (make test does)")
    c = kubecluster.start(tmp_path_factory.mktemp("cluster"))
    try:
        api = c.admin_client()
        crds, _upstream = kubeserver.crd_files(SHARED / "reference",
                                               tmp_path_factory.mktemp("cluster-crds"))
        for path in crds:
            kubeserver.install_crd(api, path)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def admin(kube):
    """An admin API client of the session's API server."""
    return kube.admin_client()


@pytest.fixture
def ns(admin) -> str:
    """A fresh namespace of the session's API server holding the S3 Secret jobs reference."""
    import uuid

    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, {"metadata": {"name": "clsact-s3"}, "stringData": {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "never-rendered"}})
    return name


@pytest.fixture(scope="session")
def docker_engine():
    """A real Docker engine (Debian's dockerd, started for the session when none runs)."""
    from tests import dockerhost

    engine = dockerhost.start_engine()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def cpu_image(docker_engine) -> str:
    """The CPU image, built by docker/build.sh as `make image-cpu` builds it (cached layers
    make a rebuild of unchanged inputs take seconds)."""
    from tests import dockerhost

    return dockerhost.build_image("cpu")


def pytest_terminal_summary(terminalreporter) -> None:
    """End with one line: how many tests skipped and why (grouped by reason)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    why = "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items()))
    terminalreporter.write_line(f"clsact: {len(skipped)} skipped: {why}")
