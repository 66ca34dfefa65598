"""Style statistics and the whitening–colouring map of SAS (METHOD A.4, Eq. 12–13).

Before optimisation, Stable Diffusion 1.5 samples a *style set* from the style prompt alone
(METHOD A.4: 20 images, CFG 7.5, 20 steps) and keeps only the statistics of its latents:
a 4-d mean μ_s and a 4×4 covariance C_s per latent channel, taken over all spatial positions
of all images (:func:`latent_stats`). During SAS, each one-step estimate ``z' = x̂0`` is mapped
onto those statistics (:func:`whitening_colouring`, Eq. 13)::

    z'_m = C_s^{1/2} C_g^{-1/2} (z' − μ_g) + μ_s

where μ_g, C_g are the statistics of z' itself (per image). The style set is generated once
per (model, prompt, seed, settings) and cached on disk (:func:`style_stats`).

Usage::

    stats = style_stats(sd, "a watercolour portrait", cache_dir=Path(".cache/style"), model_key="sd15")
    z_m = whitening_colouring(x0, stats)          # each image now has stats.mean / stats.cov
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from backend.models import SD15

#: METHOD A.4 "Style-preserving sampling": 20 images of the style prompt, CFG 7.5, 20 steps.
STYLE_SET_SIZE = 20
STYLE_SET_STEPS = 20
STYLE_SET_CFG = 7.5
#: Bump when the statistics change meaning, so old cache files are not reused.
_CACHE_VERSION = 1

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class StyleStats:
    """Latent statistics of a style set: ``mean`` [4], ``cov`` [4, 4] (float64, UNet latent
    scale, i.e. VAE latents times ``scaling_factor``), over ``n_images`` images of ``prompt``.
    ``key`` identifies the settings that produced it (see :func:`style_key`)."""

    mean: Tensor
    cov: Tensor
    n_images: int
    prompt: str
    key: str

    def save(self, path: Path | str) -> Path:
        """Write a safetensors file (tensors + metadata); atomic (temp file + ``os.replace``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"n_images": str(self.n_images), "prompt": self.prompt, "key": self.key, "version": str(_CACHE_VERSION)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {
                    "mean": self.mean.detach().double().cpu().contiguous(),
                    "cov": self.cov.detach().double().cpu().contiguous(),
                },
                tmp,
                metadata=meta,
            )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path | str) -> StyleStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            mean, cov = f.get_tensor("mean"), f.get_tensor("cov")
        if mean.shape != (4,) or cov.shape != (4, 4) or meta.get("version") != str(_CACHE_VERSION):
            raise ValueError(f"{path} is not a version-{_CACHE_VERSION} style-statistics file")
        return cls(mean=mean, cov=cov, n_images=int(meta["n_images"]), prompt=meta["prompt"], key=meta["key"])


def _per_image_stats(z: Tensor) -> tuple[Tensor, Tensor]:
    """Channel mean [B, C] and covariance [B, C, C] of each image of ``z`` [B, C, H, W]
    over its spatial positions (float64, unbiased like ``numpy.cov``)."""
    x = z.double().flatten(2)  # [B, C, N]
    n = x.shape[-1]
    mean = x.mean(-1)
    d = x - mean[..., None]
    cov = d @ d.transpose(1, 2) / max(n - 1, 1)
    return mean, cov


def latent_stats(latents: Tensor) -> tuple[Tensor, Tensor]:
    """Channel mean [C] and covariance [C, C] over the spatial positions of *all* images of
    ``latents`` [B, C, H, W] (float64; unbiased, like ``numpy.cov``)."""
    x = latents.double().transpose(0, 1).flatten(1)  # [C, B*H*W]
    return x.mean(1), torch.cov(x)


def _sym_power(cov: Tensor, power: float, eps: float) -> Tensor:
    """Symmetric matrix power by eigendecomposition, eigenvalues clamped at ``eps`` [..., C, C]."""
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(eps) ** power
    return (vecs * vals[..., None, :]) @ vecs.transpose(-1, -2)


def whitening_colouring(z: Tensor, style: StyleStats, eps: float = 1e-5) -> Tensor:
    """Eq. 13: map each image of ``z`` [B, C, H, W] onto the style's channel statistics,
    ``z_m = C_s^{1/2} C_g^{-1/2} (z − μ_g) + μ_s`` with μ_g, C_g the image's own statistics.

    As printed, Eq. 13 reads ``V_s^{-1/2}`` and ``+ μ_g``; those are typos. This is METHOD
    A.4's reading, the one that gives ``z_m`` exactly the style mean and covariance.
    Matrix roots come from ``eigh`` in float64 with eigenvalues clamped at ``eps``, so a
    constant or rank-deficient image gives finite output (its flat directions stay flat).
    Returned in ``z``'s dtype; no gradient is meant to flow through it (Eq. 14 stops it).
    """
    b, c = z.shape[:2]
    mean_g, cov_g = _per_image_stats(z)
    mean_s = style.mean.to(device=z.device, dtype=torch.float64)
    cov_s = style.cov.to(device=z.device, dtype=torch.float64)
    m = _sym_power(cov_s, 0.5, eps) @ _sym_power(cov_g, -0.5, eps)  # [B, C, C]
    x = z.double().flatten(2) - mean_g[..., None]
    out = m @ x + mean_s[None, :, None]
    return out.view(b, c, *z.shape[2:]).to(z.dtype)


# --- the style set ---------------------------------------------------------------------------


