"""One renderer interface: gsplat on CUDA, a compiled tile rasteriser on CPU, a torch reference.

Backends (``render(..., backend=...)``; ``"auto"`` picks the first that fits the tensors):

    "gsplat"   CUDA: ``gsplat.rasterization`` (this module is its only caller)
    "numba"    CPU: the tile rasteriser of :mod:`backend.gaussians.raster_cpu`, with an
               analytic backward; 30-250x faster than the reference (bench/results/cpu_raster.md)
    "torch"    any device: the pure-torch pair-list reference below, the oracle the tests
               hold the other two to

``use_backend("torch")`` (a context manager) changes what ``"auto"`` means inside a block,
so a pipeline or a check can run the reference without threading an argument through.

All paths return the same :class:`RenderOutput`, whose ``info`` dict is shaped like gsplat's
(``packed=False``) so gsplat's densification strategies read it unchanged:

    info["means2d"]   [C, N, 2]  projected centres in pixels; ``retain_grad`` is set, and
                                 with ``absgrad=True`` ``.absgrad`` is filled by backward
    info["radii"]     [C, N, 2]  int32 half-extents of each splat's screen box (0 = culled)
    info["width"], info["height"], info["n_cameras"], info["gaussian_ids"] (None)

The CPU paths follow gsplat's conventions so that they agree: pixel centres at
+0.5, a 0.3 px^2 low-pass added to each 2D covariance (``eps2d``), alpha clamped at 0.99,
pairs below alpha 1/255 skipped, and a pixel stops accumulating once transmittance would
fall to 1e-4 or below.

Its cost is proportional to the (pixel, splat) pairs inside each splat's box, not N x P
(see ../shared/PERFORMANCE.md): project, expand boxes into pairs, sort pairs by pixel then
depth, and get each pair's transmittance from a segmented cumulative sum of log(1 - alpha).
An optional no-grad pre-pass drops each pixel's hidden tail before the differentiable pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from blender_addon.core.sh import sh_basis_terms
from blender_addon.core.splat_arrays import SH_C0

if TYPE_CHECKING:  # only for annotations; any object with viewmats, Ks, width, height works
    from .cameras import Cameras

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
BACKENDS = ("auto", "gsplat", "numba", "torch")

_AUTO: ContextVar[str] = ContextVar("render_backend", default="auto")


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # [C, H, W, 3]
    alpha: torch.Tensor  # [C, H, W, 1]
    depth: torch.Tensor  # [C, H, W, 1] expected depth (alpha-normalised, camera z)
    info: dict


def gsplat_available(device: torch.device | str) -> bool:
    if torch.device(device).type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Inside the block, ``render(..., backend="auto")`` means ``backend``.

    >>> with use_backend("torch"):   # the reference renderer, e.g. for a check
    ...     out = render(means, quats, scales, opacities, colors, cams)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    token = _AUTO.set(backend)
    try:
        yield
    finally:
        _AUTO.reset(token)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend ``render`` will use for tensors on ``device``."""
    if backend == "auto":
        backend = _AUTO.get()
    if backend == "auto":
        if gsplat_available(device):
            return "gsplat"
        return "numba" if torch.device(device).type == "cpu" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    return backend


def render(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] wxyz (normalised inside)
    scales: torch.Tensor,  # [N, 3] activated (metres)
    opacities: torch.Tensor,  # [N] activated
    colors: torch.Tensor,  # [N, 3] rgb, or [N, K, 3] SH coefficients when sh_degree is given
    cameras: Cameras,
    *,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,  # [3]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    absgrad: bool = False,
    backend: str = "auto",  # "auto" | "gsplat" | "numba" | "torch"
    cull_hidden: bool = True,  # torch only: drop each pixel's hidden tail before autograd
) -> RenderOutput:
    """Render splats from every camera. See the module docstring for conventions."""
    backend = resolve_backend(backend, means.device)
    if backend == "gsplat":
        return _render_gsplat(
            means,
            quats,
            scales,
            opacities,
            colors,
            cameras,
            sh_degree,
            background,
            near_plane,
            far_plane,
            eps2d,
            absgrad,
        )
    rgb_per_cam = None
    if sh_degree is not None:
        rgb_per_cam = [eval_sh(colors, means, cameras.camera_centers()[c], sh_degree) for c in range(len(cameras))]
    args = (means, quats, scales, opacities, colors, rgb_per_cam, cameras, background, near_plane, far_plane)
    if backend == "numba":
        return _render_numba(*args, eps2d, absgrad)
    return _render_torch(*args, eps2d, absgrad, cull_hidden)


