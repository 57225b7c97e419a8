"""Atomic publishing (manifest + _SUCCESS) and `clsact verify`, on local disk and real S3."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clsact.errors import StorageError
from clsact.storage import LocalStore, S3Store
from clsact.storage.publish import (
    CLAIM,
    MANIFEST,
    SUCCESS,
    check_unfinished,
    claim,
    publish,
    verify,
)
from clsact.storage.s3session import S3Settings
from clsact.storage.uri import parse_s3
from tests.conftest import REPO, list_keys, run_cli
from tests.faultproxy import FaultProxy


def staging(tmp_path: Path, tag: str = "a") -> Path:
    root = tmp_path / f"staging-{tag}"
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "inference.pdmodel").write_bytes(b"graph-" + tag.encode() * 1000)
    (root / "metrics.json").write_text(json.dumps({"tag": tag}))
    if tag == "a":
        (root / "only-in-a.txt").write_text("old")
    return root


def both(tmp_path: Path, s3_server, bucket: str):
    conf = S3Settings(endpoint_url=s3_server.endpoint)
    return [LocalStore(tmp_path / "dest"), S3Store(parse_s3(f"s3://{bucket}/run", "x"), conf)]


def test_publish_verify_overwrite(tmp_path, s3_server, bucket):
    for dest in both(tmp_path, s3_server, bucket):
        check_unfinished(dest, overwrite=False)
        manifest = publish(staging(tmp_path, "a"), dest, "run-a")
        names = [f["path"] for f in manifest["files"]]
        assert names == ["metrics.json", "model/inference.pdmodel", "only-in-a.txt"]
        assert json.loads(dest.read_bytes(SUCCESS))["run_id"] == "run-a"
        result = verify(dest)
        assert result.ok and result.files == 3 and result.run_id == "run-a"

        with pytest.raises(StorageError, match="already holds a finished run"):
            check_unfinished(dest, overwrite=False)
        with pytest.raises(StorageError, match="already holds a finished run"):
            publish(staging(tmp_path, "b"), dest, "run-b")
        check_unfinished(dest, overwrite=True)
        publish(staging(tmp_path, "b"), dest, "run-b", overwrite=True)
        assert not dest.exists("only-in-a.txt"), "files of the replaced run are removed"
        assert verify(dest).ok and verify(dest).run_id == "run-b"

        dest.put_bytes("model/inference.pdmodel", b"tampered")
        problems = verify(dest).problems
        assert problems == ["model/inference.pdmodel: size 8 != manifest 1006"]
        dest.delete("metrics.json")
        assert "metrics.json: missing" in verify(dest).problems
        dest.delete(SUCCESS)
        assert any("did not finish" in p for p in verify(dest).problems)


def test_a_concurrent_finish_is_detected(tmp_path, s3_server, bucket):
    """Two runs publish into one prefix: the conditional put lets only one _SUCCESS win."""
    for dest in both(tmp_path, s3_server, bucket):
        class Racer(type(dest)):
            def put_file(self, src, rel):  # another run finishes while we upload
                super().put_file(src, rel)
                if not super().exists(SUCCESS):
                    super().put_bytes(SUCCESS, b'{"run_id": "other"}\n', exclusive=True)
        racer = Racer.__new__(Racer)
        racer.__dict__.update(dest.__dict__)
        with pytest.raises(StorageError, match=r"another run \(other\) finished into"):
            publish(staging(tmp_path, "a"), racer, "mine")
        assert json.loads(dest.read_bytes(SUCCESS))["run_id"] == "other"


def test_a_claim_keeps_other_runs_out_of_a_save_dir(tmp_path, s3_server, bucket):
    for dest in both(tmp_path, s3_server, bucket):
        assert claim(dest, "run-a", overwrite=False) == "new"
        assert claim(dest, "run-a", overwrite=False) == "same run", "a restart continues"
        with pytest.raises(StorageError, match=r"belongs to run run-a \(unfinished, claimed .*\): "
                           r"resume it with --run-id run-a, take it over with --overwrite"):
            claim(dest, "run-b", overwrite=False)
        assert claim(dest, "run-b", overwrite=True) == "taken over"
        before = dest.list()
        with pytest.raises(StorageError, match=r"run run-b took .* over \(--overwrite\) while "
                           r"run run-a was running; run run-a did not publish"):
            publish(staging(tmp_path, "a"), dest, "run-a")
        assert dest.list() == before, "the run that lost its claim uploads nothing"
        publish(staging(tmp_path, "b"), dest, "run-b")
        assert verify(dest).ok and verify(dest).run_id == "run-b"
        with pytest.raises(StorageError, match="already holds a finished run"):
            claim(dest, "run-b", overwrite=False)


def test_two_racing_runs_leave_the_finished_one_intact(tmp_path, clas_model, small_digits_dir):
    """Run A trains; run B into the same save dir is refused before any work; run C takes
    it over with --overwrite while A trains. A publishes nothing (before the claim it would
    have uploaded its model and manifest over C's), C's run verifies."""
    from tests.test_compress import small_config

    cfg = small_config(tmp_path, clas_model, small_digits_dir, train_iter=6, eval_iter=3)
    save = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "clsact", "compress", "--config", str(cfg), "--save-dir",
           str(save), "--set", "Global.num_workers=1"]
    a = subprocess.Popen([*cmd, "--run-id", "run-a"], env=env, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (save / CLAIM).exists():
        time.sleep(0.05)
    # A is held (with its loader processes) while B and C run, so that C's takeover happens
    # before A's publish however fast A trains: the race the claim guards, made certain.
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        b = run_cli(*cmd[3:], "--run-id", "run-b")
        assert b.returncode == 2 and "belongs to run run-a (unfinished" in \
            b.stderr.splitlines()[-1]
        c = run_cli(*cmd[3:], "--run-id", "run-c", "--overwrite")
        assert c.returncode == 0, c.stderr[-3000:]
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    a_err = a.communicate(timeout=600)[1]
    assert a.returncode == 2, a_err[-3000:]
    assert "run run-c took" in a_err.splitlines()[-1] and "Traceback" not in a_err
    ok = run_cli("verify", str(save))
    assert ok.returncode == 0 and "run run-c" in ok.stdout, ok.stderr
    assert json.loads((save / "metrics.json").read_text())["run_id"] == "run-c"


def test_cli_verify(tmp_path, s3_server, bucket):
    s3 = both(tmp_path, s3_server, bucket)[1]
    publish(staging(tmp_path), s3, "run-v")
    ok = run_cli("verify", f"s3://{bucket}/run", "--s3-endpoint", s3_server.endpoint)
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK s3://{bucket}/run: run run-v, 3 files")
    s3.put_bytes("metrics.json", b"{}")
    bad = run_cli("verify", f"s3://{bucket}/run", "--s3-endpoint", s3_server.endpoint)
    assert bad.returncode == 1 and "metrics.json: size 2 != manifest" in bad.stderr
    none = run_cli("verify", str(tmp_path / "never"))
    assert none.returncode == 1 and "did not finish" in none.stderr


def test_overwrite_removes_every_manifest_and_what_it_lists(tmp_path, s3_server, bucket):
    """A blessed run replaced with --overwrite leaves none of its addenda: the new run
    verifies, holds no old verdict, and can be gated afresh."""
    from clsact.storage.publish import add_to_run

    for dest in both(tmp_path, s3_server, bucket):
        publish(staging(tmp_path), dest, "run-a")
        add_to_run(dest, "blessing", {"blessing.json": b'{"blessed": true}'})
        add_to_run(dest, "report", {"report/report.json": b"{}"})
        assert verify(dest).ok
        claim(dest, "run-b", overwrite=True)
        publish(staging(tmp_path, "b"), dest, "run-b", overwrite=True)
        names = {rel for rel, _ in dest.list()}
        assert not names & {"blessing.json", "manifest.blessing.json", "manifest.report.json",
                            "report/report.json", "only-in-a.txt"}, names
        check = verify(dest)
        assert check.ok and check.run_id == "run-b" and check.addenda == [], check.problems


def test_overwrite_of_the_blessed_run_is_refused_before_any_work(tmp_path, clas_model,
                                                                 small_digits_dir):
    """`clsact compress --overwrite` into the save dir that PREFIX/latest names stops with one
    line, before the claim (the blessed baseline is never replaced under the gate)."""
    from clsact.registry.gate import gate
    from tests.conftest import publish_run

    prefix = tmp_path / "prefix"
    run = publish_run(str(prefix), "n1", 0.95, tmp=tmp_path)
    assert gate(run, str(prefix)).blessed
    from tests.test_compress import small_config

    cfg = small_config(tmp_path, clas_model, small_digits_dir)
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", run, "--overwrite")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"clsact: error: --overwrite refused: {run} holds the blessed run that "
        f"{prefix}/latest names; replacing it would change the gate's baseline. Choose another "
        "--save-dir (a newer run that passes the gate becomes latest)")
    assert verify(LocalStore(run)).ok and not (Path(run) / CLAIM).exists()


@pytest.mark.parametrize("doc, body, words", [
    (MANIFEST, b"[]", "is not a clsact manifest"),
    ("manifest.blessing.json", b'"a string"', "is not a clsact addendum"),
    (MANIFEST, b'{"run_id": "r", "files": [1, "x"]}', "is not an object with a path"),
])
def test_malformed_documents_are_problems_not_tracebacks(tmp_path, doc, body, words):
    dest = LocalStore(tmp_path / "run")
    publish(staging(tmp_path), dest, "run-a")
    dest.put_bytes(doc, body)
    check = verify(dest)
    assert not check.ok and any(words in p for p in check.problems), check.problems
    proc = run_cli("verify", str(tmp_path / "run"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_a_store_that_ignores_conditional_writes_is_refused(tmp_path, s3_server, bucket,
                                                            monkeypatch, clas_model,
                                                            small_digits_dir):
    """Claims and the latest pointer need If-None-Match/If-Match: a store that drops them
    (played by a proxy that strips the headers) is refused with one line, unless the risk is
    accepted with CLSACT_S3_UNCONDITIONAL=1; through the real server the claim holds."""
    from clsact.storage.s3 import UNCONDITIONAL_ENV

    proxy = FaultProxy(s3_server.endpoint, drop_headers=("if-none-match", "if-match"))
    url = proxy.start()
    try:
        dest = S3Store(parse_s3(f"s3://{bucket}/ignored", "x"), S3Settings(endpoint_url=url))
        with pytest.raises(StorageError, match=r"ignores conditional writes \(If-None-Match: \* "
                           r"and If-Match were not refused\).*CLSACT_S3_UNCONDITIONAL=1"):
            claim(dest, "run-a", overwrite=False)
        assert not dest.exists(CLAIM) and dest.list() == [], "nothing written, probe removed"
        proc = run_cli("verify", f"s3://{bucket}/ignored", "--s3-endpoint", url)
        assert "Traceback" not in proc.stderr
        from tests.test_compress import small_config

        cfg = small_config(tmp_path, clas_model, small_digits_dir)
        proc = run_cli("compress", "--config", str(cfg), "--save-dir", f"s3://{bucket}/ignored",
                       "--s3-endpoint", url)
        assert proc.returncode == 2 and "ignores conditional writes" in \
            proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
        monkeypatch.setenv(UNCONDITIONAL_ENV, "1")
        assert claim(dest, "run-a", overwrite=False) == "new"
    finally:
        proxy.stop()
    real = S3Store(parse_s3(f"s3://{bucket}/honoured", "x"),
                   S3Settings(endpoint_url=s3_server.endpoint))
    monkeypatch.delenv(UNCONDITIONAL_ENV)
    assert claim(real, "run-a", overwrite=False) == "new"


KILL_SCRIPT = """
import sys
from pathlib import Path
from clsact.storage import S3Store
from clsact.storage.publish import publish
from clsact.storage.s3session import S3Settings
from clsact.storage.uri import parse_s3
store = S3Store(parse_s3(sys.argv[2], "x"), S3Settings(endpoint_url=sys.argv[1]))
publish(Path(sys.argv[3]), store, "killed")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_mid_upload_leaves_no_success(tmp_path, s3_server, bucket, sig):
    stage = tmp_path / "stage"
    for i in range(12):
        (stage / "model").mkdir(parents=True, exist_ok=True)
        (stage / "model" / f"part-{i:02d}.bin").write_bytes(os.urandom(1000))
    proxy = FaultProxy(s3_server.endpoint, rates={"slow": 1.0}, delay=0.5, methods=("PUT",))
    url = proxy.start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, url, f"s3://{bucket}/run",
                             str(stage)], env=env, stderr=subprocess.PIPE, text=True)
    client = s3_server.client()
    deadline = time.time() + 60
    while time.time() < deadline and len(list_keys(client, bucket, "run/")) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    proxy.stop()
    keys = list_keys(client, bucket, "run/")
    assert 2 <= len(keys) < 12, keys
    assert f"run/{SUCCESS}" not in keys and f"run/{MANIFEST}" not in keys
    dest = S3Store(parse_s3(f"s3://{bucket}/run", "x"), S3Settings(endpoint_url=s3_server.endpoint))
    check_unfinished(dest, overwrite=False)  # an unfinished prefix may be published into
    assert not verify(dest).ok
    publish(stage, dest, "rerun")
    assert verify(dest).ok
