"""The ACT driver: ``clsact compress``.

One run, in order (every check that can fail cheaply comes before any heavy work):

1. validate inputs: list files parse, model files exist, labels fit the model, the model's
   input size matches ``Global.img_size``, the optimizer suits the number of ranks; claim
   the save dir (refused when another run owns it or it holds a finished run); find this
   run's checkpoint (refused when it was made with other settings);
2. evaluate the baseline model as given (exact top-1/top-5) and check
   ``TrainConfig.origin_metric`` against it;
3. copy the model (ACT rewrites its input in place), apply :mod:`clsact.compat` fixes to
   the copy, run paddleslim ``AutoCompression`` with our loaders and eval callback;
4. evaluate the compressed model, check it holds quantize ops when ``QuantAware`` is set;
5. stage ``model/``, ``config.yaml``, ``clsact.log`` and ``metrics.json`` and publish them
   to the save dir (local or ``s3://``) with ``manifest.json`` and, last, ``_SUCCESS``
   (:mod:`clsact.storage.publish`): the marker exists only for a run that succeeded.

Inputs may be ``s3://`` URIs: the model is downloaded to a scratch copy, images are read by
the loader workers straight from the bucket. Only rank 0 publishes.
"""

from __future__ import annotations

import json
import logging
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clsact import __version__, checkpoint, compat, logs, optim, pruning, storage, strategy
from clsact import config as config_mod
from clsact.act import AVERAGE, LAST, ensure_evaluation, run_act
from clsact.config import Config
from clsact.data.build import make_loader, read_samples, selection
from clsact.data.fingerprint import eval_settings, val_fingerprint
from clsact.data.listfile import Sample
from clsact.distributed import GRADIENTS, Group, aggregate_eval, sync_mode
from clsact.errors import ConfigError, DataError, DeviceError, ModelError, StorageError
from clsact.modelio import copy_model, model_paths
from clsact.process import rank_info, select_device
from clsact.progress import FAILED, PUBLISHED, Progress
from clsact.registry.runs import blessed_here
from clsact.runconfig import Global
from clsact.storage import S3Settings, publish

log = logging.getLogger(__name__)
METRICS = "metrics.json"
MODEL_SUBDIR = "model"


@dataclass
class Timer:
    """Wall time of named phases."""

    start: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str, since: float) -> float:
        """Record ``name`` as lasting from ``since`` until now; returns now."""
        now = time.perf_counter()
        self.phases[name] = round(now - since, 3)
        return now


@dataclass
class RunContext:
    """One rank's run, settled before training: what :func:`_run` works with."""

    cfg: Config
    s3: S3Settings                  # how every store of the run is reached
    group: Group                    # this rank among the others
    run_id: str
    device: str                     # cpu | gpu
    mode: str                       # how ranks synchronise (clsact.distributed)
    work: Path                      # this rank's scratch folder (removed at the end)
    staging: Path                   # what rank 0 publishes
    timer: Timer
    src_model: Path                 # a local copy (or the local source) of the model
    teachers: dict[str, Any]        # Distillation overrides pointing at local teachers
    train: list[Sample]
    val: list[Sample]
    selection: list[Sample] | None  # what ACT selects on (None: the validation list)
    selection_info: dict[str, Any]
    fingerprint: dict[str, Any]     # the settings a checkpoint must match
    resume: checkpoint.Checkpoint | None
    checkpointer: checkpoint.Checkpointer
    progress: Progress              # rank 0 writes <save-dir>/_progress.json


def versions() -> dict[str, str]:
    """Versions of clsact, paddle, paddleslim and Python."""
    from importlib.metadata import version

    return {"clsact": __version__, "paddle": version("paddlepaddle" if not _is_gpu_build()
                                                     else "paddlepaddle-gpu"),
            "paddleslim": version("paddleslim"), "python": platform.python_version()}


def _is_gpu_build() -> bool:
    import paddle

    return bool(paddle.device.is_compiled_with_cuda())


