"""The photo's 2D face landmarks lifted onto the fitted head template, in the head frame.

The landmark ControlNet (METHOD A.4) needs the head's 478 MediaPipe landmarks in 3D, so that
they can be projected into every render camera. One photo gives them in 2D; the fitted
template (:func:`backend.prior.fit_head`) gives the surface they lie on:

- each landmark's pixel is back-projected from the photo's camera and the ray is intersected
  with the template mesh (the nearest hit);
- a ray that misses (face-oval points on the silhouette), or hits the template more than
  ``BEHIND_M`` from where MediaPipe's own relative depth puts it (it grazed the chin and hit
  the neck behind), takes that depth: camera depth = z * depth / fx (MediaPipe's z is in
  pixels like x) plus the median offset that puts the hits on it, as in
  :mod:`backend.prior.deform`.

Usage::

    fit = fit_head(face.landmarks2d, (w, h), landmarks3d=face.landmarks3d)
    lm3d = lift_landmarks(fit, face.landmarks2d, face.landmarks3d)   # [478, 3] head frame, metres
"""

from __future__ import annotations

import numpy as np

from .deform import BEHIND_M
from .fit import HeadFit
from .template import HeadMesh, ray_mesh_hits


def lift_landmarks(
    fit: HeadFit, landmarks2d: np.ndarray, landmarks3d: np.ndarray | None = None, mesh: HeadMesh | None = None
) -> np.ndarray:
    """Head-frame positions [N, 3] (float32, metres) of the photo's landmarks [N, 2] (pixels)."""
    uv = np.asarray(landmarks2d, np.float64)[:, :2]
    mesh = mesh or fit.mesh()
    R, t = fit.world_to_camera[:3, :3], fit.world_to_camera[:3, 3]
    rays_cam = np.column_stack([(uv[:, 0] - fit.cx) / fit.fx, (uv[:, 1] - fit.cy) / fit.fy, np.ones(len(uv))])
    origin = -R.T @ t  # camera centre, head frame
    dirs = rays_cam @ R  # R^T d for each row: directions in the head frame, unit camera depth
    hit_t = ray_mesh_hits(np.broadcast_to(origin, dirs.shape), dirs, mesh.vertices, mesh.faces)
    depth = hit_t.copy()  # along a unit-depth direction, the distance IS the camera depth
    hit = np.isfinite(depth)
    base = float(depth[hit].mean()) if hit.any() else float(np.linalg.norm(t))
    z = np.zeros(len(uv)) if landmarks3d is None else np.asarray(landmarks3d, np.float64)[:, 2] * base / fit.fx
    predicted = (float(np.median(depth[hit] - z[hit])) if hit.any() else base - float(z.mean())) + z
    if landmarks3d is not None:
        # a ray that hits the template far from MediaPipe's depth grazed the chin or a cheek and
        # hit the neck or an ear behind it
        hit &= np.abs(np.where(hit, depth, 0.0) - predicted) < BEHIND_M
    depth[~hit] = predicted[~hit]
    return (origin + dirs * depth[:, None]).astype(np.float32)
