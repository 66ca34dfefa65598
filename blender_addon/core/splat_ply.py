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


def read_ply(source: str | os.PathLike[str] | bytes, frame: str = "ply", *, copy: bool = True) -> SplatArrays:
    """Read a 3DGS PLY (ours or another tool's) into head-frame arrays.

    ``frame="head"`` keeps the file's axes (no conversion). ``copy=False`` returns strided
    views into one float32 table of the whole vertex element instead of contiguous copies:
    the add-on's importer copies each field once into Blender anyway, so it skips this pass.
    Views of a file's table are views of its memory map: use them before the file changes.
    """
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    try:
        if isinstance(source, (bytes, bytearray)):
            data = PlyData.read(io.BytesIO(source))
        else:
            data = PlyData.read(str(source))  # binary files are memory-mapped, not parsed row by row
    except Exception as exc:  # plyfile raises several types for a malformed file
        raise SplatPlyError(f"not a readable PLY file: {exc}") from exc
    if "vertex" not in data:
        raise SplatPlyError("PLY file has no 'vertex' element")
    table, column = _float_table(data["vertex"].data)
    need = (
        ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )
    missing = [n for n in need if n not in column]
    if missing:
        raise SplatPlyError(f"PLY is not a Gaussian splat file; missing properties: {', '.join(missing)}")

    def col(*keys: str) -> np.ndarray:
        """Columns of ``table`` [N, len(keys)]: a view when they are adjacent, else a gather."""
        idx = [column[k] for k in keys]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return table[:, idx[0] : idx[0] + len(idx)]
        return table[:, idx]

    rest = sorted((n for n in column if n.startswith("f_rest_")), key=lambda s: int(s[7:]))
    shN = None
    if rest:
        if len(rest) % 3:
            raise SplatPlyError(f"{len(rest)} f_rest properties is not a multiple of 3")
        k = len(rest) // 3
        if k not in (3, 8, 15):
            raise SplatPlyError(f"{len(rest)} f_rest properties: expected 9, 24 or 45 (SH degree 1 to 3)")
        shN = col(*rest).reshape(-1, 3, k).transpose(0, 2, 1)  # channel-major -> [N, K, 3] (a view)
    means, quats = col("x", "y", "z"), col("rot_0", "rot_1", "rot_2", "rot_3")
    if frame == "ply":
        means, quats = ply_to_head(means, quats)
        shN = sh_ply_to_head(shN)
    log_scales, sh0 = col("scale_0", "scale_1", "scale_2"), col("f_dc_0", "f_dc_1", "f_dc_2")
    opacity_logits = table[:, column["opacity"]]
    if copy:

        def own(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=np.float32)

        means, quats, log_scales, opacity_logits, sh0 = map(own, (means, quats, log_scales, opacity_logits, sh0))
        shN = None if shN is None else own(shN)
    return SplatArrays(means, quats, log_scales, opacity_logits, sh0, shN)


def _float_table(v: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """The vertex element as one float32 table [N, P] and each property's column.

    A file of little-endian float32 properties only (what every 3DGS tool writes) is viewed
    in place; anything else (doubles, big-endian, lists) is converted column by column."""
    names = list(v.dtype.names or ())
    column = {name: i for i, name in enumerate(names)}
    f4 = np.dtype("<f4")
    if names and v.dtype.itemsize == 4 * len(names) and all(v.dtype[n] == f4 for n in names):
        return np.ascontiguousarray(v).view(f4).reshape(len(v), len(names)), column
    table = np.empty((len(v), len(names)), np.float32)
    for i, name in enumerate(names):
        try:
            table[:, i] = v[name]
        except (TypeError, ValueError):  # a list property: not part of a splat, never read
            table[:, i] = 0.0
    return table, column


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
