"""The evaluation orbit: where the cameras stand and what they see.

Views (head frame, ``backend.gaussians.cameras`` conventions):

- a ring of ``n_yaws`` cameras at pitch 0, yaw ``360 * i / n_yaws`` (the first in front of
  the face), wrapped to (-180, 180];
- plus :data:`PITCHED_VIEWS`: the front and the back seen from 20 deg above and below
  (the front pair tests landmarks and identity off the horizon, the back pair looks for
  ghost faces from above and below).

**Yaw** is the camera's azimuth around the head: 0 in front of the face, +90 on the head's
+X side (the subject's left), +-180 behind. **Pitch** is the camera's elevation, > 0 above.
Every camera looks at the head centre from :data:`RADIUS_M` with a :data:`FOV_DEG` lens,
the framing of the pipelines' turntable, so the face spans about 40% of the image height.

Renders are forward-only on a white background; each view keeps its RGB (uint8) and its
alpha, the head's own pixels. ``renderer="fast"`` (the default) is :mod:`backend.eval.raster`,
the CPU tile rasteriser of :mod:`backend.gaussians.raster_cpu` in float64; ``"reference"`` is
the torch reference of ``backend.gaussians.render`` under ``torch.no_grad`` (about 10 s per
512 px view on two cores, so only for small checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from blender_addon.core.splat_arrays import SplatArrays

from ..gaussians.cameras import Cameras, spherical_cameras
from ..gaussians.loop import render_model
from ..gaussians.model import GaussianModel
from ..gaussians.render import use_backend
from .raster import rasterise

RADIUS_M = 0.75  # the pipelines' turntable distance
FOV_DEG = 30.0  # the pipelines' turntable lens
PITCHED_VIEWS: tuple[tuple[float, float], ...] = ((0.0, 20.0), (0.0, -20.0), (180.0, 20.0), (180.0, -20.0))
BACKGROUND = (1.0, 1.0, 1.0)
RENDERERS = ("fast", "reference")


@dataclass
class Orbit:
    """V renders of one head.

    images [V, H, W, 3] uint8      white background
    alpha  [V, H, W] float32       the head's coverage of each pixel, 0..1
    yaw    [V] float64             degrees, (-180, 180]; see the module docstring
    pitch  [V] float64             degrees
    cameras                        the V cameras (``cameras[i]`` renders ``images[i]``)
    """

    images: np.ndarray
    alpha: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    cameras: Cameras

    def __len__(self) -> int:
        return len(self.yaw)

    def ring(self) -> np.ndarray:
        """Indices of the pitch-0 views, in ring order."""
        return np.flatnonzero(self.pitch == 0.0)

    def within(self, max_abs_yaw: float) -> np.ndarray:
        """Indices of the views with |yaw| <= max_abs_yaw (any pitch)."""
        return np.flatnonzero(np.abs(self.yaw) <= max_abs_yaw + 1e-6)

    def beyond(self, min_abs_yaw: float) -> np.ndarray:
        """Indices of the views with |yaw| >= min_abs_yaw (any pitch)."""
        return np.flatnonzero(np.abs(self.yaw) >= min_abs_yaw - 1e-6)


def wrap_degrees(a: np.ndarray) -> np.ndarray:
    """Angles to (-180, 180]."""
    a = np.mod(np.asarray(a, np.float64) + 180.0, 360.0) - 180.0
    return np.where(a == -180.0, 180.0, a)


def orbit_angles(n_yaws: int, pitched: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(yaw [V], pitch [V]) in degrees: the ring, then the pitched views."""
    if n_yaws < 1:
        raise ValueError(f"the orbit needs at least one yaw, got {n_yaws}")
    yaw = 360.0 * np.arange(n_yaws) / n_yaws
    pitch = np.zeros(n_yaws)
    if pitched:
        yaw = np.concatenate([yaw, [y for y, _ in PITCHED_VIEWS]])
        pitch = np.concatenate([pitch, [p for _, p in PITCHED_VIEWS]])
    return wrap_degrees(yaw), pitch


def orbit_cameras_for(yaw: np.ndarray, pitch: np.ndarray, size: int) -> Cameras:
    return spherical_cameras(yaw, pitch, RADIUS_M, FOV_DEG, size, size)


def as_model(splats: SplatArrays) -> GaussianModel:
    return GaussianModel.from_splats(splats, "photo", total_steps=1)


def render_views(model: GaussianModel, cams: Cameras, renderer: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """Forward-only renders: (images [V, H, W, 3] uint8, alpha [V, H, W] float32)."""
    if renderer == "fast":
        rgb, alpha = rasterise(model, cams, BACKGROUND)
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), np.clip(alpha, 0, 1)
    if renderer != "reference":
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    bg = torch.tensor(BACKGROUND, dtype=torch.float32)
    images, alphas = [], []
    with torch.no_grad(), use_backend("torch"):  # the torch reference, not the CPU default
        for i in range(len(cams)):
            out = render_model(model, cams[i], background=bg)
            images.append((out.rgb[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
            alphas.append(out.alpha[0, ..., 0].clamp(0, 1).numpy().astype(np.float32))
    return np.stack(images), np.stack(alphas)


def render_orbit(
    splats: SplatArrays, n_yaws: int = 24, size: int = 512, pitched: bool = True, renderer: str = "fast"
) -> Orbit:
    """Render ``splats`` (head frame) from the evaluation orbit at ``size`` x ``size`` px."""
    yaw, pitch = orbit_angles(n_yaws, pitched)
    cams = orbit_cameras_for(yaw, pitch, size)
    images, alpha = render_views(as_model(splats), cams, renderer)
    return Orbit(images=images, alpha=alpha, yaw=yaw, pitch=pitch, cameras=cams)
