"""Running paddleslim ACT with clsact's loaders, exact (sharded) evaluation and rank sync.

ACT owns the training loop; clsact owns what ACT calls back into: the training data
generator (where, between two steps, the ranks average their state when they synchronise
through the host — see :mod:`clsact.distributed` — and rank 0 takes checkpoints at their
cadence) and the evaluation callback (sharded, aggregated, broadcast; a checkpoint after
each evaluation). With ``gradients`` synchronisation ACT runs fleet's program, whose
gradient all-reduce is checked when the loop starts (:func:`clsact.distributed.
allreduce_coverage`).

With more than one rank every rank takes the same steps: a batch whose every image was
unreadable is replaced by a stand-in (the rank's previous batch) that the next average
weighs 0 (with in-graph gradients its gradient is averaged in like any other), so no rank
meets the others' collectives one step early.

Between steps the generator also applies the learning-rate guard's decisions
(:mod:`clsact.guard`: the rate through :class:`clsact.compat.LearningRate`, kept states
restored through the rank-sync state) and freezes batch-norm statistics
(``Global.freeze_bn_after``); before ACT saves, the published state is chosen
(``Global.final_model``: the average of the last healthy window-end states, the last state,
or ACT's best evaluation).

ACT's pre-training check of ``TrainConfig.origin_metric`` calls the eval callback on the fp32
model before training starts; clsact answers it with the baseline top-1 it measured already
(no second evaluation, no checkpoint, not counted as an ACT evaluation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clsact import checkpoint, compat, logs
from clsact.config import Config
from clsact.distributed import (
    GRADIENTS,
    TEACHER_PREFIX,
    Group,
    aggregate_eval,
    allreduce_coverage,
    average_state,
    in_graph_allreduce,
    state_digest,
    state_names,
)
from clsact.errors import ClsactError, DistributedError
from clsact.guard import BACK_OFF, CALIBRATE, GIVE_UP, KEEP, LossGuard

log = logging.getLogger(__name__)


def ensure_evaluation(cfg: Config, steps_per_epoch: int) -> int:
    """Make ACT evaluate at least once inside its training loop; returns the total steps.

    Without an evaluation in the loop ACT evaluates the final model on rank 0 alone (a
    collective evaluation there would hang the other ranks), and keeps no "best" model.
    ``TrainConfig.eval_iter`` is capped at the total number of steps.
    """
    t = cfg.train
    epochs = t.get("epochs") or 100  # ACT's default
    total = epochs * steps_per_epoch
    if t.get("train_iter"):
        total = min(total, int(t["train_iter"]))
    if not t.get("eval_iter") or int(t["eval_iter"]) > total:
        log.info("TrainConfig.eval_iter set to %d (the total steps) so that ACT evaluates "
                 "inside its training loop", total)
        t["eval_iter"] = total
    return total


class _RankSync:
    """Averages the student's state across ranks when it changed since the last average,
    weighting each rank by the samples of its last step: between steps when the ranks
    synchronise through the host (``per_step``), else (gradients all-reduced in the graph)
    only before evaluations."""

    def __init__(self, group: Group, per_step: bool = True) -> None:
        self.group = group
        self.per_step = per_step
        self.names: list[str] | None = None
        self.program = None  # ACT's training program, captured when its loop starts
        self.dirty = False
        self.weight = 1.0
        self.syncs = 0
        self.masks: dict[str, str] = {}  # pruning mask -> the weight it masks
        self.mask_checks = 0

    def _scope_and_place(self):
        import paddle

        return paddle.static.global_scope(), paddle.framework._current_expected_place()

    def ensure_names(self) -> list[str]:
        """The variables that make up the training state (the same list on every rank;
        every rank must call this the first time: it compares the lists)."""
        if self.names is None:
            scope, _ = self._scope_and_place()
            names = state_names(scope, self.program)
            if self.group.active:
                listing = self.group.gather_object(names, "comparing the ranks' programs")
                if any(other != names for other in listing):
                    raise ClsactError("the ranks built different training programs (variable "
                                      "lists differ); run the same config and model on every "
                                      "rank")
                log.info("synchronising %d state variables (%d values) across %d ranks",
                         len(names), sum(scope.find_var(n).get_tensor()._numel()
                                         for n in names), self.group.world)
            self.names = names
            self.masks = compat.pruning_masks(names)
        return self.names

    def averaged_names(self) -> list[str]:
        """The state the ranks average: all but the pruning masks, which every rank derives
        from its (identical) weights and :meth:`check_masks` compares."""
        return [n for n in self.ensure_names() if n not in self.masks]

    def check_masks(self) -> None:
        """Every rank holds the same pruning masks (a collective; no-op without masks or
        with one rank).

        Raises:
            DistributedError: the ranks' masks differ.
        """
        if not self.masks or not self.group.active:
            return
        scope, _ = self._scope_and_place()
        digests = self.group.gather_object(state_digest(scope, sorted(self.masks)),
                                           "comparing the pruning masks")
        self.mask_checks += 1
        if len(set(digests)) > 1:
            raise DistributedError(
                f"the ranks' pruning masks differ ({len(set(digests))} distinct over "
                f"{len(digests)} ranks): their weights drifted apart; report this with the "
                "config and rank logs (Global.rank_sync: state keeps every rank's weights "
                "identical)")

    def sizes(self) -> dict[str, int]:
        """Values in the synchronised state and in the student's trainable parameters (=
        its gradients): what each way of synchronising moves per step."""
        if self.program is None:
            return {}
        scope, _ = self._scope_and_place()
        state = sum(scope.find_var(n).get_tensor()._numel() for n in self.ensure_names())
        params = sum(int(np.prod(p.shape)) for p in self.program.all_parameters()
                     if p.trainable and not p.name.startswith(TEACHER_PREFIX))
        return {"state_values": int(state), "gradient_values": int(params)}

    def sync(self, between_steps: bool = False) -> bool:
        """Average the state if a step changed it since the last average (between steps
        only when synchronising per step); returns whether it did."""
        if between_steps and not self.per_step:
            return False  # gradients are all-reduced in the graph; the rest before evaluations
        if not self.group.active or not self.dirty:
            self.dirty = False
            return False
        scope, place = self._scope_and_place()
        average_state(self.group, scope, self.averaged_names(), place, self.weight)
        self.dirty = False
        self.syncs += 1
        return True

    def digest(self) -> str | None:
        """sha256 of this rank's state (None before training)."""
        if self.names is None:
            return None
        scope, _ = self._scope_and_place()
        return state_digest(scope, self.names)

    def state(self) -> dict[str, np.ndarray]:
        """This rank's training state (a copy)."""
        scope, _ = self._scope_and_place()
        return {n: np.array(scope.find_var(n).get_tensor()) for n in self.ensure_names()}

    def restore(self, state: dict[str, np.ndarray]) -> int:
        """Load ``state`` into the scope; returns the number of variables restored.

        Raises:
            ClsactError: the checkpoint does not match this training program.
        """
        scope, place = self._scope_and_place()
        names = self.ensure_names()
        missing = [n for n in names if n not in state]
        if missing or any(state[n].shape != tuple(scope.find_var(n).get_tensor().shape())
                          for n in names):
            raise ClsactError(f"the checkpoint does not match this model/config ({len(missing)}"
                              " variables missing or reshaped); start over with --overwrite")
        for name in names:
            scope.find_var(name).get_tensor().set(state[name], place)
        return len(names)


