"""The CPU tile rasteriser: numba kernels for compositing, with an analytic backward.

:func:`backend.gaussians.render.render` uses it on CPU tensors (``backend="numba"``, the
default there); ``backend.eval`` renders its orbits with it too. It composites what the
reference renderer composites, by the same rules, but per 16 x 16 pixel tile instead of per
(pixel, splat) pair:

    render.py (torch, autograd)      EWA projection, SH colour, screen boxes, conics
    composite()  (this module)       bin boxes into 16 px tiles, front to back in depth order
      forward                        per tile, each listed splat walks its rows; on a row it
                                     touches only the pixels inside its alpha >= 1/255
                                     ellipse, with exp(-q/2) stepped by a recurrence (two
                                     exp() per row); per pixel: alpha-blend, stop at
                                     T <= 1e-4; keeps each pixel's final transmittance and
                                     the end of its list, and which entries contributed
      backward                       per tile, back to front (3DGS / gsplat): recovers each
                                     pixel's transmittance by division, accumulates per-splat
                                     gradients of the 2D quantities (centre, conic, opacity,
                                     features) and AbsGS's per-pixel |dL/d centre|

The projection stays in torch (``render.project``): it is O(N), a few milliseconds for 100k
splats, and autograd differentiates it exactly; the cost of a render is in the O(pairs)
compositing, which is what this module compiles. The rules, shared with the reference and
gsplat: pixel centres at +0.5, alpha = opacity * exp(-q / 2) clamped at 0.99 (no gradient
through the clamp), pairs under alpha 1/255 skipped, and a pixel stops before the splat
that would take its transmittance to 1e-4 or below.

Why numba (issue #16 weighed three engines):

- numba is already a dependency (eval used it), has wheels on PyPI for Linux, macOS (x86-64
  and arm64) and Windows for every CPython we support, needs no compiler on the user's
  machine (LLVM ships inside llvmlite) and caches compiled kernels on disk (``cache=True``:
  the first run on a machine compiles for ~10 s, later runs load them in under a second).
  ``prange`` runs tiles on all cores through OpenMP, TBB or numba's own work queue.
- taichi-splatting would add taichi, a large extra runtime, for a library whose last
  release on PyPI is 0.13.0 (May 2024) and whose tuned path is CUDA; its CPU backend would
  be one more thing to keep working on three platforms.
- A torch C++ extension needs a compiler and torch's headers on the user's machine (MSVC on
  Windows) or prebuilt wheels per torch version; neither suits a pip-installed default.

Kernels compute in float64 whatever the input dtype (one compiled variant, and a
finite-difference check in float64 is meaningful); outputs come back in the input dtype.
Per-splat gradients are accumulated per tile-list entry (each entry belongs to one tile, so
tiles run in parallel without races and the result is deterministic), then summed per splat.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch

from .render import ALPHA_MAX, ALPHA_MIN, T_MIN  # one set of rules for every backend

TILE = 16

# Two OpenMP runtimes share the cores: torch's and the system libgomp that numba's "omp"
# threading layer loads. By default each spins for milliseconds after a parallel region,
# stealing the core the other needs next: measured on 2 cores, a 10k-splat render took 2-10x
# longer alternating with torch ops. Numba's runtime is loaded on the first parallel call,
# so a passive wait policy set here reaches it (torch's was read when torch was imported:
# see ``torch_single_threaded``). An explicit OMP_WAIT_POLICY is left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def torch_single_threaded() -> Iterator[None]:
    """Torch on one thread inside the block, so that its OpenMP workers do not spin against
    the rasteriser's threads (see above). For CPU training loops whose time is the renderer's;
    torch's own small ops lose little."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# columns of the per-splat table the kernels read (one row per splat, contiguous)
_U, _V, _O, _CXX, _CXY, _CYY, _QMAX, _STEP, _INV_CXX, _F = range(10)
# columns of the per-entry gradient array (features follow)
_G_U, _G_V, _G_CXX, _G_CXY, _G_CYY, _G_OPACITY, _G_ABS_U, _G_ABS_V, _G_FEAT = range(9)
N_FEAT = 4  # blended per pixel: colour (3) and depth; narrower features are zero-padded
N_COLUMNS = _G_FEAT + N_FEAT


