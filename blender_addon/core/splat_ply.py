"""INRIA 3DGS PLY read/write via plyfile, bpy-free.

Property order (as the INRIA reference writes it):
    x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3
``f_rest`` is channel-major: all K coefficients of red, then green, then blue.
Rotations are wxyz (rot_0 = w), scales are log, opacity is a logit.

Files are written in the PLY (RDF/OpenCV) frame by default and converted to the head frame
on read; ``frame="head"`` skips the conversion. The conversion itself lives in ``frames``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from .frames import head_to_ply, ply_to_head, sh_head_to_ply, sh_ply_to_head
from .splat_arrays import SplatArrays

FRAMES = ("ply", "head")


class SplatPlyError(ValueError):
    """A PLY file that is not a 3D Gaussian splat file (missing vertex properties)."""


def property_names(n_rest: int) -> list[str]:
    """INRIA order; ``n_rest`` = 3 * K higher-order SH values."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def to_ply_bytes(splats: SplatArrays, frame: str = "ply") -> bytes:
    buf = io.BytesIO()
    _ply_data(splats, frame).write(buf)
    return buf.getvalue()


def write_ply(path: str | os.PathLike[str], splats: SplatArrays, frame: str = "ply") -> None:
    """Write atomically: a temp file beside the target, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        _ply_data(splats, frame).write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_ply(source: str | os.PathLike[str] | bytes, frame: str = "ply") -> SplatArrays:
    """Read a 3DGS PLY (ours or another tool's) into head-frame arrays."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    try:
        data = PlyData.read(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source))
    except Exception as exc:  # plyfile raises several types for a malformed file
        raise SplatPlyError(f"not a readable PLY file: {exc}") from exc
    if "vertex" not in data:
        raise SplatPlyError("PLY file has no 'vertex' element")
    v = data["vertex"].data
    names = set(v.dtype.names)
    need = (
        ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )
    missing = [n for n in need if n not in names]
    if missing:
        raise SplatPlyError(f"PLY is not a Gaussian splat file; missing properties: {', '.join(missing)}")

    def col(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1)

    means = col("x", "y", "z")
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda s: int(s[7:]))
    shN = None
    if rest:
        if len(rest) % 3:
            raise SplatPlyError(f"{len(rest)} f_rest properties is not a multiple of 3")
        k = len(rest) // 3
        if k not in (3, 8, 15):
            raise SplatPlyError(f"{len(rest)} f_rest properties: expected 9, 24 or 45 (SH degree 1 to 3)")
        shN = col(*rest).reshape(-1, 3, k).transpose(0, 2, 1).copy()  # channel-major -> [N, K, 3]
    if frame == "ply":
        means, quats = ply_to_head(means, quats)
        shN = sh_ply_to_head(shN)
    return SplatArrays(
        means=np.ascontiguousarray(means, dtype=np.float32),
        quats=np.ascontiguousarray(quats, dtype=np.float32),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        opacity_logits=np.asarray(v["opacity"], dtype=np.float32).copy(),
        sh0=col("f_dc_0", "f_dc_1", "f_dc_2"),
        shN=shN,
    )


def _ply_data(splats: SplatArrays, frame: str) -> PlyData:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    s = splats.astype(np.float32)
    means, quats = (s.means, s.quats) if frame == "head" else head_to_ply(s.means, s.quats)
    shN = s.shN if frame == "head" else sh_head_to_ply(s.shN)
    n = len(s)
    rest = np.zeros((n, 0), np.float32) if shN is None else shN.transpose(0, 2, 1).reshape(n, -1)
    columns = [means, np.zeros((n, 3), np.float32), s.sh0, rest, s.opacity_logits[:, None], s.log_scales, quats]
    flat = np.concatenate(columns, axis=1).astype(np.float32)
    names = property_names(rest.shape[1])
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = flat[:, i]
    return PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<")
