"""Photometric losses and image metrics on [..., H, W, 3] tensors in [0, 1]."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .render import quat_to_rotmat


@functools.lru_cache(maxsize=8)
def _gauss_window(size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(device=device, dtype=dtype)
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian 11x11 window, sigma 1.5) of two [..., H, W, 3] images."""
    x = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    y = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    w = _gauss_window(window, sigma, str(x.device), x.dtype)
    conv = functools.partial(F.conv2d, weight=w, padding=window // 2, groups=3)
    mu_x, mu_y = conv(x), conv(y)
    sxx = conv(x * x) - mu_x**2
    syy = conv(y * y) - mu_y**2
    sxy = conv(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    d = (a - b).abs()
    if mask is None:
        return d.mean()
    return (d * mask).sum() / (mask.sum() * d.shape[-1]).clamp(min=1.0)


def photometric(a: torch.Tensor, b: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """3DGS's image loss: (1 - lambda) L1 + lambda (1 - SSIM), lambda = 0.2."""
    return (1.0 - ssim_weight) * l1(a, b) + ssim_weight * (1.0 - ssim(a, b))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.detach().float() - b.detach().float()) ** 2).clamp(min=1e-12)
    return float(10.0 * torch.log10(1.0 / mse))


def shape_penalty(log_scales: torch.Tensor, max_ratio: float, max_scale: float) -> torch.Tensor:
    """[N] per-splat penalty, in log units, on a longest axis over ``max_ratio`` x the middle one
    (a needle: long in one axis only; a surface splat, a disc, is long in two) or over
    ``max_scale`` (metres): 0 inside the bounds. ``log_scales`` [N, 3]."""
    ordered = log_scales.sort(-1).values
    longest = ordered[..., 2]
    ratio = longest - ordered[..., 1] - math.log(max_ratio)
    return torch.relu(ratio) + torch.relu(longest - math.log(max_scale))


def normal_extent(quats: torch.Tensor, scales: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """[N] each splat's standard deviation along a direction (metres): sqrt(n^T R S^2 R^T n) for
    ``quats`` [N, 4] wxyz, ``scales`` [N, 3] metres and unit ``normals`` [N, 3]."""
    local = torch.einsum("nij,ni->nj", quat_to_rotmat(quats), normals)  # n in the splat's axes
    return (scales.square() * local.square()).sum(-1).clamp_min(1e-20).sqrt()


def flat_penalty(quats: torch.Tensor, scales: torch.Tensor, normals: torch.Tensor, max_extent: float) -> torch.Tensor:
    """[N] per-splat penalty, in log units, on a standard deviation along ``normals`` over
    ``max_extent`` (metres): 0 for a splat lying flat on its surface. One view cannot see how
    deep a splat facing it is; a splat long along its surface's normal is a dot from the photo and
    a streak from every other view."""
    return torch.relu(torch.log(normal_extent(quats, scales, normals)) - math.log(max_extent))
