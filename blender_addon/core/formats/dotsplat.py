"""antimatter15's ``.splat``: 32 bytes a splat, no header, no SH bands. numpy only.

Each record (little-endian), as antimatter15/splat's ``convert.py`` writes it from an INRIA
PLY, values copied straight from the PLY, so the axes are the PLY's RDF:

    position  3 x f32
    scale     3 x f32   linear (exp of the PLY's log scale)
    colour    4 x u8    r, g, b = (0.5 + C0 * f_dc) * 255, a = sigmoid(opacity) * 255
    rotation  4 x u8    wxyz, (q / |q|) * 128 + 128

Colour is clipped to [0, 1], so a DC term outside that range does not come back, and the
view-dependent bands are dropped. ``convert.py`` sorts the records by size and opacity; we
keep the cloud's own order (viewers sort per frame anyway).
"""

from __future__ import annotations

import os

import numpy as np

from ..frames import HEAD_TO_PLY, PLY_TO_HEAD
from ..splat_arrays import SplatArrays, logit, rgb_to_sh0
from ._common import read_source, turn, write_atomic

RECORD = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
FRAMES = ("ply", "head")


class DotSplatError(ValueError):
    """Bytes that are not a ``.splat`` file."""


def _rot(frame: str, to_file: bool) -> np.ndarray:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if frame == "head":
        return np.eye(3)
    return HEAD_TO_PLY if to_file else PLY_TO_HEAD


def to_splat_bytes(splats: SplatArrays, frame: str = "ply") -> bytes:
    s = turn(splats, _rot(frame, True))
    rec = np.zeros(len(s), RECORD)
    rec["pos"] = s.means
    rec["scale"] = np.exp(s.log_scales.astype(np.float32))
    rgba = np.concatenate([s.rgb(), s.opacity()[:, None]], axis=1)
    rec["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    rec["rot"] = np.clip(np.round(s.unit_quats() * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return rec.tobytes()


def write_splat(path: str | os.PathLike[str], splats: SplatArrays, frame: str = "ply") -> None:
    write_atomic(path, to_splat_bytes(splats, frame))


def from_splat_bytes(data: bytes, frame: str = "ply") -> SplatArrays:
    if len(data) % RECORD.itemsize:
        raise DotSplatError(f"a .splat file is a whole number of 32-byte records; this one has {len(data)} bytes")
    rec = np.frombuffer(data, RECORD)
    q = (rec["rot"].astype(np.float32) - np.float32(128.0)) / np.float32(128.0)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-6, q / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    scale = rec["scale"].astype(np.float32)
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise DotSplatError(".splat holds non-positive or non-finite scales")
    rgba = rec["rgba"].astype(np.float32) / np.float32(255.0)
    s = SplatArrays(
        np.ascontiguousarray(rec["pos"], np.float32),
        q.astype(np.float32),
        np.log(scale).astype(np.float32),
        logit(rgba[:, 3]),
        rgb_to_sh0(rgba[:, :3]),
    )
    return turn(s, _rot(frame, False))


def read_splat(source: str | os.PathLike[str] | bytes, frame: str = "ply") -> SplatArrays:
    return from_splat_bytes(read_source(source), frame)
