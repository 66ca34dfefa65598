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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace

import numpy as np

# Default size (metres). The feature geometry below is written for this size; other sizes
# are reached by scaling each axis (see ``HeadShapeParams`` and ``build_head``).
_W0, _D0, _H0 = 0.150, 0.195, 0.230

VOXEL_M = 0.005  # marching-cubes voxel, metres, in the default-size frame

# Which axis each measurement lives on: scaling that axis by k scales the measurement by k.
_AXIS = {
    "width": 0,
    "jaw_width": 0,
    "nose_width": 0,
    "eye_spacing": 0,
    "mouth_width": 0,
    "neck_radius": 0,
    "depth": 1,
    "nose_depth": 1,
    "height": 2,
    "chin_drop": 2,
    "nose_length": 2,
    "ear_size": 2,
}


@dataclass(frozen=True)
class HeadShapeParams:
    """Head measurements in metres; defaults are an average adult.

    Every field scales with one axis (x: widths, y: depths, z: heights), so
    ``params.scaled(kx, ky, kz)`` describes the head ``diag(kx, ky, kz) @ head``, and
    ``build_head`` honours that exactly (the fit relies on it).
    """

    width: float = 0.150  # x: cranium breadth (euryon to euryon), ears excluded
    depth: float = 0.195  # y: brow (glabella) to back of the head
    height: float = 0.230  # z: chin (menton) to crown (vertex)
    jaw_width: float = 0.105  # x: gonion to gonion
    chin_drop: float = 0.047  # z: mouth corners to the bottom of the chin
    nose_length: float = 0.043  # z: nasion (between the eyes) down to the nose tip
    nose_depth: float = 0.020  # y: how far the nose tip stands in front of the brow
    nose_width: float = 0.035  # x: across the nostril wings (alae)
    ear_size: float = 0.062  # z: ear height
    neck_radius: float = 0.056  # x: neck stub radius
    eye_spacing: float = 0.063  # x: between the pupils (interpupillary distance)
    mouth_width: float = 0.050  # x: between the mouth corners

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"HeadShapeParams.{f.name} must be a positive number of metres, got {v!r}")

    def scaled(self, kx: float, ky: float | None = None, kz: float | None = None) -> HeadShapeParams:
        """The same head stretched by kx, ky, kz along x, y, z (one number: uniform)."""
        k = (kx, kx if ky is None else ky, kx if kz is None else kz)
        return replace(self, **{name: getattr(self, name) * k[axis] for name, axis in _AXIS.items()})

    def axis_factors(self) -> np.ndarray:  # [3] this head's size relative to the default one
        return np.array([self.width / _W0, self.depth / _D0, self.height / _H0])


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


# ---------------------------------------------------------------- mesh helpers


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


# ---------------------------------------------------------- implicit primitives
# Each returns an approximate signed distance (metres, negative inside) at points p [..., 3].


def _smin(a, b, k):
    """Polynomial smooth minimum (a blend of width ~k); k = 0 is the plain minimum."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _ssub(a, b, k):
    """Smoothly carve shape b out of shape a."""
    return -_smin(-a, b, k)


def _norm(q):
    return np.sqrt(np.einsum("...i,...i->...", q, q))


def _ellipsoid(p, c, r, rot=None):
    q = p - np.asarray(c)
    if rot is not None:
        q = q @ np.asarray(rot)  # columns of rot: the ellipsoid axes in head coordinates
    r = np.asarray(r, dtype=np.float64)
    k0 = _norm(q / r)
    k1 = _norm(q / (r * r))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _superellipsoid(p, c, r, e):
    q = np.abs(p - np.asarray(c)) / np.asarray(r)
    f = np.sum(q**e, axis=-1) ** (1.0 / e)
    return (f - 1.0) * float(np.min(r))


def _round_cone(p, a, b, ra, rb):
    """Capsule from a to b whose radius goes linearly from ra to rb (approximate SDF)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return _norm(p - (a + t[..., None] * ab)) - (ra + (rb - ra) * t)


class _Shape:
    """Running signed distance over flat points [N, 3], with features applied in their box.

    A feature only changes the blend where its own distance is below the running one plus
    the blend width, so points outside its bounding box (grown by more than the blend
    width) can skip it without moving the zero level.
    """

    def __init__(self, p: np.ndarray, d: np.ndarray):
        self.p, self.d = p, d
        self.pm = p.copy()
        self.pm[:, 0] = np.abs(self.pm[:, 0])  # mirrored points for paired (left/right) features

    def _where(self, q, lo, hi):
        return np.flatnonzero(np.all((q >= lo) & (q <= hi), axis=1))

    def add(self, fn, lo, hi, k, mirrored=False, carve=False):
        q = self.pm if mirrored else self.p
        margin = k + 0.012
        idx = self._where(q, np.asarray(lo) - margin, np.asarray(hi) + margin)
        if idx.size:
            f = fn(q[idx])
            self.d[idx] = _ssub(self.d[idx], f, k) if carve else _smin(self.d[idx], f, k)

    def ellipsoid(self, c, r, k, mirrored=False, carve=False, rot=None):
        c, ext = np.asarray(c, np.float64), float(np.max(r))
        self.add(lambda q: _ellipsoid(q, c, r, rot), c - ext, c + ext, k, mirrored, carve)

    def cone(self, a, b, ra, rb, k, mirrored=False):
        a, b, ext = np.asarray(a, np.float64), np.asarray(b, np.float64), max(ra, rb)
        self.add(lambda q: _round_cone(q, a, b, ra, rb), np.minimum(a, b) - ext, np.maximum(a, b) + ext, k, mirrored)


