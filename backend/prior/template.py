"""A licence-free parametric head template, generated in code (numpy + scikit-image).

METHOD A.1 initialises the Gaussians on the SMPL head; SMPL and FLAME may not be shipped,
so this module builds an average adult head from smooth primitives instead:

    cranium (superellipsoid)  + brow ridge + eye sockets (carved) + eyeballs + cheekbones
    + cheeks + mid-face block + nose (bridge cone, tip, alae) + lips + jaw (rami, body, chin)
    + ears (flattened, tilted ellipsoids) + neck stub (capped cylinder)

joined by a smooth minimum of their (approximate) signed distances, polygonised with
marching cubes on a 5 mm grid, then evened out (tangential relaxation, each vertex pushed
back onto the implicit surface). The result is a closed genus-0 triangle mesh with outward
winding: about 9k vertices and 18k triangles (edges ~4.7 mm), built in ~0.3 s and cached
per parameter set. The anchors sit within ~2-4.5 mm of MediaPipe's canonical face model at
the same landmarks after a similarity alignment (checked by hand; that model is not shipped).

Head frame (ARCHITECTURE "Coordinates"): metres, +Z up, the face looks toward -Y, +X is the
viewer's right when looking at the face from the front, i.e. the SUBJECT'S LEFT. The origin
is the centre of the head box: x midway between the ears, y midway between the brow
(glabella) and the back of the head, z midway between the chin and the crown.

Left and right in anchor names are the SUBJECT'S, as in MediaPipe's naming:
``right_eye_outer`` is the subject's right eye (-X, MediaPipe landmark 33).

Usage::

    head = build_head()                       # average adult, cached
    head.vertices, head.faces                 # [V, 3] float32, [F, 3] int32
    head.anchors["nose_tip"]                  # [3] point on the surface
    wide = build_head(HeadShapeParams().scaled(1.1, 1.0, 1.0))   # exactly diag(1.1, 1, 1) * head

Three modules, one job each: :mod:`backend.prior.sdf` (the implicit head and
:class:`HeadShapeParams`), :mod:`backend.prior.mesh` (normals, ray hits, polygonisation) and
this one (:class:`HeadMesh`, :func:`build_head`, the anchors); the names of the first two that
were importable from here stay importable from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .mesh import VOXEL_M as VOXEL_M
from .mesh import _marching_cubes, _relax, face_normals, ray_mesh_hits, vertex_normals
from .sdf import _CHIN_Z, _EYE_Z, _NASION_Z, HeadShapeParams, _layout
from .sdf import head_sdf as head_sdf


@dataclass(frozen=True)
class HeadMesh:
    """A closed head surface in the head frame, with named points on it.

    vertices  [V, 3] float32   metres, head frame
    faces     [F, 3] int32     counter-clockwise seen from outside (normals point out)
    anchors   name -> [3] float32, points on the surface (names: ``ANCHOR_NAMES``)
    face_mask [V] bool         vertices of the front face region (forehead to chin, in
                               front of the ears)
    params    the parameters it was built from (None for a user-supplied mesh)
    Arrays are read-only: ``build_head`` caches and shares them.
    """

    vertices: np.ndarray
    faces: np.ndarray
    anchors: dict
    face_mask: np.ndarray
    params: HeadShapeParams | None = None

    def vertex_normals(self) -> np.ndarray:  # [V, 3]
        return vertex_normals(self.vertices, self.faces)

    def face_normals(self) -> np.ndarray:  # [F, 3] unit
        return face_normals(self.vertices, self.faces)

    def face_areas(self) -> np.ndarray:  # [F] m^2
        v = self.vertices.astype(np.float64)
        tri = v[self.faces]
        return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)

    def signed_volume(self) -> float:  # m^3; positive for a closed mesh with outward winding
        tri = self.vertices.astype(np.float64)[self.faces]
        return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:  # ([3] min, [3] max)
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def anchor_array(self, names) -> np.ndarray:  # [K, 3] float64
        return np.stack([np.asarray(self.anchors[n], dtype=np.float64) for n in names])


ANCHOR_NAMES = (
    "nose_tip",
    "chin",
    "forehead",
    "right_eye_outer",
    "right_eye_inner",
    "left_eye_inner",
    "left_eye_outer",
    "mouth_right",
    "mouth_left",
    "right_cheek",
    "left_cheek",  # face-oval sides in front of the ears (MediaPipe 234 / 454)
    "right_ear",
    "left_ear",
    "crown",
    "back_of_head",
)


# ------------------------------------------------------------------ build


# Anchor rays in the default-size frame: (point inside the head, outward direction).
# The anchor is the outermost surface crossing along the ray from far outside toward that
# point, i.e. the first hit of a ray cast back from (inside + 0.4 m * direction).
def _anchor_rays(params: HeadShapeParams) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    L = _layout(params)
    ex, mw = L["eye"] / 2, L["mouth"] / 2
    mouth_z = _CHIN_Z + L["chin_drop"]
    tip_z = _NASION_Z - L["nose_l"]
    fwd = (0.0, -1.0, 0.0)
    rays = {
        "nose_tip": ((0.0, -0.05, tip_z), fwd),
        "chin": ((0.0, -0.05, -0.07), (0.0, -0.75, -1.0)),
        "forehead": ((0.0, -0.02, 0.060), fwd),
        "right_eye_outer": ((-(ex + 0.0145), -0.05, _EYE_Z + 0.003), fwd),
        "right_eye_inner": ((-(ex - 0.0150), -0.05, _EYE_Z + 0.003), fwd),
        "left_eye_inner": ((ex - 0.0150, -0.05, _EYE_Z + 0.003), fwd),
        "left_eye_outer": ((ex + 0.0145, -0.05, _EYE_Z + 0.003), fwd),
        "mouth_right": ((-mw, -0.05, mouth_z), fwd),
        "mouth_left": ((mw, -0.05, mouth_z), fwd),
        "right_cheek": ((0.0, -0.022, -0.012), (-1.0, 0.0, 0.0)),
        "left_cheek": ((0.0, -0.022, -0.012), (1.0, 0.0, 0.0)),
        "right_ear": ((0.0, 0.010, -0.012), (-1.0, 0.0, 0.0)),
        "left_ear": ((0.0, 0.010, -0.012), (1.0, 0.0, 0.0)),
        "crown": ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
        "back_of_head": ((0.0, 0.0, 0.018), (0.0, 1.0, 0.0)),
    }
    out = {}
    for name, (inside, d) in rays.items():
        d = np.asarray(d, np.float64)
        out[name] = (np.asarray(inside, np.float64), d / np.linalg.norm(d))
    return out


def anchors_by_rays(vertices, faces, rays, reach: float = 0.4) -> dict[str, np.ndarray]:
    """Surface points hit by rays cast inward from ``inside + reach * outward_dir``."""
    names = list(rays)
    inside = np.stack([rays[n][0] for n in names])
    outward = np.stack([rays[n][1] for n in names])
    origins = inside + reach * outward
    t = ray_mesh_hits(origins, -outward, vertices, faces)
    if not np.all(np.isfinite(t)):
        missed = [n for n, ti in zip(names, t) if not np.isfinite(ti)]
        raise ValueError(f"anchor rays missed the head surface: {missed}")
    pts = origins - t[:, None] * outward
    return {n: pts[i].astype(np.float32) for i, n in enumerate(names)}


def face_region_mask(vertices: np.ndarray, normals: np.ndarray, anchors: dict) -> np.ndarray:
    """Vertices [V] of the front face: inside the forehead-chin-cheek oval, facing forward."""
    v = np.asarray(vertices, np.float64)
    top, bottom = anchors["forehead"][2] + 0.01, anchors["chin"][2] - 0.01
    half_w = 0.5 * (anchors["left_cheek"][0] - anchors["right_cheek"][0]) + 0.002
    zc, half_h = 0.5 * (top + bottom), 0.5 * (top - bottom)
    inside_oval = (v[:, 0] / half_w) ** 2 + ((v[:, 2] - zc) / half_h) ** 2 <= 1.0
    in_front = v[:, 1] < 0.5 * (anchors["left_cheek"][1] + anchors["right_cheek"][1])
    return inside_oval & in_front & (np.asarray(normals)[:, 1] < -0.1)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=16)
def build_head(params: HeadShapeParams = HeadShapeParams()) -> HeadMesh:  # noqa: B008 (a frozen dataclass, from sdf.py)
    """The template head for ``params`` (cached; the returned arrays are read-only).

    The shape is polygonised in the default-size frame from the feature measurements
    divided by their axis factor, then each axis is scaled to the requested width, depth
    and height. So ``build_head(p.scaled(kx, ky, kz))`` is exactly
    ``diag(kx, ky, kz) @ build_head(p)``, vertex for vertex.
    """
    verts, faces = _marching_cubes(params)
    verts = _relax(verts, faces, params)
    k = params.axis_factors()
    rays = _anchor_rays(params)
    anchors = anchors_by_rays(verts, faces, rays)
    verts = (verts * k).astype(np.float32)
    anchors = {n: _frozen((a * k).astype(np.float32)) for n, a in anchors.items()}
    normals = vertex_normals(verts, faces)
    mask = face_region_mask(verts, normals, anchors)
    return HeadMesh(_frozen(verts), _frozen(faces), anchors, _frozen(mask), params)
