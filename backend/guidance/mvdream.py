"""MVDream 3D loss: a multi-view UNet and standard SDS over 4 views (METHOD A.5, Eq. 15).

**The UNet.** MVDream is not a diffusers class, so :class:`MultiViewUNet` is our own module.
It is SD2.1's UNet in the original LDM ``openaimodel`` layout, plus two changes
(shared/WEIGHTS.md "MVDream"; bytedance/MVDream ``MultiViewUNetModel``):

- a camera MLP ``camera_embed`` (Linear(16, E), SiLU, Linear(E, E)) whose output is added to
  the timestep embedding;
- self-attention (``attn1``) across views: the tokens of the V views of one object are
  concatenated, ``(b·V) l c -> b (V·l) c``, and split again after it. Cross-attention on the
  text (``attn2``) and the feed-forward run per view.

Parameter names are the LDM state-dict keys, one to one, so the public weights
(``ashawkey/mvdream-sd2.1-diffusers`` ``unet/``, enumerated by
``backend.testing.mvdream_unet_shapes``) load with ``strict=True`` and no renaming:

=====================================================  ==========================================
LDM key                                                module here
=====================================================  ==========================================
``time_embed.{0,2}``                                   ``Sequential(Linear, SiLU, Linear)``
``camera_embed.{0,2}``                                 ``Sequential(Linear, SiLU, Linear)``
``input_blocks.0.0``                                   ``Conv2d(in, C, 3)``
``input_blocks.n.0.{in_layers.{0,2}, emb_layers.1,     :class:`ResBlock` (``in_layers``: norm, SiLU,
out_layers.{0,3}, skip_connection}``                   conv; ``out_layers``: norm, SiLU, dropout, conv)
``input_blocks.n.1.{norm, proj_in, proj_out}``         :class:`SpatialTransformer`
``...transformer_blocks.k.{norm1,norm2,norm3}``        :class:`BasicTransformerBlock` LayerNorms
``...transformer_blocks.k.attn{1,2}.{to_q,to_k,to_v,   :class:`Attention` (``to_out.1`` is dropout,
to_out.0}``                                            no parameters)
``...transformer_blocks.k.ff.net.{0.proj, 2}``         GEGLU feed-forward (``net.1`` dropout)
``input_blocks.n.0.op``                                :class:`Downsample` (conv, stride 2)
``middle_block.{0,1,2}``                               ResBlock, SpatialTransformer, ResBlock
``output_blocks.n.{0,1}``, ``output_blocks.n.k.conv``  ResBlock (+ skip concat), transformer,
                                                       :class:`Upsample` (nearest x2, conv)
``out.{0,2}``                                          GroupNorm, SiLU, ``Conv2d(C, out, 3)``
=====================================================  ==========================================

Numerics follow LDM: ResBlock/output GroupNorms (32 groups, eps 1e-5) run in float32; the
transformer's GroupNorm has eps 1e-6; the timestep embedding is LDM's ``cos``-first
sinusoid (diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)``);
attention is ``scaled_dot_product_attention`` with ``num_head_channels`` per head.

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
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from backend.gaussians.cameras import Cameras, MultiViewSampler
from backend.gaussians.render import RenderOutput
from backend.models import MVDreamParts
from backend.models.store import _corrupt

from .diffusion import TimestepSchedule, add_noise, classifier_free, distillation_loss, encode, sds_weight

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

#: MVDream's SD2.1-base UNet (bytedance/MVDream ``configs/sd-v2-base.yaml``, WEIGHTS.md) — for
#: benches with random weights; the real run reads ``unet/config.json``.
FULL_SIZE_CONFIG = {
    "image_size": 32,  # unused by the network; 256 px images -> 32x32 latents
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_resolutions": [4, 2, 1],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "camera_dim": 16,
    "num_frames": 4,
}

#: Half-size of the head in metres (head frame): the scene radius MVDream's relative camera
#: distance is measured in (see :class:`MVDreamSettings`).
HEAD_RADIUS = 0.2

_GROUPS = 32  # LDM's GroupNorm32 / Normalize


# --- the multi-view UNet ----------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """LDM's ``normalization()``: GroupNorm(32) computed in float32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """LDM ResBlock without scale-shift norm: ``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(_GROUPS, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(_GROUPS, c_out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(c_out, c_out, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Attention(nn.Module):
    """LDM ``CrossAttention``: bias-free q/k/v, ``to_out = (Linear, Dropout)``, SDPA per head."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b = x.shape[0]

        def split(t: Tensor) -> Tensor:  # b n (h d) -> b h n d
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """MVDream's ``BasicTransformerBlock3D``: multi-view self-attention, per-view text
    cross-attention, per-view GEGLU feed-forward (pre-LayerNorm, residual each)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int, cross_view: bool) -> Tensor:
        bf, tokens, c = x.shape
        views = num_frames if cross_view else 1
        x = x.reshape(bf // views, views * tokens, c)  # (b f) l c -> b (f l) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, tokens, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """MVDream's ``SpatialTransformer3D``: GroupNorm (eps 1e-6), proj_in, blocks, proj_out, residual.
    ``proj_in``/``proj_out`` are Linear with ``use_linear``, else 1x1 convs (LDM's two layouts)."""

    def __init__(self, ch: int, heads: int, dim_head: int, context_dim: int, depth: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(_GROUPS, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner) if use_linear else nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, ch) if use_linear else nn.Conv2d(inner, ch, 1)

    def forward(self, x: Tensor, context: Tensor, num_frames: int, cross_view: bool) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context, num_frames, cross_view)
        if self.use_linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            y = self.proj_out(y)
        return y + x


class TimestepEmbedSequential(nn.Sequential):
    """LDM's container: hands ``emb`` to ResBlocks and the text/views to transformers."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int, cross_view: bool) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, num_frames, cross_view)
            else:
                x = layer(x)
        return x


class MultiViewUNet(nn.Module):
    """MVDream's ``MultiViewUNetModel`` (LDM key names; see the module docstring).

    Input ``x`` is ``[B·V, 4, h, w]`` with the V views of one object consecutive.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_head_channels: int,
        context_dim: int,
        camera_dim: int = 16,
        transformer_depth: int = 1,
        use_linear_in_transformer: bool = True,
        num_frames: int = 4,
    ):
        super().__init__()
        C, E = model_channels, 4 * model_channels
        self.model_channels = C
        self.num_frames = num_frames
        self.time_embed = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        self.camera_embed = nn.Sequential(nn.Linear(camera_dim, E), nn.SiLU(), nn.Linear(E, E))

        def transformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(
                ch,
                ch // num_head_channels,
                num_head_channels,
                context_dim,
                transformer_depth,
                use_linear_in_transformer,
            )

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, C, 3, padding=1))])
        chans, ch, ds = [C], C, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * C, E)]
                ch = mult * C
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, ch, E), transformer(ch), ResBlock(ch, ch, E))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), mult * C, E)]
                ch = mult * C
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(_GROUPS, ch), nn.SiLU(), nn.Conv2d(C, out_channels, 3, padding=1))

    @classmethod
    def from_config(cls, cfg: dict) -> MultiViewUNet:
        """Build from an LDM/``unet/config.json`` dict (unused keys such as ``image_size`` ignored)."""
        return cls(
            in_channels=cfg["in_channels"],
            out_channels=cfg["out_channels"],
            model_channels=cfg["model_channels"],
            channel_mult=list(cfg["channel_mult"]),
            num_res_blocks=cfg["num_res_blocks"],
            attention_resolutions=list(cfg["attention_resolutions"]),
            num_head_channels=cfg["num_head_channels"],
            context_dim=cfg["context_dim"],
            camera_dim=cfg.get("camera_dim", 16),
            transformer_depth=cfg.get("transformer_depth", 1),
            use_linear_in_transformer=cfg.get("use_linear_in_transformer", True),
            num_frames=cfg.get("num_frames", 4),
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        camera: Tensor | None = None,
        num_frames: int = 4,
        cross_view: bool = True,
    ) -> Tensor:
        """Predicted noise ``[B·V, out, h, w]``. ``cross_view=False`` makes each view attend
        only to itself (a test hook; MVDream always mixes the views)."""
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        dtype = self.time_embed[0].weight.dtype
        t_emb = get_timestep_embedding(timesteps, self.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = self.time_embed(t_emb.to(dtype))
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(dtype))
        h, context, skips = x.to(dtype), context.to(dtype), []
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames, cross_view)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames, cross_view)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames, cross_view)
        return self.out(h).to(x.dtype)


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
