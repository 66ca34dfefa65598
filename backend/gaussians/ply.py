"""PLY in and out for the backend: INRIA 3DGS layout via plyfile.

The reading, writing and axis conversion live in ``blender_addon/core`` (``splat_ply`` and
``frames``) so that the Blender add-on uses the very same code; this module adds the
backend's conveniences around :class:`~backend.gaussians.model.GaussianModel`.
"""

from __future__ import annotations

import os

from blender_addon.core.splat_arrays import SplatArrays
from blender_addon.core.splat_ply import SplatPlyError, property_names, read_ply, to_ply_bytes, write_ply

from .model import GaussianModel

__all__ = ["SplatPlyError", "property_names", "read_ply", "to_ply_bytes", "write_ply", "save_model"]


def save_model(model: GaussianModel | SplatArrays, path: str | os.PathLike, frame: str = "ply") -> None:
    """Write a model or arrays as an INRIA PLY (``frame="ply"``: RDF/OpenCV, what viewers expect)."""
    splats = model.to_splats() if isinstance(model, GaussianModel) else model
    write_ply(path, splats, frame=frame)
