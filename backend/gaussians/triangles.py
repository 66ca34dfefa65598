"""Triangle geometry for Gaussians bound to a mesh: per-triangle frames and the math around them.

This module's one job is the per-triangle math that :mod:`backend.gaussians.binding` builds on:
the frame of every triangle (:func:`triangle_frames`), the rotation helpers it needs
(:func:`rotmat_to_quat`, :func:`quat_multiply`), uniform sampling on triangles
(:func:`sample_barycentric`) and a coarser mesh to bind to (:func:`decimate`). It knows
nothing of Gaussians, models or densification.

Triangle frame (``triangle_frames``), for a face (v0, v1, v2) wound counter-clockwise seen
from outside (the template's winding):

    x = (v1 - v0) / |v1 - v0|                          along the first edge (the "base")
    z = (v1 - v0) x (v2 - v0) / |...|                  the outward normal
    y = z x x                                          in the plane, toward v2
    R_tri = [x y z]   (columns; local -> world)        mu_tri = (v0 + v1 + v2) / 3
    s_tri = (base + height) / 2,  base = |v1 - v0|,  height = 2 area / base
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TriangleFrames",
    "triangle_frames",
    "rotmat_to_quat",
    "quat_multiply",
    "decimate",
    "sample_barycentric",
]


@dataclass
class TriangleFrames:
    """Per-triangle frames of a mesh (see the module docstring for the definition)."""

    centroids: Tensor  # [F, 3] mu_tri
    rotations: Tensor  # [F, 3, 3] R_tri, columns = local x, y, z in world coordinates
    scales: Tensor  # [F] s_tri
    quats: Tensor  # [F, 4] wxyz of R_tri


def triangle_frames(vertices: Tensor, faces: Tensor) -> TriangleFrames:
    """Frames of every triangle of (``vertices`` [V, 3], ``faces`` [F, 3]); differentiable.

    Degenerate triangles (zero area) get a finite frame: the normal falls back to any unit
    vector perpendicular to the base, and s_tri to half the base.
    """
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    base = e1.norm(dim=-1)  # [F]
    x = e1 / base.clamp_min(1e-12)[:, None]
    n = torch.linalg.cross(e1, e2)
    area2 = n.norm(dim=-1)  # 2 * area
    z = n / area2.clamp_min(1e-20)[:, None]
    flat = area2 <= 1e-12 * base.square().clamp_min(1e-20)
    if bool(flat.any()):
        ex, ey = x.new_tensor([1.0, 0.0, 0.0]), x.new_tensor([0.0, 1.0, 0.0])
        helper = torch.where(x[:, :1].abs() < 0.9, ex, ey)
        alt = F.normalize(torch.linalg.cross(x, helper), dim=-1)
        z = torch.where(flat[:, None], alt, z)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=-1)  # [F, 3, 3] columns
    height = area2 / base.clamp_min(1e-12)
    s = 0.5 * (base + height)
    return TriangleFrames(centroids=(v0 + v1 + v2) / 3.0, rotations=R, scales=s, quats=rotmat_to_quat(R))


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] wxyz with w >= 0.

    Shepperd's method: for each matrix, build the quaternion from whichever of w, x, y, z
    has the largest magnitude (the well-conditioned branch).
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack(
                [
                    1 + m00 + m11 + m22,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m00 - m11 - m22,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m00 + m11 - m22,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m00 - m11 + m22,
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # [..., 4 branches, 4]; branch k's k-th entry is 4 q_k^2
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)  # [...]
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions [..., 4] (the rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """A coarser mesh with about ``target_faces`` triangles, by vertex clustering.

    Vertices are merged per cell of a cubic grid (each cluster becomes its mean position);
    triangles whose corners fall into fewer than three clusters vanish, as do duplicates.
    The cell size is found by bisection. Winding is kept, so normals still point out. The
    result covers the same surface but may be non-manifold in places, which does not
    matter for binding Gaussians. Returns (vertices [V', 3] float32, faces [F', 3] int32);
    the input comes back unchanged when it already has at most ``target_faces``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if len(f) <= target_faces:
        return v.astype(np.float32), f.astype(np.int32)

    def cluster(cell: float):
        keys = np.floor((v - v.min(0)) / cell).astype(np.int64)
        _, label = np.unique(keys, axis=0, return_inverse=True)
        label = label.reshape(-1)
        nf = label[f]
        keep = (nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])
        nf = nf[keep]
        # drop duplicate triangles (same corner set), keeping the first winding
        _, first = np.unique(np.sort(nf, axis=1), axis=0, return_index=True)
        return label, nf[np.sort(first)]

    edge = float(np.mean(np.linalg.norm(v[f[:, 1]] - v[f[:, 0]], axis=1)))
    lo, hi = edge * 0.5, edge * np.sqrt(len(f) / max(target_faces, 1)) * 4.0
    best = None
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        label, nf = cluster(mid)
        if best is None or abs(len(nf) - target_faces) < abs(len(best[1]) - target_faces):
            best = (label, nf)
        if abs(len(nf) - target_faces) <= 0.02 * target_faces:
            break
        if len(nf) > target_faces:
            lo = mid
        else:
            hi = mid
    label, nf = best
    n_cl = int(label.max()) + 1
    counts = np.bincount(label, minlength=n_cl).astype(np.float64)
    centres = np.stack([np.bincount(label, v[:, i], n_cl) for i in range(3)], axis=1) / counts[:, None]
    used, remap = np.unique(nf, return_inverse=True)
    return centres[used].astype(np.float32), remap.reshape(-1, 3).astype(np.int32)


def sample_barycentric(n_faces: int, per_triangle: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random barycentric coordinates [n_faces * per_triangle, 3] (face-major order)."""
    u = rng.random((n_faces * per_triangle, 2))
    flip = u.sum(axis=1) > 1.0
    u[flip] = 1.0 - u[flip]  # fold the unit square onto the triangle
    return np.column_stack([1.0 - u.sum(axis=1), u])