@dataclass
class RunState:
    """What one ACT run has done so far (shared by the generator and the callbacks)."""

    offset: int = 0  # steps done before this process started (resume)
    started: bool = False  # ACT entered its training loop
    feeding: bool = False  # batches pulled now are training steps (not ACT's peek)
    batches: int = 0
    images: int = 0
    stand_ins: int = 0
    # timing of the training loop: from one batch request to the next (a step, the host
    # average before it, and any evaluation/checkpoint, which is counted apart)
    last_request: float | None = None
    eval_seconds: float = 0.0  # evaluations and checkpoints inside the loop
    eval_mark: float = 0.0
    step_seconds: float = 0.0  # wall time of the timed steps, averages included
    sync_seconds: float = 0.0  # of which: the host averages between steps
    steps_timed: int = 0

    def timing(self, mode: str, world: int) -> dict[str, Any]:
        """The synchronisation's share of a training step, as measured."""
        per_step = self.step_seconds / self.steps_timed if self.steps_timed else None
        return {"mode": mode if world > 1 else None, "steps_timed": self.steps_timed,
                "step_ms": round(1000 * per_step, 3) if per_step else None,
                "host_sync_ms": round(1000 * self.sync_seconds / self.steps_timed, 3)
                if self.steps_timed else None,
                "host_sync_share": round(self.sync_seconds / self.step_seconds, 4)
                if self.step_seconds else None}
    history: list[dict[str, Any]] = field(default_factory=list)
    earlier: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # ACT's training loss, every step
    program_info: Any = None  # ACT's training ProgramInfo, once its loop started
    bn_frozen_at: int | None = None  # step at which the student's BN statistics froze
    bn_layers: dict[str, int] | None = None  # frozen then / exported frozen already
    guard: LossGuard | None = None  # the learning-rate guard (Global.lr_guard)
    lr: Any = None  # compat.LearningRate over ACT's training program
    good_states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # by step
    recent: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)  # averaged
    averaged: list[int] | None = None  # steps whose states the published model averages
    observed: int = 0  # losses the guard has seen
    stage: int = 0  # this ACT run's stage in a chain (clsact.strategy.plan)
    stages_done: list[dict[str, Any]] = field(default_factory=list)  # the earlier stages

    @property
    def step(self) -> int:
        """Steps done in the whole run."""
        return self.offset + self.batches


