"""MVDream's multi-view UNet: the network only, no weight loading and no loss.

This module's one job is MVDream's ``MultiViewUNetModel`` as a torch module with the LDM
state-dict key names, so a checkpoint loads into it one to one. The guidance term that runs
it (SDS, cameras) and the glue that loads the weights (``build_multiview_unet``) live in
:mod:`backend.guidance.mvdream`, which re-exports the names defined here.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

__all__ = [
    "FULL_SIZE_CONFIG",
    "GroupNorm32",
    "ResBlock",
    "Downsample",
    "Upsample",
    "Attention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "TimestepEmbedSequential",
    "MultiViewUNet",
]

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

_GROUPS = 32  # LDM's GroupNorm32 / Normalize


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
