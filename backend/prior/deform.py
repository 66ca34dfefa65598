"""The person's face shape: the fitted template deformed to all 478 MediaPipe landmarks.

:func:`backend.prior.fit_head` places the template with 11 anchors, pose and two stretch
factors, so every face gets the template's nose, brows and cheeks. Here the rest of the
landmarks reshape it:

- **Targets.** Each landmark's pixel is a ray from the photo's camera. MediaPipe's relative
  depth ``z`` (pixels, like x) says how far along the ray the face is: camera depth
  ``d_i = offset + z_i * D / fx`` with ``D`` the head's mean landmark depth and the offset
  the median that puts the template's own hits on it (one photo fixes the face's relief, not
  its distance). MediaPipe's z is in x's scale; a gain fitted to the template's own hits would
  take back the very relief we are after (it came out 0.87 on a test face with a known nose).
- **Sources.** Where the ray hits the template, the hit; where it misses (a face wider than
  the template on the silhouette), or hits it more than ``BEHIND_M`` from the target (it
  passed the template's chin and hit the neck), the template vertex nearest the target.
- **Reliable ones.** A hit seen at a grazing angle (normal . view < ``MIN_FACING``) has a
  poor depth; such landmarks are left out. Every kept landmark is also mirrored across the
  head's midplane (x -> -x), so a turned face's hidden side follows its seen side.
- **Deformation.** A thin-plate-spline displacement field (scipy's ``RBFInterpolator``,
  with smoothing) through the landmark displacements and through zero displacements on
  template vertices farther than ``FALLOFF_M`` from every landmark (the cranium, the ears,
  the neck stay), evaluated on every vertex; displacements are capped at ``MAX_DISP_M``.

It is smooth and regularised (the spline's bending energy plus ``SMOOTHING``), exact at
nothing, and leaves the mesh's triangles as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.spatial import cKDTree

from .fit import HeadFit
from .template import HeadMesh, face_region_mask, ray_mesh_hits, vertex_normals

MIN_FACING = 0.25  # cos of the angle between a hit's normal and the ray back to the camera
FALLOFF_M = 0.035  # template vertices this far from every landmark do not move
MAX_DISP_M = 0.015  # no vertex moves further than this
SMOOTHING = (
    1e-3  # thin-plate smoothing: a landmark a few mm off its neighbours is not followed (fitted on a known face)
)
BEHIND_M = 0.012  # a hit this far behind (or before) the target is another part of the head: a miss
N_FIXED = 600  # zero-displacement vertices sampled from the far region


@dataclasses.dataclass(frozen=True)
class LandmarkTargets:
    """Where the template is (sources) and where the photo says the face is (targets)."""

    sources: np.ndarray  # [K, 3] head frame, metres
    targets: np.ndarray  # [K, 3]
    index: np.ndarray  # [K] landmark indices kept


def landmark_targets(fit: HeadFit, mesh: HeadMesh, landmarks2d: np.ndarray, landmarks3d: np.ndarray) -> LandmarkTargets:
    """Source and target points of the reliable landmarks (see the module docstring)."""
    uv = np.asarray(landmarks2d, np.float64)[:, :2]
    z = np.asarray(landmarks3d, np.float64)[:, 2]
    R, t = fit.world_to_camera[:3, :3], fit.world_to_camera[:3, 3]
    origin = -R.T @ t
    rays_cam = np.column_stack([(uv[:, 0] - fit.cx) / fit.fx, (uv[:, 1] - fit.cy) / fit.fy, np.ones(len(uv))])
    dirs = rays_cam @ R  # head frame, unit camera depth
    hit_t = ray_mesh_hits(np.broadcast_to(origin, dirs.shape), dirs, mesh.vertices, mesh.faces)
    hit = np.isfinite(hit_t)
    if hit.sum() < 10:
        raise ValueError("fewer than 10 landmarks fall on the fitted template; is the fit for this photo?")
    rel = z * float(hit_t[hit].mean()) / fit.fx
    depth = float(np.median(hit_t[hit] - rel[hit])) + rel
    targets = origin + dirs * depth[:, None]
    # a ray that passes the template's chin or cheek and hits the neck or ear behind it
    hit &= np.abs(np.where(hit, hit_t, 0.0) - depth) < BEHIND_M
    sources = np.where(hit[:, None], origin + dirs * np.where(hit, hit_t, 0.0)[:, None], 0.0)
    tree = cKDTree(mesh.vertices)
    _, nearest = tree.query(targets[~hit])
    sources[~hit] = mesh.vertices[nearest]

    normals = vertex_normals(mesh.vertices, mesh.faces)
    _, near_src = tree.query(sources)
    view = origin - sources
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    facing = np.einsum("ij,ij->i", normals[near_src], view)
    keep = ~hit | (facing >= MIN_FACING)
    return LandmarkTargets(sources[keep], targets[keep], np.flatnonzero(keep))


def displacement_field(mesh: HeadMesh, lt: LandmarkTargets, rng=0) -> np.ndarray:
    """Per-vertex displacement [V, 3] (metres) of the thin-plate field through the landmarks."""
    mirror = np.array([-1.0, 1.0, 1.0])
    src = np.concatenate([lt.sources, lt.sources * mirror])
    disp = np.concatenate([lt.targets - lt.sources, (lt.targets - lt.sources) * mirror])
    v = np.asarray(mesh.vertices, np.float64)
    dist, _ = cKDTree(src).query(v)
    far = np.flatnonzero(dist > FALLOFF_M)
    if len(far) > N_FIXED:
        far = np.random.default_rng(rng).choice(far, N_FIXED, replace=False)
    pts = np.concatenate([src, v[far]])
    val = np.concatenate([disp, np.zeros((len(far), 3))])
    # each landmark and its mirror image coincide on the midline: merge points closer than 1 mm
    _, first = np.unique(np.round(pts / 0.001).astype(np.int64), axis=0, return_index=True)
    field = RBFInterpolator(pts[first], val[first], kernel="thin_plate_spline", smoothing=SMOOTHING)(v)
    norm = np.linalg.norm(field, axis=1, keepdims=True)
    return field * np.minimum(1.0, MAX_DISP_M / np.maximum(norm, 1e-12))


def deform_to_landmarks(
    fit: HeadFit, mesh: HeadMesh, landmarks2d: np.ndarray, landmarks3d: np.ndarray, rng=0
) -> tuple[HeadMesh, np.ndarray]:
    """The template reshaped to the photo's 478 landmarks, and the per-vertex displacement [V, 3]."""
    lt = landmark_targets(fit, mesh, landmarks2d, landmarks3d)
    field = displacement_field(mesh, lt, rng)
    return moved(mesh, field), field


def moved(mesh: HeadMesh, field: np.ndarray) -> HeadMesh:
    """``mesh`` with its vertices moved by ``field`` [V, 3]; anchors follow their nearest vertex,
    the face region is recomputed; same triangles. ``params`` is dropped (no longer built from them)."""
    v = (np.asarray(mesh.vertices, np.float64) + field).astype(np.float32)
    tree = cKDTree(mesh.vertices)
    anchors = {}
    for name, a in mesh.anchors.items():
        _, i = tree.query(a)
        anchors[name] = (np.asarray(a, np.float64) + field[i]).astype(np.float32)
    normals = vertex_normals(v, mesh.faces)
    return HeadMesh(v, mesh.faces, anchors, face_region_mask(v, normals, anchors), None)
