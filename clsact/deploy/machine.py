"""The machine a speed figure was measured on: the CPU's instruction sets and the runtimes'
versions. A latency without them cannot be compared with another (an AVX2-only CPU caps int8
near 1.33x fp32; with VNNI, int8 is where the large gains are; with bf16, OpenVINO's default
for an fp32 model is bf16)."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from pathlib import Path

# /proc/cpuinfo flag -> the name these notes use
ISA = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512_VNNI",
       "avx_vnni": "AVX_VNNI", "avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX_BF16",
       "amx_int8": "AMX_INT8"}
BF16 = ("avx512_bf16", "amx_bf16")
VNNI = ("avx512_vnni", "avx_vnni")
RUNTIME_PACKAGES = ("paddlepaddle", "paddlepaddle-gpu", "paddleslim", "paddle2onnx", "onnx",
                    "onnxruntime", "openvino")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu() -> tuple[str, frozenset[str]]:
    """This machine's CPU model and flags (empty off Linux)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return platform.processor(), frozenset()


def _flags(flags: frozenset[str] | None) -> frozenset[str]:
    return cpu()[1] if flags is None else flags


def isa(flags: frozenset[str] | None = None) -> list[str]:
    """The instruction sets that matter for inference speed, among ``flags`` (default: this
    CPU's), e.g. ``["AVX2", "AVX-512", "AVX512_VNNI", "AVX512_BF16"]``."""
    return [name for flag, name in ISA.items() if flag in _flags(flags)]


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX)."""
    return any(f in _flags(flags) for f in BF16)


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512_VNNI or AVX_VNNI)."""
    return any(f in _flags(flags) for f in VNNI)


# ONEDNN_MAX_CPU_ISA values (oneDNN's names) that leave out every int8 dot product
_CAPS_WITHOUT_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def int8_dot_product(flags: frozenset[str] | None = None,
                     cap: str | None = None) -> bool:
    """Whether oneDNN's int8 kernels (Paddle's and OpenVINO's) use a VNNI dot product here:
    the CPU has one (:func:`has_vnni`) and ``ONEDNN_MAX_CPU_ISA`` (``cap``; default: this
    process's environment) does not cap oneDNN below it, as ``make bench`` does to measure
    older CPUs."""
    import os

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "") if cap is None else cap
    return has_vnni(flags) and cap.strip().upper() not in _CAPS_WITHOUT_VNNI


def versions() -> dict[str, str]:
    """The installed version of each runtime package (absent ones left out)."""
    out = {}
    for name in RUNTIME_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def describe() -> dict[str, object]:
    """The machine section of a report or benchmark: CPU model, instruction sets, CPUs this
    process may use, runtime versions."""
    from clsact.process import cpu_count

    model, _ = cpu()
    return {"cpu": model, "isa": isa(), "cpus": cpu_count(), "versions": versions()}


def headline(desc: dict[str, object]) -> str:
    """One line: ``CPU (AVX2, AVX-512, ...), N CPUs``."""
    sets = ", ".join(desc.get("isa") or []) or "no AVX2"  # type: ignore[arg-type]
    return f"{desc.get('cpu') or 'unknown CPU'} ({sets}), {desc.get('cpus')} CPU(s)"
