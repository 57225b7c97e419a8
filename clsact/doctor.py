"""``clsact doctor``: what this installation runs on (versions, the GPUs the installed Paddle
has kernels for, the GPUs this process sees and whether each can run)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from clsact import __version__, gpuarch
from clsact.errors import DeviceError


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report(gpus: list[tuple[str, tuple[int, int]]]) -> dict[str, Any]:
    """The facts ``clsact doctor`` prints, for the visible ``gpus`` (name, capability).

    Raises:
        DeviceError: the recorded support matrix is unreadable, or Paddle's libraries are.
    """
    try:
        record = gpuarch.recorded()
        matrix = record or gpuarch.scan()
    except gpuarch.ArchError as exc:
        raise DeviceError(str(exc)) from None
    paddle = next(((d, v) for d in ("paddlepaddle-gpu", "paddlepaddle")
                   if (v := _version(d))), (None, None))
    supported = set(matrix.get("supported") or [])
    return {"clsact": __version__, "python": platform.python_version(),
            "paddle": f"{paddle[0]} {paddle[1]}" if paddle[0] else None,
            "paddleslim": _version("paddleslim"),
            "gpu_support": {"source": "recorded by the image build ("
                            f"{gpuarch.record_path()})" if record else
                            "read from the installed Paddle's libraries",
                            **matrix},
            "visible_gpus": [{"name": name, "capability": gpuarch.cc_text(cc),
                              "supported": gpuarch.cc_text(cc) in supported}
                             for name, cc in gpus]}


def table(facts: dict[str, Any]) -> str:
    """``report`` as text: versions, one row per judged compute capability, the GPUs."""
    support = facts["gpu_support"]
    lines = [f"clsact {facts['clsact']} (Python {facts['python']}), {facts['paddle']}, "
             f"paddleslim {facts['paddleslim']}",
             f"GPU support, {support['source']}:"]
    if not support.get("cuda", True) or not support.get("libraries"):
        lines.append("  none: this Paddle has no GPU code (the CPU build)")
    else:
        libs = {rel.rsplit("/", 1)[-1]: lib for rel, lib in support["libraries"].items()
                if lib["required"]}
        names = {cc: n for n, cc in gpuarch.DATA_CENTRE_GPUS}
        lines.append(f"  {'capability':<11}{'runs':<6}{'GPUs':<24}kernel modules ("
                     + ", ".join(libs) + ")")
        first = next(iter(libs.values()))
        for cc in first["coverage"]:
            ok = "yes" if cc in support["supported"] else "NO"
            lines.append(f"  {cc:<11}{ok:<6}{names.get(cc, ''):<24}"
                         + ", ".join(lib["coverage"][cc] for lib in libs.values()))
    gpus = facts["visible_gpus"]
    lines.append("visible GPUs: " + ("none" if not gpus else "; ".join(
        f"{g['name']} ({g['capability']}): {'runs' if g['supported'] else 'CANNOT RUN'}"
        for g in gpus)))
    return "\n".join(lines)
