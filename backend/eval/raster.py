"""A forward-only CPU rasteriser for evaluation: the reference renderer's rules, compiled.

The torch reference (``backend.gaussians.render``) is differentiable and works on a list of
(pixel, splat) pairs; without gradients that list is pure overhead. At 512 px a 10k-splat
head makes about 27M pairs, about 10 s per view on two cores, so a 28-view orbit would take
minutes. This module keeps the reference's projection (it calls the same ``project``) and
its blending rules, and composites with a numba kernel, tile by tile:

- the same 2D covariance with the 0.3 px^2 low-pass (``eps2d``) and the same pixel boxes
  (3.33 sigma, tightened to where opacity * exp(-q/2) >= 1/255); a splat touches only the
  pixels of its box;
- front to back by camera depth; alpha clamped at 0.99, alphas under 1/255 skipped; a pixel
  stops before the splat that would take its transmittance to 1e-4 or below;
- colour: SH degree 0 as the reference's ``rgb_dc``; higher degrees through its ``eval_sh``.

``tests/test_eval_raster.py`` checks it against the reference. No gradients; CPU only.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ..gaussians.cameras import Cameras
from ..gaussians.model import GaussianModel
from ..gaussians.render import ALPHA_MAX, ALPHA_MIN, T_MIN, eval_sh, project

TILE = 16
EPS2D = 0.3
NEAR = 0.01


@numba.njit(cache=True)
def _bin(boxes: np.ndarray, order: np.ndarray, n_tx: int, n_ty: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile lists (CSR): splat ids of each tile, front to back. ``boxes`` [N, 4] int x0, x1, y0, y1
    (half-open pixel ranges; empty where x1 <= x0), ``order`` the splats front to back."""
    counts = np.zeros(n_tx * n_ty + 1, np.int64)
    for g in order:
        x0, x1, y0, y1 = boxes[g, 0], boxes[g, 1], boxes[g, 2], boxes[g, 3]
        if x1 <= x0 or y1 <= y0:
            continue
        for ty in range(y0 // TILE, (y1 - 1) // TILE + 1):
            for tx in range(x0 // TILE, (x1 - 1) // TILE + 1):
                counts[ty * n_tx + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int64)
    for g in order:
        x0, x1, y0, y1 = boxes[g, 0], boxes[g, 1], boxes[g, 2], boxes[g, 3]
        if x1 <= x0 or y1 <= y0:
            continue
        for ty in range(y0 // TILE, (y1 - 1) // TILE + 1):
            for tx in range(x0 // TILE, (x1 - 1) // TILE + 1):
                t = ty * n_tx + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids


@numba.njit(parallel=True, cache=True)
def _composite(
    uv: np.ndarray,  # [N, 2] float64 pixel centres of the splats
    conic: np.ndarray,  # [N, 3] float64 inverse 2D covariance (xx, xy, yy)
    opacity: np.ndarray,  # [N] float64
    rgb: np.ndarray,  # [N, 3] float64
    boxes: np.ndarray,  # [N, 4] int64 x0, x1, y0, y1
    offsets: np.ndarray,
    ids: np.ndarray,
    width: int,
    height: int,
    n_tx: int,
    out_rgb: np.ndarray,  # [H, W, 3] float64 (accumulated colour, no background)
    out_t: np.ndarray,  # [H, W] float64 final transmittance
) -> None:
    n_tiles = len(offsets) - 1
    for t in numba.prange(n_tiles):
        tx, ty = t % n_tx, t // n_tx
        start, end = offsets[t], offsets[t + 1]
        for py in range(ty * TILE, min(height, ty * TILE + TILE)):
            for px in range(tx * TILE, min(width, tx * TILE + TILE)):
                T = 1.0
                r = g_ = b = 0.0
                cx, cy = px + 0.5, py + 0.5
                for k in range(start, end):
                    s = ids[k]
                    if px < boxes[s, 0] or px >= boxes[s, 1] or py < boxes[s, 2] or py >= boxes[s, 3]:
                        continue
                    dx, dy = cx - uv[s, 0], cy - uv[s, 1]
                    q = conic[s, 0] * dx * dx + 2.0 * conic[s, 1] * dx * dy + conic[s, 2] * dy * dy
                    a = opacity[s] * math.exp(-0.5 * q)
                    if a < ALPHA_MIN:
                        continue
                    a = min(a, ALPHA_MAX)
                    t_next = T * (1.0 - a)
                    if t_next <= T_MIN:
                        break
                    w = a * T
                    r += w * rgb[s, 0]
                    g_ += w * rgb[s, 1]
                    b += w * rgb[s, 2]
                    T = t_next
                out_rgb[py, px, 0] = r
                out_rgb[py, px, 1] = g_
                out_rgb[py, px, 2] = b
                out_t[py, px] = T


def _splat_boxes(uv: np.ndarray, cov: np.ndarray, z: np.ndarray, opacity: np.ndarray, width: int, height: int):
    """Pixel boxes [N, 4] (x0, x1, y0, y1, half-open) and the conics [N, 3], as the reference."""
    a, b, d = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    det = a * d - b * b
    k = np.minimum(np.sqrt(2.0 * np.log(np.maximum(opacity / ALPHA_MIN, 1.0))), 3.33)
    rx, ry = k * np.sqrt(np.maximum(a, 0)), k * np.sqrt(np.maximum(d, 0))
    u, v = uv[:, 0], uv[:, 1]
    valid = (z > NEAR) & (det > 0) & (k > 0) & (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
    x0 = np.clip(np.ceil(u - rx - 0.5), 0, width)
    x1 = np.clip(np.floor(u + rx - 0.5) + 1, 0, width)
    y0 = np.clip(np.ceil(v - ry - 0.5), 0, height)
    y1 = np.clip(np.floor(v + ry - 0.5) + 1, 0, height)
    boxes = np.stack([x0, x1, y0, y1], -1)
    boxes[~valid] = 0
    safe = np.where(det > 0, det, 1.0)
    conic = np.stack([d / safe, -b / safe, a / safe], -1)
    return boxes.astype(np.int64), conic


def rasterise(model: GaussianModel, cams: Cameras, background=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Render every camera: (rgb [C, H, W, 3] float32 composited on ``background``,
    alpha [C, H, W] float32)."""
    W, H = cams.width, cams.height
    n_tx, n_ty = -(-W // TILE), -(-H // TILE)
    bg = np.asarray(background, np.float64)
    rgbs, alphas = [], []
    with torch.no_grad():
        means = model.means.double()
        quats, scales = model.quats.double(), model.scales.double()
        opacity = model.opacities.double().numpy()
        centres = cams.camera_centers().double()
        for c in range(len(cams)):
            z, uv, cov = project(means, quats, scales, cams.viewmats[c].double(), cams.Ks[c].double(), EPS2D)
            if model.sh_degree > 0:
                colour = eval_sh(model.sh_coeffs.double(), means, centres[c], model.sh_degree)
            else:
                colour = model.rgb_dc.double()
            z_np, uv_np = z.numpy(), uv.numpy()
            boxes, conic = _splat_boxes(uv_np, cov.numpy(), z_np, opacity, W, H)
            order = np.argsort(z_np, kind="stable")
            offsets, ids = _bin(boxes, order, n_tx, n_ty)
            out_rgb = np.zeros((H, W, 3))
            out_t = np.ones((H, W))
            _composite(uv_np, conic, opacity, colour.numpy(), boxes, offsets, ids, W, H, n_tx, out_rgb, out_t)
            rgbs.append((out_rgb + out_t[..., None] * bg).astype(np.float32))
            alphas.append((1.0 - out_t).astype(np.float32))
    return np.stack(rgbs), np.stack(alphas)
