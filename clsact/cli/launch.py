"""The launcher's commands: ``render``, ``submit``, ``status``, ``list``, ``logs``, ``cancel``,
``rbac``. Registered on the ``clsact`` parser by :func:`add_parsers`.

Exit codes (:mod:`clsact.exitcodes`): 0 success; 1 ``submit --wait --gate``: the run
succeeded but was not blessed; 2 a user error (one ``clsact: error:`` line); 4 the job failed;
5 ``submit --nightly`` refused: an earlier night is still running; 124 ``submit --wait`` timed
out (the job was cancelled, except a nightly's, which goes on).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from clsact import __version__, exitcodes
from clsact.launch.operators import OPERATORS

if TYPE_CHECKING:  # the launcher's heavier modules load with the command that needs them
    from clsact.launch.nightly import NightPlan
    from clsact.launch.render import Rendered
    from clsact.launch.values import LaunchValues


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``45m``, ``2h``, ``1d`` -> seconds.

    Raises:
        argparse.ArgumentTypeError: not a positive duration.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 45m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                   "else the in-cluster service account)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _add_job_ref(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="job name as submit printed it (or the --name "
                   "/ config stem it was made from)")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--operator", choices=tuple(OPERATORS), default="paddle")
    _add_cluster_flags(p)


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="compression config (ACT-format YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="S.KEY=VALUE",
                   help="override a config value (repeatable), as for compress")
    p.add_argument("--values", help="launch values YAML (nodeSelector, tolerations, resources, "
                   "env, ...; see configs/launch-values.yaml)")
    p.add_argument("--workers", type=int, help="worker pods (nodes); default 1")
    p.add_argument("--gpus-per-worker", type=int, help="GPUs (= ranks) per pod; 0 for one CPU "
                   "rank; default 1")
    p.add_argument("--image", help="container image holding clsact")
    p.add_argument("--operator", choices=tuple(OPERATORS),
                   help="paddle-operator (default) or the Kubeflow training-operator")
    p.add_argument("--name", help="job name base (default: the config file's stem); the job "
                   "is named <sanitised name>-<hash>")
    p.add_argument("--namespace", "-n", help="namespace (default: default)")
    p.add_argument("--save-dir", help="where results go, s3://bucket/prefix (default: "
                   "Global.output_dir)")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint the pods use")
    p.add_argument("--s3-secret", metavar="SECRET", help="Secret holding AWS_ACCESS_KEY_ID / "
                   "AWS_SECRET_ACCESS_KEY for the pods (default clsact-s3; '' for none)")
    p.add_argument("--crd", action="append", default=[], metavar="FILE",
                   help="also validate the PaddleJob against this CRD file (repeatable)")
    p.add_argument("--k8s-version", default=None, help="Kubernetes version whose schemas "
                   "validate built-in objects (default 1.29)")


def add_parsers(sub: Any) -> None:
    """Add the launcher's subcommands to the ``clsact`` subparsers."""
    p = sub.add_parser("render", help="print the Kubernetes objects of a run (no cluster)",
                       description="Render the ConfigMap + PaddleJob of a compression run and "
                       "validate them (built-in schemas; the CRD with --crd).")
    _add_spec_flags(p)
    p.add_argument("--output", "-o", metavar="DIR", help="write one file per object into DIR "
                   "instead of a YAML stream on stdout")

    p = sub.add_parser("submit", help="submit a run as a PaddleJob (idempotent) and follow it",
                       description="Render, validate (also by a server-side dry run) and "
                       "create the job; the same spec twice creates nothing new.")
    _add_spec_flags(p)
    _add_cluster_flags(p)
    p.add_argument("--replace", action="store_true", help="delete and resubmit a job of the "
                   "same name whose spec differs")
    p.add_argument("--dry-run", action="store_true", help="render and validate only; print "
                   "what would be submitted")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 0 "
                   "if it succeeded, 4 if it failed, 124 on timeout (job cancelled)")
    p.add_argument("--timeout", type=parse_duration, default=parse_duration("24h"),
                   help="with --wait: give up and cancel after this long (90s, 45m, 2h; "
                   "default 24h)")
    p.add_argument("--poll", type=parse_duration, default=2.0, help=argparse.SUPPRESS)
    g = p.add_argument_group("nightly (what the Helm chart's CronJob runs)")
    g.add_argument("--nightly", metavar="RELEASE", help="submit one night of RELEASE: the "
                   "name, run id and save dir (<save dir>/runs/<stamp>/) carry the night's "
                   "stamp; refuse (exit 5) while an earlier night's job is still running; "
                   "keep only the last --keep-jobs jobs; on timeout the job goes on")
    g.add_argument("--time-zone", default="Etc/UTC", help="the schedule's time zone, in "
                   "which the night is stamped (default Etc/UTC)")
    g.add_argument("--stamp", default="%Y-%m-%d", help="strftime of the scheduled time "
                   "naming the night (default %%Y-%%m-%%d)")
    g.add_argument("--keep-jobs", type=int, default=7, help="finished jobs of the release "
                   "kept (default 7)")
    g.add_argument("--pushgateway", metavar="URL", help="with --gate: push the verdict and "
                   "the blessed top-1 to this Prometheus Pushgateway (default "
                   "$CLSACT_PUSHGATEWAY), grouped by the nightly release")
    g.add_argument("--gate", nargs="?", const="", metavar="PREFIX", help="with --wait: after "
                   "the run succeeded, `clsact gate` it against PREFIX (default: the nightly's "
                   "save dir, else Gate.against) and write PREFIX/history.png; exit 1 when "
                   "not blessed")

    p = sub.add_parser("status", help="phase of a job and its pods")
    _add_job_ref(p)
    p = sub.add_parser("list", help="clsact's jobs in a namespace")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--operator", choices=tuple(OPERATORS), help="only this kind "
                   "(default: both that are installed)")
    _add_cluster_flags(p)
    p = sub.add_parser("logs", help="logs of every worker pod, prefixed with the pod name")
    _add_job_ref(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the pods end")
    p = sub.add_parser("cancel", help="delete a job and its ConfigMap")
    _add_job_ref(p)

    p = sub.add_parser("check-release", help="check that a release's objects exist (what "
                       "the chart's `helm test` runs)",
                       description="Read each object (Kind/name: ConfigMap, Secret, "
                       "ServiceAccount, CronJob, PaddleJob, JobSet, PodGroup); exit 2 naming "
                       "every missing one.")
    p.add_argument("objects", nargs="+", metavar="KIND/NAME")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--operator", choices=tuple(OPERATORS), default="paddle",
                   help="whose PaddleJob kind a PaddleJob/NAME is")
    _add_cluster_flags(p)

    p = sub.add_parser("rbac", help="print the least-privilege Role a submitter needs",
                       description="ServiceAccount + Role + RoleBinding for clsact "
                       "submit/status/list/logs/cancel in one namespace.")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--service-account", default="clsact-submitter")
    p.add_argument("--secret", default="clsact-s3", help="the S3 Secret submit may check "
                   "(get on that name only); '' for none")


