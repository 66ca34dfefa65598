"""Triangle-mesh utilities for the template head, and the polygonisation of its implicit surface.

This module's one job is mesh geometry: face and vertex normals, ray-mesh hits, and turning
:func:`backend.prior.sdf.head_sdf` into an even, closed triangle mesh (marching cubes with
outward winding, tangential relaxation, Newton projection back onto the surface).
:mod:`backend.prior.template` assembles the head from these and re-exports the public names.
"""

from __future__ import annotations

import numpy as np

from .sdf import _H0, _NECK_BOTTOM_Z, HeadShapeParams, head_sdf

VOXEL_M = 0.005  # marching-cubes voxel, metres, in the default-size frame


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals [F, 3] of triangles with counter-clockwise (outward) winding."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] (float32)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    out = np.zeros_like(v)
    for k in range(3):
        out += np.stack([np.bincount(faces[:, k], n[:, i], len(v)) for i in range(3)], axis=1)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-20)
    return out.astype(np.float32)


def ray_mesh_hits(origins: np.ndarray, directions: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Distance along each ray [R] to its nearest triangle hit (inf where it misses).

    Möller–Trumbore, vectorised over triangles; meant for a few dozen rays.
    """
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    out = np.full(len(origins), np.inf)
    for i, (o, d) in enumerate(zip(np.asarray(origins, np.float64), np.asarray(directions, np.float64))):
        p = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, p)
        ok = np.abs(det) > 1e-18
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = o - v0
        u = np.einsum("ij,ij->i", s, p) * inv
        q = np.cross(s, e1)
        v = (q @ d) * inv
        t = np.einsum("ij,ij->i", e2, q) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        if hit.any():
            out[i] = t[hit].min()
    return out


# ------------------------------------------------------------------ polygonising head_sdf


def _marching_cubes(params: HeadShapeParams) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    h = VOXEL_M
    lo = np.array([-0.105, -0.145, _NECK_BOTTOM_Z - 2 * h])
    hi = np.array([0.105, 0.125, _H0 / 2 + 0.012])
    axes = [np.arange(lo[i], hi[i] + h, h) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    vol = head_sdf(grid.reshape(-1, 3), params).reshape(grid.shape[:3])
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(h, h, h))
    verts = verts + lo
    faces = faces.astype(np.int32)
    # Make the winding outward (marching_cubes' orientation depends on the sign convention).
    tri = verts[faces]
    vol_signed = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
    if vol_signed < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def _project_to_surface(v: np.ndarray, params: HeadShapeParams, steps: int = 1) -> np.ndarray:
    """Newton steps p -= f(p) grad f / |grad f|^2 onto the zero level of ``head_sdf``."""
    eps = 1e-5
    for _ in range(steps):
        f = head_sdf(v, params)
        g = np.stack([(head_sdf(v + o, params) - f) / eps for o in np.eye(3) * eps], axis=1)
        v = v - (f / np.maximum(np.einsum("ij,ij->i", g, g), 1e-12))[:, None] * g
    return v


def _relax(v: np.ndarray, faces: np.ndarray, params: HeadShapeParams, iters: int = 3) -> np.ndarray:
    """Even out marching-cubes triangles: tangential Laplacian moves, then back onto the surface.

    The connectivity is untouched, so the mesh stays closed.
    """
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    count = np.bincount(edges[:, 0], minlength=len(v)).astype(np.float64)[:, None]
    for _ in range(iters):
        centroid = np.stack([np.bincount(edges[:, 0], v[edges[:, 1], i], len(v)) for i in range(3)], axis=1)
        delta = centroid / np.maximum(count, 1.0) - v
        n = vertex_normals(v, faces).astype(np.float64)
        delta -= np.einsum("ij,ij->i", delta, n)[:, None] * n
        v = _project_to_surface(v + 0.5 * delta, params)
    return _project_to_surface(v, params, steps=2)
