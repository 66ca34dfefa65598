"""SV3D orbit-video generation: one image -> 21 views around it (Instax3D generation, METHOD B.1).

Built from diffusers blocks (``UNetSpatioTemporalConditionModel``, the VAE,
``CLIPVisionModelWithProjection``) loaded by :mod:`backend.models`, plus our conditioning
glue, which follows SV3D's published sampling setup (shared/WEIGHTS.md, "SV3D"):

- **UNet input** per frame: 8 channels = ``c_in * x`` (4, the noisy latent) + the input
  image's VAE latent (4), *unscaled* (the posterior mode, no 0.18215), the same for every
  frame. The image fed to the VAE carries ``cond_aug`` noise: ``image + cond_aug * randn``.
- **Cross-attention**: one token, the CLIP image embedding of the (noise-free) input.
- **Vector** ("added time") input per frame, sinusoidal embeddings (cos first) concatenated:
  ``sv3d_u``: cond_aug (256); ``sv3d_p``: cond_aug (256) + polar (512) + azimuth (512),
  in radians, polar = 90 deg - elevation, azimuth relative to the last frame.
- **Unconditional branch**: both image conditions (the latent and the CLIP token) are zero;
  the vector is kept.
- **Sampler**: EDM with v-prediction. Sigmas from the EDM (Karras) schedule,
  sigma_min 0.002, sigma_max 700, rho 7, then 0. Denoiser
  ``D(x; s) = x / (s^2 + 1) - s / sqrt(s^2 + 1) * F(x / sqrt(s^2 + 1), 0.25 ln s)``;
  Euler steps ``x += (s' - s) (x - D) / s``; the start is ``randn * sqrt(1 + sigma_max^2)``.
- **Guidance**: triangular CFG over frames, ``min_cfg`` (1.0) at the first and last frame,
  ``max_cfg`` (2.5) in the middle: ``D = D_u + w_f (D_c - D_u)``.
- **Decoding**: latents / 0.18215 through the VAE decoder, a few frames at a time.
- **Orbit**: 21 frames at elevation 10 deg, azimuths evenly spaced; frame i sits at
  ``(i + 1) * 360 / 21`` deg from the input view, so the LAST frame is the input view.

The UNet is driven by :func:`unet_forward`, which runs the diffusers UNet's own blocks but
takes the vector embedding per frame (sv3d_p needs that; diffusers' ``forward`` adds one
vector per video). For sv3d_u it equals diffusers' ``forward`` (a test pins this).

Frames reach the user as they are produced: ``progress("generate", step, steps)`` per
sampling step and ``progress("decode", frame, 21)`` per decoded frame; the pipeline shows
the finished orbit as a preview (see ``backend.pipelines.instax``).

The input is prepared by :func:`sv3d_input`: the head cut out of the photo (MediaPipe selfie
segmentation, :func:`backend.face.person_mask`), centred on white, square, ``resolution`` px.

Usage::

    parts = load_sv3d("sv3d_u", device="cuda", dtype=torch.float16)   # ModelMissingError if absent
    image_576_white_bg, crop_box = sv3d_input(photo, head_fit, 576)   # head_fit: backend.prior.fit_head(...)
    video = generate_orbit(parts, image_576_white_bg, SV3DSettings(), seed=0, reporter=reporter)
    video.frames          # [21, 576, 576, 3] uint8
    video.azimuth_deg     # [21], 0 = the input view (the last frame)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from backend.errors import CancelledError, ModelMissingError
from backend.face.segment import person_mask

if TYPE_CHECKING:
    from backend.prior.fit import HeadFit

__all__ = [
    "SV3DSettings",
    "OrbitVideo",
    "VARIANTS",
    "load_sv3d",
    "sv3d_input",
    "orbit_azimuths",
    "sinusoidal",
    "vector_condition",
    "edm_sigmas",
    "triangle_cfg",
    "unet_forward",
    "generate_orbit",
]

# Vector input widths (WEIGHTS.md): cond_aug only, or cond_aug + polar + azimuth.
VARIANTS = {"sv3d_u": (256,), "sv3d_p": (256, 512, 512)}


@dataclass(frozen=True)
class SV3DSettings:
    """SV3D sampling settings; defaults are SV3D's published ones (WEIGHTS.md, METHOD B.1)."""

    variant: str = "sv3d_u"  # "sv3d_u" (no camera input; the paper's zero-camera reading) or "sv3d_p"
    frames: int = 21
    resolution: int = 576  # px, square; latents are resolution / 8
    steps: int = 50  # Euler steps
    min_cfg: float = 1.0  # triangular CFG: first and last frame
    max_cfg: float = 2.5  # triangular CFG: middle frame
    cond_aug: float = 1e-5
    elevation_deg: float = 10.0  # sv3d_p's camera path; sv3d_u was trained at this elevation
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    decode_chunk: int = 7  # frames decoded per VAE call