@dataclass
class Launch:
    """One launch, planned once from the flags, the values file and the validated config."""

    rendered: Rendered
    checked: list[str]             # the validations passed
    values: LaunchValues           # resolved: flags over the values file over defaults
    night: NightPlan | None = None   # submit --nightly
    gpu_nodes_unknown: bool = False

    @property
    def s3_endpoint(self) -> str | None:
        """The run's S3 endpoint (the launch values' s3Endpoint, else Global.s3_endpoint)."""
        return self.rendered.config.globals.s3_endpoint

    @property
    def gate_against(self) -> str | None:
        """The config's Gate.against."""
        return (self.rendered.config.data.get("Gate") or {}).get("against")


def _night(args: argparse.Namespace, file_values: dict[str, Any], raw: dict[str, Any]):
    """Tonight's plan (``submit --nightly``).

    Raises:
        ConfigError: see :func:`clsact.launch.nightly.plan`.
    """
    import os
    from pathlib import Path

    from clsact.launch import nightly
    from clsact.registry.runs import as_dict

    save = args.save_dir or file_values.get("saveDir") or as_dict(
        as_dict(raw).get("Global")).get("output_dir")   # as written: no default dir
    return nightly.plan(args.nightly, args.time_zone, args.stamp, args.keep_jobs,
                        args.name or file_values.get("name") or Path(args.config).stem, save,
                        dict(file_values.get("labels") or {}),
                        os.environ.get(nightly.SCHEDULED_JOB_ENV))