# ----------------------------------------------------------------------------- binning
@numba.njit(cache=True)
def bin_tiles(boxes: np.ndarray, order: np.ndarray, n_tx: int, n_ty: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile lists in CSR form: (offsets [n_tiles + 1], splat ids [E]), each tile's front to back.

    ``boxes`` [N, 4] int64: half-open pixel ranges x0, x1, y0, y1 (empty where x1 <= x0 or
    y1 <= y0: culled splats); ``order`` [N]: splat ids front to back.
    """
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


# ------------------------------------------------------------------------------- rows
@numba.njit(cache=True, inline="always")
def _row_span(u, v, cxx, cxy, cyy, inv_cxx, q_max, py, x0, x1):
    """Pixels of row ``py`` in [x0, x1) whose centres may have q <= q_max, and the Gaussian
    there: (first, end, g, ratio) with exp(-q/2) = g at pixel ``first``; the caller steps
    along the row with ``g *= ratio; ratio *= exp(-cxx)`` (q is a quadratic in dx).

    The span solves that quadratic with one pixel of slack each side (the caller's alpha test
    is exact), so pixels in the corners of a splat's box cost nothing and the row needs two
    exp() however long it is. Starting inside the ellipse keeps the recurrence in range even
    for needle-thin splats, whose values at the box corners underflow.
    """
    dy = py + 0.5 - v
    disc = (cxy * dy) ** 2 - cxx * (cyy * dy * dy - q_max)
    if disc < 0.0:
        return 0, 0, 0.0, 0.0
    half = math.sqrt(disc) * inv_cxx
    centre = u - 0.5 - cxy * dy * inv_cxx  # the px where q is smallest on this row
    first = max(x0, int(math.floor(centre - half)))
    end = min(x1, int(math.ceil(centre + half)) + 1)
    if first >= end:
        return 0, 0, 0.0, 0.0
    dx = first + 0.5 - u
    g = math.exp(-0.5 * (cxx * dx * dx + 2.0 * cxy * dx * dy + cyy * dy * dy))
    ratio = math.exp(-0.5 * (cxx * (2.0 * dx + 1.0) + 2.0 * cxy * dy))
    return first, end, g, ratio


@numba.njit(cache=True, inline="always")
def _interleaved(i, n, k):
    """prange hands each thread a contiguous block of iterations; visiting the tiles in the
    order 0, k, 2k, ..., 1, k + 1, ... (k = the thread count) gives every thread tiles from
    all over the image, so a face in one half does not leave one thread waiting. (k is an
    argument: numba.get_num_threads() inside a kernel would stop it from being cached.)"""
    per = (n + k - 1) // k  # tiles t with t % k == j, for j < n % k (or all j when k divides n)
    full = n % k if n % k else k
    if i < full * per:
        return (i % per) * k + i // per
    rest = i - full * per
    return (rest % (per - 1)) * k + full + rest // (per - 1)


@numba.njit(cache=True, inline="always")
def _tile(t, width, height):
    n_tx = (width + TILE - 1) // TILE
    tx0, ty0 = (t % n_tx) * TILE, (t // n_tx) * TILE
    return tx0, ty0, min(width, tx0 + TILE), min(height, ty0 + TILE)


# ----------------------------------------------------------------------------- forward
@numba.njit(parallel=True, cache=True)
def composite_forward(
    table: np.ndarray,  # [N, _F + 4] float64 per splat: see ``splat_table``
    boxes: np.ndarray,  # [N, 4] int64 x0, x1, y0, y1
    offsets: np.ndarray,  # [n_tiles + 1] int64
    ids: np.ndarray,  # [E] int64
    width: int,
    height: int,
    out_feat: np.ndarray,  # [H, W, 4] float64: sum of weight * feature (no background)
    out_t: np.ndarray,  # [H, W] float64: final transmittance
    out_end: np.ndarray,  # [H, W] int64: one past the last tile-list entry that contributed
    out_hit: np.ndarray,  # [E] bool: the entry contributed to some pixel (the backward skips the rest)
    n_threads: int,  # numba.get_num_threads(): the tile order (see _interleaved)
) -> None:
    n_tiles = len(offsets) - 1
    for i in numba.prange(n_tiles):
        t = _interleaved(i, n_tiles, n_threads)
        tx0, ty0, tx1, ty1 = _tile(t, width, height)
        tw = tx1 - tx0
        n_pix = tw * (ty1 - ty0)
        start, end = offsets[t], offsets[t + 1]
        T = np.ones(n_pix)
        acc = np.zeros((n_pix, 4))
        last = np.full(n_pix, start)
        done = np.zeros(n_pix, np.bool_)
        active = n_pix
        row_active = np.full(ty1 - ty0, tw)  # rows whose pixels have all stopped are skipped
        for k in range(start, end):
            if active == 0:
                break
            s = ids[k]
            u, v, o = table[s, _U], table[s, _V], table[s, _O]
            cxx, cxy, cyy = table[s, _CXX], table[s, _CXY], table[s, _CYY]
            q_max, step, inv_cxx = table[s, _QMAX], table[s, _STEP], table[s, _INV_CXX]
            f0, f1, f2, f3 = table[s, _F], table[s, _F + 1], table[s, _F + 2], table[s, _F + 3]
            bx0, bx1 = max(boxes[s, 0], tx0), min(boxes[s, 1], tx1)
            for py in range(max(boxes[s, 2], ty0), min(boxes[s, 3], ty1)):
                if row_active[py - ty0] == 0:
                    continue
                first, stop, gauss, ratio = _row_span(u, v, cxx, cxy, cyy, inv_cxx, q_max, py, bx0, bx1)
                row = (py - ty0) * tw - tx0
                for px in range(first, stop):
                    p = row + px
                    a = o * gauss
                    gauss *= ratio
                    ratio *= step
                    if done[p] or a < ALPHA_MIN:
                        continue
                    a = min(a, ALPHA_MAX)
                    t_here = T[p]
                    t_next = t_here * (1.0 - a)
                    if t_next <= T_MIN:
                        done[p] = True
                        active -= 1
                        row_active[py - ty0] -= 1
                        continue
                    w = a * t_here
                    acc[p, 0] += w * f0
                    acc[p, 1] += w * f1
                    acc[p, 2] += w * f2
                    acc[p, 3] += w * f3
                    T[p] = t_next
                    last[p] = k + 1
                    out_hit[k] = True
        for py in range(ty0, ty1):
            for px in range(tx0, tx1):
                p = (py - ty0) * tw + px - tx0
                for c in range(4):
                    out_feat[py, px, c] = acc[p, c]
                out_t[py, px] = T[p]
                out_end[py, px] = last[p]


# ---------------------------------------------------------------------------- backward
@numba.njit(parallel=True, cache=True)
def composite_backward(
    table: np.ndarray,
    boxes: np.ndarray,
    offsets: np.ndarray,
    ids: np.ndarray,
    width: int,
    height: int,
    out_t: np.ndarray,  # [H, W] the forward's final transmittance
    out_end: np.ndarray,  # [H, W] the forward's list ends
    out_hit: np.ndarray,  # [E] the forward's contributing entries
    grad_feat: np.ndarray,  # [H, W, 4] dL / d out_feat
    grad_alpha: np.ndarray,  # [H, W] dL / d alpha, alpha = 1 - final transmittance
    entry_grad: np.ndarray,  # [E, N_COLUMNS] out: per tile-list entry
    n_threads: int,
) -> None:
    """Walk each tile's list back to front; each pixel starts at its forward list end.

    With T_i the transmittance in front of splat i, w_i = alpha_i T_i and S_i the blended
    features of the contributors behind it, d out / d alpha_i = T_i f_i - S_i / (1 - alpha_i)
    and d alpha / d alpha_i = T_final / (1 - alpha_i).
    """
    n_tiles = len(offsets) - 1
    for i in numba.prange(n_tiles):
        t = _interleaved(i, n_tiles, n_threads)
        tx0, ty0, tx1, ty1 = _tile(t, width, height)
        tw = tx1 - tx0
        n_pix = tw * (ty1 - ty0)
        start, end = offsets[t], offsets[t + 1]
        if end == start:
            continue
        T = np.empty(n_pix)
        last = np.empty(n_pix, np.int64)
        # per pixel: dL/d feature (4), then dL/d alpha * T_final
        g_pix = np.empty((n_pix, 5))
        behind = np.zeros((n_pix, 4))
        row_end = np.full(ty1 - ty0, start)  # rows whose pixels all ended before entry k are skipped
        for py in range(ty0, ty1):
            for px in range(tx0, tx1):
                p = (py - ty0) * tw + px - tx0
                T[p] = out_t[py, px]
                last[p] = out_end[py, px]
                row_end[py - ty0] = max(row_end[py - ty0], last[p])
                for c in range(4):
                    g_pix[p, c] = grad_feat[py, px, c]
                g_pix[p, 4] = grad_alpha[py, px] * out_t[py, px]
        for k in range(row_end.max() - 1, start - 1, -1):
            if not out_hit[k]:
                continue  # its gradients stay 0
            s = ids[k]
            u, v, o = table[s, _U], table[s, _V], table[s, _O]
            cxx, cxy, cyy = table[s, _CXX], table[s, _CXY], table[s, _CYY]
            q_max, step, inv_cxx = table[s, _QMAX], table[s, _STEP], table[s, _INV_CXX]
            f0, f1, f2, f3 = table[s, _F], table[s, _F + 1], table[s, _F + 2], table[s, _F + 3]
            bx0, bx1 = max(boxes[s, 0], tx0), min(boxes[s, 1], tx1)
            gu = gv = gxx = gxy = gyy = go = abs_u = abs_v = 0.0
            gf0 = gf1 = gf2 = gf3 = 0.0
            for py in range(max(boxes[s, 2], ty0), min(boxes[s, 3], ty1)):
                if k >= row_end[py - ty0]:
                    continue
                first, stop, g_next, ratio = _row_span(u, v, cxx, cxy, cyy, inv_cxx, q_max, py, bx0, bx1)
                dy = py + 0.5 - v
                row = (py - ty0) * tw - tx0
                for px in range(first, stop):
                    p = row + px
                    gauss = g_next
                    g_next *= ratio
                    ratio *= step
                    if k >= last[p]:
                        continue
                    a_raw = o * gauss
                    if a_raw < ALPHA_MIN:
                        continue
                    a = min(a_raw, ALPHA_MAX)
                    inv = 1.0 / (1.0 - a)
                    t_here = T[p] * inv  # the transmittance in front of this splat
                    T[p] = t_here
                    w = a * t_here
                    g0, g1, g2, g3 = g_pix[p, 0], g_pix[p, 1], g_pix[p, 2], g_pix[p, 3]
                    gf0 += w * g0
                    gf1 += w * g1
                    gf2 += w * g2
                    gf3 += w * g3
                    in_front = g0 * f0 + g1 * f1 + g2 * f2 + g3 * f3
                    from_behind = g0 * behind[p, 0] + g1 * behind[p, 1] + g2 * behind[p, 2] + g3 * behind[p, 3]
                    d_a = t_here * in_front + inv * (g_pix[p, 4] - from_behind)
                    behind[p, 0] += w * f0
                    behind[p, 1] += w * f1
                    behind[p, 2] += w * f2
                    behind[p, 3] += w * f3
                    if a_raw > ALPHA_MAX:
                        continue  # clamped: no gradient to opacity or shape
                    go += gauss * d_a
                    d_q = -0.5 * a_raw * d_a
                    dx = px + 0.5 - u
                    gxx += d_q * dx * dx
                    gxy += d_q * 2.0 * dx * dy
                    gyy += d_q * dy * dy
                    du = -2.0 * d_q * (cxx * dx + cxy * dy)
                    dv = -2.0 * d_q * (cxy * dx + cyy * dy)
                    gu += du
                    gv += dv
                    abs_u += abs(du)
                    abs_v += abs(dv)
            entry_grad[k, _G_U] = gu
            entry_grad[k, _G_V] = gv
            entry_grad[k, _G_CXX] = gxx
            entry_grad[k, _G_CXY] = gxy
            entry_grad[k, _G_CYY] = gyy
            entry_grad[k, _G_OPACITY] = go
            entry_grad[k, _G_ABS_U] = abs_u
            entry_grad[k, _G_ABS_V] = abs_v
            entry_grad[k, _G_FEAT] = gf0
            entry_grad[k, _G_FEAT + 1] = gf1
            entry_grad[k, _G_FEAT + 2] = gf2
            entry_grad[k, _G_FEAT + 3] = gf3


def splat_table(uv: np.ndarray, conic: np.ndarray, opacity: np.ndarray, feat: np.ndarray) -> np.ndarray:
    """[N, _F + 4] float64: centre, opacity, conic, then what every row of a splat reuses
    (q where alpha falls to 1/255, exp(-cxx), 1 / cxx), then the 4 features. Culled splats
    (conic 0, never binned) get whatever the arithmetic gives."""
    n = len(uv)
    table = np.empty((n, _F + N_FEAT))
    table[:, _U : _V + 1] = uv
    table[:, _O] = opacity
    table[:, _CXX : _CYY + 1] = conic
    with np.errstate(divide="ignore", invalid="ignore"):
        table[:, _QMAX] = 2.0 * np.log(opacity / ALPHA_MIN)
        table[:, _STEP] = np.exp(-conic[:, 0])
        table[:, _INV_CXX] = 1.0 / conic[:, 0]
    table[:, _F : _F + feat.shape[1]] = feat
    table[:, _F + feat.shape[1] :] = 0.0
    return table


@numba.njit(parallel=True, cache=True)
def sum_entries(ids: np.ndarray, hit: np.ndarray, entry_grad: np.ndarray, n: int, n_threads: int) -> np.ndarray:
    """Per-splat sums [N, columns] of the per-entry gradients [E, columns]. Thread j sums the
    splats with id % n_threads == j, so no two threads write one row and the order of the sum
    is fixed (deterministic); entries that hit no pixel are 0 and skipped."""
    n_entries, n_col = entry_grad.shape
    out = np.zeros((n, n_col))
    for j in numba.prange(n_threads):
        for k in range(n_entries):
            s = ids[k]
            if hit[k] and s % n_threads == j:
                for c in range(n_col):
                    out[s, c] += entry_grad[k, c]
    return out


# ------------------------------------------------------------------------------ autograd
class _Plan:
    """One camera's tile lists: what the backward needs besides the tensors."""

    def __init__(self, boxes: np.ndarray, depth: np.ndarray, width: int, height: int):
        self.width, self.height = width, height
        n_tx, n_ty = -(-width // TILE), -(-height // TILE)
        order = np.argsort(depth, kind="stable")
        self.boxes = boxes
        self.offsets, self.ids = bin_tiles(boxes, order, n_tx, n_ty)


def _np64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float64).numpy())


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, uv, conic, opacity, feat, plan, absgrad_out):  # type: ignore[override]
        n, k = feat.shape
        table = splat_table(_np64(uv), _np64(conic), _np64(opacity), _np64(feat))
        H, W = plan.height, plan.width
        out_feat = np.empty((H, W, N_FEAT))
        out_t = np.empty((H, W))
        out_end = np.empty((H, W), np.int64)
        out_hit = np.zeros(len(plan.ids), np.bool_)
        composite_forward(
            table, plan.boxes, plan.offsets, plan.ids, W, H, out_feat, out_t, out_end, out_hit, numba.get_num_threads()
        )
        ctx.table, ctx.plan, ctx.k = table, plan, k
        ctx.saved = (out_t, out_end, out_hit)
        ctx.absgrad_out = absgrad_out
        dtype = feat.dtype
        return torch.from_numpy(out_feat[..., :k]).to(dtype), torch.from_numpy(1.0 - out_t).to(dtype)[..., None]

    @staticmethod
    def backward(ctx, grad_feat, grad_alpha):  # type: ignore[override]
        plan, k = ctx.plan, ctx.k
        n = len(ctx.table)
        H, W = plan.height, plan.width
        g_feat = np.zeros((H, W, N_FEAT))
        g_feat[..., :k] = grad_feat.to(torch.float64).numpy()
        entry_grad = np.zeros((len(plan.ids), N_COLUMNS))  # entries behind every pixel stay 0
        composite_backward(
            ctx.table,
            plan.boxes,
            plan.offsets,
            plan.ids,
            W,
            H,
            *ctx.saved,
            g_feat,
            _np64(grad_alpha[..., 0]),
            entry_grad,
            numba.get_num_threads(),
        )
        g = torch.from_numpy(sum_entries(plan.ids, ctx.saved[2], entry_grad, n, numba.get_num_threads())).T
        dtype = grad_feat.dtype
        if ctx.absgrad_out is not None:
            ctx.absgrad_out += g[_G_ABS_U : _G_ABS_V + 1].T.to(ctx.absgrad_out.dtype)
        d_uv = g[_G_U : _G_V + 1].T.to(dtype)
        d_conic = g[_G_CXX : _G_CYY + 1].T.to(dtype)
        d_feat = g[_G_FEAT : _G_FEAT + k].T.to(dtype)
        return d_uv, d_conic, g[_G_OPACITY].to(dtype), d_feat, None, None


