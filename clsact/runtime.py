"""The process's place in a run: device (CPU/GPU) and rank within the job."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from clsact.errors import DeviceError


@dataclass(frozen=True)
class RankInfo:
    """Rank and world size as the Paddle launcher (or an operator) sets them."""

    rank: int
    world: int

    @property
    def is_publisher(self) -> bool:
        """Only rank 0 writes results."""
        return self.rank == 0


def rank_info(env: dict[str, str] | None = None) -> RankInfo:
    """Read ``PADDLE_TRAINER_ID`` / ``PADDLE_TRAINERS_NUM`` (defaults: rank 0 of 1).

    Raises:
        DeviceError: the variables are not integers or the rank is out of range.
    """
    env = dict(os.environ) if env is None else env
    try:
        rank = int(env.get("PADDLE_TRAINER_ID", "0"))
        world = int(env.get("PADDLE_TRAINERS_NUM", "1"))
    except ValueError:
        raise DeviceError("PADDLE_TRAINER_ID / PADDLE_TRAINERS_NUM must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise DeviceError(f"PADDLE_TRAINER_ID={rank} is outside PADDLE_TRAINERS_NUM={world}")
    return RankInfo(rank, world)


def _terminate(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """Make SIGTERM (pod eviction, preemption) unwind like Ctrl-C so ``finally`` blocks clean
    up staging. Importing paddle installs its own SIGTERM handler (it dumps a C++ stack and
    dies), so this runs again after paddle is imported (:func:`select_device`)."""
    signal.signal(signal.SIGTERM, _terminate)


def select_device(requested: str) -> str:
    """Set paddle's device from ``Global.device`` (auto|cpu|gpu) and return it.

    Raises:
        DeviceError: ``gpu`` was asked for but this paddle build has no CUDA or sees no GPU.
    """
    import paddle

    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        why = ("this paddlepaddle build has no CUDA (install paddlepaddle-gpu)"
               if not paddle.device.is_compiled_with_cuda() else "no GPU is visible")
        raise DeviceError(f"Global.device is gpu but {why}; use --set Global.device=cpu")
    device = "gpu" if requested == "gpu" or (requested == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    unwind_on_sigterm()
    return device


@contextmanager
def dynamic_mode() -> Iterator[None]:
    """Paddle's dynamic (eager) mode inside the block, whatever mode the caller is in (ACT
    trains in static mode; collectives and GPU decoding use eager tensors)."""
    import paddle

    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield
    finally:
        if static:
            paddle.enable_static()
