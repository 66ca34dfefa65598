"""Hair on the template: where it is, how far it stands off the skull, and its colour.

The template is a bald head. The photo shows the hair's outline against the background, so:

- :func:`hair_weight` says, per vertex, how much of the template is scalp under hair: 1 on the
  cranium behind the hairline and above the ears' tops at the back, 0 on the face, the ears
  and the neck, smooth in between (a few rounds of neighbour averaging on the mesh);
- :func:`silhouette_radii` measures, from the projected head centre, how far the person's
  mask reaches in each image direction (the outline of hair, or of a hat);
- :func:`hair_shell` moves each hair vertex out along its normal by as much as scaling it
  about the head centre by the ratio of the photo's outline to the template's own (in that
  vertex's image direction) would, on the upper arc only (``ARC_DEG`` either side of the
  head's up), clipped to ``GROWTH``; surfaces facing the front stay (the photo sees them: no
  visor over the forehead). The back of the head, which the photo does not see, grows with
  the outline it lies behind: hair volume all round.
"""

from __future__ import annotations

import numpy as np

from .fit import HeadFit
from .template import HeadMesh

N_BINS = 90  # image directions around the projected head centre
ARC_DEG = 100.0  # the upper arc (either side of the head's up) where the outline is hair
GROWTH = (0.97, 1.45)  # a vertex moves out to at most 1.45x its distance from the centre
SMOOTH_BINS = 2.0  # Gaussian smoothing of the per-direction ratio, in bins
MASK_THRESHOLD = 0.5


def _neighbours_mean(values: np.ndarray, faces: np.ndarray, rounds: int) -> np.ndarray:
    """Each vertex's value averaged with its one-ring neighbours, ``rounds`` times."""
    n = len(values)
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    deg = np.bincount(i, minlength=n).astype(np.float64) + 1.0
    v = values.astype(np.float64)
    for _ in range(rounds):
        v = (v + np.bincount(i, v[j], minlength=n)) / deg
    return v


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def hair_weight(mesh: HeadMesh, rounds: int = 6) -> np.ndarray:
    """Per-vertex scalp weight [V] in [0, 1] (see the module docstring)."""
    v = np.asarray(mesh.vertices, np.float64)
    a = mesh.anchors
    ear_z = 0.5 * (a["left_ear"][2] + a["right_ear"][2])
    ear_y = 0.5 * (a["left_ear"][1] + a["right_ear"][1])
    brow_z = 0.5 * (a["forehead"][2] + a["right_eye_outer"][2])
    head_h = float(a["crown"][2] - a["chin"][2])
    # in front of the ears: from the forehead's middle up; behind them: from the ears' tops down
    # to the nape, blended over the ears' depth
    front = _smoothstep(float(a["forehead"][2]) - 0.02 * head_h, float(a["forehead"][2]) + 0.06 * head_h, v[:, 2])
    back = _smoothstep(ear_z - 0.25 * head_h, ear_z - 0.05 * head_h, v[:, 2])
    behind = _smoothstep(ear_y - 0.03, ear_y + 0.02, v[:, 1])
    w = front * (1.0 - behind) + back * behind
    w *= _smoothstep(brow_z - 0.02, brow_z + 0.02, v[:, 2]) * (1.0 - behind) + behind
    # ears stay skin: within 2.5 cm of an ear anchor
    for ear in ("left_ear", "right_ear"):
        w *= _smoothstep(0.018, 0.03, np.linalg.norm(v - a[ear], axis=1))
    faces = np.asarray(mesh.faces)
    w = _neighbours_mean(w, faces, rounds)
    # the face never moves: zero on it, ramping up outside it
    w *= 1.0 - _neighbours_mean(mesh.face_mask.astype(np.float64), faces, rounds)
    w[mesh.face_mask] = 0.0
    return np.clip(w, 0.0, 1.0)