def composite(
    uv: torch.Tensor,  # [N, 2] pixel centres
    conic: torch.Tensor,  # [N, 3] inverse 2D covariances (xx, xy, yy)
    opacity: torch.Tensor,  # [N]
    feat: torch.Tensor,  # [N, K] features to blend (colour, depth), K <= 4
    boxes: torch.Tensor,  # [N, 4] int pixel boxes x0, x1, y0, y1 (half-open; empty = culled)
    depth: torch.Tensor,  # [N] sort key, front = smallest
    width: int,
    height: int,
    absgrad_out: torch.Tensor | None = None,  # [N, 2]: backward adds per-pixel |dL/d uv| here
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-blend ``feat`` front to back: (sum of weight * feat [H, W, K], alpha [H, W, 1]).

    Differentiable in ``uv``, ``conic``, ``opacity`` and ``feat``; the boxes and the depth
    order are constants, as in every 3DGS rasteriser.
    """
    if feat.shape[1] > N_FEAT:
        raise ValueError(f"the CPU rasteriser blends at most {N_FEAT} features per splat, got {feat.shape[1]}")
    b = np.ascontiguousarray(boxes.detach().cpu().numpy().astype(np.int64))
    plan = _Plan(b, depth.detach().cpu().double().numpy(), width, height)
    return _Composite.apply(uv, conic, opacity, feat, plan, absgrad_out)