def _snapshot(run: RunState, run_id: str, sync: _RankSync,
              fingerprint: dict[str, Any]) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(run_id, run.step, run.earlier + [h["top1"] for h in run.history],
                                 sync.state(), fingerprint,
                                 run.guard.snapshot() if run.guard is not None else None,
                                 run.stage, run.stages_done)


def _eval_callback(group: Group, sync: _RankSync, run: RunState, select_loader,
                   input_name: str, baseline_top1: float, save):
    from clsact.evaluate import evaluate_program

    def callback(exe, program, feed_names, fetch_targets) -> float:
        if not run.started:
            log.info("ACT's origin_metric check: the baseline top-1 %.4f measured before "
                     "(not evaluated again)", baseline_top1)
            return baseline_top1
        started = time.perf_counter()
        sync.sync()
        sync.check_masks()
        mine = evaluate_program(exe, program, input_name, fetch_targets[0], select_loader)
        result = aggregate_eval(group, mine, "an evaluation")
        # decided once: rank 0's number, on every rank (equal anyway: summed integer counts)
        result["top1"] = group.broadcast_object(result["top1"], "the evaluation result")
        digest = sync.digest() if group.active else None
        if digest is not None:
            result["state_digests"] = group.gather_object(digest, "the state digests")
            log.info("state digest after %d syncs: %s", sync.syncs, digest[:16])
        run.history.append(result)
        log.info("ACT evaluation %d after %d steps: top1=%.4f top5=%.4f (%d images)",
                 len(run.history), run.step, result["top1"], result["top5"],
                 result["samples"])
        save()
        run.eval_seconds += time.perf_counter() - started
        return result["top1"]

    return callback


