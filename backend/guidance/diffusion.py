"""Diffusion arithmetic shared by the score-distillation terms (SAS, MVDream SDS).

Notation follows METHOD A.4: ``ᾱ_t`` is the scheduler's ``alphas_cumprod[t]``,
``z_t = sqrt(ᾱ_t) z + sqrt(1 − ᾱ_t) ε`` and the one-step estimate of the clean latent is
``x̂0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t)`` (Eq. 12 written with α_t = 1, β_t = −σ_t/α_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TimestepSchedule:
    """t ~ U(early) for the first ``switch_step`` iterations, then U(late) (METHOD A.4),
    as fractions of the scheduler's ``num_train_timesteps``."""

    early: tuple[float, float] = (0.02, 0.98)
    late: tuple[float, float] = (0.02, 0.5)
    switch_step: int = 1000
    num_train_timesteps: int = 1000

    def bounds(self, step: int) -> tuple[int, int]:
        lo, hi = self.early if step < self.switch_step else self.late
        n = self.num_train_timesteps
        return int(lo * n), int(hi * n)

    def sample(
        self, step: int, batch: int = 1, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """``batch`` integer timesteps in ``[lo, hi]`` for this iteration (on ``device``)."""
        lo, hi = self.bounds(step)
        t = torch.randint(lo, hi + 1, (batch,), generator=generator)
        return t.to(device)


def _abar(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    a = alphas_cumprod.to(device=like.device, dtype=torch.float32)[t.to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))


def add_noise(z: Tensor, noise: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Forward diffusion ``z_t`` (float32 arithmetic, returned in ``z``'s dtype)."""
    a = _abar(alphas_cumprod, t, z)
    return (a.sqrt() * z.float() + (1 - a).sqrt() * noise.float()).to(z.dtype)


def predict_x0(z_t: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Eq. 12: the one-step denoised latent ``x̂0`` from ``z_t`` and the predicted noise."""
    a = _abar(alphas_cumprod, t, z_t)
    return ((z_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()).to(z_t.dtype)


def sds_weight(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """w(t) = 1 − ᾱ_t (DreamFusion's choice; threestudio's ``weighting_strategy="sds"``),
    broadcastable against ``like``."""
    return 1 - _abar(alphas_cumprod, t, like)


def classifier_free(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    return eps_uncond + scale * (eps_cond - eps_uncond)


def distillation_loss(z: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``½ w(t) ‖z − sg(target)‖²`` summed over the latent and averaged over the batch, whose
    gradient on ``z`` is ``w(t) (z − target)`` (Eq. 14; SDS when target = z − (ε̂ − ε))."""
    diff = z.float() - target.detach().float()
    return 0.5 * (weight * diff.square()).sum() / z.shape[0]


def images_to_unit_range(rgb: Tensor) -> Tensor:
    """Render output ``[B, H, W, 3]`` in [0, 1] -> VAE input ``[B, 3, H, W]`` in [-1, 1]."""
    return rgb.permute(0, 3, 1, 2) * 2 - 1


def encode(vae, rgb: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Differentiable latents of renders ``[B, H, W, 3]`` in [0, 1], scaled by the VAE's
    ``scaling_factor``. ``AutoencoderKL`` uses the posterior mean (deterministic);
    ``AutoencoderTiny`` (TAESD, PERFORMANCE.md's lever) its direct output."""
    x = images_to_unit_range(rgb)
    dtype = dtype or next(vae.parameters()).dtype
    out = vae.encode(x.to(dtype))
    latents = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
    return latents * vae.config.scaling_factor