def _spec(args: argparse.Namespace) -> Launch:
    """Plan the launch: read the config once (with the --set overrides), resolve the values,
    render and validate the objects.

    Raises:
        ConfigError: an invalid config, values file, flag or rendered object.
    """
    from clsact import config as config_mod
    from clsact.launch import render, validate, values

    raw = config_mod.read_yaml(args.config)
    config_mod.apply_overrides(raw, args.overrides)
    file_values = values.read_values_file(args.values) if args.values else {}
    night = _night(args, file_values, raw) if getattr(args, "nightly", None) else None
    flags = {"workers": args.workers, "gpusPerWorker": args.gpus_per_worker,
             "image": args.image, "operator": args.operator, "name": args.name,
             "namespace": args.namespace, "saveDir": args.save_dir,
             "s3Endpoint": args.s3_endpoint}
    if args.s3_secret is not None:
        flags["s3Secret"] = args.s3_secret
    flags.update(night.values if night else {})
    v = values.resolve(file_values, flags, src=args.values or "launch values")
    rendered = render.render(args.config, [], v, raw=raw)
    crds = [validate.load_crd(path) for path in args.crd]
    checked = validate.validate_objects(rendered.objects, crds,
                                        args.k8s_version or validate.DEFAULT_K8S_VERSION)
    return Launch(rendered, checked, v, night, gpu_nodes_unknown=bool(
        v["gpusPerWorker"] and not v["gpuCompute"]
        and file_values.get("gpuCompute", "auto") == "auto"))


def _print_checked(checked: list[str]) -> None:
    """The validations passed, one line each."""
    for line in checked:
        _note(f"valid: {line}")


def _note_gpu_nodes(launch: Launch) -> None:
    """After a launch: say when its GPU pods are not kept to GPUs the image runs."""
    if launch.gpu_nodes_unknown:
        _note("note: GPU nodes: any (gpuCompute auto, and this is not the image): the pods "
              "may land on GPUs the image cannot run; set gpuCompute to the list `clsact "
              "doctor` prints in the image")


