"""One evaluation: a head and its photo -> figures (and, with a folder, the files).

    photo ──> face, fit, 3D landmarks, front camera (reference)      ┐
    head ──> orbit renders ──> detectors per view (faces) ──> identity, PCK, ghosts
                           └─> saturation                          ├─> metrics.json
    head ──> front render (the photo's camera) ──> PSNR / SSIM       ┘   contact_sheet.png
                                                                          turntable.mp4, front.png

Every figure is defined in docs/metrics.md beside the paper table it mirrors.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blender_addon.core.splat_arrays import SplatArrays

from ..image_io import load_image
from .colour import saturation_metrics
from .faces import detect_views, photo_descriptor
from .fidelity import fidelity_metrics
from .ghosts import ghost_metrics
from .identity import identity_metrics, view_distances
from .landmarks_pck import pck_metrics
from .optional import optional_metrics
from .orbit import as_model, render_orbit, render_views
from .reference import analyse_photo
from .result_io import read_result
from .sheet import contact_sheet, write_png, write_turntable

DEFAULT_VIEWS = 24  # yaws on the ring, every 15 deg; 4 pitched views are added
DEFAULT_SIZE = 512
FRONT_SIZE = 256  # the front-fidelity crop (at most the orbit size)


def evaluate_splats(
    splats: SplatArrays,
    photo: np.ndarray,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    views: int = DEFAULT_VIEWS,
    size: int = DEFAULT_SIZE,
    renderer: str = "fast",
    log: Callable[[str], None] | None = None,
    frames_dir: str | os.PathLike[str] | None = None,
    style: str | None = None,
) -> dict[str, Any]:
    """Evaluate a head (head frame) against its photo ([H, W, 3] uint8 RGB).

    ``frames_dir``: also write the ring's renders there as ``frame_000.png ...`` (the
    full-size turntable that ``generate`` and the server's jobs keep). ``style``: the style
    prompt, for CLIP-style when CLIP is installed.

    ``views`` yaws on the ring (plus 4 pitched views), rendered at ``size`` px. Returns the
    figures, JSON-ready (finite floats, ints, strings and lists); with ``out_dir`` also
    writes metrics.json, contact_sheet.png, turntable.mp4 and front.png there.

    Raises NoFaceError / FaceTooSmallError when the photo has no usable face.
    """
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    ref = analyse_photo(photo, front_size=min(FRONT_SIZE, size))
    photo_desc = photo_descriptor(photo, ref.face.bbox)
    timings["photo_s"] = time.perf_counter() - t

    t = time.perf_counter()
    orbit = render_orbit(splats, views, size, renderer=renderer)
    front = render_views(as_model(splats), ref.front_camera, renderer)[0][0]
    timings["render_s"] = time.perf_counter() - t
    say(f"rendered {len(orbit)} views at {size} px and the front view in {timings['render_s']:.1f} s")

    t = time.perf_counter()
    faces = detect_views(orbit)
    distances = view_distances(faces, photo_desc)
    timings["detect_s"] = time.perf_counter() - t

    t = time.perf_counter()
    figures: dict[str, Any] = {"n_splats": len(splats), "views": len(orbit), "size": size}
    figures |= identity_metrics(orbit, distances)
    figures |= pck_metrics(orbit, faces, ref.landmarks3d)
    figures |= ghost_metrics(orbit, faces)
    figures |= saturation_metrics(orbit)
    figures |= fidelity_metrics(front, ref)
    extra, skipped = optional_metrics(orbit, photo, style)
    figures |= extra
    figures["skipped"] = skipped
    for line in skipped:
        say(line)
    timings["metrics_s"] = time.perf_counter() - t

    if out_dir is not None:
        t = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_png(out / "contact_sheet.png", contact_sheet(orbit, faces, distances))
        write_png(out / "front.png", np.concatenate([front, ref.front_target, _mask_rgb(ref.face_mask)], axis=1))
        write_turntable(out / "turntable.mp4", orbit.images[orbit.ring()])
        timings["write_s"] = time.perf_counter() - t
    if frames_dir is not None:
        frames = Path(frames_dir)
        frames.mkdir(parents=True, exist_ok=True)
        for old_frame in frames.glob("frame_*.png"):  # the pipeline's smaller preview turntable
            old_frame.unlink()
        for i, image in enumerate(orbit.images[orbit.ring()]):
            write_png(frames / f"frame_{i:03d}.png", image)
    figures |= {k: round(v, 3) for k, v in timings.items()}
    figures["eval_s"] = round(time.perf_counter() - t0, 3)
    figures = json_ready(figures)
    if out_dir is not None:
        _write_json(Path(out_dir) / "metrics.json", figures)
    return figures


def evaluate(
    result_path: str | os.PathLike[str],
    photo: str | os.PathLike[str] | np.ndarray,
    out_dir: str | os.PathLike[str] | None,
    views: int = DEFAULT_VIEWS,
    size: int = DEFAULT_SIZE,
    *,
    ply_frame: str = "ply",
    renderer: str = "fast",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_splats` on a result on disk (see :mod:`backend.eval.result_io`)."""
    splats = read_result(result_path, ply_frame=ply_frame)
    image = photo if isinstance(photo, np.ndarray) else load_image(photo)
    return evaluate_splats(splats, image, out_dir, views=views, size=size, renderer=renderer, log=log)


def json_ready(value: Any) -> Any:
    """numpy scalars to Python; raises on NaN or Inf (a figure must be a number or absent)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError(f"a metric is not finite: {value}")
        return float(value)
    return value


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
