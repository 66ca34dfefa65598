"""What a person looks at: the orbit as a labelled grid, and a turntable video.

- ``contact_sheet.png``: every view in orbit order (the ring, then the pitched views), each
  tile labelled with its yaw (and pitch), the dlib identity distance to the photo (``id -``
  where dlib found no face) and the MediaPipe landmarks found (``lm 478`` or ``lm -``);
  a face found at |yaw| >= 120 deg (a ghost) gets a red frame.
- ``turntable.mp4``: the ring views as H.264 through imageio-ffmpeg, whose wheel ships the
  ffmpeg binary (no system ffmpeg needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .faces import ViewFaces
from .ghosts import GHOST_MIN_YAW
from .orbit import Orbit

TILE_PX = 192
COLUMNS = 8
LABEL_PX = 28
TURNTABLE_FPS = 8


def tile_label(yaw: float, pitch: float, dist: float | None, view: ViewFaces) -> tuple[str, str]:
    angle = f"yaw {yaw:+.0f}" + (f" pitch {pitch:+.0f}" if pitch else "")
    ident = "id -" if dist is None else f"id {dist:.2f}"
    marks = "lm -" if view.landmarks is None else f"lm {len(view.landmarks)}"
    return angle, f"{ident}  {marks}"


def contact_sheet(orbit: Orbit, views: list[ViewFaces], distances: list[float | None]) -> np.ndarray:
    """[rows * (TILE_PX + LABEL_PX), COLUMNS * TILE_PX, 3] uint8."""
    n = len(orbit)
    rows = -(-n // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * TILE_PX, rows * (TILE_PX + LABEL_PX)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % COLUMNS) * TILE_PX, (i // COLUMNS) * (TILE_PX + LABEL_PX)
        tile = Image.fromarray(orbit.images[i]).resize((TILE_PX, TILE_PX), Image.Resampling.LANCZOS)
        sheet.paste(tile, (x, y))
        line1, line2 = tile_label(float(orbit.yaw[i]), float(orbit.pitch[i]), distances[i], views[i])
        draw.text((x + 4, y + TILE_PX + 1), line1, fill=(0, 0, 0))
        draw.text((x + 4, y + TILE_PX + 14), line2, fill=(0, 0, 0))
        if abs(orbit.yaw[i]) >= GHOST_MIN_YAW - 1e-6 and views[i].found:
            draw.rectangle((x, y, x + TILE_PX - 1, y + TILE_PX - 1), outline=(220, 0, 0), width=3)
    return np.asarray(sheet)


def write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_turntable(path: Path, frames: np.ndarray, fps: int = TURNTABLE_FPS) -> None:
    """frames [F, H, W, 3] uint8 -> H.264 mp4 (yuv420p, so every player shows it)."""
    import imageio_ffmpeg

    h, w = frames.shape[1:3]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2, quality=8
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    os.replace(tmp, path)
