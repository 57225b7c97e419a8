"""Which GPUs the installed Paddle can run on, read from its own libraries.

A CUDA library carries, per kernel module (one ``fatbin`` per compiled source file), machine
code (SASS) for some GPU architectures and maybe PTX. SASS for ``sm_XY`` runs on GPUs of
compute capability X.Y' with the same major X and Y' >= Y; PTX for ``compute_XY`` is compiled
by the driver for any capability >= X.Y. A GPU whose capability no module's code covers fails
at Paddle's first kernel ("no kernel image is available for execution on the device").

This module reads the fatbin headers in the ``.nv_fatbin`` ELF section of Paddle's CUDA
libraries (kind and architecture of every entry: what ``cuobjdump --list-elf/--list-ptx``
list; the CUDA 13 ``cuobjdump`` on PyPI stops at Paddle 2.6.2's sm_35 entry, so the image test
checks this reading against it entry for entry, up to that point), and says, for each compute
capability, which share of each library's modules it runs. A library runs on a capability
when at least :data:`COVERAGE` of its modules do (Paddle 2.6.2's ``libphi.so`` has 665
modules built for sm_61-86 and one third-party module built for sm_35-70 and sm_90).

The image build records the result (``/opt/clsact/gpu-archs.json``, and the image label
``io.clsact.gpu-archs``); ``clsact doctor`` prints it; a run refuses a GPU the installed Paddle
cannot run before any work (:func:`check_gpus`); the launcher keeps GPU pods off such nodes
(:func:`node_affinity_terms`).

Standard library only: the image build runs it as a script (``python gpuarch.py scan``)
before clsact is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2
COVERAGE = 0.99
# the libraries of Paddle 2.6 whose kernels a compression run executes (flash attention is
# only used by attention layers: recorded, not required)
REQUIRED_LIBRARIES = ("paddle/libs/libphi.so", "paddle/base/libpaddle.so")
OPTIONAL_LIBRARIES = ("paddle/libs/libflashattn.so",)
RECORD_PATH = Path("/opt/clsact/gpu-archs.json")  # written by the GPU image build
RECORD_ENV = "CLSACT_GPU_ARCHS_FILE"
LABEL = "io.clsact.gpu-archs"
FORMAT = "clsact-gpu-archs/1"

# data-centre GPUs and their compute capability (NVIDIA's CUDA GPUs list)
DATA_CENTRE_GPUS: tuple[tuple[str, str], ...] = (
    ("P100", "6.0"), ("P4, P40", "6.1"), ("V100", "7.0"), ("T4", "7.5"),
    ("A100, A30", "8.0"), ("A10, A40, A16, A2", "8.6"), ("L4, L40, L40S", "8.9"),
    ("H100, H200, GH200", "9.0"), ("B200, GB200", "10.0"), ("B300, GB300", "10.3"),
    ("RTX PRO 6000 Blackwell", "12.0"),
)


class ArchError(Exception):
    """A library cannot be read, or the installed Paddle cannot run a wanted GPU."""


# ---------------------------------------------------------------- reading a library

def _sections(mm: mmap.mmap) -> Iterator[tuple[str, int, int]]:
    """(name, file offset, size) of every section of a 64-bit little-endian ELF file."""
    if mm[:4] != b"\x7fELF" or mm[4] != 2 or mm[5] != 1:
        raise ArchError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", mm, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", mm, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", mm, shoff + i * shentsize)
               for i in range(shnum)]
    names = headers[shstrndx][4]
    for h in headers:
        start = names + h[0]
        yield mm[start:mm.find(b"\0", start)].decode("ascii", "replace"), h[4], h[5]


def _modules(mm: mmap.mmap, offset: int, size: int) -> Iterator[list[tuple[int, int]]]:
    """The entries ((kind, sm), ...) of each fatbin in a ``.nv_fatbin`` section."""
    pos, end = offset, offset + size
    while pos + 16 <= end:
        magic, _version, header, fat = struct.unpack_from("<IHHQ", mm, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fatbins are 8-byte aligned; skip padding
            continue
        entries, e, stop = [], pos + header, pos + header + fat
        while e + 32 <= stop:
            kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", mm, e)
            (sm,) = struct.unpack_from("<I", mm, e + 28)
            entries.append((kind, sm))
            if entry_header == 0:
                break
            e += entry_header + payload
        yield entries
        pos = stop


def read_library(path: str | Path) -> list[list[tuple[int, int]]]:
    """Every kernel module of the library at ``path``: its entries as (kind, sm) pairs,
    kind :data:`KIND_PTX` or :data:`KIND_ELF`, sm e.g. 80. [] for a library without GPU code.

    Raises:
        ArchError: the file is missing or not an ELF file.
    """
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return [mods for name, off, size in _sections(mm) if name == ".nv_fatbin"
                    for mods in _modules(mm, off, size)]
    except (OSError, ValueError, struct.error) as exc:
        raise ArchError(f"{path}: cannot read its GPU code ({exc})") from None


# ---------------------------------------------------------------- what runs where

def capability(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """A compute capability from "9.0", "sm_90", "90", 90 or (9, 0).

    Raises:
        ArchError: not a capability.
    """
    if isinstance(text, tuple):
        return int(text[0]), int(text[1])
    s = str(text).strip().lower().removeprefix("sm_").removeprefix("compute_")
    try:
        if "." in s:
            major, minor = s.split(".", 1)
            return int(major), int(minor)
        value = int(s)
    except ValueError:
        raise ArchError(f"{text!r} is not a compute capability (e.g. 8.0 or sm_80)") from None
    return value // 10, value % 10


def cc_text(cc: tuple[int, int]) -> str:
    """(8, 0) -> "8.0"."""
    return f"{cc[0]}.{cc[1]}"


def runs(entries: Iterable[tuple[int, int]], cc: tuple[int, int]) -> bool:
    """Whether a module with these entries has code a GPU of capability ``cc`` runs."""
    for kind, sm in entries:
        arch = (sm // 10, sm % 10)
        if kind == KIND_ELF and arch[0] == cc[0] and arch[1] <= cc[1]:
            return True
        if kind == KIND_PTX and arch <= cc:
            return True
    return False


def coverage(modules: list[list[tuple[int, int]]], cc: tuple[int, int]) -> tuple[int, int]:
    """(modules with code for ``cc``, modules with GPU code)."""
    with_code = [m for m in modules if m]
    return sum(runs(m, cc) for m in with_code), len(with_code)


def candidates(libraries: dict[str, list[list[tuple[int, int]]]]) -> list[tuple[int, int]]:
    """The capabilities worth judging: the data-centre GPUs' and every architecture present."""
    ccs = {capability(cc) for _name, cc in DATA_CENTRE_GPUS}
    for modules in libraries.values():
        ccs |= {(sm // 10, sm % 10) for m in modules for _kind, sm in m}
    return sorted(ccs)


def build_matrix(libraries: dict[str, list[list[tuple[int, int]]]],
                 required: Iterable[str] = REQUIRED_LIBRARIES,
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The support matrix of a set of libraries (relative path -> modules).

    ``supported`` lists the capabilities every required library runs (>= :data:`COVERAGE`
    of its modules); each library's ``sass``/``ptx`` counts modules per architecture and
    ``coverage`` gives "runnable/modules" per judged capability.
    """
    out: dict[str, Any] = {"format": FORMAT, **(meta or {}), "libraries": {}}
    ccs = candidates(libraries)
    ok = set(ccs)
    for rel, modules in sorted(libraries.items()):
        sass: dict[str, int] = {}
        ptx: dict[str, int] = {}
        for m in modules:
            for kind, sm in sorted(set(m)):
                bucket = sass if kind == KIND_ELF else ptx
                bucket[f"sm_{sm}"] = bucket.get(f"sm_{sm}", 0) + 1
        cover = {cc_text(cc): coverage(modules, cc) for cc in ccs}
        out["libraries"][rel] = {
            "modules": sum(1 for m in modules if m), "required": rel in required,
            "sass": dict(sorted(sass.items(), key=lambda kv: int(kv[0][3:]))),
            "ptx": dict(sorted(ptx.items(), key=lambda kv: int(kv[0][3:]))),
            "coverage": {k: f"{a}/{b}" for k, (a, b) in cover.items()}}
        if rel in required:
            ok &= {cc for cc in ccs if cover[cc_text(cc)][1]
                   and cover[cc_text(cc)][0] >= COVERAGE * cover[cc_text(cc)][1]}
    out["supported"] = [cc_text(cc) for cc in sorted(ok)]
    out["gpus"] = {cc: [n for n, c in DATA_CENTRE_GPUS if c == cc] for cc in out["supported"]
                   if any(c == cc for _n, c in DATA_CENTRE_GPUS)}
    return out


def paddle_root() -> Path | None:
    """The folder that holds the installed ``paddle`` package (without importing it)."""
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def scan(root: Path | None = None) -> dict[str, Any]:
    """The matrix of the installed Paddle (``root``: the folder holding ``paddle/``);
    ``{"cuda": False}`` when its libraries hold no GPU code (the CPU build).

    Raises:
        ArchError: Paddle is not installed, or a library cannot be read.
    """
    root = root or paddle_root()
    if root is None:
        raise ArchError("paddle is not installed")
    libraries = {rel: read_library(root / rel) for rel in REQUIRED_LIBRARIES
                 if (root / rel).exists()}
    libraries.update({rel: read_library(root / rel) for rel in OPTIONAL_LIBRARIES
                      if (root / rel).exists()})
    if not any(any(m for m in mods) for mods in libraries.values()):
        return {"format": FORMAT, "cuda": False, "supported": [], "libraries": {}}
    return {"cuda": True, **build_matrix(libraries, meta={"paddle": _paddle_version(root)})}


def _paddle_version(root: Path) -> str | None:
    for dist in root.glob("paddlepaddle*.dist-info"):
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        return f"{name.replace('_', '-')} {version}"
    return None


def record_path() -> Path:
    """Where the image build's record is read (``CLSACT_GPU_ARCHS_FILE`` overrides)."""
    return Path(os.environ.get(RECORD_ENV) or RECORD_PATH)


def recorded() -> dict[str, Any] | None:
    """The matrix the image build recorded (None outside the image).

    Raises:
        ArchError: the record exists but is unreadable.
    """
    path = record_path()
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArchError(f"{path}: unreadable GPU support record ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchError(f"{path} is not a clsact GPU support record ({FORMAT})")
    return data


def installed() -> dict[str, Any]:
    """The recorded matrix, else a scan of the installed Paddle.

    Raises:
        ArchError: see :func:`recorded` and :func:`scan`.
    """
    return recorded() or scan()


def missing(matrix: dict[str, Any], wanted: Iterable[str]) -> list[str]:
    """The wanted capabilities ("80", "9.0", "sm_90", ...) the matrix does not support."""
    have = set(matrix.get("supported") or [])
    return [cc_text(capability(w)) for w in wanted if cc_text(capability(w)) not in have]


def build_help() -> str:
    """How to get an image for GPUs the default one cannot run (for error lines)."""
    return ("build an image from a Paddle 2.6 GPU wheel compiled for it: make image "
            "PADDLE_GPU=<wheel file or URL> GPU_ARCHS=<e.g. 80,90> (docs/images.md)")


# ---------------------------------------------------------------- runs and schedules

def check_gpus(gpus: list[tuple[str, tuple[int, int]]], matrix: dict[str, Any]) -> None:
    """Refuse GPUs the matrix does not support.

    Raises:
        ArchError: a GPU's capability is not in ``matrix["supported"]`` (one line: the GPU,
            its capability, the supported list, how to build an image that supports it).
    """
    supported = set(matrix.get("supported") or [])
    for name, cc in gpus:
        if cc_text(cc) not in supported:
            raise ArchError(
                f"GPU {name} (compute capability {cc_text(cc)}) cannot run this image's "
                f"Paddle ({matrix.get('paddle') or 'paddlepaddle-gpu'}: kernels for "
                f"{', '.join(matrix.get('supported') or []) or 'no GPU'}); "
                f"{build_help()}")


def node_affinity_terms(supported: Iterable[str]) -> list[dict[str, Any]]:
    """``nodeSelectorTerms`` (ORed) admitting only nodes whose GPU feature discovery labels
    (``nvidia.com/gpu.compute.major``/``minor``) name a supported capability. Within a major,
    the supported minors run on every higher minor too (SASS), so one term per major."""
    by_major: dict[int, int] = {}
    for cc in (capability(s) for s in supported):
        by_major[cc[0]] = min(cc[1], by_major.get(cc[0], cc[1]))
    terms = []
    for major, minor in sorted(by_major.items(), key=lambda kv: str(kv[0])):  # as Helm sorts
        exprs = [{"key": "nvidia.com/gpu.compute.major", "operator": "In",
                  "values": [str(major)]}]
        if minor > 0:
            exprs.append({"key": "nvidia.com/gpu.compute.minor", "operator": "Gt",
                          "values": [str(minor - 1)]})
        terms.append({"matchExpressions": exprs})
    return terms


# ---------------------------------------------------------------- the build's script

def main(argv: list[str] | None = None) -> int:
    """``python gpuarch.py scan [--want 80,90] [--output FILE]``: the image build's step."""
    p = argparse.ArgumentParser(prog="gpuarch.py")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scan", help="the installed Paddle's GPU support matrix")
    s.add_argument("--root", type=Path, help="the folder holding paddle/ (default: installed)")
    s.add_argument("--want", default="", help="capabilities that must be supported: 80,90")
    s.add_argument("--output", type=Path, help="write the matrix here (JSON)")
    args = p.parse_args(argv)
    try:
        matrix = scan(args.root)
        wanted = [w for w in args.want.replace(" ", "").split(",") if w]
        if wanted and not matrix.get("cuda"):
            raise ArchError(f"GPU_ARCHS={args.want}: the installed Paddle has no GPU code "
                            "(the CPU build?)")
        lacking = missing(matrix, wanted)
        if lacking:
            counts = "; ".join(f"{rel}: {lib['coverage'].get(cc, '0/?')} modules for {cc}"
                               for cc in lacking
                               for rel, lib in matrix["libraries"].items() if lib["required"])
            raise ArchError(
                f"{matrix.get('paddle') or 'paddle'} has no complete kernels for compute "
                f"capability {', '.join(lacking)} ({counts}); supported: "
                f"{', '.join(matrix['supported']) or 'none'}. Build with a wheel compiled for "
                f"it (PADDLE_GPU=...) or leave it out of GPU_ARCHS")
    except ArchError as exc:
        print(f"gpuarch: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(matrix, indent=2) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"gpuarch: supported compute capabilities: "
              f"{', '.join(matrix.get('supported') or []) or 'none (no GPU code)'}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
