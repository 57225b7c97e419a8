"""`clsact submit --nightly`: the night's stamp (scheduled time, time zone), the refusal while an
earlier night runs, keeping the last N jobs, and a timeout that leaves the night running;
against the real kube-apiserver (tests play the operator by writing the status)."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from clsact.errors import ConfigError
from clsact.launch import nightly
from clsact.launch.names import job_name
from tests.conftest import publish_run
from tests.test_launch_cluster import SPEC, cli, get_config_map, get_job, set_status, wait_for_job

NOW = datetime(2026, 11, 29, 23, 40, tzinfo=timezone.utc)


def minute(when: datetime) -> int:
    return int(when.timestamp()) // 60


def test_scheduled_time_from_the_cronjob_job_name():
    sched = datetime(2026, 11, 29, 23, 30, tzinfo=timezone.utc)
    assert nightly.scheduled_time(f"mbv3-{minute(sched)}", NOW) == sched
    # the batch/v1beta1 controller (Kubernetes < 1.21) counts seconds
    assert nightly.scheduled_time(f"mbv3-{int(sched.timestamp())}", NOW) == sched
    # a Job made by hand, a stale or future suffix, no name: the current time
    assert nightly.scheduled_time("mbv3-manual-1", NOW) == NOW
    assert nightly.scheduled_time(f"mbv3-{minute(sched) - 4 * 1440}", NOW) == NOW
    assert nightly.scheduled_time(f"mbv3-{minute(sched) + 60}", NOW) == NOW
    assert nightly.scheduled_time(None, NOW) == NOW


def test_the_night_is_dated_in_the_schedules_time_zone():
    sched = datetime(2026, 11, 29, 23, 30, tzinfo=timezone.utc)
    job = f"mbv3-{minute(sched)}"
    assert nightly.night("r", "Etc/UTC", "%Y-%m-%d", job, NOW).stamp == "2026-11-29"
    berlin = nightly.night("r", "Europe/Berlin", "%Y-%m-%d", job, NOW)
    assert berlin.stamp == "2026-11-30"                       # 00:30 in Berlin
    assert nightly.night("r", "America/New_York", "%Y-%m-%d", job, NOW).stamp == "2026-11-29"
    assert berlin.save_dir("s3://bucket/nightly/") == "s3://bucket/nightly/runs/2026-11-30/"
    assert berlin.job_base("mbv3") == "mbv3-2026-11-30"
    odd = nightly.night("r", "Etc/UTC", "%Y/%m/%d %H:%M", job, NOW)
    assert odd.stamp == "2026-11-29-23-30"                    # safe in names and paths
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        nightly.night("r", "Mars/Olympus", "%Y", job, NOW)
    with pytest.raises(ConfigError, match="strftime format"):
        nightly.night("r", "Etc/UTC", "nightly", job, NOW)


def nightly_cli(kube, ns, release, when, *extra, wait=False):
    env = {**os.environ, nightly.SCHEDULED_JOB_ENV: f"{release}-{minute(when)}"}
    args = ["submit", *SPEC, "-n", ns, "--name", release, "--nightly", release,
            "--stamp", "%Y-%m-%d-%H%M", *extra]
    return cli(kube, *args, env=env)


def night_name(release: str, when: datetime) -> str:
    return job_name(f"{release}-{when.strftime('%Y-%m-%d-%H%M')}")


def events_of(admin, ns, name: str) -> dict[str, str]:
    """reason -> message of the Events recorded on the object ``name``."""
    from kubernetes import client

    items = client.CoreV1Api(admin).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name}").items
    return {e.reason: e.message for e in items}


class Pushgateway:
    """Plays a Prometheus Pushgateway on loopback: keeps what each push sent (the request
    line and the text exposition format), answers 200."""

    def __init__(self):
        import http.server

        self.pushes: list[tuple[str, str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.pushes.append((self.command, self.path, body.decode()))
                self.send_response(200)
                self.end_headers()

            do_POST = do_PUT

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def samples(self, i: int) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        return {s.name: s.value for f in text_string_to_metric_families(self.pushes[i][2])
                for s in f.samples}


def test_nights_refuse_overlap_and_keep_the_last(kube, admin, ns):
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    t = [start + timedelta(minutes=i) for i in range(3)]
    a, b, c = (night_name("rel", when) for when in t[:3])

    proc = nightly_cli(kube, ns, "rel", t[0], "--keep-jobs", "1")
    assert proc.returncode == 0, proc.stderr
    job = get_job(admin, ns, a)
    assert job["metadata"]["labels"][nightly.NIGHTLY_LABEL] == "rel"
    cmd = job["spec"]["worker"]["template"]["spec"]["containers"][0]["command"]
    stamp = t[0].strftime("%Y-%m-%d-%H%M")
    assert cmd[cmd.index("--save-dir") + 1] == f"s3://ml-models/clsact/run/runs/{stamp}/"
    assert cmd[cmd.index("--run-id") + 1] == a

    # night b while a has not finished: refused with one line, exit 5; a is untouched
    proc = nightly_cli(kube, ns, "rel", t[1], "--keep-jobs", "1")
    assert proc.returncode == 5, (proc.stdout, proc.stderr)  # exitcodes.NIGHT_BUSY
    errors = [line for line in proc.stderr.splitlines() if line.startswith("clsact: error:")]
    assert len(errors) == 1 and a in errors[0] and "still Submitted" in errors[0]
    assert get_job(admin, ns, b) is None and get_job(admin, ns, a) is not None
    said = events_of(admin, ns, a)
    assert "Submitted" in said and "NightRefused" in said, said
    assert said["NightRefused"].startswith(f"night {t[1].strftime('%Y-%m-%d-%H%M')} of rel")

    # the same night again (a retried submitter) is not refused: it is a's own job
    proc = nightly_cli(kube, ns, "rel", t[0], "--keep-jobs", "1")
    assert proc.returncode == 0 and "already submitted" in proc.stdout, proc.stderr

    # a finishes: b runs, and a is deleted (keep 1) with its ConfigMap
    set_status(admin, ns, a, {"phase": "Completed"})
    proc = nightly_cli(kube, ns, "rel", t[1], "--keep-jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"deleted PaddleJob {ns}/{a}" in proc.stderr
    assert get_job(admin, ns, a) is None and get_config_map(admin, ns, a) is None
    assert get_job(admin, ns, b) is not None
    assert a in events_of(admin, ns, b)["Pruned"]

    # another release's running job does not block this one, nor is it pruned
    proc = nightly_cli(kube, ns, "other", t[0], "--keep-jobs", "1")
    assert proc.returncode == 0, proc.stderr

    # b fails: c runs, keep 2 keeps b (finished, but within the newest 2)
    set_status(admin, ns, b, {"phase": "Failed"})
    proc = nightly_cli(kube, ns, "rel", t[2], "--keep-jobs", "2")
    assert proc.returncode == 0, proc.stderr
    assert get_job(admin, ns, b) is not None and get_job(admin, ns, c) is not None
    assert get_job(admin, ns, night_name("other", t[0])) is not None


def test_a_nightly_timeout_leaves_the_night_running(kube, admin, ns):
    when = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    proc = nightly_cli(kube, ns, "late", when, "--wait", "--timeout", "3s")
    assert proc.returncode == 124, (proc.stdout, proc.stderr)
    assert "it goes on" in proc.stderr
    assert get_job(admin, ns, night_name("late", when)) is not None


def test_bad_nightly_flags_are_one_line_errors(kube, ns):
    when = datetime.now(timezone.utc)
    for extra, words in ((["--time-zone", "Mars/Olympus"], "not an IANA time zone"),
                         (["--stamp", "tonight"], "strftime format"),
                         (["--keep-jobs", "0"], "--keep-jobs must be >= 1")):
        proc = nightly_cli(kube, ns, "bad", when, *extra)
        assert proc.returncode == 2, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if not x.startswith("clsact: valid:")]
        assert len(lines) == 1 and words in lines[0], proc.stderr


def test_a_gated_nightly_blesses_or_refuses_the_night(kube, admin, ns, bucket, endpoint,
                                                      tmp_path):
    """`submit --nightly --wait --gate`: once the night's job succeeded (the test plays the
    operator and publishes the run, with chosen accuracies, where the job was told to), the
    submitter gates it against the nightly's save dir on the S3 server: night 1 is blessed
    (exit 0) and the history plot written; night 2, 2 points worse, is refused (exit 1) and
    latest still names night 1."""
    from PIL import Image

    from clsact import storage

    prefix = f"s3://{bucket}/nightly"
    gateway = Pushgateway()
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    nights = [(start + timedelta(minutes=i), top1) for i, top1 in enumerate((0.95, 0.93))]
    for i, (when, top1) in enumerate(nights):
        name = night_name("gated", when)

        def play(name=name, top1=top1, i=i) -> None:
            wait_for_job(admin, ns, name)
            cmd = get_job(admin, ns, name)["spec"]["worker"]["template"]["spec"][
                "containers"][0]["command"]
            publish_run(prefix, name, top1, tmp=tmp_path / str(i),
                        location=cmd[cmd.index("--save-dir") + 1])
            set_status(admin, ns, name, {"phase": "Succeed"})

        operator = threading.Thread(target=play)
        operator.start()
        proc = nightly_cli(kube, ns, "gated", when, "--wait", "--gate", "--save-dir", prefix,
                           "--s3-endpoint", endpoint, "--keep-jobs", "5",
                           "--pushgateway", gateway.url)
        operator.join(60)
        # the verdict as an Event on the job and as metrics on the Pushgateway
        said = events_of(admin, ns, name)
        assert ("Blessed" if i == 0 else "NotBlessed") in said, said
        method, path, _body = gateway.pushes[i]
        assert (method, path) == ("PUT", "/metrics/job/clsact_gate/release/gated")
        got = gateway.samples(i)
        assert got["clsact_gate_blessed"] == (1.0 if i == 0 else 0.0)
        assert got["clsact_run_top1"] == top1 and got["clsact_blessed_top1"] == 0.95
        assert proc.returncode in (0, 1), (proc.stdout, proc.stderr)
        latest = storage.open_store(prefix, "p").read_bytes("latest")
        if i == 0:
            assert proc.returncode == 0, (proc.stdout, proc.stderr)
            assert f"BLESSED run {name}" in proc.stdout and "history of 1 runs" in proc.stdout
            first, first_latest = name, latest
            png = tmp_path / "history.png"
            storage.open_store(prefix, "p").get_file("history.png", png)
            with Image.open(png) as img:
                assert img.format == "PNG"
        else:
            assert proc.returncode == 1, (proc.stdout, proc.stderr)
            assert f"NOT BLESSED run {name} (max_regression, max_drop_vs_fp32)" in proc.stdout
            assert f"still names run {first}" in proc.stdout and latest == first_latest
    # night 3 finishes after its submitter stopped following it (exit 124), so that
    # submitter never gates it; the next night's submitter gates it first, and this slow good
    # night becomes latest
    late, after = start + timedelta(minutes=2), start + timedelta(minutes=3)
    gated = ("--gate", "--save-dir", prefix, "--s3-endpoint", endpoint, "--keep-jobs", "5")
    proc = nightly_cli(kube, ns, "gated", late, "--wait", "--timeout", "2s", *gated)
    assert proc.returncode == 124, (proc.stdout, proc.stderr)
    late_name = night_name("gated", late)
    cmd = get_job(admin, ns, late_name)["spec"]["worker"]["template"]["spec"]["containers"][0][
        "command"]
    publish_run(prefix, late_name, 0.952, tmp=tmp_path / "late",
                location=cmd[cmd.index("--save-dir") + 1])
    set_status(admin, ns, late_name, {"phase": "Succeed"})
    proc = nightly_cli(kube, ns, "gated", after, "--wait", "--timeout", "2s", *gated)
    assert proc.returncode == 124, (proc.stdout, proc.stderr)
    assert "it finished after its submitter stopped following it" in proc.stderr
    assert f"BLESSED run {late_name}" in proc.stdout
    assert json.loads(storage.open_store(prefix, "p").read_bytes("latest"))["run_id"] == late_name
    proc = nightly_cli(kube, ns, "gated", start, "--gate")
    assert proc.returncode == 2 and "--gate needs --wait" in proc.stderr
