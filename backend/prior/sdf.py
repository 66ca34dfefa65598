"""The template head as an implicit surface: its shape parameters and its signed distance.

This module's one job is the head's approximate signed-distance function, :func:`head_sdf`:
the smooth primitives it is built from (ellipsoids, superellipsoids, round cones, joined by a
smooth minimum), the feature layout, and :class:`HeadShapeParams`, the measurements it is
parameterised by. Polygonising it is :mod:`backend.prior.mesh`'s job and the finished head
with its anchors is :mod:`backend.prior.template`'s (which re-exports ``HeadShapeParams`` and
``head_sdf``). Coordinates are the default-size head frame described there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

# Default size (metres). The feature geometry below is written for this size; other sizes
# are reached by scaling each axis (see ``HeadShapeParams`` and ``build_head``).
_W0, _D0, _H0 = 0.150, 0.195, 0.230

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