def _guard_step(run: RunState, sync: _RankSync) -> None:
    """Feed the loss of the step just taken to the learning-rate guard and apply its
    decision (rank 0's, on every rank) at the end of a window: keep the state as the last
    good one, or restore that and change the learning rate."""
    guard = run.guard
    run.observed = len(run.losses)
    action = guard.observe(run.batches, run.losses[-1])
    if action is None:
        return
    group = sync.group
    if group.active:  # the ranks' losses differ: every rank follows rank 0
        action, decision = group.broadcast_object((action, guard.decision()),
                                                  "the learning-rate guard")
        guard.adopt(decision)
    if action in (BACK_OFF, GIVE_UP):
        mark = guard.marks[-1]
        sync.restore(run.good_states[mark])
        run.recent = [(step, state) for step, state in run.recent if step <= mark]
        log.warning("step %d: median training loss %.4f over the last %d steps is above %.2f x "
                    "the untrained student's %.4f: restored the state of step %d and set the "
                    "learning rate to %g x the configured one%s", run.step,
                    guard.events[-1]["median_loss"], guard.window, guard.threshold,
                    guard.reference, run.offset + mark, guard.factor,
                    "; no more training (Global.lr_guard gave up)" if action == GIVE_UP else "")
    else:
        run.good_states[run.batches] = sync.state()
        if action == KEEP:
            run.recent = [*run.recent, (run.batches, run.good_states[run.batches])][
                -AVERAGED_STATES:]
        if action == CALIBRATE:
            log.info("step %d: learning-rate guard calibrated, the untrained (quantized or "
                     "pruned) student's loss is %.4f; training at the configured learning rate",
                     run.step, guard.reference)
    run.good_states = {m: run.good_states[m] for m in guard.marks}
    run.lr.set(guard.factor)


def _average_states(run: RunState, sync: _RankSync) -> None:
    """Load the mean of the recent healthy states (every float state variable: weights,
    quantizer scales, batch-norm statistics) into the scope: the model ACT saves."""
    states = [state for _, state in run.recent]
    mean = {name: np.mean([s[name] for s in states], axis=0).astype(states[0][name].dtype)
            for name in states[0]}
    for mask, weight in sync.masks.items():  # the last masks hold: masked weights stay zero
        mean[mask] = states[-1][mask]
        mean[weight] = mean[weight] * mean[mask]
    sync.restore(mean)
    run.averaged = [run.offset + step for step, _ in run.recent]
    log.info("the published model averages the states of steps %s (Global.final_model: "
             "average)", ", ".join(map(str, run.averaged)))


def _guard_finish(run: RunState, sync: _RankSync, average: bool = False) -> None:
    """Rank 0, before ACT saves the model: if the steps since the guard's last window made
    the student worse than the untrained one, restore the last good state (saved instead);
    else, with ``average``, load the mean of the last healthy window-end states."""
    guard = run.guard
    if guard is None:
        return
    action = None
    for loss in run.losses[run.observed:]:  # the last step's, not seen between steps
        action = guard.observe(run.batches, loss) or action
    run.observed = len(run.losses)
    if guard.reference is None or action == CALIBRATE:
        log.warning("the run ended within the learning-rate guard's first %d steps (learning "
                    "rate 0): no weight was trained; run more steps (TrainConfig.train_iter) "
                    "or set Global.lr_guard: false", 2 * guard.window)
        return
    if action is None:
        action = guard.finish(run.batches)
    # healthy, or too few steps since the last window to judge (then the recent healthy
    # states and this one are all that is known)
    if average and (action == KEEP or (action is None and run.recent)):
        if not run.recent or run.recent[-1][0] != run.batches:
            run.recent = [*run.recent, (run.batches, sync.state())][-AVERAGED_STATES:]
        _average_states(run, sync)
        return
    if action in (BACK_OFF, GIVE_UP):
        guard.factor = 0.0
        mark = guard.marks[-1]
        sync.restore(run.good_states[mark])
        log.warning("the last steps raised the training loss above %.2f x the untrained "
                    "student's %.4f: the state of step %d is saved instead", guard.threshold,
                    guard.reference, run.offset + mark)


