"""The turntable every pipeline returns: a model rendered from an orbit around the head.

One function for all pipelines; it knows no preset, only plain numbers. The orbit is the
head frame's (``backend.gaussians.cameras.orbit_cameras``: +Z up, the first frame in front of
the face), frames come back as HxWx3 uint8 and each is reported as ``("turntable", i, n)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..gaussians.cameras import orbit_cameras
from ..gaussians.loop import render_model

TURNTABLE_RADIUS_M = 0.75
TURNTABLE_FOV_DEG = 30.0


def render_turntable(
    model,
    n_frames: int,
    resolution: int,
    *,
    elevation_deg: float = 5.0,
    radius: float = TURNTABLE_RADIUS_M,
    fov_deg: float = TURNTABLE_FOV_DEG,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    device: str | torch.device | None = None,
    reporter=None,
) -> list[np.ndarray]:
    """``n_frames`` square renders of ``model`` (a GaussianModel or BoundGaussianModel) at
    ``resolution`` px, evenly spaced on a circle at ``elevation_deg``, ``radius`` metres from
    the origin. ``device`` defaults to the model's."""
    if n_frames <= 0:
        return []  # the caller renders its turntable elsewhere (backend.eval's orbit)
    device = model.means.device if device is None else torch.device(device)
    cams = orbit_cameras(
        n_frames, radius=radius, elevation_deg=elevation_deg, fov_deg=fov_deg, width=resolution, height=resolution
    ).to(device)
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    frames = []
    with torch.no_grad():
        for i in range(len(cams)):
            rgb = render_model(model, cams[i], background=bg).rgb[0]
            frames.append((rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
            if reporter is not None:
                reporter.progress("turntable", i + 1, len(cams), "")
    return frames