def check_labels(samples: list[Sample], num_classes: int | None, which: str) -> None:
    """Raises ModelError when a label is not a class of the model."""
    if num_classes is None:
        return
    worst = max(s.label for s in samples)
    if worst >= num_classes:
        bad = next(s for s in samples if s.label == worst)
        raise ModelError(f"{which} label {worst} ({bad.path}) is not a class of the model, "
                         f"which has {num_classes} outputs")


def check_input_size(shape: tuple[int, ...], img_size: int, model_dir: str) -> None:
    """Raises ModelError when the model's fixed input size differs from Global.img_size."""
    h, w = shape[2], shape[3]
    if (h > 0 and h != img_size) or (w > 0 and w != img_size):
        raise ModelError(f"model {model_dir} takes {h}x{w} inputs but Global.img_size is "
                         f"{img_size}; set --set Global.img_size={h}")


def check_origin_metric(cfg: Config, baseline_top1: float) -> None:
    """Fail before training when ``TrainConfig.origin_metric`` disagrees with the baseline.

    paddleslim would raise the same deep inside ACT (tolerance 0.05) after building graphs.
    """
    origin = cfg.train.get("origin_metric")
    if origin is not None and abs(baseline_top1 - origin) > 0.05:
        raise ConfigError(
            f"{cfg.source}: TrainConfig.origin_metric is {origin} but the baseline model scores "
            f"top-1 {baseline_top1:.4f} on {cfg.globals.val_list}: check the dataset and "
            "preprocessing, or set TrainConfig.origin_metric to the measured value (or null)")