def _note(text: str) -> None:
    print(f"clsact: {text}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    """``clsact render``."""
    from clsact.launch.render import to_yaml, write_dir

    launch = _spec(args)
    if args.output:
        for path in write_dir(launch.rendered.objects, args.output):
            print(path)
    else:
        sys.stdout.write(to_yaml(launch.rendered.objects))
    _print_checked(launch.checked)
    _note_gpu_nodes(launch)
    return 0


def _connect(args: argparse.Namespace):
    from clsact.launch.cluster import connect

    return connect(args.kubeconfig, args.context)


def _print_state(name: str):
    def show(state) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        extra = f" ({state.message})" if state.message else ""
        print(f"{stamp} {name}: {state.phase}{extra}", flush=True)
    return show


def cmd_submit(args: argparse.Namespace) -> int:
    """``clsact submit``."""
    from clsact.launch import jobs
    from clsact.launch.notify import Events
    from clsact.launch.render import to_yaml

    if args.gate is not None and not args.wait:
        from clsact.errors import ConfigError

        raise ConfigError("--gate needs --wait (the run is gated once it has succeeded)")
    if args.pushgateway and args.gate is None:
        from clsact.errors import ConfigError

        raise ConfigError("--pushgateway needs --gate (it pushes the gate's verdict)")
    launch = _spec(args)
    rendered = launch.rendered
    gate_prefix = _gate_prefix(args, launch) if args.gate is not None else None
    _print_checked(launch.checked)
    if args.dry_run:
        sys.stdout.write(to_yaml(rendered.objects))
        _note(f"dry run: nothing submitted ({rendered.operator.kind} {rendered.namespace}/"
              f"{rendered.name})")
        return 0
    cluster = _connect(args)
    events = Events(cluster, rendered.namespace, warn=lambda m: _note(f"warning: {m}"))
    op = rendered.operator
    if args.nightly and gate_prefix is not None:
        _gate_earlier_nights(gate_prefix, launch.s3_endpoint)
    if args.nightly:
        from clsact.launch import nightly

        _note(f"nightly {args.nightly}: night {launch.night.night.stamp} (scheduled "
              f"{launch.night.night.scheduled.isoformat()})")
        try:
            nightly.check_no_active_night(cluster, op, rendered.namespace,
                                          launch.night.night, rendered.name)
        except nightly.NightBusy as exc:
            print(f"clsact: error: {exc}", file=sys.stderr)
            if exc.blocking is not None:
                events.record(op, exc.blocking, "NightRefused", f"night "
                              f"{launch.night.night.stamp} of {args.nightly} not started: "
                              "this earlier night is still running", warning=True)
            return exitcodes.NIGHT_BUSY
    outcome = jobs.submit(cluster, rendered, replace=args.replace, warn=lambda m: _note(
        f"warning: {m}"))
    ref = f"{op.kind} {outcome.namespace}/{outcome.name}"
    if outcome.action == "unchanged":
        print(f"{ref} already submitted with this spec; nothing created (phase "
              f"{outcome.state.phase})")
    else:
        print(f"{ref} {outcome.action} ({op.api_version}, spec "
              f"{rendered.spec_hash}) on {cluster.host}")
        events.record(op, outcome.name, "Submitted", f"clsact {__version__} {outcome.action} "
                      f"the run (spec {rendered.spec_hash}, {launch.values['workers']} pods"
                      f"{', night ' + launch.night.night.stamp if launch.night else ''})")
        _note_gpu_nodes(launch)
    if args.nightly:
        pruned = nightly.prune(cluster, op, rendered.namespace, args.nightly,
                               args.keep_jobs, _note)
        if pruned:
            events.record(op, outcome.name, "Pruned", f"nightly {args.nightly} deleted "
                          f"{', '.join(pruned)} (it keeps the last {args.keep_jobs} jobs)")
    if not args.wait:
        key = rendered.operator.key
        print(f"follow it: clsact status {outcome.name} -n {outcome.namespace}"
              f"{'' if key == 'paddle' else ' --operator ' + key}")
        return 0
    state = jobs.wait(cluster, rendered.operator, outcome.namespace, outcome.name,
                      args.timeout, _print_state(outcome.name), poll=args.poll,
                      on_outage=lambda m: _note(f"warning: {m}"))
    if state is None and args.nightly:
        print(f"clsact: error: {ref} did not finish within {args.timeout:.0f}s; it goes on "
              "(the next night is refused until it ends)", file=sys.stderr)
        return exitcodes.TIMEOUT
    if state is None:
        jobs.delete_job(cluster, rendered.operator, outcome.namespace, outcome.name)
        print(f"clsact: error: {ref} did not finish within {args.timeout:.0f}s; cancelled it "
              "(job and ConfigMap deleted)", file=sys.stderr)
        return exitcodes.TIMEOUT
    if state.outcome == "failed":
        print(f"clsact: error: {ref} {state.phase}{': ' + state.message if state.message else ''}"
              f"; see `clsact logs {outcome.name} -n {outcome.namespace}`", file=sys.stderr)
        return exitcodes.JOB_FAILED
    print(f"{ref} {state.phase}")
    if gate_prefix is None:
        return 0
    verdict = _gate_run(launch.values["saveDir"], gate_prefix, launch.s3_endpoint,
                        plot=bool(args.nightly))
    _announce_verdict(args, events, op, outcome.name, verdict)
    return verdict.exit_code


def _announce_verdict(args: argparse.Namespace, events, op, name: str, verdict) -> None:
    """The gate's verdict as an Event on the job and, with a Pushgateway, as metrics (a
    failure to push is a warning: the exit code already says it)."""
    import os

    from clsact.launch.notify import PUSHGATEWAY_ENV, push_gate_metrics

    top1 = verdict.run.metric("compressed", "top1")
    shown = f"top-1 {top1:.4f}" if top1 is not None else "no top-1"
    failed = [c.name for c in verdict.checks if c.status == "fail"]
    events.record(op, name, "Blessed" if verdict.blessed else "NotBlessed",
                  f"gate against {verdict.against}: {shown}, "
                  + ("blessed" if verdict.blessed else f"not blessed ({', '.join(failed)})"),
                  warning=not verdict.blessed)
    url = args.pushgateway or os.environ.get(PUSHGATEWAY_ENV)
    if not url:
        return
    base = verdict.baseline.metric("compressed", "top1") if verdict.baseline else None
    shown_url = re.sub(r"//[^/@]*@", "//", url)   # never print credentials in the URL
    try:
        push_gate_metrics(url, args.nightly or name, name, verdict.blessed, top1,
                          top1 if verdict.blessed else base)
        _note(f"gate metrics pushed to {shown_url}")
    except OSError as exc:
        _note(f"warning: gate metrics not pushed to {shown_url}: "
              f"{str(exc).replace(url, shown_url)}")


def _gate_prefix(args: argparse.Namespace, launch: Launch) -> str:
    """Where ``submit --gate`` gates against: the flag, the nightly's save dir, Gate.against.

    Raises:
        ConfigError: none of them is set.
    """
    from clsact.errors import ConfigError

    prefix = args.gate or (launch.night.prefix if launch.night else None) \
        or launch.gate_against
    if not prefix:
        raise ConfigError("--gate: no prefix to gate against; pass --gate PREFIX or set "
                          "Gate.against in the config")
    return prefix


def _gate_run(run: str, prefix: str, endpoint: str | None, *, plot: bool):
    """Gate the finished run, print the verdict; for a nightly also refresh
    ``PREFIX/history.png``. Returns the gate's Outcome (``exit_code`` 0 blessed, 1 not).

    Raises:
        ClsactError: the gate failed (unreadable store, broken pointer).
    """
    from clsact.cli.registry import gate_and_print
    from clsact.storage import S3Settings

    s3 = S3Settings(endpoint_url=endpoint)
    out = gate_and_print(run, prefix, {}, s3=s3)
    if plot:
        _write_history_plot(prefix, s3)
    return out


def _gate_earlier_nights(prefix: str, endpoint: str | None) -> None:
    """Gate the finished nights under ``prefix`` that were never gated (their submitter
    stopped following them, exit 124, before they finished), oldest first, so that a slow
    good night can still become ``latest``.

    Raises:
        ClsactError: the prefix cannot be read, or a gate failed.
    """
    from clsact.cli.registry import run_gate
    from clsact.registry.gate import never_gated
    from clsact.storage import S3Settings

    s3 = S3Settings(endpoint_url=endpoint)
    for run in never_gated(prefix, s3):
        _note(f"gating {run}: it finished after its submitter stopped following it")
        run_gate(run, prefix, {}, s3=s3)


def _write_history_plot(prefix: str, s3) -> None:
    """``PREFIX/history.png``: top-1 over the nights (a failure is only a warning)."""
    import tempfile
    from pathlib import Path

    from clsact.errors import ClsactError
    from clsact.registry import history

    try:
        store, rows = history.history(prefix, s3)
        with tempfile.TemporaryDirectory(prefix="clsact-history-") as tmp:
            png = Path(tmp) / "history.png"
            history.plot(rows, png, title=f"top-1 of {store.describe()}")
            store.put_file(png, "history.png")
        print(f"history of {len(rows)} runs: {store.describe('history.png')}")
    except ClsactError as exc:
        _note(f"warning: the history plot was not written: {exc}")


def cmd_status(args: argparse.Namespace) -> int:
    """``clsact status``: the job's phase (queued and for how long), its pods and why they
    wait, and the run's progress from its save dir."""
    from clsact.launch import jobs
    from clsact.launch import status as st
    from clsact.launch.operators import job_state
    from clsact.progress import duration

    op = OPERATORS[args.operator]
    cluster = _connect(args)
    obj = jobs.find_job(cluster, op, args.namespace, args.name)
    name = obj["metadata"]["name"]
    state = job_state(op, obj)
    print(f"{op.kind} {args.namespace}/{name} ({op.api_version})")
    since = st.queued_since(op, obj)
    if state.queued and since is not None:
        waited = (datetime.now(timezone.utc) - since).total_seconds()
        labels = obj["metadata"].get("labels") or {}
        queue = labels.get("kueue.x-k8s.io/queue-name")
        print(f"  phase:    Queued for {duration(waited)} (suspended until "
              f"{'Kueue admits it from queue ' + queue if queue else 'it is resumed'}; "
              "queued time is not the run's)")
    else:
        print(f"  phase:    {state.phase}{' (' + state.message + ')' if state.message else ''}")
    print(f"  created:  {obj['metadata'].get('creationTimestamp')}")
    print(f"  spec:     {(obj['metadata'].get('annotations') or {}).get('clsact.io/spec-hash')}")
    restarted = st.restarts(op, obj)
    if restarted:
        print(f"  restarts: {restarted}")
    pods = jobs.job_pods(cluster, args.namespace, name)
    print(f"  pods:     {len(pods)}")
    for pod in pods:
        reason = st.pod_reason(pod, st.pod_events(cluster, args.namespace, pod.metadata.name)
                               if pod.status and pod.status.phase == "Pending" else [])
        again = st.container_restarts(pod)
        print(f"    {pod.metadata.name}  {pod.status.phase if pod.status else '?'}"
              f"{'  ' + reason if reason else ''}"
              f"{f'  (restarted {again}x)' if again else ''}")
    _print_progress(cluster, args.namespace, name, obj)
    return exitcodes.JOB_FAILED if state.outcome == "failed" else 0