@dataclass
class OrbitVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8
    azimuth_deg: np.ndarray  # [T] relative to the input view, counter-clockwise seen from above
    elevation_deg: float
    settings: SV3DSettings


# ----------------------------------------------------------------------------- loading


def load_sv3d(
    variant: str = "sv3d_u",
    *,
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
):
    """The SV3D parts (``backend.models.SV3DParts``) for ``variant``, from ``path`` or the registry.

    ``path`` (default: the registry's folder for ``variant``) is the folder holding Stability's
    single file (``sv3d_u.safetensors`` / ``sv3d_p.safetensors``, converted at load time by
    :func:`backend.models.sv3d.load_sv3d`), that file, or a folder in the diffusers layout.
    Raises ``ModelMissingError`` (``ModelCorruptError`` for a damaged or wrong file) naming
    ``python -m backend models download --only <variant>``.
    """
    from backend import models

    if variant not in VARIANTS:
        raise ValueError(f"unknown SV3D variant {variant!r}; choose one of {sorted(VARIANTS)}")
    folder = Path(path) if path is not None else models.model_path(variant)
    parts = models.load_sv3d(folder, dtype=dtype, device=str(device), variant=variant)
    expect = sum(VARIANTS[variant])
    got = parts.unet.config.projection_class_embeddings_input_dim
    if got != expect:
        raise ModelMissingError(
            f"The SV3D UNet at {folder} takes a {got}-d vector input, but {variant} needs {expect}-d.",
            hint=f"Point the {variant} model at the matching checkpoint (sv3d_u: 256, sv3d_p: 1280).",
        )
    return parts


# ------------------------------------------------------------------------------- input