def _polar(points_px: np.ndarray, centre: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(angle from the head's up in degrees, -180..180; radius px) of image points."""
    d = points_px - centre
    right = np.array([-up[1], up[0]])
    ang = np.degrees(np.arctan2(d @ right, d @ up))
    return ang, np.linalg.norm(d, axis=1)


def _bins(angle: np.ndarray) -> np.ndarray:
    return np.floor((angle + 180.0) / 360.0 * N_BINS).astype(np.int64) % N_BINS


def head_axes_px(fit: HeadFit, mesh: HeadMesh) -> tuple[np.ndarray, np.ndarray]:
    """The head centre's pixel and the head's up direction (unit) in the photo."""
    c = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    centre_top = np.stack([c, c + np.array([0.0, 0.0, 0.05], np.float32)])
    px, _ = fit.project(centre_top)
    up = px[1] - px[0]
    return px[0], up / max(float(np.linalg.norm(up)), 1e-9)


def silhouette_radii(mask: np.ndarray, centre: np.ndarray, up: np.ndarray, max_r: float) -> np.ndarray:
    """Per direction bin, the distance [N_BINS] (px) from ``centre`` to where the mask's region
    that holds the centre ends (the first step off the mask, walking out); 0 where the centre is
    off the mask."""
    h, w = mask.shape
    radii = np.zeros(N_BINS)
    steps = np.arange(0.0, max_r, 1.0)
    right = np.array([-up[1], up[0]])
    for b in range(N_BINS):
        ang = np.radians((b + 0.5) / N_BINS * 360.0 - 180.0)
        d = np.cos(ang) * up + np.sin(ang) * right
        x = np.round(centre[0] + steps * d[0] - 0.5).astype(np.int64)
        y = np.round(centre[1] + steps * d[1] - 0.5).astype(np.int64)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        on = np.zeros(len(steps), bool)
        on[inside] = mask[y[inside], x[inside]]
        off = np.flatnonzero(~on)
        radii[b] = steps[off[0]] if len(off) else max_r
    return radii


def hair_shell(fit: HeadFit, mesh: HeadMesh, person: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Per-vertex displacement [V, 3] that grows the scalp out to the photo's outline.

    ``person`` is the photo's person mask ([H, W], bool or soft in [0, 1]); ``weight`` the
    per-vertex scalp weight (default :func:`hair_weight`)."""
    weight = hair_weight(mesh) if weight is None else weight
    v = np.asarray(mesh.vertices, np.float64)
    centre_px, up = head_axes_px(fit, mesh)
    uv, _ = fit.project(v)
    ang, rad = _polar(uv, centre_px, up)
    b = _bins(ang)
    tpl = np.zeros(N_BINS)
    np.maximum.at(tpl, b, rad)
    photo = silhouette_radii(np.asarray(person) > MASK_THRESHOLD, centre_px, up, max_r=3.0 * tpl.max())
    ratio = np.where(tpl > 0, photo / np.maximum(tpl, 1e-9), 1.0)
    centres = (np.arange(N_BINS) + 0.5) / N_BINS * 360.0 - 180.0
    ratio = np.where(np.abs(centres) <= ARC_DEG, np.clip(ratio, *GROWTH), 1.0)
    k = np.exp(np.arange(-3, 4) ** 2 / (-2 * SMOOTH_BINS**2))
    padded = np.concatenate([ratio[-3:], ratio, ratio[:3]])
    ratio = np.convolve(padded, k / k.sum(), mode="same")[3:-3]
    centre3d = 0.5 * (v.min(0) + v.max(0))
    normals = mesh.vertex_normals().astype(np.float64)
    # out along the normal by as much as scaling about the centre would move the outline; not
    # where the surface faces the front (the photo sees it there: no visor over the forehead)
    front = _smoothstep(0.0, 0.4, -normals[:, 1])
    amount = weight * (1.0 - front) * (ratio[b] - 1.0) * np.linalg.norm(v - centre3d, axis=1)
    return normals * amount[:, None]


def point_weight(mesh: HeadMesh, weight: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The scalp weight at surface points [N, 3] (their nearest vertex's)."""
    from scipy.spatial import cKDTree

    _, i = cKDTree(mesh.vertices).query(points)
    return weight[i]
