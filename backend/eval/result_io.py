"""Find and read the head to evaluate, and the photo it came from.

RESULT may be:

- a ``head.ply`` (or any 3DGS PLY), read in the PLY frame (RDF) unless ``ply_frame="head"``;
- a ``result.npz`` (a server job's arrays, head frame);
- a folder holding one of them: ``head.ply`` (``generate --out``), else ``result.npz``, else
  ``result.ply`` (a server job folder). A job folder's ``input.*`` is its photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blender_addon.core.splat_arrays import SplatArrayError, SplatArrays
from blender_addon.core.splat_ply import SplatPlyError, read_ply

from ..errors import PortraitSplatError

RESULT_FILES = ("head.ply", "result.npz", "result.ply")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class ResultError(PortraitSplatError):
    """RESULT is not a head: no such file, no head in the folder, or not a splat file."""

    code = "no_result"
    hint = "Pass a head.ply, a result.npz, or a folder holding one (generate --out, or a server job folder)."


def find_result(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in RESULT_FILES:
            if (path / name).is_file():
                return path / name
        raise ResultError(f"{path} holds no head: none of {', '.join(RESULT_FILES)}.")
    if not path.is_file():
        raise ResultError(f"{path} does not exist.")
    return path


def read_result(path: str | Path, ply_frame: str = "ply") -> SplatArrays:
    """The head (head frame) in RESULT; see the module docstring."""
    file = find_result(path)
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                splats = SplatArrays.from_dict({k: data[k] for k in data.files})
        else:
            splats = read_ply(file, frame=ply_frame)
        splats.check_finite()
    except (SplatPlyError, SplatArrayError, ValueError, OSError) as exc:
        raise ResultError(f"{file} is not a Gaussian head: {exc}") from exc
    if len(splats) == 0:
        raise ResultError(f"{file} holds no splats.")
    return splats


def job_photo(path: str | Path) -> Path | None:
    """A server job folder's photo (``input.<ext>``) beside RESULT, if there is one."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for cand in sorted(folder.glob("input.*")):
        if cand.suffix.lower() in PHOTO_SUFFIXES:
            return cand
    return None