# ----------------------------------------------------------------------------- gsplat
def _render_gsplat(means, quats, scales, opacities, colors, cameras, sh_degree, background, near, far, eps2d, absgrad):
    from gsplat import rasterization

    C = len(cameras)
    bg = None if background is None else background.expand(C, 3)
    out, alpha, info = rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=cameras.viewmats,
        Ks=cameras.Ks,
        width=cameras.width,
        height=cameras.height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=sh_degree,
        backgrounds=bg,
        render_mode="RGB+ED",
        absgrad=absgrad,
        packed=False,
    )
    return RenderOutput(rgb=out[..., :3], alpha=alpha, depth=out[..., 3:4], info=info)


# ------------------------------------------------------------------------------ torch
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4] wxyz -> [N, 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def project(means, quats, scales, viewmat, K, eps2d):
    """EWA projection of 3D Gaussians into one pinhole camera.

    Returns camera-space depth [N], pixel centres [N, 2] and 2D covariances [N, 2, 2].
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t  # [N, 3]
    z = p[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zs = z.clamp(min=1e-6)
    uv = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], dim=-1)
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R_q S
    zero = torch.zeros_like(z)
    J = torch.stack(
        [
            torch.stack([fx / zs, zero, -fx * p[:, 0] / (zs * zs)], -1),
            torch.stack([zero, fy / zs, -fy * p[:, 1] / (zs * zs)], -1),
        ],
        dim=1,
    )  # [N, 2, 3]
    # cov2d = J R (M M^T) R^T J^T = A A^T with A = J R M [N, 2, 3]; written with broadcast
    # products, not batched 3x3 matmuls (bmm of tiny matrices dominated this function on CPU)
    A = ((J @ R)[:, :, :, None] * M[:, None, :, :]).sum(2)
    cov2d = (A[:, :, None, :] * A[:, None, :, :]).sum(-1)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    return z, uv, cov2d


@dataclass
class ScreenFootprint:
    """Where each splat lands on one camera's screen (shared by the CPU backends).

    valid  [N] bool     in front of the near plane, before the far one, on screen, visible
    radii  [N, 2] int32 half-extents of the pixel box, 0 where not valid (gsplat's ``radii``)
    boxes  [N, 4] long  half-open pixel ranges x0, x1, y0, y1 clipped to the image; empty
                        (all 0) where not valid
    conic  [N, 3]       inverse 2D covariance (xx, xy, yy), differentiable; 0 where not valid
    """

    valid: torch.Tensor
    radii: torch.Tensor
    boxes: torch.Tensor
    conic: torch.Tensor


def screen_footprint(z, uv, cov2d, opacities, width: int, height: int, near: float, far: float) -> ScreenFootprint:
    """Pixel boxes and conics of projected splats (``project``'s outputs).

    Box half-extents are 3.33 sigma (gsplat), tightened to where opacity * exp(-q/2) >= 1/255;
    pixel (px, py) has its centre at (px + 0.5, py + 0.5) and is inside when that centre is.
    """
    a, b, d = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * d - b * b
    with torch.no_grad():
        k = torch.sqrt(2.0 * torch.log((opacities.detach() / ALPHA_MIN).clamp(min=1.0))).clamp(max=3.33)
        rx, ry = k * a.detach().clamp(min=0).sqrt(), k * d.detach().clamp(min=0).sqrt()
        zd = z.detach()
        valid = (zd > near) & (zd < far) & (det.detach() > 0) & torch.isfinite(det.detach()) & (k > 0)
        u, v = uv.detach().unbind(-1)
        valid &= (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
        rad = torch.stack([rx.ceil(), ry.ceil()], -1).clamp(min=0, max=2**30)
        radii = torch.where(valid[:, None], rad, torch.zeros_like(rad)).to(torch.int32)
        x0 = (u - rx - 0.5).ceil().clamp(0, width)
        x1 = (u + rx - 0.5).floor().add(1).clamp(0, width)
        y0 = (v - ry - 0.5).ceil().clamp(0, height)
        y1 = (v + ry - 0.5).floor().add(1).clamp(0, height)
        boxes = torch.stack([x0, x1, y0, y1], -1).nan_to_num(0.0).long() * valid[:, None]
    # safe denominators: a culled splat's conic is 0 and gets a zero (not NaN) gradient
    safe = torch.where(valid, det, torch.ones_like(det))
    conic = torch.stack([d, -b, a], -1) / safe[:, None]
    conic = torch.where(valid[:, None], conic, torch.zeros_like(conic))
    return ScreenFootprint(valid, radii, boxes, conic)


def _pairs(boxes, valid, order, width):
    """Expand each valid splat's pixel box into (pixel, splat) pairs, sorted by pixel then depth.

    ``order`` lists splat ids front to back. Returns pixel ids [P] and splat ids [P].
    """
    ids = order[valid[order]]  # valid splats, front to back
    x0, x1, y0, y1 = boxes[ids].unbind(-1)
    w, h = (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)
    counts = w * h
    keep = counts > 0
    ids, x0, y0, w, counts = ids[keep], x0[keep], y0[keep], w[keep], counts[keep]
    total = int(counts.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    rank = torch.repeat_interleave(torch.arange(len(ids), device=boxes.device), counts)  # depth rank of each pair
    start = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=boxes.device) - start[rank]
    wr = w[rank]
    pix = (y0[rank] + k // wr) * width + (x0[rank] + k % wr)
    # one sort on (pixel, depth rank): pixels ascending, front to back inside each pixel
    key = pix * len(ids) + rank
    key, perm = torch.sort(key)
    pix = pix[perm]
    return pix, ids[rank[perm]]


def _composite_weights(alpha_raw, pix):
    """Per-pair blending weights alpha * T from alphas sorted by (pixel, depth).

    T is the exclusive product of (1 - alpha) over earlier pairs of the same pixel, taken
    as a segmented cumulative sum of log(1 - alpha) in float64 (a float32 running sum over
    millions of pairs cancels badly). Pairs under ALPHA_MIN contribute nothing, and a pixel
    stops once its transmittance would reach T_MIN (gsplat's rule).
    """
    alpha = torch.where(alpha_raw < ALPHA_MIN, torch.zeros_like(alpha_raw), alpha_raw.clamp(max=ALPHA_MAX))
    log1m = torch.log1p(-alpha.double())
    incl = torch.cumsum(log1m, 0)
    new_seg = torch.ones_like(pix, dtype=torch.bool)
    new_seg[1:] = pix[1:] != pix[:-1]
    seg_id = torch.cumsum(new_seg.long(), 0) - 1
    seg_base = (incl - log1m)[new_seg]  # running sum before each pixel's first pair
    excl = incl - log1m - seg_base[seg_id]
    T = torch.exp(excl)
    alive = (excl + log1m) > torch.log(torch.tensor(T_MIN, dtype=torch.float64))
    return (alpha * T.to(alpha.dtype)) * alive, alive, T


def _project_all(means, quats, scales, cameras, eps2d, absgrad):
    """Every camera's projection, and the ``means2d`` [C, N, 2] gsplat's strategies read."""
    dt = means.dtype
    projections = [
        project(means, quats, scales, cameras.viewmats[c].to(dt), cameras.Ks[c].to(dt), eps2d)
        for c in range(len(cameras))
    ]
    means2d = torch.stack([uv for _, uv, _ in projections])  # [C, N, 2]
    if means2d.requires_grad:
        means2d.retain_grad()
    if absgrad:
        means2d.absgrad = torch.zeros(means2d.shape, dtype=dt, device=means.device)
    return projections, means2d


def _info(projections, means2d, radii, cameras) -> dict:
    return {
        "means2d": means2d,
        "radii": torch.stack(radii),
        "width": cameras.width,
        "height": cameras.height,
        "n_cameras": len(cameras),
        "gaussian_ids": None,
        "depths": torch.stack([p[0] for p in projections]).detach(),
    }


def _render_torch(
    means, quats, scales, opacities, colors, rgb_per_cam, cameras, background, near, far, eps2d, absgrad, cull_hidden
):
    C, W, H = len(cameras), cameras.width, cameras.height
    dev = means.device
    projections, means2d = _project_all(means, quats, scales, cameras, eps2d, absgrad)
    absgrad_buf = means2d.absgrad if absgrad else None
    radii, rgbs, alphas, depths = [], [], [], []
    bg = torch.zeros(3, dtype=means.dtype, device=dev) if background is None else background.to(dev)
    for c in range(C):
        z, _, cov2d = projections[c]
        uv = means2d[c]
        fp = screen_footprint(z, uv, cov2d, opacities, W, H, near, far)
        radii.append(fp.radii)
        with torch.no_grad():
            order = torch.argsort(z.detach(), stable=True)  # depth ties: by index, as gsplat's stable sort
            pix, gid = _pairs(fp.boxes, fp.valid, order, W)
        color = colors if rgb_per_cam is None else rgb_per_cam[c]
        rgb, alpha, depth = _blend(pix, gid, uv, fp.conic, opacities, color, z, W, H, absgrad_buf, c, cull_hidden)
        rgbs.append(rgb + (1.0 - alpha) * bg)
        alphas.append(alpha)
        depths.append(depth / alpha.clamp(min=1e-10))
    info = _info(projections, means2d, radii, cameras)
    return RenderOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), info)


# ------------------------------------------------------------------------------ numba
def _render_numba(means, quats, scales, opacities, colors, rgb_per_cam, cameras, background, near, far, eps2d, absgrad):
    """The same projection and footprints as the reference; compositing by raster_cpu's kernels."""
    from .raster_cpu import composite

    if means.device.type != "cpu":
        raise ValueError(f"the numba renderer runs on CPU tensors, got {means.device}; use backend='auto'")
    C, W, H = len(cameras), cameras.width, cameras.height
    projections, means2d = _project_all(means, quats, scales, cameras, eps2d, absgrad)
    radii, rgbs, alphas, depths = [], [], [], []
    bg = torch.zeros(3, dtype=means.dtype) if background is None else background
    for c in range(C):
        z, _, cov2d = projections[c]
        uv = means2d[c]
        fp = screen_footprint(z, uv, cov2d, opacities, W, H, near, far)
        radii.append(fp.radii)
        color = colors if rgb_per_cam is None else rgb_per_cam[c]
        feat = torch.cat([color, z[:, None].to(color.dtype)], -1)  # [N, K + 1]: colour, then depth
        absgrad_out = means2d.absgrad[c] if absgrad else None
        acc, alpha = composite(uv, fp.conic, opacities, feat, fp.boxes, z, W, H, absgrad_out)
        rgbs.append(acc[..., :-1] + (1.0 - alpha) * bg)
        alphas.append(alpha)
        depths.append(acc[..., -1:] / alpha.clamp(min=1e-10))
    info = _info(projections, means2d, radii, cameras)
    return RenderOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), info)


def _pair_alpha(pix, gid, uv, conic, opacities, W):
    px = (pix % W).to(uv.dtype) + 0.5
    py = torch.div(pix, W, rounding_mode="floor").to(uv.dtype) + 0.5
    m = uv[gid]
    dx, dy = px - m[:, 0], py - m[:, 1]
    cg = conic[gid]
    q = cg[:, 0] * dx * dx + 2.0 * cg[:, 1] * dx * dy + cg[:, 2] * dy * dy
    return opacities[gid] * torch.exp(-0.5 * q), m


def _blend(pix, gid, uv, conic, opacities, color, z, W, H, absgrad_buf, cam, cull_hidden):
    dev = uv.device
    if cull_hidden and pix.numel():
        with torch.no_grad():  # pre-pass: drop pairs behind each pixel's termination point
            a0, _ = _pair_alpha(pix, gid, uv.detach(), conic.detach(), opacities.detach(), W)
            _, alive, _ = _composite_weights(a0, pix)
            visible = alive & (a0 >= ALPHA_MIN)
            pix, gid = pix[visible], gid[visible]
    alpha_raw, pair_means = _pair_alpha(pix, gid, uv, conic, opacities, W)
    if absgrad_buf is not None and pair_means.requires_grad:
        # AbsGS: accumulate |dL/d mean2d| per pixel, not the signed sum autograd gives.
        def _accumulate_abs(grad: torch.Tensor) -> None:
            absgrad_buf[cam].index_add_(0, gid, grad.abs())

        pair_means.register_hook(_accumulate_abs)
    weight, _, _ = _composite_weights(alpha_raw, pix)  # [P]
    out_rgb = torch.zeros(H * W, color.shape[-1], dtype=color.dtype, device=dev)
    out_rgb = out_rgb.index_add(0, pix, weight[:, None] * color[gid])
    out_a = torch.zeros(H * W, dtype=weight.dtype, device=dev).index_add(0, pix, weight)
    out_d = torch.zeros(H * W, dtype=weight.dtype, device=dev).index_add(0, pix, weight * z[gid])
    return out_rgb.view(H, W, -1), out_a.view(H, W, 1), out_d.view(H, W, 1)


# ------------------------------------------------------------------------- SH colour
def eval_sh(coeffs: torch.Tensor, means: torch.Tensor, cam_center: torch.Tensor, degree: int) -> torch.Tensor:
    """RGB [N, 3] from real SH coefficients [N, K, 3] seen from ``cam_center`` (3DGS basis, +0.5, clamped at 0)."""
    d = torch.nn.functional.normalize(means - cam_center, dim=-1)
    x, y, z = d.unbind(-1)
    basis = [torch.full_like(x, SH_C0), *sh_basis_terms(x, y, z, degree)]
    B = torch.stack(basis, -1)  # [N, (d+1)^2]
    return (torch.einsum("nk,nkc->nc", B, coeffs[:, : B.shape[1]]) + 0.5).clamp(min=0.0)
