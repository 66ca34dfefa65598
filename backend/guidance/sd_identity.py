"""SAS: the Style-Aligned Sampling loss on SD1.5 + IP-Adapter-FaceID + landmark ControlNet
(METHOD A.4, Eq. 8–14).

Per call, on the loop's rendered views:

1. resize the render to ``settings.resolution`` and encode it (SD VAE, or TAESD as the speed
   lever) into ``z`` [B, 4, h, w], differentiably;
2. draw t from the schedule (A.4: U(0.02, 0.98), then U(0.02, 0.5)) and noise: ``z_t``;
3. predict ε with classifier-free guidance (CFG 50), no gradient through the UNet:
   - unconditional half: the empty prompt and a ZERO identity embedding;
   - conditional half: the prompt and the ArcFace identity through IP-Adapter-FaceID's
     decoupled cross-attention (Eq. 9–11; the SD1.5 stand-in for InstantID's adapter), passed
     as ``added_cond_kwargs={"image_embeds": [E]}``, ``E`` [2B, 1, 512];
   - both halves: the landmark ControlNet's residuals (control scale 1.0), its condition
     image the head's landmarks projected into the render camera
     (:mod:`backend.guidance.landmark_control`). A view with a hidden face (the back of the
     head) gets control scale 0: its residuals are multiplied by 0 per sample (a black
     condition image alone still yields non-zero residuals), and a batch with no face seen
     skips the ControlNet;
4. ``z' = x̂0`` from ``z_t`` and ε̂ (Eq. 12), mapped onto the style statistics (Eq. 13,
   :func:`backend.guidance.style_stats.whitening_colouring`) when a style is given: ``z'_m``;
5. ``loss_sas = ½ w(t) ‖z − sg(z'_m)‖²``, w(t) = 1 − ᾱ_t (Eq. 14), in float32.

``identity=None`` is text-only SAS: an IP-Adapter on the UNet is switched off for the call
(scale 0 and its LoRA disabled, :func:`~backend.guidance.style_stats.text_only`).
``landmarks=None`` runs without the ControlNet.

Usage::

    term = SDIdentityGuidance(sd, prompt="a watercolour portrait", style=stats, controlnet=cn,
                              identity=face.embedding, landmarks=lm3d, device="cuda", dtype=torch.float16)
    losses = term(out, cams, step)          # {"loss_sas": tensor}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.gaussians.cameras import Cameras
from backend.guidance.diffusion import (
    TimestepSchedule,
    add_noise,
    classifier_free,
    distillation_loss,
    encode,
    predict_x0,
    sds_weight,
)
from backend.guidance.landmark_control import control_condition
from backend.guidance.style_stats import StyleStats, text_only, whitening_colouring
from backend.models import SD15, set_ip_adapter_scale

ENCODERS = ("vae", "taesd")


@dataclass(frozen=True)
class SASSettings:
    """SAS settings; defaults are the paper's (METHOD A.4 "Settings")."""

    guidance_scale: float = 50.0  # CFG 50 during SAS (A.4)
    schedule: TimestepSchedule = field(default_factory=TimestepSchedule)  # t ~ U(.02,.98) for 1000 its, then U(.02,.5)
    control_scale: float = 1.0  # landmark ControlNet conditioning scale (A.4, Eq. 9–11: "control scale 1.0")
    ip_adapter_scale: float = 1.0  # weight of the identity tokens (IP-Adapter-FaceID's default)
    resolution: int = 512  # SD1.5's training size; renders are resized to it
    encoder: str = "vae"  # "vae" (exact, the paper's) or "taesd" (~9x cheaper, PERFORMANCE.md's lever)


def _as_identity(identity) -> Tensor:
    e = torch.as_tensor(np.asarray(identity, dtype=np.float32) if not isinstance(identity, Tensor) else identity)
    e = e.detach().float().reshape(-1)
    if e.numel() != 512:
        raise ValueError(f"identity must be a 512-d ArcFace embedding, got {e.numel()} values")
    return e.view(1, 1, 512)


def resized_cameras(cams: Cameras, width: int, height: int) -> Cameras:
    """The same cameras at another image size (intrinsics scaled with it)."""
    if (cams.width, cams.height) == (width, height):
        return cams
    ks = cams.Ks.clone()
    ks[:, 0] *= width / cams.width
    ks[:, 1] *= height / cams.height
    return replace(cams, Ks=ks, width=width, height=height)


