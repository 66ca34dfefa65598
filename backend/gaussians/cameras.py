"""Cameras for training and preview: intrinsics, look-at, orbits, random view sampling.

Conventions (the same as gsplat's ``rasterization``):

- World = the HEAD FRAME: metres, +Z up, the face looks toward -Y, origin at the head centre.
- ``viewmats`` are world-to-camera [C, 4, 4] in the OpenCV convention: camera x right,
  y down, z forward (the camera looks along its +z).
- ``Ks`` are pinhole intrinsics [C, 3, 3]; pixel (i, j) has its centre at (i + 0.5, j + 0.5),
  so the principal point of a centred camera is (width / 2, height / 2).

Spherical placement around a target (used by orbits and the samplers):

    azimuth 0    -> the FRONT camera, at -Y, looking toward +Y at the face
    azimuth 90   -> camera at +X   (azimuth grows counter-clockwise seen from above, +Z)
    elevation >0 -> camera above the target

    eye = target + radius * (sin(az) cos(el), -cos(az) cos(el), sin(el))

Usage::

    cams = orbit_cameras(21, radius=0.6, elevation_deg=0.0, fov_deg=33.8, width=576, height=576)
    sampler = MultiViewSampler((0.5, 0.7), (-10, 30), (30, 45), 256, 256, seed=0)
    cams = sampler.sample(step)          # 4 views, 90 deg apart (METHOD A.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Cameras",
    "intrinsics_from_fov",
    "photo_crop_camera",
    "fov_y_deg",
    "look_at",
    "spherical_cameras",
    "orbit_cameras",
    "RandomViewSampler",
    "MultiViewSampler",
]


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    ``azimuth_deg``, ``elevation_deg`` and ``radius`` ([C] each) are filled in by the
    spherical constructors (orbits, samplers) for guidance models that condition on them
    (SV3D, MVDream); they are ``None`` for cameras built from matrices alone.
    """

    viewmats: Tensor  # [C, 4, 4] float32, world -> camera (OpenCV)
    Ks: Tensor  # [C, 3, 3] float32
    width: int
    height: int
    azimuth_deg: Tensor | None = None  # [C]
    elevation_deg: Tensor | None = None  # [C]
    radius: Tensor | None = None  # [C]

    def __post_init__(self) -> None:
        if self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"Ks must be [C, 3, 3] with C={self.viewmats.shape[0]}, got {tuple(self.Ks.shape)}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        """Select cameras; an int keeps the batch dimension (C = 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return replace(
            self,
            viewmats=self.viewmats[index],
            Ks=self.Ks[index],
            azimuth_deg=pick(self.azimuth_deg),
            elevation_deg=pick(self.elevation_deg),
            radius=pick(self.radius),
        )

    def to(self, device: torch.device | str) -> Cameras:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            viewmats=self.viewmats.to(device),
            Ks=self.Ks.to(device),
            azimuth_deg=move(self.azimuth_deg),
            elevation_deg=move(self.elevation_deg),
            radius=move(self.radius),
        )

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def camera_centers(self) -> Tensor:
        """Camera positions in the world, [C, 3]: c = -R^T t."""
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -torch.einsum("cji,cj->ci", R, t)

    def camera_to_world(self) -> Tensor:
        """Inverse of ``viewmats``, [C, 4, 4] (columns: camera x, y, z axes and centre)."""
        return torch.linalg.inv(self.viewmats)

    @staticmethod
    def cat(cams: Sequence[Cameras]) -> Cameras:
        """Concatenate batches that share one image size."""
        if len({(c.width, c.height) for c in cams}) != 1:
            raise ValueError("Cameras.cat needs one image size for all batches")

        def join(name: str) -> Tensor | None:
            parts = [getattr(c, name) for c in cams]
            return None if any(p is None for p in parts) else torch.cat(parts)

        return Cameras(
            viewmats=torch.cat([c.viewmats for c in cams]),
            Ks=torch.cat([c.Ks for c in cams]),
            width=cams[0].width,
            height=cams[0].height,
            azimuth_deg=join("azimuth_deg"),
            elevation_deg=join("elevation_deg"),
            radius=join("radius"),
        )


def photo_crop_camera(
    world_to_camera: np.ndarray, fx: float, fy: float, cx: float, cy: float, x0: float, y0: float, side: float, res: int
) -> Cameras:
    """A photo's pinhole camera (intrinsics in photo pixels) restricted to the square crop whose
    top-left corner is (x0, y0) and side ``side`` photo pixels, rendered at ``res`` x ``res``."""
    s = res / side
    K = torch.tensor([[fx * s, 0, (cx - x0) * s], [0, fy * s, (cy - y0) * s], [0, 0, 1]], dtype=torch.float32)
    V = torch.as_tensor(world_to_camera, dtype=torch.float32)
    return Cameras(V[None], K[None], res, res)