def _rot_x(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _layout(params: HeadShapeParams) -> dict:
    """Feature measurements in the default-size frame (metres), from the parameters."""
    k = params.axis_factors()
    return {
        "jaw": params.jaw_width / k[0],
        "nose_w": params.nose_width / k[0],
        "eye": params.eye_spacing / k[0],
        "mouth": params.mouth_width / k[0],
        "neck": params.neck_radius / k[0],
        "nose_d": params.nose_depth / k[1],
        "chin_drop": params.chin_drop / k[2],
        "nose_l": params.nose_length / k[2],
        "ear": params.ear_size / k[2],
    }


_CHIN_Z = -_H0 / 2
_EYE_Z = 0.0
_NASION_Z = 0.008
_BROW_Y = -_D0 / 2
_NECK_BOTTOM_Z = -0.185


def head_sdf(p: np.ndarray, params: HeadShapeParams = HeadShapeParams()) -> np.ndarray:
    """Approximate signed distance [...] of the template head at points p [..., 3].

    ``p`` is in the DEFAULT-SIZE frame (the frame before ``build_head`` scales each axis);
    for the default parameters that is the head frame itself.
    """
    L = _layout(params)
    p = np.asarray(p, dtype=np.float64)
    shape_in = p.shape[:-1]
    p = p.reshape(-1, 3)

    # Cranium: a slightly boxy superellipsoid whose top is the crown.
    s = _Shape(p, _superellipsoid(p, (0.0, 0.0, 0.018), (_W0 / 2, _D0 / 2, _H0 / 2 - 0.018), 2.3))
    # Mid-face block (maxilla) and the lower face in front of the neck.
    s.d = _smin(s.d, _superellipsoid(p, (0.0, -0.035, -0.035), (0.058, 0.060, 0.072), 2.5), 0.02)
    s.ellipsoid((0.0, -0.045, -0.078), (0.040, 0.042, 0.032), 0.02)
    # Jaw: rami under the ears, mandible body down to the chin, the chin itself.
    mouth_z = _CHIN_Z + L["chin_drop"]
    gonion = (L["jaw"] / 2 - 0.010, 0.004, -0.072)
    s.cone((0.058, 0.012, -0.015), gonion, 0.011, 0.010, 0.015, mirrored=True)
    s.cone(gonion, (0.016, -0.070, _CHIN_Z + 0.011), 0.010, 0.011, 0.02, mirrored=True)
    s.ellipsoid((0.0, -0.077, _CHIN_Z + 0.014), (0.022, 0.016, 0.014), 0.012)
    # Cheekbones and cheeks.
    s.ellipsoid((0.050, -0.055, -0.004), (0.018, 0.018, 0.012), 0.012, mirrored=True)
    s.ellipsoid((0.037, -0.068, -0.028), (0.026, 0.019, 0.024), 0.015, mirrored=True)
    # Brow ridge.
    s.cone((0.0, _BROW_Y + 0.010, 0.020), (0.040, _BROW_Y + 0.014, 0.019), 0.0095, 0.008, 0.012, mirrored=True)
    # Eye sockets (carved, subtle) and eyeballs.
    ex = L["eye"] / 2
    s.ellipsoid((ex + 0.002, -0.094, _EYE_Z + 0.004), (0.021, 0.013, 0.012), 0.006, mirrored=True, carve=True)
    s.ellipsoid((ex, -0.076, _EYE_Z + 0.002), (0.0125, 0.0125, 0.0115), 0.007, mirrored=True)
    # Nose: bridge from the nasion to the tip, the tip, the nostril wings.
    tip_y = _BROW_Y - L["nose_d"]
    tip_z = _NASION_Z - L["nose_l"]
    s.cone((0.0, _BROW_Y + 0.008, _NASION_Z), (0.0, tip_y + 0.010, tip_z + 0.002), 0.0065, 0.0095, 0.006)
    s.ellipsoid((0.0, tip_y + 0.0095, tip_z), (0.010, 0.0095, 0.0095), 0.004)
    s.ellipsoid(
        (L["nose_w"] / 2 - 0.0075, tip_y + 0.021, tip_z - 0.004), (0.0075, 0.0085, 0.0075), 0.005, mirrored=True
    )
    # Lips.
    mw = L["mouth"] / 2
    s.ellipsoid((0.0, -0.085, mouth_z + 0.0045), (mw, 0.0105, 0.0065), 0.006)
    s.ellipsoid((0.0, -0.083, mouth_z - 0.0060), (mw * 0.85, 0.0105, 0.0068), 0.006)
    # Ears: flattened ellipsoids on the sides, tilted back.
    s.ellipsoid((0.0705, 0.010, -0.012), (0.0085, 0.019, L["ear"] / 2), 0.006, mirrored=True, rot=_rot_x(-15.0))
    # Neck stub: a vertical cylinder, capped flat at the bottom with a rounded rim.
    neck_r = np.sqrt(p[:, 0] ** 2 + ((p[:, 1] - 0.020) * 0.95) ** 2)
    neck = np.maximum(_ssub(neck_r - L["neck"], p[:, 2] - _NECK_BOTTOM_Z, 0.012), p[:, 2] + 0.02)  # rounded rim
    return _smin(s.d, neck, 0.025).reshape(shape_in)


# ------------------------------------------------------------------ build


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
def build_head(params: HeadShapeParams = HeadShapeParams()) -> HeadMesh:
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
