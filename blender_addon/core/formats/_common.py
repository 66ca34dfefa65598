"""Helpers the format codecs share: axis changes, atomic writes, quaternion order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..frames import bake_splats
from ..splat_arrays import SplatArrays

# Head frame (metres, +Z up, face toward -Y, +X the viewer's right) -> RUB: x right, y up,
# z back toward a viewer in front (three.js / OpenGL, SPZ's storage frame). glTF's frame
# (+Y up, the asset's front faces +Z, its right hand at -X) has the same axes.
HEAD_TO_RUB = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
HEAD_TO_GLTF = HEAD_TO_RUB


def turn(splats: SplatArrays, rot: np.ndarray) -> SplatArrays:
    """Splats under the rotation ``rot`` [3, 3]: positions, orientations and SH bands."""
    m = np.eye(4)
    m[:3, :3] = rot
    return bake_splats(m, splats.astype(np.float32))


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(q)[:, [1, 2, 3, 0]])


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(q)[:, [3, 0, 1, 2]])


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_source(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    return Path(source).read_bytes()
