"""The process's place in a run: device (CPU/GPU), the CPUs it may use, and its rank within
the job."""

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


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's size)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so that ``finally`` blocks run.

    A subclass, not ``KeyboardInterrupt`` itself: CPython (3.10 to 3.13) marks the process for
    a SIGINT death at exit when an exception of exactly that type ends a string
    ``exec``/``eval`` (dataclasses, namedtuple and paddle build code that way), even when a
    caller catches it, and ``python -m`` then dies by SIGINT instead of returning our exit
    code. A signal landing in such an ``exec`` made a stopped run exit -2 instead of 130
    (``tests/test_cli.py`` shows both)."""


def _interrupt(signum: int, _frame) -> None:
    raise Interrupted(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """Make SIGTERM (pod eviction, preemption) and SIGINT unwind as :class:`Interrupted` so
    ``finally`` blocks clean up staging and the CLI exits 130. Importing paddle installs its
    own SIGTERM handler (it dumps a C++ stack and dies), so this runs again after paddle is
    imported (:func:`select_device`)."""
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN (nohup)
        signal.signal(signal.SIGINT, _interrupt)


def visible_gpus() -> list[tuple[str, tuple[int, int]]]:
    """(name, compute capability) of every GPU this process sees ([] on a CPU build)."""
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return []
    return [(paddle.device.cuda.get_device_name(i),
             tuple(paddle.device.cuda.get_device_capability(i)))
            for i in range(paddle.device.cuda.device_count())]


def check_gpu_support(gpus: list[tuple[str, tuple[int, int]]]) -> None:
    """Refuse GPUs the installed Paddle has no kernels for (its recorded support matrix,
    else its libraries read now), before any work.

    Raises:
        DeviceError: one line naming the GPU, its capability, the supported list and how to
            build an image that supports it; or the matrix cannot be read.
    """
    from clsact import gpuarch

    try:
        gpuarch.check_gpus(gpus, gpuarch.installed())
    except gpuarch.ArchError as exc:
        raise DeviceError(str(exc)) from None


def select_device(requested: str) -> str:
    """Set paddle's device from ``Global.device`` (auto|cpu|gpu) and return it. A GPU this
    Paddle cannot run is refused here, before the model is fetched and the save dir claimed
    (auto does not fall back to the CPU: a GPU job would crawl there).

    Raises:
        DeviceError: ``gpu`` was asked for but this paddle build has no CUDA or sees no GPU;
            or a visible GPU is one this Paddle has no kernels for.
    """
    import paddle

    gpus = visible_gpus()
    if requested == "gpu" and not gpus:
        why = ("this paddlepaddle build has no CUDA (install paddlepaddle-gpu)"
               if not paddle.device.is_compiled_with_cuda() else "no GPU is visible")
        raise DeviceError(f"Global.device is gpu but {why}; use --set Global.device=cpu")
    device = "gpu" if requested == "gpu" or (requested == "auto" and gpus) else "cpu"
    if device == "gpu":
        check_gpu_support(gpus)
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
