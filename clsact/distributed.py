"""Data-parallel runs: ranks that really synchronise, whatever the GPUs per process.

paddleslim 2.6.0 switches on collective training only when a process sees more than one GPU,
so clsact decides instead (``Global.rank_sync``, :func:`sync_mode`), in one of two ways:

* ``gradients`` (the default on GPU with more than one rank): paddle's own collective path.
  ACT's fleet mode is switched on by world size (:func:`clsact.compat.act_fleet`) with
  :func:`in_graph_allreduce`'s strategy: fleet's ``RawProgramOptimizer`` writes
  ``c_allreduce_sum`` ops on the (fused) gradients into the training program, after the
  backward ops and before the optimizer ops, scales the loss gradient by 1/world and
  broadcasts rank 0's parameters at start-up. Nothing crosses the host per step; on GPU the
  all-reduce is NCCL on the device. The same program runs on CPU builds over gloo (the
  communicator comes from :meth:`Group.start`, :func:`clsact.compat.collective_on_cpu`),
  which is how it is tested here. Only state that is not a gradient's result (batch-norm
  statistics, quantizer scales, both moving averages, so linear in the batches) is averaged
  once before each evaluation.
* ``state`` (the default on CPU): after every training step (when ACT pulls the next batch
  from clsact's data generator) and before every evaluation, all ranks **average their
  training state** — every float persistable of the student (weights, optimizer
  accumulators, BN statistics, quantizer state) — through the host with one all-reduce, each
  rank weighted by the samples it trained on; for SGD/Momentum this is exactly gradient
  averaging (other optimizers are refused: :mod:`clsact.optim`), and it keeps the ranks
  bit-identical. A rank whose batch had no readable image steps on a stand-in with weight 0.

In both, every rank takes the same steps; evaluation is sharded: each rank scores its
disjoint slice, the correct/total counts are summed, so every rank gets the same exact
metric, and rank 0's value is broadcast, so early stopping and best-model decisions are
identical everywhere (no rank left waiting); every collective of clsact's own runs under a
watchdog: if the other ranks do not answer within ``Global.collective_timeout`` seconds (a
rank failed or was preempted), the process prints one clear line and exits with
:data:`clsact.exitcodes.RANK_LOST`.

clsact's own communication uses paddle's process group (gloo on CPU, NCCL on GPU) through
the dynamic graph API, switched on just for the call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from clsact import exitcodes
from clsact.errors import ClsactError, DistributedError
from clsact.process import RankInfo, dynamic_mode

log = logging.getLogger(__name__)
TEACHER_PREFIX = "teacher_"
GRADIENTS, STATE = "gradients", "state"
# gradients fused into one all-reduce (fleet's fuse_grad_size_in_num; its default is 8)
FUSE_GRADS = 16


def sync_mode(requested: str, device: str, world: int) -> str:
    """How the ranks synchronise: :data:`GRADIENTS` or :data:`STATE` (module docstring).

    ``auto`` is ``gradients`` on GPU (no host copies) and ``state`` on CPU (the path whose
    exactness the tests prove with every optimizer clsact accepts there). With one rank
    the answer does not matter: nothing is synchronised.
    """
    if requested in (GRADIENTS, STATE):
        return requested
    return GRADIENTS if device == "gpu" and world > 1 else STATE


def in_graph_allreduce(strategy) -> None:
    """Configure a ``fleet.DistributedStrategy`` for gradient all-reduce ops written into the
    program (documented options): ``without_graph_optimization`` selects fleet's
    ``RawProgramOptimizer`` (the ops are in the program the executor runs, so they can be
    checked, and the plain executor runs it), gradients fused ``FUSE_GRADS`` at a time."""
    strategy.without_graph_optimization = True
    strategy.fuse_all_reduce_ops = True
    strategy.fuse_grad_size_in_num = FUSE_GRADS
    # RawProgramOptimizer applies the strategy's build passes to the program; the in-place
    # pass (on by default) hands gradients other buffers (share_buffer ops), so a gradient
    # would leave the fused buffer that is all-reduced: measured here, the ranks then train
    # apart. ACT turns the same passes off for its quantization programs.
    build = strategy.build_strategy
    build.enable_inplace = False
    build.memory_optimize = False
    strategy.build_strategy = build


def allreduce_coverage(program) -> dict[str, int]:
    """How the training ``program``'s gradients are all-reduced: ``grads`` (gradients an
    optimizer op reads), ``covered`` (of those, the ones a ``c_allreduce_sum`` reduces
    before that optimizer op, directly or inside a fused ``coalesce_tensor`` buffer that no
    ``share_buffer`` op moves it out of),
    ``allreduce_ops``, ``loss_grad_scale`` (the factor of the one in-place scale op on a
    gradient, fleet's 1/world on the loss gradient; None without exactly one) and
    ``missing`` (the gradients not covered)."""
    ops = list(program.global_block().ops)
    first_opt = {}
    for i, op in enumerate(ops):
        if op.has_attr("op_role") and int(op.attr("op_role")) & 2 and "Grad" in op.input_names:
            for name in op.input("Grad"):
                first_opt.setdefault(name, i)
    fused: dict[str, list[str]] = {}
    for op in ops:
        if op.type == "coalesce_tensor":
            # its Output vars (the gradients) become views of the one FusedOutput buffer
            fused.setdefault(op.output("FusedOutput")[0], []).extend(op.output("Output"))
    # a share_buffer op re-points its Out at another buffer: out of the fused one
    rebound = {name for op in ops if op.type == "share_buffer" for name in op.output("Out")}
    reduced_at: dict[str, int] = {}
    count = 0
    for i, op in enumerate(ops):
        if op.type != "c_allreduce_sum":
            continue
        count += 1
        for name in op.input("X"):
            for grad in fused.get(name, [name]):
                reduced_at.setdefault(grad, i)
    missing = sorted(g for g, at in first_opt.items()
                     if reduced_at.get(g, len(ops)) >= at or g in rebound)
    scales = [float(op.attr("scale")) for op in ops if op.type == "scale"
              and op.input("X")[0].endswith("@GRAD") and op.input("X") == op.output("Out")]
    return {"grads": len(first_opt), "covered": len(first_opt) - len(missing),
            "allreduce_ops": count, "loss_grad_scale": scales[0] if len(scales) == 1 else None,
            "missing": missing}


class Group:
    """The ranks of this job. With one rank every operation is the identity (no paddle
    distributed state is touched), so single-process runs take the same code path."""

    def __init__(self, ranks: RankInfo, timeout: float = 600.0) -> None:
        self.rank = ranks.rank
        self.world = ranks.world
        self.timeout = timeout
        self._started = False
        # local scratch directories (model copies, staging) removed if the watchdog ends
        # the process: os._exit skips every ``finally``
        self.scratch: list[Path] = []

    @property
    def active(self) -> bool:
        """More than one rank."""
        return self.world > 1

    @contextmanager
    def watchdog(self, what: str) -> Iterator[None]:
        """Abort the process when the block does not finish within ``timeout`` seconds.

        Raises:
            DistributedError: the collective failed (a peer closed its connection).
        """
        if not self.active:
            yield
            return
        timer = threading.Timer(self.timeout, self._abort, args=(what,))
        timer.daemon = True
        timer.start()
        try:
            yield
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(f"rank {self.rank} of {self.world}: {what} failed: another "
                                   f"rank is gone or broken ({first[:200]}); see the other "
                                   "ranks' logs; nothing was published") from None
        finally:
            timer.cancel()

    def _abort(self, what: str) -> None:
        msg = (f"clsact: error: rank {self.rank} of {self.world}: no answer from the other "
               f"ranks for {self.timeout:.0f}s during {what}: a rank failed or was preempted "
               "(see its log); nothing was published")
        log.error("%s", msg.removeprefix("clsact: error: "))
        for handler in logging.getLogger().handlers:
            handler.flush()
        print(msg, file=sys.stderr, flush=True)
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        from clsact.data.loader import abort_all

        abort_all()  # decode workers and shared-memory slots
        os._exit(exitcodes.RANK_LOST)

    def start(self, static_gloo: bool = False) -> None:
        """Join the process group (rendezvous through the launcher's master endpoint); with
        ``static_gloo``, also the gloo context the static program's collective ops use on a
        CPU build (``paddle.distributed.gloo_init_parallel_env``, at a port rank 0 picks).

        Raises:
            DistributedError: world size > 1 but this process was not started by
                ``paddle.distributed.launch`` (no per-process endpoint).
        """
        if not self.active or self._started:
            return
        check_launched(os.environ, self.world)
        import paddle.distributed as dist

        with self.watchdog("start-up (joining the process group)"), dynamic_mode():
            dist.init_parallel_env()
        self._started = True
        log.info("rank %d of %d joined the process group", self.rank, self.world)
        if static_gloo:
            from clsact.compat import no_gloo_http_log

            no_gloo_http_log()
            host = os.environ["PADDLE_TRAINER_ENDPOINTS"].split(",")[0].rsplit(":", 1)[0]
            endpoint = self.broadcast_object(f"{host}:{free_port()}" if self.rank == 0
                                             else None, "agreeing on the gloo endpoint")
            with self.watchdog("start-up (the static program's gloo context)"):
                dist.gloo_init_parallel_env(self.rank, self.world, endpoint)
            log.info("static-graph collectives over gloo at %s", endpoint)

    def allreduce_sum(self, array: np.ndarray, what: str = "all-reduce") -> np.ndarray:
        """The element-wise sum of ``array`` over all ranks."""
        if not self.active:
            return array
        import paddle
        import paddle.distributed as dist

        with self.watchdog(what), dynamic_mode():
            tensor = paddle.to_tensor(np.ascontiguousarray(array))
            dist.all_reduce(tensor)
            return tensor.numpy()

    def broadcast_object(self, obj: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects: metrics, model bytes)."""
        if not self.active:
            return obj
        import paddle.distributed as dist

        box = [obj]
        with self.watchdog(what), dynamic_mode():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any, what: str = "gather") -> list[Any]:
        """Every rank's ``obj``, by rank."""
        if not self.active:
            return [obj]
        import paddle.distributed as dist

        out: list[Any] = []
        with self.watchdog(what), dynamic_mode():
            dist.all_gather_object(out, obj)
        return out

    def agree(self, ok: bool, what: str) -> bool:
        """True only when ``ok`` on every rank (e.g. "my inputs are fine")."""
        flags = self.allreduce_sum(np.array([0 if ok else 1], np.int64), what)
        return int(flags[0]) == 0

    def on_rank0(self, action: Callable[[], None], what: str, failed: str,
                 timeout: float | None = None) -> None:
        """Run ``action`` on rank 0 only; every rank learns whether it worked, so all ranks
        stop or none does. The others wait ``timeout`` seconds (default: the group's).

        Raises:
            ClsactError: on rank 0 its own error; on the others ``failed``.
        """
        error = None
        if self.rank == 0:
            try:
                action()
            except ClsactError as exc:
                error = exc
        usual, self.timeout = self.timeout, timeout or self.timeout
        try:
            ok = self.agree(error is None, what)
        finally:
            self.timeout = usual
        if not ok:
            raise error or ClsactError(failed)


def free_port() -> int:
    """A TCP port free on this host now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def check_launched(env, world: int) -> None:
    """Raise DistributedError unless the launcher set this process's endpoints."""
    missing = [k for k in ("PADDLE_CURRENT_ENDPOINT", "PADDLE_TRAINER_ENDPOINTS")
               if not env.get(k)]
    if missing:
        raise DistributedError(
            f"PADDLE_TRAINERS_NUM={world} but {', '.join(missing)} is not set: start clsact "
            "under `python -m paddle.distributed.launch` (the command the PaddleJob runs), "
            "which sets each rank's endpoints")


def state_names(scope, program) -> list[str]:
    """The float persistable variables of the student in ``program`` that ``scope`` holds
    (sorted): what ranks average. Teacher variables (``teacher_*``, frozen) and integer
    counters are left out."""
    names = set()
    for var in program.list_vars():
        name = var.name
        if not var.persistable or name.startswith(TEACHER_PREFIX) or name in ("feed", "fetch"):
            continue
        found = scope.find_var(name)
        if found is None:
            continue
        try:
            tensor = found.get_tensor()
        except (RuntimeError, ValueError):  # not a dense tensor (e.g. a reader)
            continue
        if tensor._is_initialized() and np.array(tensor).dtype.kind == "f":
            names.add(name)
    return sorted(names)


def weighted_mean(group: Group, flat: np.ndarray, weight: float, what: str) -> np.ndarray:
    """The mean of ``flat`` over the ranks, each weighted by its ``weight`` (e.g. the samples
    it trained on), in one all-reduce; the plain mean when every weight is 0.

    Weighting by samples makes the mean of the ranks' states after one SGD/Momentum step the
    state after one step on the mean gradient of all their samples, batches of unequal size
    (or a rank with none) included.
    """
    payload = np.concatenate([flat * flat.dtype.type(weight), np.array([weight], flat.dtype)])
    total = group.allreduce_sum(payload, what)
    if total[-1] > 0:
        return total[:-1] / total[-1]
    return group.allreduce_sum(flat, what) / group.world


def average_state(group: Group, scope, names: list[str], place, weight: float = 1.0) -> None:
    """Replace each of ``names`` in ``scope`` by its ``weight``-weighted mean over all ranks
    (:func:`weighted_mean`)."""
    if not group.active or not names:
        return
    arrays = [np.array(scope.find_var(n).get_tensor()) for n in names]
    dtype = np.result_type(*arrays)  # float32 for fp32 models: no wider than needed
    flat = np.concatenate([a.astype(dtype, copy=False).ravel() for a in arrays])
    mean = weighted_mean(group, flat, weight, "the training-state all-reduce")
    offset = 0
    for name, arr in zip(names, arrays, strict=True):
        part = mean[offset: offset + arr.size].reshape(arr.shape).astype(arr.dtype)
        scope.find_var(name).get_tensor().set(part, place)
        offset += arr.size


def state_digest(scope, names: list[str]) -> str:
    """sha256 of the named variables' bytes: equal on every rank iff their states are."""
    return arrays_digest({name: np.array(scope.find_var(name).get_tensor()) for name in names},
                         names)


def arrays_digest(arrays: dict[str, np.ndarray], names: list[str]) -> str:
    """sha256 of ``arrays`` in the order of ``names`` (what :func:`state_digest` reads from a
    scope, computed from arrays: a checkpoint's state file, say)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def aggregate_eval(group: Group, result: dict[str, Any], what: str) -> dict[str, Any]:
    """Sum one rank's evaluation counts over all ranks; exact top-1/top-5 of the union.

    ``result`` holds ``correct1``, ``correct5``, ``samples`` and ``bad_images``.
    """
    counts = np.array([result["correct1"], result["correct5"], result["samples"],
                       result["bad_images"]], np.int64)
    total = group.allreduce_sum(counts, what)
    c1, c5, n, bad = (int(x) for x in total)
    out = dict(result)
    out.update(correct1=c1, correct5=c5, samples=n, bad_images=bad,
               top1=c1 / n if n else 0.0, top5=c5 / n if n else 0.0)
    return out
