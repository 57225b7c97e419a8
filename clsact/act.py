"""Running paddleslim ACT with clsact's loaders, exact (sharded) evaluation and rank sync.

ACT owns the training loop; clsact owns what ACT calls back into: the training data
generator (where, between two steps, the ranks average their state — see
:mod:`clsact.distributed`) and the evaluation callback (sharded, aggregated, broadcast).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clsact import checkpoint, compat, logs
from clsact.config import Config
from clsact.distributed import Group, aggregate_eval, average_state, state_digest, state_names
from clsact.errors import ClsactError
from clsact.storage import Store

log = logging.getLogger(__name__)


def scale_learning_rate(cfg: Config, world: int) -> float:
    """Apply ``Global.lr_scaling`` for ``world`` ranks to ``TrainConfig.learning_rate`` (a
    number or a scheduler mapping with ``learning_rate``), in place; returns the factor."""
    factor = float(world) if cfg.globals["lr_scaling"] == "linear" else 1.0
    if factor == 1.0:
        return 1.0
    lr = cfg.train.get("learning_rate")
    if isinstance(lr, (int, float)):
        cfg.train["learning_rate"] = lr * factor
    elif isinstance(lr, dict) and isinstance(lr.get("learning_rate"), (int, float)):
        lr["learning_rate"] = lr["learning_rate"] * factor
    else:
        return 1.0
    return factor


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
    """Averages the student's state across ranks when it changed since the last average."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.names: list[str] | None = None
        self.program = None  # ACT's training program, captured when its loop starts
        self.dirty = False
        self.syncs = 0

    def _scope_and_place(self):
        import paddle

        return paddle.static.global_scope(), paddle.framework._current_expected_place()

    def ensure_names(self) -> list[str]:
        """The variables that make up the training state (the same list on every rank)."""
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
        return self.names

    def sync(self) -> None:
        if not self.group.active or not self.dirty:
            self.dirty = False
            return
        scope, place = self._scope_and_place()
        average_state(self.group, scope, self.ensure_names(), place)
        self.dirty = False
        self.syncs += 1

    def digest(self) -> str | None:
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
                              " variables missing or reshaped); use another --run-id to start "
                              "over")
        for name in names:
            scope.find_var(name).get_tensor().set(state[name], place)
        return len(names)


def _eval_callback(group: Group, sync: _RankSync, val_loader, input_name: str,
                   history: list[dict[str, Any]], saver):
    from clsact.evaluate import evaluate_program

    def callback(exe, program, feed_names, fetch_targets) -> float:
        sync.sync()
        mine = evaluate_program(exe, program, input_name, fetch_targets[0], val_loader)
        result = aggregate_eval(group, mine, "an evaluation")
        # decided once: rank 0's number, on every rank (equal anyway: summed integer counts)
        result["top1"] = group.broadcast_object(result["top1"], "the evaluation result")
        digest = sync.digest() if group.active else None
        if digest is not None:
            result["state_digests"] = group.gather_object(digest, "the state digests")
            log.info("state digest after %d syncs: %s", sync.syncs, digest[:16])
        history.append(result)
        log.info("ACT evaluation %d: top1=%.4f top5=%.4f (%d images)", len(history),
                 result["top1"], result["top5"], result["samples"])
        saver()
        return result["top1"]

    return callback


def _capture_train_program(act, sync: _RankSync) -> None:
    """Let ``sync`` see ACT's training program (the variables to average): ACT builds it
    inside ``single_strategy_compress`` and hands it only to ``_start_train``."""
    original = act._start_train

    def start_train(train_program_info, test_program_info, strategy, train_config):
        program = train_program_info.program
        sync.program = getattr(program, "_program", program)  # CompiledProgram or Program
        return original(train_program_info, test_program_info, strategy, train_config)

    act._start_train = start_train


def run_act(cfg: Config, model_dir: Path, act_dir: Path, train_loader, val_loader,
            input_name: str, group: Group, overrides: dict[str, Any] | None = None, *,
            run_id: str = "", resume: checkpoint.Checkpoint | None = None,
            checkpoints: Store | None = None) -> dict[str, Any]:
    """Run paddleslim ACT on the (already copied and fixed) model; returns its bookkeeping.

    The compressed model lands in ``act_dir`` (on rank 0: ACT saves there only). With
    ``resume``, training continues from that checkpoint (state, data position); with
    ``checkpoints`` (rank 0), a checkpoint is written at every evaluation.

    Raises:
        ClsactError: the ranks or the checkpoint do not match the training program.
    """
    from paddleslim.auto_compression import AutoCompression

    compat.act_without_fleet(AutoCompression)
    logs.adopt_paddleslim_loggers()
    history: list[dict[str, Any]] = []
    fed = {"batches": 0, "images": 0}
    sync = _RankSync(group)
    training = {"on": False, "restore": resume}
    offset = resume.steps if resume else 0
    earlier = list(resume.evaluations) if resume else []

    def train_data():
        for batch in train_loader:
            if training["on"]:
                if training["restore"] is not None:
                    n = sync.restore(training["restore"].state)
                    log.info("resumed at step %d: restored %d state variables", offset, n)
                    training["restore"] = None
                sync.sync()  # the previous step changed this rank's state
                sync.dirty = True  # the step ACT runs on this batch will
                fed["batches"] += 1
                fed["images"] += len(batch.labels)
            yield {input_name: batch.images}

    def eval_images():
        for batch in val_loader.epoch(0):
            yield {input_name: batch.images}

    def save_checkpoint():
        if checkpoints is not None:
            checkpoint.save(checkpoints, checkpoint.Checkpoint(
                run_id, offset + fed["batches"], earlier + [h["top1"] for h in history],
                sync.state()))

    g = cfg.globals
    act_config = cfg.act_config()
    for section, values in (overrides or {}).items():
        act_config[section].update(values)
    act = AutoCompression(
        model_dir=str(model_dir), model_filename=g["model_filename"],
        params_filename=g["params_filename"], save_dir=str(act_dir), config=act_config,
        train_dataloader=train_data, eval_dataloader=eval_images,
        eval_callback=_eval_callback(group, sync, val_loader, input_name, history,
                                     save_checkpoint),
        deploy_hardware=None)
    _capture_train_program(act, sync)
    per_epoch = len(train_loader)
    train_loader.continue_at(offset // per_epoch, offset % per_epoch)
    training["on"] = True  # ACT's constructor peeked at one batch; steps start now
    sync.dirty = True  # make the ranks' starting states identical at the first step
    act.compress()
    return {"strategies": list(act._strategy), "train_steps": fed["batches"],
            "train_images": fed["images"], "evaluations": [h["top1"] for h in history],
            "best_top1": max((h["top1"] for h in history), default=None),
            "rank_syncs": sync.syncs,
            "state_digests_last_eval": history[-1].get("state_digests") if history else None}