def _ip_processors(unet) -> dict:
    return {name: p for name, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")}


def _id_embed_dim(unet) -> int:
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    return next(m for m in proj.modules() if isinstance(m, torch.nn.Linear)).in_features


@contextmanager
def text_only(unet, batch: int = 1) -> Iterator[list[Tensor] | None]:
    """Run a UNet that may carry IP-Adapter(-FaceID) as plain text-conditioned SD1.5.

    diffusers' UNet with an ``ip_image_proj`` adapter *requires* ``image_embeds`` (it raises
    without them), and its IP processors would misread a bare text tensor. So inside this
    context: every IP scale is 0 (diffusers then skips the identity attention exactly),
    FaceID's LoRA (PEFT) is disabled, and the value yielded is the zero image embeddings
    ``[[2·batch, 1, D]]`` to pass as ``ip_adapter_image_embeds`` (``None`` for a UNet
    without an adapter). Scales and LoRA are restored on exit.
    """
    procs = _ip_processors(unet)
    if getattr(unet, "encoder_hid_proj", None) is None or not procs:
        yield None
        return
    saved = {name: list(p.scale) for name, p in procs.items()}
    lora = bool(getattr(unet, "_hf_peft_config_loaded", False))
    for p in procs.values():
        p.scale = [0.0] * len(p.scale)
    if lora:
        unet.disable_lora()
    try:
        yield [torch.zeros(2 * batch, 1, _id_embed_dim(unet), device=unet.device, dtype=unet.dtype)]
    finally:
        for name, p in _ip_processors(unet).items():
            p.scale = saved[name]
        if lora:
            unet.enable_lora()


def generate_style_set(
    sd: SD15,
    prompt: str,
    *,
    n: int = STYLE_SET_SIZE,
    steps: int = STYLE_SET_STEPS,
    guidance_scale: float = STYLE_SET_CFG,
    seed: int = 0,
    resolution: int = 512,
    batch: int = 4,
    progress: Progress | None = None,
) -> Tensor:
    """Sample ``n`` images of ``prompt`` with SD1.5 and return their latents [n, 4, h, w]
    (UNet scale; METHOD A.4: 20 images, CFG 7.5, 20 steps).

    Runs diffusers' ``StableDiffusionPipeline`` built from ``sd``'s parts with
    ``output_type="latent"`` (no decode, no safety checker) and a fresh copy of ``sd``'s
    scheduler class (DDIM from :func:`backend.models.load_sd15`; x0 clipping off, as in SD1.5's
    own scheduler config). Image k uses the CPU
    generator seeded ``seed + k``, so the set does not depend on ``batch``. An IP-Adapter on
    the UNet is switched off for the duration (:func:`text_only`): the style set is text-only.
    ``progress(done, total)`` is called after every denoising step.
    """
    from diffusers import StableDiffusionPipeline

    scheduler = type(sd.scheduler).from_config(sd.scheduler.config)
    if getattr(scheduler.config, "clip_sample", False):  # latents are not images in [-1, 1]
        scheduler.register_to_config(clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    total, done, out = -(-n // batch) * steps, 0, []

    def on_step(_pipe, _i, _t, kwargs):
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        return kwargs

    for start in range(0, n, batch):
        b = min(batch, n - start)
        gens = [torch.Generator("cpu").manual_seed(seed + k) for k in range(start, start + b)]
        with text_only(sd.unet, b) as zero_embeds:
            res = pipe(
                prompt,
                height=resolution,
                width=resolution,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                num_images_per_prompt=b,
                generator=gens,
                output_type="latent",
                ip_adapter_image_embeds=zero_embeds,
                callback_on_step_end=on_step,
            )
        out.append(res.images.float().cpu())
    return torch.cat(out)


def style_key(
    model_key: str, prompt: str, *, seed: int, n: int, steps: int, guidance_scale: float, resolution: int
) -> str:
    """Hash of everything a style set depends on (the cache file's name)."""
    blob = json.dumps(
        {
            "v": _CACHE_VERSION,
            "model": model_key,
            "prompt": prompt,
            "seed": seed,
            "n": n,
            "steps": steps,
            "cfg": float(guidance_scale),
            "res": resolution,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def style_stats(
    sd: SD15,
    prompt: str,
    *,
    seed: int = 0,
    cache_dir: Path | str,
    model_key: str,
    n: int = STYLE_SET_SIZE,
    steps: int = STYLE_SET_STEPS,
    guidance_scale: float = STYLE_SET_CFG,
    resolution: int = 512,
    batch: int = 4,
    progress: Progress | None = None,
) -> StyleStats:
    """The style statistics of ``prompt``, from ``cache_dir`` when an earlier call made them
    (same ``model_key``, prompt, seed, n, steps, CFG and resolution), else generated
    (:func:`generate_style_set`) and saved there. An unreadable cache file is regenerated."""
    key = style_key(
        model_key, prompt, seed=seed, n=n, steps=steps, guidance_scale=guidance_scale, resolution=resolution
    )
    path = Path(cache_dir) / f"style_{key}.safetensors"
    if path.is_file():
        try:
            cached = StyleStats.load(path)
            if cached.key == key:
                return cached
        except Exception:  # noqa: BLE001 - a truncated or foreign file: make it again
            pass
    latents = generate_style_set(
        sd,
        prompt,
        n=n,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        resolution=resolution,
        batch=batch,
        progress=progress,
    )
    mean, cov = latent_stats(latents)
    stats = StyleStats(mean=mean, cov=cov, n_images=n, prompt=prompt, key=key)
    stats.save(path)
    return stats
