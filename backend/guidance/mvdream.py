"""MVDream 3D loss: a multi-view UNet and standard SDS over 4 views (METHOD A.5, Eq. 15).

**The UNet** (:class:`MultiViewUNet`, MVDream's ``MultiViewUNetModel`` with the LDM key names)
is our own module, defined in :mod:`backend.guidance.mvdream_unet` and re-exported here;
:func:`build_multiview_unet` builds it from an ``MVDreamParts`` and loads the weights strictly.

**The camera** (:func:`mvdream_camera_matrices`): MVDream conditions on the 4x4
camera-to-world matrix with OpenGL camera axes (x right, y up, z backward) in a z-up
("blender") world, translation normalised to unit length, flattened row-major. Azimuth 0 is
the camera at -y, azimuth 90 at +x: exactly our head frame and spherical convention
(backend.gaussians.cameras), so only the camera axes flip (OpenCV y down / z forward).

**The loss** (:class:`MVDreamGuidance`): each iteration renders 4 views 90 deg apart from a
random start azimuth at 256 px, encodes them with the SD2.1 VAE, noises them with one t for
all views, predicts ε with CFG 10 (empty-prompt unconditional branch, the cameras passed to
both branches) and applies standard SDS: gradient ``w(t)(ε̂ − ε)`` on the latents,
``w(t) = 1 − ᾱ_t`` (threestudio's ``mvdream`` guidance, ``weighting_strategy="sds"``). The
pipeline weighs the term by :data:`MVDREAM_WEIGHT` through ``LoopConfig.weights``.

Usage::

    parts = load_mvdream(device="cuda", dtype=torch.float16)
    unet = build_multiview_unet(parts, device="cuda", dtype=torch.float16)
    term = MVDreamGuidance(unet, parts.text_encoder, parts.tokenizer, parts.vae, parts.scheduler,
                           prompt="a bust of a knight, stylised", render_fn=lambda c: render_model(model, c),
                           device="cuda", dtype=torch.float16)
    cfg = LoopConfig(steps=3000, weights={"loss_mvdream": MVDREAM_WEIGHT, ...})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from backend.gaussians.cameras import Cameras, MultiViewSampler
from backend.gaussians.render import RenderOutput
from backend.models import MVDreamParts
from backend.models.store import _corrupt

from .diffusion import TimestepSchedule, add_noise, classifier_free, distillation_loss, encode, sds_weight

# the network (mvdream_unet.py); ``X as X`` re-exports its blocks, importable from here as before the split
from .mvdream_unet import FULL_SIZE_CONFIG, MultiViewUNet
from .mvdream_unet import GEGLU as GEGLU
from .mvdream_unet import Attention as Attention
from .mvdream_unet import BasicTransformerBlock as BasicTransformerBlock
from .mvdream_unet import Downsample as Downsample
from .mvdream_unet import FeedForward as FeedForward
from .mvdream_unet import GroupNorm32 as GroupNorm32
from .mvdream_unet import ResBlock as ResBlock
from .mvdream_unet import SpatialTransformer as SpatialTransformer
from .mvdream_unet import TimestepEmbedSequential as TimestepEmbedSequential
from .mvdream_unet import Upsample as Upsample

__all__ = [
    "MVDREAM_WEIGHT",
    "FULL_SIZE_CONFIG",
    "HEAD_RADIUS",
    "MultiViewUNet",
    "build_multiview_unet",
    "mvdream_camera_matrices",
    "MVDreamSettings",
    "MVDreamGuidance",
]

#: METHOD A.5 (Eq. 15): the MVDream SDS term's weight in the total loss (applied by the
#: pipeline through ``LoopConfig.weights["loss_mvdream"]``).
MVDREAM_WEIGHT = 0.05

#: Half-size of the head in metres (head frame): the scene radius MVDream's relative camera
#: distance is measured in (see :class:`MVDreamSettings`).
HEAD_RADIUS = 0.2


# --- loading the UNet --------------------------------------------------------------------------


def build_multiview_unet(
    parts: MVDreamParts, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MultiViewUNet:
    """The MVDream UNet with ``parts``' weights: strict load (keys and shapes checked first,
    ``ModelCorruptError`` naming the first offenders), eval mode, no gradients.

    The module is built on the meta device and takes the loaded tensors as its parameters
    (``assign=True``), so the 1.7 GB fp16 file is never doubled by a random init.
    """
    weights = parts.path / "unet" / "diffusion_pytorch_model.safetensors"
    try:
        with torch.device("meta"):
            unet = MultiViewUNet.from_config(parts.unet_config)
    except KeyError as exc:
        raise _corrupt("mvdream", parts.path / "unet" / "config.json", f"the config has no {exc.args[0]!r}") from exc
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in parts.unet_state_dict.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    problems = [
        f"{n} {label}: {few(keys)}"
        for n, label, keys in (
            (len(missing), "missing keys", missing),
            (len(unexpected), "unexpected keys", unexpected),
            (len(wrong), "keys with the wrong shape", wrong),
        )
        if keys
    ]
    if problems:
        raise _corrupt("mvdream", weights, "it does not match the MVDream UNet config (" + "; ".join(problems) + ")")
    state = {k: v.to(device=device, dtype=dtype) for k, v in parts.unet_state_dict.items()}
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


# --- cameras -------------------------------------------------------------------------------------

#: OpenCV camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z backward).
_CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def mvdream_camera_matrices(cams: Cameras, target: Sequence[float] = (0.0, 0.0, 0.0)) -> Tensor:
    """MVDream's camera input ``[C, 16]`` for our cameras (world -> camera OpenCV viewmats,
    head frame: +Z up, face toward -Y).

    MVDream (``camera_utils.get_camera`` + ``normalize_camera``; threestudio passes its
    OpenGL c2w the same way) takes the camera-to-world matrix with OpenGL camera axes in a z-up
    world whose azimuth 0 is at -y and azimuth 90 at +x, which is our head frame, so the world
    needs no change. Steps: c2w = viewmat⁻¹, flip the camera y and z axes (OpenCV -> OpenGL),
    express the position relative to ``target`` and scale it to unit length, flatten row-major.
    """
    c2w = torch.linalg.inv(cams.viewmats.double()) @ _CV_TO_GL.to(cams.device, torch.float64)
    pos = c2w[:, :3, 3] - torch.as_tensor(target, dtype=torch.float64, device=cams.device)
    c2w[:, :3, 3] = pos / (pos.norm(dim=-1, keepdim=True) + 1e-8)
    return c2w.reshape(-1, 16).float()


# --- the guidance term ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MVDreamSettings:
    """MVDream SDS settings (METHOD A.5: 4 views 90 deg apart, 256 px, CFG 10).

    Cameras follow threestudio's MVDream setup: the distance is *relative*
    (``relative_radius``): ``distance = camera_distance · radius / tan(fov / 2)``, so at any FoV
    the frame's half-height at the target is ``camera_distance · radius``. 0.9 is the middle of
    its [0.8, 1.0] range; elevation 15 deg is MVDream's ``get_camera`` default (threestudio
    draws [0, 30]); FoV 40 deg is threestudio's eval FoV. The timestep schedule is SAS's
    (METHOD A.4), which the MVDream term shares in the stylise pipeline.
    """

    guidance_scale: float = 10.0
    resolution: int = 256
    views: int = 4
    elevation_deg: float = 15.0
    camera_distance: float = 0.9
    fov_deg: float = 40.0
    schedule: TimestepSchedule = TimestepSchedule()


class MVDreamGuidance:
    """The MVDream SDS term (METHOD A.5, Eq. 15): ``term(out, cams, step) -> {"loss_mvdream": loss}``.

    It ignores the loop's render and cameras: every call renders its own ``settings.views``
    views through ``render_fn`` at :meth:`cameras` ``(step)``. Randomness (start azimuth, t,
    noise) is a function of ``(seed, step)`` only, so a resumed run sees the same draws.
    ``radius`` is the head's half-size in metres and ``target`` the point the cameras look at.
    """

    def __init__(
        self,
        unet: MultiViewUNet,
        text_encoder,
        tokenizer,
        vae,
        scheduler,
        *,
        prompt: str,
        render_fn: Callable[[Cameras], RenderOutput],
        settings: MVDreamSettings = MVDreamSettings(),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        radius: float = HEAD_RADIUS,
        target: Sequence[float] = (0.0, 0.0, 0.0),
    ):
        self.unet, self.vae = unet, vae
        self.render_fn = render_fn
        self.settings = settings
        self.device, self.dtype = torch.device(device), dtype
        self.seed = int(seed)
        self.target = tuple(float(v) for v in target)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device)
        s = settings
        distance = s.camera_distance * radius / math.tan(math.radians(s.fov_deg) / 2)
        self.sampler = MultiViewSampler(
            (distance, distance),
            (s.elevation_deg, s.elevation_deg),
            (s.fov_deg, s.fov_deg),
            s.resolution,
            s.resolution,
            seed=self.seed,
            n_views=s.views,
            target=self.target,
        )
        self.text = self._embed(text_encoder, tokenizer, [prompt, ""])  # [2, 77, D]: cond, uncond

    def _embed(self, text_encoder, tokenizer, prompts: list[str]) -> Tensor:
        """SD2.1 text embeddings: the diffusers text encoder's last hidden state is OpenCLIP's
        penultimate layer + final LayerNorm, which MVDream's ``FrozenOpenCLIPEmbedder`` uses."""
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            return text_encoder(ids.to(text_encoder.device))[0].to(self.device, self.dtype)

    def cameras(self, step: int) -> Cameras:
        """``views`` cameras 360/views deg apart from a random start azimuth (seeded by step)."""
        return self.sampler.sample(step).to(self.device)

    def _generator(self, step: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, int(step), 1]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def __call__(self, out: RenderOutput, cams: Cameras, step: int) -> dict[str, Tensor]:
        views = self.settings.views
        mv_cams = self.cameras(step)
        z = encode(self.vae, self.render_fn(mv_cams).rgb)  # [V, 4, h, w], differentiable
        gen = self._generator(step)
        t = self.settings.schedule.sample(step, generator=gen, device=self.device).expand(views)  # one t for all views
        noise = torch.randn(z.shape, generator=gen).to(self.device, z.dtype)
        camera = mvdream_camera_matrices(mv_cams, self.target).to(self.device, self.dtype)
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, self.alphas_cumprod, t).to(self.dtype)
            context = self.text.repeat_interleave(views, dim=0)  # [2V, 77, D]: V cond, then V uncond
            eps = self.unet(z_t.repeat(2, 1, 1, 1), t.repeat(2), context, camera.repeat(2, 1), num_frames=views)
            eps_cond, eps_uncond = eps.float().chunk(2)
            eps_hat = classifier_free(eps_uncond, eps_cond, self.settings.guidance_scale)
        # SDS: the gradient on z is w(t)(ε̂ − ε) (distillation_loss with target z − (ε̂ − ε))
        target = z.detach().float() - (eps_hat - noise.float())
        loss = distillation_loss(z, target, sds_weight(self.alphas_cumprod, t, z))
        return {"loss_mvdream": loss}
