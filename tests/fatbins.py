"""Small ELF shared objects with a ``.nv_fatbin`` section, laid out as nvcc lays it out (one
fatbin per kernel module: a 16-byte header, then entries of a 64-byte header + payload, the
entry's kind at 0 and its architecture at 28), for the reader in clsact.gpuarch."""

from __future__ import annotations

import struct
from pathlib import Path

from clsact.gpuarch import FATBIN_MAGIC

PTX, ELF = 1, 2


def fatbin(entries: list[tuple[int, int]]) -> bytes:
    """One kernel module's fatbin: (kind, sm) entries, each with an 8-byte payload."""
    body = b""
    for kind, sm in entries:
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, kind, 0x0101, 64, 8)
        struct.pack_into("<I", header, 28, sm)
        body += bytes(header) + b"\xAB" * 8
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def shared_object(path: Path, modules: list[list[tuple[int, int]]]) -> Path:
    """Write an ELF64 file whose ``.nv_fatbin`` holds ``modules`` (8 zero bytes of padding
    between them, as the linker may leave); [] writes one without the section."""
    names = b"\0.shstrtab\0.nv_fatbin\0"
    section = b"".join(fatbin(m) + b"\0" * 8 for m in modules)
    strtab_off = 64
    fat_off = strtab_off + len(names)
    shoff = fat_off + len(section)
    sections = [bytes(64),
                struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0)]
    if modules:
        sections.append(struct.pack("<IIQQQQIIQQ", 11, 1, 2, 0, fat_off, len(section), 0, 0,
                                    8, 0))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(sections), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + names + section + b"".join(sections))
    return path


def paddle_like(root: Path, extra_sm: int | None = None) -> Path:
    """A folder holding ``paddle/`` with libraries shaped like paddlepaddle-gpu 2.6.2's
    (most modules built for sm_61-86, one odd module for sm_35-70 and sm_90), and, with
    ``extra_sm``, SASS for that architecture in every module."""
    common = [(ELF, sm) for sm in (61, 70, 75, 80, 86)]
    if extra_sm:
        common.append((ELF, extra_sm))
    odd = [(ELF, sm) for sm in (35, 50, 52, 60, 61, 70, 90)]
    shared_object(root / "paddle/libs/libphi.so", [common] * 120 + [odd])
    shared_object(root / "paddle/base/libpaddle.so", [common] * 30)
    return root