def _print_progress(cluster, namespace: str, name: str, obj: dict[str, Any]) -> None:
    """The run's progress from ``<save dir>/_progress.json`` (a failure to read is a note)."""
    from clsact import progress
    from clsact.errors import ClsactError
    from clsact.launch import status as st

    save_dir = st.save_dir_of(obj)
    if not save_dir:
        return
    try:
        record = st.read_progress(save_dir, st.s3_endpoint_of(cluster, namespace, name))
    except ClsactError as exc:
        print(f"  progress: cannot read {save_dir}: {exc}")
        return
    if record is None:
        print(f"  progress: none yet in {save_dir} (the run writes it once it starts)")
        return
    print(f"  progress: {save_dir}")
    for line in progress.describe(record):
        print(f"    {line}")


def _age(created: str | None) -> str:
    if not created:
        return "?"
    start = datetime.fromisoformat(created.replace("Z", "+00:00"))
    secs = int((datetime.now(timezone.utc) - start).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def cmd_list(args: argparse.Namespace) -> int:
    """``clsact list``: a table of clsact's jobs."""
    from clsact.launch import jobs
    from clsact.launch.operators import job_state

    ops = [OPERATORS[args.operator]] if args.operator else list(OPERATORS.values())
    cluster = _connect(args)
    rows = [(obj["metadata"]["name"], op.key, job_state(op, obj).phase,
             _age(obj["metadata"].get("creationTimestamp")))
            for op, obj in jobs.list_jobs(cluster, ops, args.namespace)]
    print(f"{'NAME':<50} {'OPERATOR':<9} {'PHASE':<12} AGE")
    for row in sorted(rows):
        print(f"{row[0]:<50} {row[1]:<9} {row[2]:<12} {row[3]}")
    if not rows:
        _note(f"no clsact jobs in namespace {args.namespace}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """``clsact logs``."""
    from clsact.launch import jobs

    jobs.stream_logs(_connect(args), OPERATORS[args.operator], args.namespace, args.name,
                     args.follow, sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``clsact cancel``: delete the job and its ConfigMap."""
    from clsact.launch import jobs

    op = OPERATORS[args.operator]
    cluster = _connect(args)
    name = jobs.find_job(cluster, op, args.namespace, args.name)["metadata"]["name"]
    jobs.delete_job(cluster, op, args.namespace, name)
    print(f"{op.kind} {args.namespace}/{name} cancelled (job and ConfigMap deleted)")
    return 0


def cmd_check_release(args: argparse.Namespace) -> int:
    """``clsact check-release``: one line per object found; a missing one is an error."""
    from clsact.launch.release import check

    for line in check(_connect(args), args.namespace, args.objects, args.operator):
        print(f"ok: {line}")
    return 0


def cmd_rbac(args: argparse.Namespace) -> int:
    """``clsact rbac``: print the submitter's ServiceAccount, Role and RoleBinding."""
    from clsact.launch.render import render_rbac, to_yaml
    from clsact.launch.validate import validate_objects

    objects = render_rbac(args.namespace, args.service_account, args.secret or None)
    validate_objects(objects)
    sys.stdout.write(to_yaml(objects))
    return 0


COMMANDS = {"render": cmd_render, "submit": cmd_submit, "status": cmd_status,
            "list": cmd_list, "logs": cmd_logs, "cancel": cmd_cancel, "rbac": cmd_rbac,
            "check-release": cmd_check_release}