def new_run_id() -> str:
    """A fresh run id: UTC timestamp plus random hex (sortable, unique)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def fetch_model(cfg: Config, work: Path, s3: S3Settings) -> tuple[Path, dict[str, Any]]:
    """The local directory of the model to compress, and the Distillation overrides that
    point teachers at local scratch copies (dropout Mask fixed) with their file names.

    Raises:
        StorageError: a model location is malformed, unreachable or lacks the model files.
        ModelError: a local model directory lacks the model files.
    """
    g = cfg.globals
    files = [g.model_filename, g.params_filename]
    model = storage.input_dir(g.model_dir, "Global.model_dir", files, work / "source-model",
                              s3)
    model_paths(model, *files)
    overrides: dict[str, Any] = {}
    for section in ("Distillation", "MultiTeacherDistillation"):
        conf = cfg.data.get(section) or {}
        dirs = conf.get("teacher_model_dir")
        if not dirs:
            continue
        single = isinstance(dirs, str)
        local, models, params = [], [], []
        for i, where in enumerate([dirs] if single else dirs):
            names = [_pick(conf.get("teacher_model_filename"), i, g.model_filename),
                     _pick(conf.get("teacher_params_filename"), i, g.params_filename)]
            found = storage.input_dir(where, f"{section}.teacher_model_dir", names,
                                      work / f"teacher-{i}", s3)
            # ACT copies the teacher's ops into the student program: its dropout ops need
            # their Mask output too (compat.fix_dropout_mask), so fix a copy, never the source
            teacher = copy_model(found, work / f"teacher-{i}-fixed", *names)
            compat.fix_dropout_mask(teacher / names[0])
            local.append(str(teacher))
            models.append(names[0])
            params.append(names[1])
        # the file names too: without them paddleslim reads "<teacher_model_dir>.pdmodel"
        overrides[section] = {"teacher_model_dir": local[0] if single else local,
                              "teacher_model_filename": models[0] if single else models,
                              "teacher_params_filename": params[0] if single else params}
    return model, overrides


def _pick(value: Any, i: int, default: str) -> str:
    if isinstance(value, list):
        return value[i] if i < len(value) and value[i] else default
    return value or default


def _assemble_metrics(cfg: Config, baseline: dict, compressed: dict, act_info: dict,
                      extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "succeeded",
        "baseline": baseline,
        "compressed": compressed,
        "delta_top1": round(compressed["top1"] - baseline["top1"], 6),
        "act": act_info,
        **extra,
        "config": "config.yaml",
        "config_source": cfg.source,
    }


def compress(cfg: Config, save_dir: str | None = None, overwrite: bool = False,
             run_id: str | None = None, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Run one compression job (this process is one rank of it); returns the metrics
    written to ``metrics.json``.

    Raises:
        ClsactError: any user-fixable problem (config, data, model, storage, device); nothing
            is published then. A rank whose peers stop answering exits the process instead
            (:data:`clsact.exitcodes.RANK_LOST`).
    """
    timer = Timer()
    started = datetime.now(timezone.utc)
    g = cfg.globals
    s3 = g.s3(s3_endpoint)
    run_id = run_id or new_run_id()
    ranks = rank_info()
    group = Group(ranks, timeout=g.collective_timeout)
    dest = storage.open_store(save_dir or g.output_dir, "--save-dir", s3)
    train_samples = read_samples(g, "train", s3)
    val_samples = read_samples(g, "val", s3)
    train_samples, select_samples, select_info = selection(g, train_samples, val_samples, s3)
    if len(train_samples) < ranks.world:
        raise DataError(f"{g.train_list} has {len(train_samples)} training images for "
                        f"{ranks.world} ranks: every rank needs at least one; use more images "
                        "or fewer ranks")
    device = select_device(g.device)  # before the model is fetched and the save dir claimed
    if g.decode == "gpu" and device != "gpu":
        raise DeviceError(f"Global.decode gpu, but this run's device is {device} (no GPU "
                          "here): set Global.decode: cpu")
    mode = strategy.rank_sync_for(cfg.data, sync_mode(g.rank_sync, device, ranks.world),
                                  g.rank_sync, ranks.world)
    optim.check_data_parallel(cfg, ranks.world, mode)
    work = Path(tempfile.mkdtemp(prefix="clsact-work-", dir=g.scratch_dir))
    group.scratch.append(work)
    claimed: list[str] = []
    checkpointer: checkpoint.Checkpointer | None = None
    progress = Progress(None, run_id)
    try:
        src_model, teachers = fetch_model(cfg, work, s3)
        group.start(static_gloo=group.active and mode == GRADIENTS and device == "cpu")
        run_id = group.broadcast_object(run_id, "agreeing on the run id")  # rank 0's
        # after the input checks: bad inputs create nothing
        group.on_rank0(lambda: claimed.append(_claim(dest, run_id, overwrite, s3)),
                       "claiming the save dir",
                       f"rank 0 refused the save dir {dest.describe()}; see its log")
        fingerprint = checkpoint.fingerprint(
            cfg.data, group.world, {"train": train_samples, "val": val_samples,
                                    "selection": select_samples or []},
            list(model_paths(src_model, g.model_filename, g.params_filename)))
        resume = _load_checkpoint(group, dest, run_id, fingerprint, overwrite) \
            if g.checkpoint else None
        checkpointer = checkpoint.Checkpointer(
            dest if g.checkpoint and group.rank == 0 else None,
            g.checkpoint_every_steps, g.checkpoint_every_minutes)
        progress = Progress(dest if group.rank == 0 else None, run_id)
        progress.phase("preparing")
        run = RunContext(cfg=cfg, s3=s3, group=group, run_id=run_id, device=device, mode=mode,
                         work=work, staging=work / "publish", timer=timer, src_model=src_model,
                         teachers=teachers, train=train_samples, val=val_samples,
                         selection=select_samples, selection_info=select_info,
                         fingerprint=fingerprint, resume=resume, checkpointer=checkpointer,
                         progress=progress)
        run.staging.mkdir()
        with logs.log_file(run.staging / "clsact.log"):
            log.info("clsact %s: run %s, rank %d of %d, config %s, save dir %s", __version__,
                     run_id, ranks.rank, ranks.world, cfg.source, dest.describe())
            for warning in cfg.warnings:
                log.warning("%s", warning)
            if resume is not None:
                log.info("resuming run %s from its checkpoint after %d steps", run_id,
                         resume.steps)
            metrics = _run(run)
            metrics["run_id"] = run_id
            metrics["save_dir"] = dest.describe()
            metrics["started_at"] = started.isoformat(timespec="seconds")
            metrics["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            metrics["wall_seconds"] = round(time.perf_counter() - timer.start, 3)
            metrics["phase_seconds"] = timer.phases
            log.info("compressed top1 %.4f (baseline %.4f), %d quantize ops",
                     metrics["compressed"]["top1"], metrics["baseline"]["top1"],
                     metrics["compressed"]["quant_ops"])
        rank_logs = group.gather_object(
            (run.staging / "clsact.log").read_text(encoding="utf-8"), "collecting the rank logs")

        def publish_run() -> None:
            progress.phase("publishing")
            if g.report:
                _deploy_report(run, metrics)
            for rank, text in enumerate(rank_logs[1:], start=1):
                (run.staging / "logs").mkdir(exist_ok=True)
                (run.staging / "logs" / f"rank-{rank}.log").write_text(text, encoding="utf-8")
            config_mod.save(cfg, run.staging / "config.yaml")
            (run.staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
            publish.publish(run.staging, dest, run_id, overwrite=overwrite)
            checkpoint.clear(dest)
            progress.phase(PUBLISHED, top1=metrics["compressed"]["top1"])

        group.on_rank0(publish_run, "publishing",
                       f"rank 0 could not publish to {dest.describe()}; see its log",
                       timeout=g.collective_timeout + (g.report_timeout if g.report
                                                          else 0))
        return metrics
    except BaseException as exc:
        # a run that failed before leaving anything to resume gives its save dir back
        if claimed == ["new"] and (checkpointer is None or not checkpointer.written):
            progress.discard()
            publish.release_claim(dest, run_id)
        elif claimed:   # a restart resumes it: say why it stopped
            first = str(exc).strip().splitlines()[0] if str(exc).strip() \
                else type(exc).__name__
            progress.phase(FAILED, error=first[:300])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _deploy_report(run: RunContext, metrics: dict[str, Any]) -> None:
    """Measure the baseline and the compressed model as served; the report goes into the
    staged run and its summary into ``metrics`` (:mod:`clsact.deploy.report`)."""
    from clsact.deploy import report

    t = time.perf_counter()
    g = run.cfg.globals
    rep = report.measure_run(run.staging, run.src_model, run.staging / MODEL_SUBDIR, g, run.val,
                             metrics, budget_s=g.report_budget,
                             serving_dir=run.staging / MODEL_SUBDIR, s3=run.s3)
    metrics["report"] = {**rep["summary"], "files": list(report.REPORT_FILES),
                         "seconds": round(time.perf_counter() - t, 3)}


def _claim(dest: storage.Store, run_id: str, overwrite: bool, s3: S3Settings) -> str:
    """Claim the save dir (returns how: see :func:`publish.claim`); with ``overwrite`` a
    previous run's checkpoint is discarded.

    Raises:
        StorageError: see :func:`publish.claim`; or, with ``overwrite``, the save dir holds
            the run a ``latest`` pointer names (replacing it would change the blessed
            baseline under the gate).
    """
    if overwrite and dest.exists(publish.SUCCESS):
        pointer = blessed_here(dest.describe(), s3=s3)
        if pointer is not None:
            raise StorageError(
                f"--overwrite refused: {dest.describe()} holds the blessed run that "
                f"{pointer} names; replacing it would change the gate's baseline. Choose "
                "another --save-dir (a newer run that passes the gate becomes latest)")
    how = publish.claim(dest, run_id, overwrite)
    if overwrite:
        checkpoint.clear(dest)
    log.info("save dir %s: %s", dest.describe(), {
        "new": f"claimed for run {run_id}", "same run": f"already claimed by run {run_id} "
        "(continuing it)", "taken over": f"taken over by run {run_id} (--overwrite)"}[how])
    return how


def _load_checkpoint(group: Group, dest: storage.Store, run_id: str,
                     fingerprint: dict[str, Any], overwrite: bool):
    """Rank 0 reads the run's checkpoint; every rank gets it (or None), or every rank stops.

    Raises:
        ClsactError: the checkpoint was made with other settings (on every rank).
    """
    box: list[Any] = [None]

    def read() -> None:
        box[0] = None if overwrite else checkpoint.load(dest, run_id, fingerprint)

    group.on_rank0(read, "reading the checkpoint",
                   f"rank 0 refused the checkpoint in {dest.describe()}; see its log")
    return group.broadcast_object(box[0], "sharing the checkpoint")


def _selection_record(info: dict[str, Any], act_info: dict[str, Any]) -> dict[str, Any]:
    """How the published model was chosen, for ``metrics.json``."""
    competed = len(act_info["evaluations"])
    if act_info["final_model"] == LAST or (act_info["final_model"] == AVERAGE
                                           and not act_info["averaged_steps"]):
        note = ("the published model is the state after the last training step "
                "(Global.final_model: last); ACT's evaluations only monitored the run")
    elif act_info["final_model"] == AVERAGE:
        note = ("the published model is the mean of the states at the ends of the last "
                f"healthy learning-rate guard windows (steps {act_info['averaged_steps']}; "
                "Global.final_model: average); ACT's evaluations only monitored the run")
    elif info["set"] == "val" and competed > 1:
        note = ("ACT kept the best of its evaluations on the validation set itself, so the "
                "published top-1 is optimistic (more so the more evaluations competed); set "
                "Global.selection_holdout or Global.selection_list for an unbiased number, or "
                "Global.final_model: last")
    else:
        note = ("the published top-1 is measured once, on a validation set the choice never "
                "saw" if info["set"] != "val" else "one evaluation: nothing to choose from")
    return {**info, "final_model": act_info["final_model"], "evaluations_competed": competed,
            "note": note}


def _evaluate(group: Group, model_dir: Path, loader, g: Global, input_name: str,
              what: str) -> dict[str, Any]:
    from clsact.evaluate import evaluate_model_dir

    mine = evaluate_model_dir(model_dir, loader, model_filename=g.model_filename,
                              params_filename=g.params_filename, input_name=input_name)
    return aggregate_eval(group, mine, what)


def _share_model(group: Group, model_dir: Path, g: Global) -> None:
    """Rank 0's saved model files, written to ``model_dir`` on every other rank."""
    names = [g.model_filename, g.params_filename]
    blobs = group.broadcast_object(
        [(model_dir / n).read_bytes() for n in names] if group.rank == 0 else None,
        "sharing the compressed model")
    if group.rank != 0:
        model_dir.mkdir(parents=True, exist_ok=True)
        for name, blob in zip(names, blobs, strict=True):
            (model_dir / name).write_bytes(blob)


def _stage_configs(cfg: Config, stages: list[strategy.Stage], steps_per_epoch: int,
                   world: int, resume: checkpoint.Checkpoint | None
                   ) -> tuple[list[Config], float, list[int]]:
    """Each stage's config with the run's adaptations (learning rate scaled to the ranks,
    an evaluation inside ACT's loop, schedules filled, a resumed stage's position); the LR
    factor and each stage's planned steps. A single stage adapts ``cfg`` itself (its
    ``config.yaml`` then shows what ran)."""
    out, factor, planned = [], 1.0, []
    for i, stage in enumerate(stages):
        scfg = cfg if len(stages) == 1 else cfg.for_stage(stage.sections, stage.train)
        if strategy.gradual(scfg.data) and scfg.globals.lr_guard:
            log.info("Global.lr_guard is off for %s: GMP raises the sparsity, and with it the "
                     "distillation loss, by design; the published model is the last state",
                     stage.name)
            scfg.data["Global"].update(lr_guard=False, final_model=LAST if
                                       scfg.globals.final_model == AVERAGE else
                                       scfg.globals.final_model)
            scfg.globals = Global.from_section(scfg.data["Global"])
        factor = optim.scale_learning_rate(scfg, world)
        total = ensure_evaluation(scfg, steps_per_epoch)
        planned.append(total)
        for filled in optim.complete_schedule(scfg.train, total):
            log.info("set %s", filled)
        if resume is not None and i == resume.stage and resume.steps:
            # the planned steps (epochs may end the run before train_iter does)
            scfg.train["train_iter"] = min(scfg.train.get("train_iter") or total, total)
            optim.resume_position(scfg.train, resume.steps)
            ensure_evaluation(scfg, steps_per_epoch)
        out.append(scfg)
    return out, factor, planned


def _gmp_overrides(cfg: Config, stages: list[strategy.Stage], planned: list[int],
                   resume: checkpoint.Checkpoint | None) -> dict[str, Any]:
    """The GMP schedule ACT's unstructured pruner gets: checked against the stage's
    length, and continued at the resumed step (paddleslim keeps its position outside the
    training state).

    Raises:
        ConfigError: the schedule reaches its ratio after the run ends.
    """
    if not strategy.gradual(cfg.data):
        return {}
    for i, stage in enumerate(stages):
        if stage.prune != "UnstructurePrune":
            continue
        done = resume.steps if resume is not None and resume.stage == i else 0
        try:
            gmp = strategy.gmp_schedule(cfg.data["UnstructurePrune"], planned[i])
        except ConfigError as exc:
            raise ConfigError(f"{cfg.source}: {exc}") from None
        gmp["resume_iteration"] = done - 1 if done else -1
        return {"UnstructurePrune": {"gmp_config": gmp}}
    return {}


def _teacher_for(run: RunContext, stage: int, scfg: Config) -> dict[str, Any]:
    """Distillation overrides of a stage after the first: the original model teaches (as in
    ACT's own chain), unless the config names its teacher."""
    if stage == 0 or run.teachers or "Distillation" not in scfg.data:
        return {}
    g = run.cfg.globals
    teacher = run.work / "teacher-original"
    if not teacher.exists():
        copy_model(run.src_model, teacher, g.model_filename, g.params_filename)
        compat.fix_dropout_mask(teacher / g.model_filename)
    return {"Distillation": {"teacher_model_dir": str(teacher),
                             "teacher_model_filename": g.model_filename,
                             "teacher_params_filename": g.params_filename}}


def _resumed_stage_model(run: RunContext) -> Path:
    """The model the last finished stage produced, from the checkpoint (rank 0 reads it,
    every rank gets it).

    Raises:
        ClsactError: the kept files are missing or damaged.
    """
    dest = run.work / "resumed-stage-model"

    def fetch() -> None:
        checkpoint.load_stage_model(run.checkpointer.store, run.resume, dest)

    run.group.on_rank0(fetch, "reading the finished stage's model",
                       "rank 0 could not read the finished stage's model; see its log")
    _share_model(run.group, dest, run.cfg.globals)
    log.info("resuming at stage %d with the model stage %d produced", run.resume.stage + 1,
             run.resume.stage)
    return dest


def _keep_stage(run: RunContext, stage: int, model_dir: Path, record: dict[str, Any],
                done: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0 keeps a finished stage's model with the checkpoint (a restart starts at the
    next stage); returns the stage's record as checkpointed. A failed write is a warning (a
    restart would redo the stage)."""
    if not run.checkpointer.enabled:
        return record
    g = run.cfg.globals
    try:
        kept = checkpoint.save_stage(run.checkpointer.store, run.run_id, stage, model_dir,
                                     [g.model_filename, g.params_filename], record, done,
                                     run.fingerprint)
        run.checkpointer.written += 1
        return kept
    except StorageError as exc:
        log.warning("the stage %d model was not kept with the checkpoint (%s); a restart "
                    "would redo that stage", stage + 1, exc)
        return record


def _run(run: RunContext) -> dict[str, Any]:
    """Steps 1 (the model's checks) to 4 of the module docstring on this rank; returns the
    metrics.

    Raises:
        ClsactError: see :func:`compress`.
    """
    from clsact.modelio import count_ops, inspect_model

    cfg, group, g, timer = run.cfg, run.group, run.cfg.globals, run.timer
    src_model, work, staging = run.src_model, run.work, run.staging
    train_samples, val_samples, select_samples = run.train, run.val, run.selection
    resume, device = run.resume, run.device
    model_file, _ = model_paths(src_model, g.model_filename, g.params_filename)
    info = inspect_model(model_file, g.input_name)
    check_input_size(info.input_shape, g.img_size, g.model_dir)
    check_labels(train_samples, info.num_classes, "train")
    check_labels(val_samples, info.num_classes, "validation")
    log.info("device %s; model input %r %s, %s classes; %d train / %d val images", device,
             info.input_name, list(info.input_shape), info.num_classes, len(train_samples),
             len(val_samples))
    t = time.perf_counter()

    shard = {"rank": group.rank, "world": group.world, "s3": run.s3}
    train_loader = make_loader(g, train_samples, train=True, batch_size=g.batch_size, **shard)
    val_loader = make_loader(g, val_samples, train=False, batch_size=g.eval_batch, **shard)
    if select_samples is not None:
        check_labels(select_samples, info.num_classes, "selection")
    select_loader = val_loader if select_samples is None else make_loader(
        g, select_samples, train=False, batch_size=g.eval_batch, **shard)
    stages = strategy.plan(cfg.data)
    first = resume.stage if resume is not None else 0
    stage_cfgs, lr_factor, planned = _stage_configs(cfg, stages, len(train_loader),
                                                    group.world, resume)
    prune_overrides = pruning.resolve(cfg.data, src_model, g)  # before any heavy work
    prune_overrides.update(_gmp_overrides(cfg, stages, planned, resume))
    try:
        val_loader.record_digests = {}  # the validation set's fingerprint, for the gate
        run.progress.phase("baseline evaluation")
        baseline = _evaluate(group, src_model, val_loader, g, info.input_name,
                             "the baseline evaluation")
        val_set = val_fingerprint(val_samples, group.gather_object(
            val_loader.record_digests, "collecting the validation images' checksums"),
            g.val_list, eval_settings(g))
        val_loader.record_digests = None
        log.info("baseline top1 %.4f top5 %.4f", baseline["top1"], baseline["top5"])
        check_origin_metric(cfg, baseline["top1"])
        t = timer.phase("baseline_eval", t)

        select_top1 = baseline["top1"]
        act_overrides = dict(run.teachers)
        if select_samples is not None and cfg.train.get("origin_metric") is not None:
            # ACT compares origin_metric with its evaluations (pre-check, early stop): give
            # it the baseline on the set it evaluates on
            select_top1 = _evaluate(group, src_model, select_loader, g, info.input_name,
                                    "the baseline on the selection set")["top1"]
            act_overrides["TrainConfig"] = {"origin_metric": select_top1}
        if cfg.train.get("origin_metric") is not None and select_top1 == 0:
            # ACT's early stop divides by the baseline metric (ZeroDivisionError)
            log.warning("the baseline top-1 is 0: ACT's origin_metric early stop is off")
            act_overrides["TrainConfig"] = {"origin_metric": None}
        stage_model = _resumed_stage_model(run) if first else src_model
        kept = list(resume.stages_done) if resume is not None else []  # as checkpointed
        fixed = 0
        for i in range(first, len(stages)):
            last = i == len(stages) - 1
            if len(stages) > 1:
                log.info("stage %d of %d: %s (%s)", i + 1, len(stages), stages[i].name,
                         " + ".join(stages[i].sections))
            student = copy_model(stage_model, work / f"input-{i}", g.model_filename,
                                 g.params_filename)
            fixed += compat.fix_dropout_mask(student / g.model_filename)
            if i:  # a model ACT saved: its doubled output scale op breaks the QAT export
                compat.drop_self_scales(student / g.model_filename)
            overrides = {**act_overrides, **_teacher_for(run, i, stage_cfgs[i])}
            if stages[i].prune:
                overrides.update({k: v for k, v in prune_overrides.items()
                                  if k == stages[i].prune})
            act_dir = work / f"act-{i}"
            run.checkpointer.new_stage()
            in_stage = resume if resume is not None and i == first and resume.steps else None
            run.progress.stage(i, len(stages), stages[i].name, planned[i],
                               in_stage.steps if in_stage else 0)
            act_info = run_act(stage_cfgs[i], student, act_dir, train_loader, select_loader,
                               info.input_name, group, overrides, run_id=run.run_id,
                               baseline_top1=select_top1, resume=in_stage,
                               checkpointer=run.checkpointer, fingerprint=run.fingerprint,
                               mode=run.mode, checkpoint_on=bool(g.checkpoint), stage=i,
                               stages_done=kept, on_step=run.progress.step)
            run.progress.step((in_stage.steps if in_stage else 0) + act_info["train_steps"],
                              (act_info["evaluations"] or [None])[-1],
                              run.checkpointer.last_at)
            out_model = staging / MODEL_SUBDIR if group.rank == 0 and last \
                else work / f"stage-{i}-model"
            if group.rank == 0:
                copy_model(act_dir, out_model, g.model_filename, g.params_filename)
            _share_model(group, out_model, g)
            if last:
                break
            result = _evaluate(group, out_model, val_loader, g, info.input_name,
                               f"the stage {i + 1} evaluation")
            record = {"stage": i + 1, "name": stages[i].name, "top1": result["top1"],
                      "top5": result["top5"], "train_steps": act_info["train_steps"],
                      "evaluations": act_info["evaluations"]}
            log.info("stage %d (%s): top1 %.4f top5 %.4f", i + 1, stages[i].name,
                     result["top1"], result["top5"])
            kept.append(_keep_stage(run, i, out_model, record, kept))
            stage_model = out_model
        t = timer.phase("compress", t)
        run.progress.phase("final evaluation")
        compressed = _evaluate(group, out_model, val_loader, g, info.input_name,
                               "the final evaluation")
        compressed["quant_ops"] = count_ops(out_model / g.model_filename)
        timer.phase("compressed_eval", t)
    finally:
        for loader in {id(x): x for x in (train_loader, val_loader, select_loader)}.values():
            loader.close()
    if "QuantAware" in cfg.data and compressed["quant_ops"] == 0:
        raise ModelError("QuantAware is configured but the compressed model has no quantize "
                         "ops; nothing was published")
    extra = {
        "device": device, "input_name": info.input_name, "num_classes": info.num_classes,
        "data": {"train_samples": len(train_samples), "val_samples": len(val_samples),
                 "train_bad_images_rank0": train_loader.bad_total,
                 "val_bad_images_per_pass": baseline["bad_images"]},
        "val_set": val_set,
        "distributed": {"world_size": group.world,
                        "rank_sync": run.mode if group.active else None,
                        "global_batch": g.batch_size * group.world,
                        "lr_scale": lr_factor, "lr_scaling": g.lr_scaling,
                        "steps_planned": planned[0] if len(planned) == 1 else planned},
        "resumed": ({"from_step": resume.steps, "earlier_evaluations": resume.evaluations,
                     "stage": resume.stage + 1,
                     "note": "training state of the last checkpoint before the restart; "
                             "the final model is the last state, or (final_model: best) the "
                             "best evaluated after the restart"}
                    if resume is not None else None),
        "stages": [*({k: v for k, v in r.items() if k != "files"} for r in kept),
                   {"stage": len(stages), "name": stages[-1].name, "top1": compressed["top1"],
                    "top5": compressed["top5"], "train_steps": act_info["train_steps"],
                    "evaluations": act_info["evaluations"]}] if len(stages) > 1 else None,
        "pruning": _pruning_record(cfg, prune_overrides, src_model, out_model),
        "selection": _selection_record(run.selection_info, act_info),
        "compat": {"dropout_masks_fixed": fixed},
        "model_dir": MODEL_SUBDIR, "versions": versions(),
    }
    act_info["strategies"] = [stage.name for stage in stages]
    return _assemble_metrics(cfg, baseline, compressed, act_info, extra)


def _pruning_record(cfg: Config, overrides: dict[str, Any], src_model: Path,
                    out_model: Path) -> dict[str, Any] | None:
    """What the pruning section did, measured from the model files (None without one)."""
    section = strategy.prune_section(cfg.data)
    if section is None:
        return None
    g = cfg.globals
    targets = pruning.targets(section, {**cfg.data[section], **overrides.get(section, {})},
                              src_model, g)
    before = pruning.measure(src_model, g, targets)
    after = pruning.measure(out_model, g, targets)
    return {"strategy": section, "weights": targets, "baseline": before, "compressed": after,
            "flops_ratio": round(before["flops"] / after["flops"], 4) if after["flops"] else None,
            "params_ratio": round(before["params"] / after["params"], 4),
            "file_bytes_ratio": round(before["file_bytes"] / after["file_bytes"], 4),
            "sparse_kernels_needed": section != "ChannelPrune"}