def _train_generator(train_loader, input_name: str, run: RunState, sync: _RankSync,
                     checkpointer: checkpoint.Checkpointer, save, checkpoint_on: bool,
                     freeze_at: int | None = None, on_step=None):
    """ACT's training data: one call is one epoch of this rank's batches. From step
    ``freeze_at`` on (of the whole run, so a resumed run freezes again) the student's
    batch-norm statistics are frozen. ``on_step(step, top1, checkpoint_at)`` hears of every
    step (the last evaluation's top-1, when the last checkpoint was written)."""
    last: dict[str, np.ndarray] = {}
    side = train_loader.spec.img_size
    group = sync.group

    def checkpoint_due(step: int) -> bool:
        """Whether to checkpoint now. Synchronising per step, every rank holds the same
        state here and rank 0 decides alone. Otherwise (gradients all-reduced in the graph)
        the ranks' batch-norm and quantizer statistics differ between evaluations: every
        ``poll_steps`` steps all ranks learn rank 0's answer and, if due, average their state
        first, so a checkpoint holds the ranks' average, as an evaluation does."""
        if sync.per_step or not group.active:
            return checkpointer.due(step)
        if not checkpoint_on or step == 0 or step % checkpointer.poll_steps:
            return False
        if not group.broadcast_object(checkpointer.due(step), "the checkpoint cadence"):
            return False
        sync.sync()
        log.info("checkpoint after %d steps: ranks averaged, state digest %s", step,
                 (sync.digest() or "")[:16])
        return True

    def train_data():
        for batch in train_loader:
            if not run.feeding:  # ACT's constructor peeks at one batch
                yield {input_name: batch.images}
                continue
            started = time.perf_counter()
            averaged = sync.sync(between_steps=True)  # the last step changed this rank's state
            now = time.perf_counter()
            if run.last_request is not None:  # the step since then, its average included
                run.step_seconds += now - run.last_request - (run.eval_seconds - run.eval_mark)
                run.sync_seconds += now - started if averaged else 0.0
                run.steps_timed += 1
            run.last_request, run.eval_mark = now, run.eval_seconds
            if run.guard is not None and len(run.losses) > run.observed:
                _guard_step(run, sync)
            if freeze_at is not None and run.bn_frozen_at is None and run.step >= freeze_at:
                frozen, already = compat.freeze_batch_norm(run.program_info, TEACHER_PREFIX)
                run.bn_frozen_at, run.bn_layers = run.step, {"frozen": frozen,
                                                             "exported_frozen": already}
                log.info("step %d (Global.freeze_bn_after): froze the batch-norm statistics "
                         "of %d student layers (%d more were exported normalising with their "
                         "running statistics)", run.step, frozen, already)
            if checkpoint_due(run.step):
                started = time.perf_counter()
                save()
                run.eval_seconds += time.perf_counter() - started
            if on_step is not None:
                on_step(run.step, run.history[-1]["top1"] if run.history else None,
                        checkpointer.last_at)
            images, weight = batch.images, len(batch.labels)
            if weight == 0:
                run.stand_ins += 1
                log.warning("rank %d: batch %d had no readable image; stepping on a stand-in "
                            "batch that %s, so every rank takes the same steps",
                            sync.group.rank, run.step,
                            "the rank average weighs 0" if sync.per_step else
                            "counts like any other in the gradient all-reduce")
                images = last.get("images", np.zeros((1, 3, side, side), np.float32))
            else:
                last["images"] = images
            sync.weight = float(weight)
            sync.dirty = True  # the step ACT runs on this batch will change the state
            run.batches += 1
            run.images += weight
            yield {input_name: images}

    return train_data


LAST = "last"  # Global.final_model: the state after the last step
AVERAGE = "average"  # ... the mean of the states ending the last healthy guard windows
# (else "best": the best of ACT's evaluations, upstream)
AVERAGED_STATES = 3
LOSS_POINTS = 100