def sv3d_input(
    image: np.ndarray, fit: HeadFit, res: int, head_fill: float = 0.7, mask: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The SV3D input: the head cut out, centred, on white, ``res`` px square.

    The crop is the square around the template's projection (head and neck stub; ``fit`` is
    the head template placed in the photo, ``backend.prior.HeadFit``) grown so the head spans
    ``head_fill`` of it. ``mask`` [H, W] in [0, 1] is the foreground (default:
    :func:`backend.face.person_mask`). Returns (image [res, res, 3] uint8, (x0, y0, side) the
    crop box in photo pixels).
    """
    from PIL import Image

    uv, _ = fit.project(fit.mesh().vertices)
    lo, hi = uv.min(0), uv.max(0)
    centre = (lo + hi) / 2
    side = int(np.ceil((hi - lo).max() / head_fill))
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    mask = person_mask(image) if mask is None else mask
    rgba = np.concatenate([image.astype(np.float32), mask[..., None] * 255.0], axis=-1)
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        rgba = np.pad(rgba, ((pad, pad), (pad, pad), (0, 0)))  # alpha 0 outside the photo
    crop = rgba[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    crop = np.asarray(
        Image.fromarray(crop.round().astype(np.uint8), "RGBA").resize((res, res), Image.Resampling.LANCZOS), np.float32
    )
    a = crop[..., 3:] / 255.0
    out = crop[..., :3] * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), (x0, y0, side)


# ------------------------------------------------------------------------ conditioning


def orbit_azimuths(frames: int = 21) -> np.ndarray:
    """Azimuths [frames] in degrees from the input view: ``(i + 1) * 360 / frames`` mod 360.

    Evenly spaced; the last frame (azimuth 0) is the input view (SV3D's default orbit).
    """
    return ((np.arange(frames) + 1) * 360.0 / frames) % 360.0


def sinusoidal(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [..., dim] of scalars x [...]: cos then sin, frequencies
    ``max_period^(-k / (dim / 2))`` (SGM's ``timestep_embedding``; diffusers'
    ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def vector_condition(
    variant: str,
    frames: int,
    cond_aug: float,
    elevation_deg: float = 10.0,
    azimuth_deg: np.ndarray | None = None,
    device="cpu",
) -> Tensor:
    """The per-frame vector input [frames, 256 or 1280] (before the UNet's ``add_embedding``)."""
    aug = sinusoidal(torch.full((frames,), float(cond_aug), device=device), VARIANTS[variant][0])
    if variant == "sv3d_u":
        return aug
    az = orbit_azimuths(frames) if azimuth_deg is None else np.asarray(azimuth_deg, dtype=np.float64)
    polar = torch.full((frames,), math.radians(90.0 - elevation_deg), device=device)
    azimuth = torch.as_tensor(np.radians(az % 360.0), dtype=torch.float32, device=device)
    return torch.cat([aug, sinusoidal(polar, VARIANTS[variant][1]), sinusoidal(azimuth, VARIANTS[variant][2])], dim=-1)


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> Tensor:
    """EDM (Karras et al. 2022) noise levels [steps + 1], from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def triangle_cfg(frames: int, min_cfg: float = 1.0, max_cfg: float = 2.5) -> Tensor:
    """Per-frame guidance [frames]: ``min_cfg`` at both ends, ``max_cfg`` at the middle, linear between."""
    if frames == 1:
        return torch.tensor([max_cfg])
    u = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    tri = 1.0 - (2.0 * u - 1.0).abs()
    return (min_cfg + (max_cfg - min_cfg) * tri).float()


# -------------------------------------------------------------------------------- UNet


def unet_forward(unet, sample: Tensor, timestep: Tensor, context: Tensor, vector: Tensor) -> Tensor:
    """Run a ``UNetSpatioTemporalConditionModel`` with a per-frame vector input.

    sample [B, T, C_in, h, w]; timestep [B] (SV3D: c_noise = 0.25 ln sigma); context
    [B, L, D] (one token per video, repeated over frames as diffusers does); vector
    [B, T, D_vec] -> ``unet.add_embedding`` per frame. Returns [B, T, C_out, h, w].
    """
    B, T = sample.shape[:2]
    dtype = sample.dtype
    t_emb = unet.time_proj(timestep.reshape(B).to(sample.device)).to(dtype)
    emb = unet.time_embedding(t_emb).repeat_interleave(T, dim=0)  # [B*T, D]
    emb = emb + unet.add_embedding(vector.reshape(B * T, -1).to(dtype))
    hidden = context.to(dtype).repeat_interleave(T, dim=0)
    x = unet.conv_in(sample.flatten(0, 1))
    indicator = torch.zeros(B, T, dtype=dtype, device=sample.device)
    skips = (x,)
    for block in unet.down_blocks:
        kw = {"encoder_hidden_states": hidden} if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kw)
        skips += res
    x = unet.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=hidden, image_only_indicator=indicator)
    n_up = 2**unet.num_upsamplers
    odd = any(s % n_up for s in sample.shape[-2:])
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        size = skips[-1].shape[2:] if (odd and i < len(unet.up_blocks) - 1) else None
        kw = {"encoder_hidden_states": hidden} if getattr(block, "has_cross_attention", False) else {}
        x = block(
            hidden_states=x,
            temb=emb,
            res_hidden_states_tuple=res,
            upsample_size=size,
            image_only_indicator=indicator,
            **kw,
        )
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(B, T, *x.shape[1:])


# ---------------------------------------------------------------------------- sampling


def _to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image))


@torch.no_grad()
def encode_conditions(
    parts, image: np.ndarray, settings: SV3DSettings, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(CLIP token [1, 1, D], VAE latent [1, 4, h, w]) of the input image [H, W, 3] uint8."""
    from PIL import Image

    device = parts.unet.device
    res = settings.resolution
    img = np.asarray(_to_pil(image).convert("RGB").resize((res, res), Image.Resampling.LANCZOS))
    pix = parts.feature_extractor(images=_to_pil(img), return_tensors="pt").pixel_values
    enc_dtype = next(parts.image_encoder.parameters()).dtype
    token = parts.image_encoder(pix.to(device=device, dtype=enc_dtype)).image_embeds[:, None, :]  # [1, 1, D]
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1.0  # [1, 3, H, W] in [-1, 1]
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(device)
    vae_dtype = next(parts.vae.parameters()).dtype
    latent = parts.vae.encode((x + settings.cond_aug * noise).to(vae_dtype)).latent_dist.mode()  # unscaled
    return token.float(), latent.float()


@torch.no_grad()
def generate_orbit(
    parts, image: np.ndarray, settings: SV3DSettings = SV3DSettings(), *, seed: int = 0, reporter=None
) -> OrbitVideo:
    """Sample an orbit video of ``image`` (HxWx3 uint8: the head centred on white, square).

    ``reporter`` (optional) gets ``progress("generate", i, steps)`` and
    ``progress("decode", j, frames)``; a cancelled reporter stops the sampling.
    """
    if settings.variant not in VARIANTS:
        raise ValueError(f"unknown SV3D variant {settings.variant!r}")
    unet, vae = parts.unet, parts.vae
    device, dtype = unet.device, unet.dtype
    T, steps = settings.frames, settings.steps
    gen = torch.Generator("cpu").manual_seed(int(seed))
    token, latent = encode_conditions(parts, image, settings, gen)
    h, w = latent.shape[-2:]
    cond = torch.cat([torch.zeros_like(latent), latent])[:, None].expand(
        2, T, *latent.shape[1:]
    )  # [2, T, 4, h, w] (uncond, cond)
    context = torch.cat([torch.zeros_like(token), token])  # [2, 1, D]
    az = orbit_azimuths(T)
    vector = vector_condition(settings.variant, T, settings.cond_aug, settings.elevation_deg, az, device=device)[
        None
    ].expand(2, -1, -1)
    scale = triangle_cfg(T, settings.min_cfg, settings.max_cfg).to(device)[:, None, None, None]  # [T, 1, 1, 1]
    sigmas = edm_sigmas(steps, settings.sigma_min, settings.sigma_max, settings.rho)
    x = torch.randn((T, 4, h, w), generator=gen).to(device) * math.sqrt(1.0 + float(sigmas[0]) ** 2)

    for i in range(steps):
        _check(reporter)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        c_in, c_skip, c_out = 1.0 / math.sqrt(s * s + 1.0), 1.0 / (s * s + 1.0), -s / math.sqrt(s * s + 1.0)
        x_in = torch.cat([(c_in * x)[None].expand(2, -1, -1, -1, -1), cond], dim=2)  # [2, T, 8, h, w]
        t = torch.full((2,), 0.25 * math.log(s), device=device)
        v = unet_forward(unet, x_in.to(dtype), t.to(dtype), context, vector).float()  # [2, T, 4, h, w]
        denoised = c_skip * x[None] + c_out * v
        d = denoised[0] + scale * (denoised[1] - denoised[0])
        x = x + (s_next - s) * (x - d) / s
        if reporter is not None:
            reporter.progress("generate", i + 1, steps, f"SV3D step {i + 1}/{steps}")

    frames = []
    latents = x / vae.config.scaling_factor
    temporal = "num_frames" in _decode_args(vae)
    for j in range(0, T, max(1, settings.decode_chunk)):
        _check(reporter)
        z = latents[j : j + settings.decode_chunk].to(next(vae.parameters()).dtype)
        out = vae.decode(z, num_frames=len(z)).sample if temporal else vae.decode(z).sample
        rgb = ((out.float().clamp(-1, 1) + 1.0) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        frames.extend(rgb)
        if reporter is not None:
            reporter.progress("decode", len(frames), T, f"orbit frame {len(frames)}/{T}")
    return OrbitVideo(np.stack(frames), az, settings.elevation_deg, settings)


def _decode_args(vae) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(vae.decode).parameters)


def _check(reporter) -> None:
    if reporter is not None and reporter.cancelled():
        raise CancelledError("The job was cancelled.")