class SDIdentityGuidance:
    """The SAS guidance term ``(out, cams, step) -> {"loss_sas": loss}`` (see the module docstring).

    ``sd``: SD1.5 parts (:func:`backend.models.load_sd15`), its UNet with IP-Adapter-FaceID
    loaded when ``identity`` is given; ``style``: the style statistics (None: no Eq. 13 map);
    ``controlnet``: the MediaPipe-face ControlNet; ``identity``: the 512-d ArcFace embedding
    (insightface ``normed_embedding``, used as given) or None; ``landmarks``: [478, 3] head-frame
    landmarks or None; ``taesd``: ``AutoencoderTiny`` for ``settings.encoder == "taesd"``;
    ``device``/``dtype``: where the models live and their dtype (UNet inputs are cast to it;
    the loss is float32); ``seed``: t and noise come from a generator seeded by (seed, step).
    After each call ``last`` holds detached diagnostics: ``t`` [B], ``grad_norm`` (‖w(t)(z −
    z'_m)‖, the latent gradient's size times the batch), ``visible`` [B] (views with a face) and
    ``control_scale`` [B] (the ControlNet's scale per view: 0 where the face is hidden).
    """

    def __init__(
        self,
        sd: SD15,
        *,
        prompt: str,
        style: StyleStats | None,
        controlnet=None,
        identity=None,
        landmarks=None,
        taesd=None,
        settings: SASSettings = SASSettings(),
        device="cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ):
        if settings.encoder not in ENCODERS:
            raise ValueError(f"SASSettings.encoder must be one of {ENCODERS}, got {settings.encoder!r}")
        if settings.encoder == "taesd" and taesd is None:
            raise ValueError("SASSettings.encoder='taesd' needs the TAESD model (backend.models.load_taesd)")
        if landmarks is not None and controlnet is None:
            raise ValueError("landmarks were given without the ControlNet that reads them")
        self.has_ip_adapter = getattr(sd.unet, "encoder_hid_proj", None) is not None
        if identity is not None and not self.has_ip_adapter:
            raise ValueError(
                "an identity embedding needs IP-Adapter-FaceID on the UNet (backend.models.load_ip_adapter_faceid)"
            )
        self.sd, self.style, self.controlnet, self.taesd = sd, style, controlnet, taesd
        self.settings, self.device, self.dtype, self.seed = settings, torch.device(device), dtype, seed
        self.identity = None if identity is None else _as_identity(identity).to(self.device, dtype)
        self.landmarks = None if landmarks is None else torch.as_tensor(np.asarray(landmarks, np.float32))
        self.alphas_cumprod = sd.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.text = self._encode_text(["", prompt])  # [2, 77, D]: uncond, cond
        self.last: dict[str, Tensor] = {}

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Tensor:
        tok = self.sd.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.sd.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tok.input_ids.to(self.sd.text_encoder.device)
        return self.sd.text_encoder(ids)[0].to(self.device, self.dtype)

    def _generator(self, step: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, int(step), 0]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def control(self, cams: Cameras) -> tuple[Tensor, Tensor] | None:
        """(the ControlNet condition [B, 3, res, res] in [0, 1], the conditioning scale per
        view [B] float32: ``settings.control_scale`` where the face is seen, 0 where it is
        hidden) for these cameras; None without landmarks."""
        if self.landmarks is None:
            return None
        res = self.settings.resolution
        cond, visible = control_condition(self.landmarks, resized_cameras(cams, res, res).to(self.device))
        return cond, visible.float() * self.settings.control_scale

    def control_image(self, cams: Cameras) -> Tensor | None:
        """The ControlNet condition [B, 3, res, res] in [0, 1] for these cameras (None without
        landmarks)."""
        control = self.control(cams)
        return None if control is None else control[0]

    @torch.no_grad()
    def control_residuals(
        self, latent: Tensor, t: Tensor, text: Tensor, cond: Tensor, scales: Tensor
    ) -> tuple[list[Tensor], Tensor] | None:
        """The ControlNet's (down residuals, mid residual) for a UNet batch ``latent`` [N, 4, h, w]
        with condition images ``cond`` [N, 3, H, W], each sample's residuals multiplied by its
        conditioning scale ``scales`` [N] (0: no control for that sample; diffusers'
        ``conditioning_scale`` is one float for the batch). None when every scale is 0."""
        if not bool((scales != 0).any()):
            return None
        dt = self.controlnet.dtype
        down, mid = self.controlnet(
            latent.to(dt),
            t,
            encoder_hidden_states=text.to(dt),
            controlnet_cond=cond.to(self.device, dt),
            conditioning_scale=1.0,
            return_dict=False,
        )
        w = scales.to(device=mid.device, dtype=mid.dtype).view(-1, 1, 1, 1)
        return [d * w for d in down], mid * w

    def encode(self, rgb: Tensor) -> Tensor:
        """Renders [B, H, W, 3] in [0, 1] -> latents [B, 4, res/8, res/8], differentiable."""
        res = self.settings.resolution
        if rgb.shape[1:3] != (res, res):
            x = rgb.permute(0, 3, 1, 2)
            x = F.interpolate(
                x,
                size=(res, res),
                mode="bilinear",
                align_corners=False,
                antialias=bool(x.shape[-1] > res or x.shape[-2] > res),
            )
            rgb = x.permute(0, 2, 3, 1)
        vae = self.taesd if self.settings.encoder == "taesd" else self.sd.vae
        return encode(vae, rgb.to(self.device))

    @torch.no_grad()
    def _eps(self, z_t: Tensor, t: Tensor, control: tuple[Tensor, Tensor] | None) -> Tensor:
        """ε̂ with CFG from one batched UNet call (uncond half first); ``control`` is
        :meth:`control`'s (condition images [B, ...], scales [B])."""
        b = z_t.shape[0]
        latent = torch.cat([z_t, z_t]).to(self.dtype)
        t_in = torch.cat([t, t])
        text = self.text.repeat_interleave(b, dim=0)  # [2B, 77, D]: B uncond, then B cond
        kwargs = {}
        if control is not None:
            cond, scales = control
            residuals = self.control_residuals(latent, t_in, text, torch.cat([cond, cond]), torch.cat([scales, scales]))
            if residuals is not None:
                down, mid = residuals
                kwargs = {
                    "down_block_additional_residuals": [d.to(self.dtype) for d in down],
                    "mid_block_additional_residual": mid.to(self.dtype),
                }
        unet = self.sd.unet
        if self.identity is not None:
            set_ip_adapter_scale(unet, self.settings.ip_adapter_scale)
            e = self.identity.expand(b, 1, -1)
            embeds = torch.cat([torch.zeros_like(e), e])  # zero identity for the uncond half
            eps = unet(
                latent, t_in, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [embeds]}, **kwargs
            ).sample
        else:
            with text_only(unet, b) as zero_embeds:
                extra = {"added_cond_kwargs": {"image_embeds": zero_embeds}} if zero_embeds is not None else {}
                eps = unet(latent, t_in, encoder_hidden_states=text, **extra, **kwargs).sample
        eps_uncond, eps_cond = eps.float().chunk(2)
        return classifier_free(eps_uncond, eps_cond, self.settings.guidance_scale)

    @torch.no_grad()
    def target(
        self, z: Tensor, cams: Cameras, step: int, *, t: Tensor | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(z'_m, t)``: the style-mapped one-step estimate (Eq. 12–13) for latents ``z``
        [B, 4, h, w] seen by ``cams``; ``t`` [B] and ``noise`` default to the step's draw."""
        b = z.shape[0]
        gen = self._generator(step)
        if t is None:
            t = self.settings.schedule.sample(step, b, generator=gen)
        t = torch.as_tensor(t).reshape(-1).expand(b).to(self.device)
        if noise is None:
            noise = torch.randn(z.shape, generator=gen)
        noise = noise.to(self.device, torch.float32)
        z_t = add_noise(z.detach().float(), noise, self.alphas_cumprod, t)
        control = self.control(cams)
        eps = self._eps(z_t, t, control)
        x0 = predict_x0(z_t, eps, self.alphas_cumprod, t)  # Eq. 12
        target = whitening_colouring(x0, self.style) if self.style is not None else x0  # Eq. 13
        self.last = {
            "t": t.detach(),
            "visible": (control[0].flatten(1).amax(1) > 0) if control is not None else None,
            "control_scale": control[1] if control is not None else None,
        }
        return target, t

    def latent_loss(
        self, z: Tensor, cams: Cameras, step: int, *, t: Tensor | None = None, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Eq. 14 on latents ``z`` (with grad): ``{"loss_sas": ½ w(t) ‖z − sg(z'_m)‖²}``."""
        target, t = self.target(z, cams, step, t=t, noise=noise)
        w = sds_weight(self.alphas_cumprod, t, z)
        with torch.no_grad():
            self.last["grad_norm"] = (w * (z.detach().float() - target)).norm()
        return {"loss_sas": distillation_loss(z, target, w)}

    def __call__(self, out, cams: Cameras, step: int) -> dict[str, Tensor]:
        return self.latent_loss(self.encode(out.rgb), cams, step)
