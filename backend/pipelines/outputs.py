"""Write a pipeline's result to a folder: head.ply and turntable/*.png (atomic writes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from blender_addon.core.splat_ply import write_ply

from . import RunResult


def write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_turntable(folder: str | os.PathLike, frames: list[np.ndarray]) -> list[Path]:
    """``folder/frame_000.png ...``, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(frames):
        p = folder / f"frame_{i:03d}.png"
        write_png(p, img)
        paths.append(p)
    return paths


def write_outputs(out_dir: str | os.PathLike, result: RunResult, ply_frame: str = "ply") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ply = out / "head.ply"
    write_ply(ply, result.splats, frame=ply_frame)
    return {"ply": ply, "turntable": write_turntable(out / "turntable", result.turntable)}