def loss_curve(losses: list[float], offset: int = 0, points: int = LOSS_POINTS
               ) -> list[list[float]]:
    """ACT's per-step training losses as at most ``points`` ``[last step, mean loss]`` pairs
    (consecutive steps averaged; steps counted from ``offset``, a resumed run's start)."""
    if not losses:
        return []
    width = -(-len(losses) // points)
    return [[offset + min(i + width, len(losses)), round(float(np.mean(losses[i:i + width])), 5)]
            for i in range(0, len(losses), width)]


def averages(scale: float | None, world: int) -> bool:
    """Whether a loss-gradient scale read from the program is 1/``world``: Paddle stores
    the op's attribute as float32 (1/3 reads 0.3333333432674408), so compare in float32."""
    return scale is not None and np.float32(scale) == np.float32(1.0 / world)


def _complete_allreduce(program, world: int) -> dict[str, Any]:
    """Check that ``program`` (ACT's, built by fleet) all-reduces every gradient its
    optimizer ops read, completing it for the parameters paddleslim's quantization added
    after fleet's pass (:func:`clsact.compat.allreduce_gradients`); returns the coverage.

    Raises:
        DistributedError: some gradient is still not all-reduced, or fleet did not scale
            the loss gradient by 1/world (the all-reduce would sum, not average).
    """
    coverage = allreduce_coverage(program)
    added = 0
    if coverage["missing"] and averages(coverage["loss_grad_scale"], world):
        added = compat.allreduce_gradients(program, coverage["missing"])
        coverage = allreduce_coverage(program)
    coverage["added_by_clsact"] = added
    missing = coverage.pop("missing")
    log.info("gradients all-reduced in the graph: %d of %d by %d c_allreduce_sum ops (%d added "
             "for quantizer parameters); loss gradient scaled by %s", coverage["covered"],
             coverage["grads"], coverage["allreduce_ops"], added, coverage["loss_grad_scale"])
    if missing or not coverage["grads"] or not averages(coverage["loss_grad_scale"], world):
        raise DistributedError(
            f"the training program all-reduces {coverage['covered']} of the "
            f"{coverage['grads']} gradients its optimizer reads (loss gradient scaled by "
            f"{coverage['loss_grad_scale']}, not 1/{world}), so the ranks would drift apart; "
            "set Global.rank_sync: state (and report this paddle/paddleslim combination)")
    return coverage


def run_act(cfg: Config, model_dir: Path, act_dir: Path, train_loader, select_loader,
            input_name: str, group: Group, overrides: dict[str, Any] | None = None, *,
            run_id: str = "", baseline_top1: float = 0.0,
            resume: checkpoint.Checkpoint | None = None,
            checkpointer: checkpoint.Checkpointer | None = None,
            fingerprint: dict[str, Any] | None = None, mode: str = "state",
            checkpoint_on: bool = False, stage: int = 0,
            stages_done: list[dict[str, Any]] | None = None, on_step=None) -> dict[str, Any]:
    """Run paddleslim ACT on the (already copied and fixed) model; returns its bookkeeping.

    The compressed model lands in ``act_dir`` (on rank 0: ACT saves there only). ACT's
    evaluations run on ``select_loader``. With ``resume``, training continues from that
    checkpoint (state, data position); ``checkpointer`` (enabled on rank 0) writes one after
    every evaluation and at its cadence; ``checkpoint_on`` says on every rank whether the
    run checkpoints (the ranks then agree on the points between evaluations). ``mode`` is how
    the ranks synchronise (:func:`clsact.distributed.sync_mode`). ``stage`` and
    ``stages_done`` place this ACT run in a chain of stages (saved with each checkpoint).
    ``on_step`` hears of every training step (see :func:`_train_generator`).

    Raises:
        ClsactError: the ranks or the checkpoint do not match the training program.
        DistributedError: with in-graph gradients, the training program does not all-reduce
            every gradient its optimizer reads.
    """
    from paddleslim.auto_compression import AutoCompression

    collective = group.active and mode == GRADIENTS
    compat.act_fleet(AutoCompression, collective, in_graph_allreduce)
    if collective:
        compat.collective_on_cpu()  # a CUDA build keeps fleet's NCCL path
    compat.fast_ir_graph_links()
    logs.adopt_paddleslim_loggers()
    checkpointer = checkpointer or checkpoint.Checkpointer(None)
    sync = _RankSync(group, per_step=not collective)
    coverage: dict[str, Any] | None = None
    run = RunState(offset=resume.steps if resume else 0,
                   earlier=list(resume.evaluations) if resume else [], stage=stage,
                   stages_done=list(stages_done or []))
    g = cfg.globals
    if g.lr_guard:
        run.guard = LossGuard(window=g.lr_guard_window, threshold=g.lr_guard_threshold)
    train_loader.keep_empty = group.active

    def save() -> None:
        if checkpointer.enabled:
            checkpointer.write(_snapshot(run, run_id, sync, fingerprint or {}))

    def on_start(program_info) -> None:
        nonlocal coverage
        program = compat.program_of(program_info.program)
        sync.program = program
        run.program_info = program_info
        if collective:
            coverage = _complete_allreduce(program, group.world)
        sync.ensure_names()  # every rank, before any rank-0-only use
        if run.guard is not None:  # before a resumed state: the configured rates
            scope, place = sync._scope_and_place()
            run.lr = compat.LearningRate(program_info, scope, place)
            run.lr.set(0.0)  # calibrating: the quantizer scales settle, no weight moves
        if resume is not None:
            n = sync.restore(resume.state)
            log.info("resumed at step %d: restored %d state variables, state digest %s",
                     run.offset, n, sync.digest())
            if run.guard is not None and resume.guard and resume.guard["reference"] is not None:
                run.guard.resume(resume.guard, 0)  # calibrated already: on at its rate
                run.lr.set(run.guard.factor)
                run.good_states = {0: sync.state()}
        run.started = True
        log.info("training: %s steps from step %d", cfg.train.get("train_iter") or "all",
                 run.offset)

    act_config = cfg.act_config()
    for section, values in (overrides or {}).items():
        act_config[section].update(values)
    log.info("paddleslim is building the compression graphs (quantization, distillation); "
             "this takes about a minute for a small model, longer for a large one")
    act = AutoCompression(
        model_dir=str(model_dir), model_filename=g.model_filename,
        params_filename=g.params_filename, save_dir=str(act_dir), config=act_config,
        train_dataloader=_train_generator(train_loader, input_name, run, sync, checkpointer,
                                          save, checkpoint_on, g.freeze_bn_after, on_step),
        eval_dataloader=lambda: ({input_name: b.images} for b in select_loader.epoch(0)),
        eval_callback=_eval_callback(group, sync, run, select_loader, input_name,
                                     baseline_top1, save),
        deploy_hardware=None)
    compat.on_act_train_start(act, on_start)
    compat.record_act_losses(act, run.losses.append)
    if g.final_model in (LAST, AVERAGE):
        compat.act_keep_last(act)
        compat.before_act_save(act, lambda: _guard_finish(run, sync,
                                                          g.final_model == AVERAGE))
    per_epoch = len(train_loader)
    train_loader.continue_at(run.offset // per_epoch, run.offset % per_epoch)
    run.feeding = True  # ACT's constructor peeked at one batch; steps start now
    # make the ranks' starting states identical at the first step (in-graph: fleet's
    # start-up broadcast of the parameters, and the first evaluation's average)
    sync.dirty = True
    try:
        act.compress()
    finally:
        checkpointer.close()
    history = run.history
    return {"strategies": list(act._strategy), "train_steps": run.batches,
            "train_images": run.images, "stand_in_steps": run.stand_ins,
            "evaluations": [h["top1"] for h in history],
            "best_top1": max((h["top1"] for h in history), default=None),
            "final_model": g.final_model, "bn_frozen_at_step": run.bn_frozen_at,
            "bn_layers": run.bn_layers, "averaged_steps": run.averaged,
            "lr_guard": run.guard.record() if run.guard is not None else None,
            "loss_curve": loss_curve(run.losses, run.offset),
            "rank_syncs": sync.syncs, "pruning_masks": {
                "count": len(sync.masks), "rank_checks": sync.mask_checks,
                "identical_across_ranks": True if sync.mask_checks else None}
            if sync.masks else None, "checkpoints": checkpointer.summary(),
            "rank_sync": {**run.timing(mode, group.world), **sync.sizes(),
                          "allreduce": coverage},
            "state_digests_last_eval": history[-1].get("state_digests") if history else None}