def intrinsics_from_fov(fov_y_deg: float | Tensor, width: int, height: int) -> Tensor:
    """Pinhole K [3, 3] (or [C, 3, 3] for a tensor of FoVs) from the vertical field of view.

    Square pixels (fx = fy) and the principal point at the image centre.
    """
    fov = torch.as_tensor(fov_y_deg, dtype=torch.float64)
    focal = (height / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)
    K = torch.zeros(fov.shape + (3, 3), dtype=torch.float64)
    K[..., 0, 0] = focal
    K[..., 1, 1] = focal
    K[..., 0, 2] = width / 2.0
    K[..., 1, 2] = height / 2.0
    K[..., 2, 2] = 1.0
    return K.float()


def look_at(
    eye: Sequence[float] | Tensor,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),
) -> Tensor:
    """World-to-camera matrix (OpenCV: x right, y down, z forward) looking from eye at target.

    ``eye``/``target`` may be [3] or batched [C, 3]; the result is [4, 4] or [C, 4, 4].
    ``up`` becomes "up in the image" (-y). When the view direction is parallel to ``up``
    (straight down or up), the image's up is taken as the limit of an orbit passing over the
    pole from the front: +Y when looking down, -Y when looking up (for up = +Z).
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    eye, target = torch.broadcast_tensors(eye, target)
    z = target - eye  # forward
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    up = torch.broadcast_to(up / up.norm(), z.shape)
    x = torch.linalg.cross(z, up)
    x_norm = x.norm(dim=-1, keepdim=True)
    degenerate = (x_norm < 1e-9).squeeze(-1)
    if degenerate.any():
        # a fixed vector perpendicular to `up`, pointing "back" for a camera looking down
        alt = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        if torch.abs(alt @ up.reshape(-1, 3)[0]) > 0.9:
            alt = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        sign = -torch.sign((z * up).sum(-1, keepdim=True))
        x_alt = torch.linalg.cross(z, sign * alt)
        x = torch.where(degenerate[..., None], x_alt, x)
        x_norm = x.norm(dim=-1, keepdim=True)
    x = x / x_norm
    y = torch.linalg.cross(z, x)  # down
    R = torch.stack([x, y, z], dim=-2)  # rows = camera axes in world coordinates
    t = -torch.einsum("...ij,...j->...i", R, eye)
    M = torch.zeros(eye.shape[:-1] + (4, 4), dtype=torch.float64)
    M[..., :3, :3] = R
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M.float()


def spherical_cameras(
    azimuth_deg: Tensor | Sequence[float],
    elevation_deg: Tensor | Sequence[float],
    radius: Tensor | Sequence[float],
    fov_y_deg: Tensor | Sequence[float],
    width: int,
    height: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """Cameras on spheres around ``target``, one per entry of the [C] inputs (broadcast).

    See the module docstring for the azimuth / elevation convention.
    """
    az, el, r, fov = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (azimuth_deg, elevation_deg, radius, fov_y_deg))
    )
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    target_t = torch.as_tensor(target, dtype=torch.float64)
    direction = torch.stack([torch.sin(a) * torch.cos(e), -torch.cos(a) * torch.cos(e), torch.sin(e)], -1)
    eye = target_t + r[:, None] * direction  # [C, 3]
    return Cameras(
        viewmats=look_at(eye, target_t.expand_as(eye)),
        Ks=intrinsics_from_fov(fov, width, height),
        width=int(width),
        height=int(height),
        azimuth_deg=az.float(),
        elevation_deg=el.float(),
        radius=r.float(),
    )


def orbit_cameras(
    n: int,
    radius: float,
    elevation_deg: float,
    fov_deg: float,
    width: int,
    height: int,
    start_azimuth_deg: float = 0.0,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """``n`` cameras evenly spaced on a horizontal circle, counter-clockwise from above.

    Azimuths are ``start + 360 * i / n`` for i in 0..n-1: the loop closes without repeating
    the start (SV3D's 21-frame orbit is ``orbit_cameras(21, ...)``; METHOD B.1, A.6 uses 120).
    """
    if n < 1:
        raise ValueError(f"an orbit needs at least one camera, got n={n}")
    azimuths = start_azimuth_deg + 360.0 * torch.arange(n, dtype=torch.float64) / n
    return spherical_cameras(azimuths, elevation_deg, radius, fov_deg, width, height, target)


def _uniform(rng: np.random.Generator, bounds: Sequence[float], size: int) -> np.ndarray:
    lo, hi = float(bounds[0]), float(bounds[1])
    if hi < lo:
        raise ValueError(f"range must be (low, high) with low <= high, got {tuple(bounds)}")
    return rng.uniform(lo, hi, size=size)


class RandomViewSampler:
    """Random cameras on spheres around the head, uniform in each range.

    Elevation is drawn uniformly in degrees (threestudio's default), not uniformly on the
    sphere. The draw for a given (seed, step) never depends on earlier calls, so a resumed
    run sees the same cameras.

    Args:
        radius_range: (min, max) camera distance to the target, metres.
        elevation_range_deg: (min, max) elevation, degrees; positive = above.
        azimuth_range_deg: (min, max) azimuth, degrees; 0 = front, 90 = from +X.
        fov_range_deg: (min, max) vertical field of view, degrees.
        width, height: image size in pixels.
        seed: base seed.
        target: the point every camera looks at (head frame).
    """

    def __init__(
        self,
        radius_range: Sequence[float],
        elevation_range_deg: Sequence[float],
        azimuth_range_deg: Sequence[float],
        fov_range_deg: Sequence[float],
        width: int,
        height: int,
        seed: int = 0,
        target: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.radius_range = tuple(radius_range)
        self.elevation_range_deg = tuple(elevation_range_deg)
        self.azimuth_range_deg = tuple(azimuth_range_deg)
        self.fov_range_deg = tuple(fov_range_deg)
        self.width, self.height = int(width), int(height)
        self.seed = int(seed)
        self.target = tuple(target)

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step)])

    def sample(self, step: int, batch: int = 1) -> Cameras:
        """``batch`` independent random cameras for this step."""
        rng = self._rng(step)
        return spherical_cameras(
            azimuth_deg=_uniform(rng, self.azimuth_range_deg, batch),
            elevation_deg=_uniform(rng, self.elevation_range_deg, batch),
            radius=_uniform(rng, self.radius_range, batch),
            fov_y_deg=_uniform(rng, self.fov_range_deg, batch),
            width=self.width,
            height=self.height,
            target=self.target,
        )


class MultiViewSampler(RandomViewSampler):
    """Groups of ``n_views`` cameras 360/n_views degrees apart in azimuth (METHOD A.5).

    Each group starts at a random azimuth in ``azimuth_range_deg`` (default: the whole
    circle) and shares one random radius, elevation and FoV, as MVDream renders its 4 views.
    ``sample(step, batch)`` returns ``batch * n_views`` cameras, group by group:
    ``cams[g * n_views : (g + 1) * n_views]`` is group g, in increasing azimuth.
    """

    def __init__(
        self,
        radius_range: Sequence[float],
        elevation_range_deg: Sequence[float],
        fov_range_deg: Sequence[float],
        width: int,
        height: int,
        seed: int = 0,
        n_views: int = 4,
        azimuth_range_deg: Sequence[float] = (0.0, 360.0),
        target: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        super().__init__(
            radius_range,
            elevation_range_deg,
            azimuth_range_deg,
            fov_range_deg,
            width,
            height,
            seed,
            target,
        )
        self.n_views = int(n_views)

    def sample(self, step: int, batch: int = 1) -> Cameras:
        rng = self._rng(step)
        start = _uniform(rng, self.azimuth_range_deg, batch)
        elev = _uniform(rng, self.elevation_range_deg, batch)
        radius = _uniform(rng, self.radius_range, batch)
        fov = _uniform(rng, self.fov_range_deg, batch)
        offsets = 360.0 * np.arange(self.n_views) / self.n_views

        def per_view(v: np.ndarray) -> np.ndarray:
            return np.repeat(v, self.n_views)

        return spherical_cameras(
            azimuth_deg=(start[:, None] + offsets[None, :]).reshape(-1),
            elevation_deg=per_view(elev),
            radius=per_view(radius),
            fov_y_deg=per_view(fov),
            width=self.width,
            height=self.height,
            target=self.target,
        )


def fov_y_deg(K: Tensor, height: int) -> Tensor:
    """Vertical field of view (degrees) of intrinsics [..., 3, 3]; inverse of intrinsics_from_fov."""
    return torch.rad2deg(2.0 * torch.atan((height / 2.0) / K[..., 1, 1]))
