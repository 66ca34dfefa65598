"""Splat file formats beyond INRIA PLY, numpy only (shared by the backend and the add-on).

- ``ply``: INRIA 3DGS (:mod:`..splat_ply`), RDF axes, every value as float32;
- ``spz``: Niantic SPZ (:mod:`.spz`, gzip version 3), RUB axes (or RDF on request),
  quantised, SH degrees 0 to 3, about 5x (SH 0) to 10x (SH 3) smaller than PLY;
- ``splat``: antimatter15 (:mod:`.dotsplat`), RDF axes, 8-bit colour and rotation, no SH;
- ``glb``: glTF 2.0 with KHR_gaussian_splatting (:mod:`.gltf`), glTF's Y-up axes, float32,
  SH degrees 0 to 3.

:func:`read_splats` and :func:`write_splats` pick the codec from the file name (and, on read,
from the file's first bytes); every reader returns head-frame :class:`SplatArrays`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..splat_arrays import SplatArrays
from ..splat_ply import read_ply, to_ply_bytes
from ._common import read_source, write_atomic
from .dotsplat import DotSplatError, from_splat_bytes, to_splat_bytes
from .gltf import GltfError, from_glb_bytes, to_glb_bytes
from .spz import SpzError, from_spz_bytes, to_spz_bytes

FORMATS = ("ply", "spz", "splat", "glb")
SUFFIXES = {".ply": "ply", ".spz": "spz", ".splat": "splat", ".glb": "glb"}

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "DotSplatError",
    "FormatError",
    "GltfError",
    "SpzError",
    "format_of",
    "from_bytes",
    "read_splats",
    "sniff",
    "to_bytes",
    "write_splats",
]


class FormatError(ValueError):
    """A file name or format this module does not know."""


def format_of(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise FormatError(f"unknown splat file type {suffix or '(none)'!r}; expected one of {', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


def sniff(data: bytes) -> str | None:
    """The format a file's first bytes announce, or None (``.splat`` has no header)."""
    if data[:4] == b"glTF":
        return "glb"
    if data[:4] == b"NGSP" or data[:2] == b"\x1f\x8b":
        return "spz"
    if data[:4] == b"ply\n" or data[:5] == b"ply\r\n":
        return "ply"
    return None


def to_bytes(splats: SplatArrays, fmt: str) -> bytes:
    if fmt == "ply":
        return to_ply_bytes(splats)
    if fmt == "spz":
        return to_spz_bytes(splats)
    if fmt == "splat":
        return to_splat_bytes(splats)
    if fmt == "glb":
        return to_glb_bytes(splats)
    raise FormatError(f"unknown splat format {fmt!r}; expected one of {', '.join(FORMATS)}")


def from_bytes(data: bytes, fmt: str | None = None) -> SplatArrays:
    """Decode ``data``; ``fmt`` None trusts the header (and takes header-less data as ``.splat``)."""
    fmt = sniff(data) or fmt or "splat"
    if fmt == "ply":
        return read_ply(data)
    if fmt == "spz":
        return from_spz_bytes(data)
    if fmt == "splat":
        return from_splat_bytes(data)
    if fmt == "glb":
        return from_glb_bytes(data)
    raise FormatError(f"unknown splat format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_splats(path: str | os.PathLike[str]) -> SplatArrays:
    """A splat file of any known format, in the head frame."""
    fmt = format_of(path)
    if fmt == "ply":
        return read_ply(path)
    return from_bytes(read_source(path), fmt)


def write_splats(path: str | os.PathLike[str], splats: SplatArrays, fmt: str | None = None) -> None:
    """Write ``splats`` (head frame) in ``fmt`` (default: from the file name), atomically."""
    write_atomic(path, to_bytes(splats, fmt or format_of(path)))
