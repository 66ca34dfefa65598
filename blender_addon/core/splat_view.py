"""The CPU half of a Gaussian splat viewport draw: per-view order, colour and packing.

bpy-free and gpu-free (numpy only), so it is tested and benchmarked without a GPU; the
draw handler that uploads :func:`pack_instances`' rows and draws one instanced quad per
splat is ``blender_addon/splat_view.py``.

Per view, a splat renderer needs the splats back to front, each with its view-dependent
colour. Both change slowly with the view, so:

- :func:`depth_order` quantises view depth to 16 bits and sorts those keys with numpy's
  stable sort (a radix sort for 16-bit integers: linear time, ~20 ms for 1M splats);
- :class:`ViewCache` re-sorts only when the camera has turned or moved enough
  (:func:`view_changed`), and reuses the last order otherwise;
- :func:`sh_colors` evaluates SH degree 0-3 for the camera position (the same basis as
  the backend's renderer, :func:`.sh.sh_basis_terms`), in the object's own axes.

Covariances do not depend on the view: :func:`covariances` gives the 3D covariance of each
splat (upper triangle, object axes) once; the vertex shader projects it to 2D per view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frames import quat_to_matrix
from .sh import DEGREE_OF_K, sh_basis_terms
from .splat_arrays import SH_C0

DEPTH_BITS = 16
INSTANCE_FLOATS = 16  # centre xyz, opacity | cov xx xy xz yy | cov yz zz, rgb r | g b, 2 spare


def depth_order(means: np.ndarray, view_matrix: np.ndarray) -> np.ndarray:
    """Indices of ``means`` [N, 3] (object axes) back to front for a 4x4 object-to-view
    matrix (camera looks down -Z, as Blender's view matrices do): farthest first.

    Depth is quantised to 16 bits over the cloud's depth range and the keys are sorted
    with a stable (radix) sort; splats closer than 1/65535 of the range keep file order.
    """
    m = np.asarray(view_matrix, dtype=np.float32)
    depth = np.asarray(means, np.float32) @ m[2, :3] + m[2, 3]  # view z: more negative is farther
    if len(depth) == 0:
        return np.zeros(0, np.int64)
    lo, hi = float(depth.min()), float(depth.max())
    scale = (2**DEPTH_BITS - 1) / (hi - lo) if hi > lo else 0.0
    keys = ((depth - lo) * scale).astype(np.uint16)  # 0 = farthest
    return np.argsort(keys, kind="stable")


def view_changed(old: np.ndarray | None, new: np.ndarray, *, degrees: float = 2.0, move: float = 0.02) -> bool:
    """Has a 4x4 object-to-view matrix changed enough to re-sort? True when the view
    direction turned by more than ``degrees`` or the camera moved by more than ``move``
    (object units)."""
    if old is None:
        return True
    a, b = np.asarray(old, np.float64), np.asarray(new, np.float64)
    za, zb = a[2, :3] / np.linalg.norm(a[2, :3]), b[2, :3] / np.linalg.norm(b[2, :3])
    turned = np.degrees(np.arccos(np.clip(float(za @ zb), -1.0, 1.0))) > degrees
    return bool(turned or np.linalg.norm(camera_position(a) - camera_position(b)) > move)


def camera_position(view_matrix: np.ndarray) -> np.ndarray:
    """The camera centre in object axes for a 4x4 object-to-view matrix."""
    m = np.asarray(view_matrix, np.float64)
    out: np.ndarray = -np.linalg.solve(m[:3, :3], m[:3, 3])
    return out


def coefficients_by_band(shN: np.ndarray) -> np.ndarray:
    """SH rest coefficients [N, K, 3] as one contiguous float32 block per basis function
    [K, N, 3]: what :func:`sh_colors` streams through (computed once per cloud)."""
    out: np.ndarray = np.ascontiguousarray(np.moveaxis(np.asarray(shN, np.float32), 1, 0))
    return out


def sh_colors(
    sh0: np.ndarray,
    shN: np.ndarray | None,
    means: np.ndarray,
    camera: np.ndarray,
    *,
    by_band: np.ndarray | None = None,
) -> np.ndarray:
    """RGB [N, 3] (float32, clamped at 0 as the 3DGS renderers do) of each splat seen from
    ``camera`` (object axes): 0.5 + C0 * sh0 + sum over bands of Y_l(d) . c_l, d = unit
    direction camera -> splat. ``by_band``: :func:`coefficients_by_band` of ``shN``, when the
    caller keeps it (the sum then reads K contiguous blocks instead of strided columns)."""
    rgb = 0.5 + SH_C0 * np.asarray(sh0, np.float32)
    if shN is not None and shN.shape[1]:
        d = np.asarray(means, np.float32) - np.asarray(camera, np.float32)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        terms = sh_basis_terms(d[:, 0], d[:, 1], d[:, 2], DEGREE_OF_K[shN.shape[1]])
        blocks = coefficients_by_band(shN) if by_band is None else by_band
        tmp = np.empty_like(rgb)
        for term, block in zip(terms, blocks, strict=True):
            np.multiply(term[:, None], block, out=tmp)
            rgb += tmp
    out: np.ndarray = np.maximum(rgb, 0.0, out=rgb).astype(np.float32, copy=False)
    return out


def covariances(quats: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """3D covariance R S S R^T of each splat as its upper triangle [N, 6]
    (xx, xy, xz, yy, yz, zz), float32, object axes."""
    rot = quat_to_matrix(quats)  # [N, 3, 3]
    m = rot * np.exp(np.asarray(log_scales, np.float64))[:, None, :]  # R S
    cov = m @ np.swapaxes(m, 1, 2)
    iu = np.triu_indices(3)
    out: np.ndarray = cov[:, iu[0], iu[1]].astype(np.float32)
    return out


def pack_instances(
    means: np.ndarray,
    opacity: np.ndarray,
    cov: np.ndarray,
    rgb: np.ndarray,
    order: np.ndarray,
    pad_to: int = 1,
) -> np.ndarray:
    """One float32 row of :data:`INSTANCE_FLOATS` per splat, in draw ``order``: the contents
    of an RGBA32F texture (four texels a splat) that the vertex shader reads by instance id.

    The row count is rounded up to a multiple of ``pad_to`` with all-zero rows (opacity 0:
    never drawn), so that the array fills whole texture rows and uploads without a copy."""
    n = len(order)
    out = np.zeros((-(-n // pad_to) * pad_to, INSTANCE_FLOATS), np.float32)
    out[:n, 0:3] = means[order]
    out[:n, 3] = opacity[order]
    out[:n, 4:10] = cov[order]
    out[:n, 10:13] = rgb[order]
    return out


@dataclass
class ViewCache:
    """What one splat object needs per view; ``update`` redoes the sort and the colours only
    when :func:`view_changed` says so. Returns the packed rows, or None when nothing changed."""

    means: np.ndarray  # [N, 3] object axes
    opacity: np.ndarray  # [N] sigmoid(opacity_logit)
    sh0: np.ndarray  # [N, 3]
    shN: np.ndarray | None  # [N, K, 3]
    cov: np.ndarray  # [N, 6] from covariances()
    view: np.ndarray | None = field(default=None)
    sorts: int = 0
    pad_to: int = 1  # pack_instances' row padding (splats per texture row)
    # built on the first update: the rows in file order (the colour columns rewritten per
    # view) and the SH coefficients by band
    _rows: np.ndarray | None = field(default=None, init=False, repr=False)
    _by_band: np.ndarray | None = field(default=None, init=False, repr=False)

    def update(self, view_matrix: np.ndarray) -> np.ndarray | None:
        """The rows of :func:`pack_instances` for this view, or None when the view has not
        changed enough. Per view it costs one radix sort, the SH sum and one gather of whole
        64-byte rows (the view-independent columns are packed once). The array returned is
        new each time; the caller may keep it."""
        if not view_changed(self.view, view_matrix):
            return None
        self.view = np.array(view_matrix, np.float64)
        self.sorts += 1
        n = len(self.means)
        if self._rows is None:
            zeros = np.zeros((n, 3), np.float32)
            self._rows = pack_instances(self.means, self.opacity, self.cov, zeros, np.arange(n))
            if self.shN is not None and self.shN.shape[1]:
                self._by_band = coefficients_by_band(self.shN)
        order = depth_order(self.means, self.view)
        rgb = sh_colors(self.sh0, self.shN, self.means, camera_position(self.view), by_band=self._by_band)
        self._rows[:, 10:13] = rgb  # in file order (a sequential write), then one gather of whole rows
        out = np.empty((-(-n // self.pad_to) * self.pad_to, INSTANCE_FLOATS), np.float32)
        np.take(self._rows, order, axis=0, out=out[:n])
        out[n:] = 0.0
        return out
