"""SV3D as Stability ships it: one safetensors file in the SGM (generative-models) layout.

This module's one job is the *source* side of SV3D's single-file loader: the key names and
tensor shapes of ``sv3d_u.safetensors`` / ``sv3d_p.safetensors``, and a writer for a random
file with that layout (tiny for tests, full size for ``bench/sv3d_convert.py``).

The names come from walking the modules the way Stability-AI/generative-models builds them
from ``scripts/sampling/configs/sv3d_{u,p}.yaml`` (read at commit 0ad7de9, 2025-05-20),
*not* from our converter (``backend.models.sv3d``), so a test that loads these files checks
the converter against an independent reading of the reference:

- ``DiffusionEngine`` (sgm/models/diffusion.py): ``model.diffusion_model`` (the network),
  ``conditioner``, ``first_stage_model``; the denoiser, sampler and (absent) loss hold no
  tensors.
- ``VideoUNet`` (sgm/modules/diffusionmodules/video_model.py): ``time_embed``, ``label_emb``
  (``num_classes: sequential``: Sequential(Sequential(linear, SiLU, linear))),
  ``input_blocks`` / ``middle_block`` / ``output_blocks`` of ``VideoResBlock`` (openaimodel
  ``ResBlock`` + ``time_stack`` (a 3D ``ResBlock``, kernel [3, 1, 1]) + ``time_mixer``
  (``AlphaBlender``, learned: ``mix_factor``)), ``SpatialVideoTransformer``
  (sgm/modules/video_attention.py: ``SpatialTransformer`` with linear projections +
  ``time_stack`` of ``VideoTransformerBlock`` (ff_in) + ``time_pos_embed`` + ``time_mixer``),
  ``Downsample`` (``op``) / ``Upsample`` (``conv``), ``out``.
- ``conditioner.embedders`` (sgm/modules/encoders/modules.py), in the yaml's order:
  0 ``FrozenOpenCLIPImagePredictionEmbedder`` -> ``open_clip`` (``FrozenOpenCLIPImageEmbedder``)
  -> ``model``: open_clip's ViT-H-14 ``CLIP`` with ``model.transformer`` deleted, so the
  text-side leftovers (token_embedding, positional_embedding, ln_final, text_projection,
  logit_scale) stay in the file (open_clip v2.24 names: ``nn.MultiheadAttention`` in_proj/
  out_proj); 1 ``VideoPredictionEmbedderWithEncoder`` -> ``encoder``: an
  ``AutoencoderKLModeOnly`` (2D ``Encoder`` + ``Decoder`` + ``quant_conv`` +
  ``post_quant_conv``); 2.. ``ConcatTimestepEmbedderND`` (cond_aug; sv3d_p adds polar and
  azimuth), no tensors.
- ``first_stage_model``: ``AutoencodingEngine`` with ``encoder_config: torch.nn.Identity``
  and the 2D ``Decoder`` (sgm/modules/diffusionmodules/model.py), no quant convs: only
  ``first_stage_model.decoder.*``. (generative-models issues #345/#395 confirm the released
  SV3D files carry no first-stage encoder.) ``first_stage="video"`` writes the SVD-style
  ``VideoDecoder`` (sgm/modules/autoencoding/temporal_ae.py, time_mode conv-only) instead.

Usage::

    shapes = sgm_shapes(SV3D_U)                    # {key: shape}, full size, no tensors
    write_sgm_file(tmp / "sv3d_u.safetensors", TINY_SV3D_U)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

Shape = tuple[int, ...]

#: The conditioner's timestep embedders after the CLIP and VAE embedders (yaml order).
VECTOR_INPUTS = {"sv3d_u": ("cond_aug",), "sv3d_p": ("cond_aug", "polars_rad", "azimuths_rad")}


@dataclass(frozen=True)
class SGMConfig:
    """The numbers that fix SV3D's SGM state dict. Defaults: ``sv3d_u.yaml`` + open_clip ViT-H-14."""

    variant: str = "sv3d_u"
    # network_config (VideoUNet)
    adm_in_channels: int = 256  # sv3d_p: 1280
    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    video_kernel_size: tuple[int, ...] = (3, 1, 1)
    # open_clip ViT-H-14 (open_clip/model_configs/ViT-H-14.json)
    clip_width: int = 1280
    clip_layers: int = 32
    clip_patch: int = 14
    clip_image: int = 224
    clip_embed: int = 1024
    clip_mlp_ratio: int = 4
    text_width: int = 1024
    text_vocab: int = 49408
    text_context: int = 77
    # ddconfig of both autoencoders
    ae_ch: int = 128
    ae_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    ae_num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    first_stage: str = "image"  # "image": sgm Decoder (the sv3d yaml); "video": VideoDecoder (SVD)


SV3D_U = SGMConfig()
SV3D_P = replace(SV3D_U, variant="sv3d_p", adm_in_channels=1280)

#: Tiny, same structure: 2 UNet levels (attention on the first only, like the real last level
#: without it), 64-d heads as in the real UNet, a CLIP with ViT-H's 80-d heads (2 of them), a
#: 4-level (8x) VAE.
TINY_SV3D_U = replace(
    SV3D_U,
    model_channels=64,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1,),
    context_dim=32,
    clip_width=160,
    clip_layers=2,
    clip_patch=8,
    clip_image=32,
    clip_embed=32,
    text_width=16,
    text_vocab=64,
    text_context=8,
    ae_ch=32,
    ae_ch_mult=(1, 1, 1, 1),
    ae_num_res_blocks=1,
)
TINY_SV3D_P = replace(TINY_SV3D_U, variant="sv3d_p", adm_in_channels=1280)


# ------------------------------------------------------------------------ building blocks


def _linear(p: str, n_out: int, n_in: int, bias: bool = True) -> Iterator[tuple[str, Shape]]:
    yield f"{p}.weight", (n_out, n_in)
    if bias:
        yield f"{p}.bias", (n_out,)


def _conv(p: str, n_out: int, n_in: int, kernel: Shape) -> Iterator[tuple[str, Shape]]:
    yield f"{p}.weight", (n_out, n_in, *kernel)
    yield f"{p}.bias", (n_out,)


def _norm(p: str, n: int) -> Iterator[tuple[str, Shape]]:
    yield f"{p}.weight", (n,)
    yield f"{p}.bias", (n,)


def _openai_resblock(
    p: str, ch: int, out: int, emb: int, kernel: Shape, *, skip_t_emb: bool = False
) -> Iterator[tuple[str, Shape]]:
    """openaimodel.ResBlock: in_layers (GroupNorm32, SiLU, conv), emb_layers (SiLU, linear),
    out_layers (GroupNorm32, SiLU, Dropout, conv), skip_connection (1x1 conv when ch != out)."""
    yield from _norm(f"{p}.in_layers.0", ch)
    yield from _conv(f"{p}.in_layers.2", out, ch, kernel)
    if not skip_t_emb:
        yield from _linear(f"{p}.emb_layers.1", out, emb)
    yield from _norm(f"{p}.out_layers.0", out)
    yield from _conv(f"{p}.out_layers.3", out, out, kernel)
    if out != ch:
        yield from _conv(f"{p}.skip_connection", out, ch, (1,) * len(kernel))


def _video_resblock(p: str, ch: int, out: int, emb: int, cfg: SGMConfig) -> Iterator[tuple[str, Shape]]:
    """video_model.VideoResBlock: the 2D ResBlock, then ``time_stack`` (3D ResBlock on ``out``
    channels, kernel video_kernel_size, with emb_layers) and ``time_mixer.mix_factor``."""
    yield from _openai_resblock(p, ch, out, emb, (3, 3))
    yield from _openai_resblock(f"{p}.time_stack", out, out, emb, cfg.video_kernel_size)
    yield f"{p}.time_mixer.mix_factor", (1,)


def _feed_forward(p: str, dim: int, dim_out: int) -> Iterator[tuple[str, Shape]]:
    """attention.FeedForward(glu=True, mult=4): net.0 = GEGLU(proj: dim -> 2 * 4 dim), net.2 linear."""
    yield from _linear(f"{p}.net.0.proj", 8 * dim, dim)
    yield from _linear(f"{p}.net.2", dim_out, 4 * dim)


def _attention(p: str, inner: int, context: int) -> Iterator[tuple[str, Shape]]:
    """CrossAttention / MemoryEfficientCrossAttention: bias-free to_q/k/v, to_out.0 with bias."""
    yield from _linear(f"{p}.to_q", inner, inner, bias=False)
    yield from _linear(f"{p}.to_k", inner, context, bias=False)
    yield from _linear(f"{p}.to_v", inner, context, bias=False)
    yield from _linear(f"{p}.to_out.0", inner, inner)


def _spatial_video_transformer(p: str, ch: int, cfg: SGMConfig) -> Iterator[tuple[str, Shape]]:
    heads = ch // cfg.num_head_channels
    inner = heads * cfg.num_head_channels
    ctx = cfg.context_dim
    # SpatialTransformer (use_linear=True)
    yield from _norm(f"{p}.norm", ch)
    yield from _linear(f"{p}.proj_in", inner, ch)
    for d in range(cfg.transformer_depth):
        b = f"{p}.transformer_blocks.{d}"  # BasicTransformerBlock
        yield from _attention(f"{b}.attn1", inner, inner)
        yield from _feed_forward(f"{b}.ff", inner, inner)
        yield from _attention(f"{b}.attn2", inner, ctx)
        for n in ("norm1", "norm2", "norm3"):
            yield from _norm(f"{b}.{n}", inner)
    yield from _linear(f"{p}.proj_out", ch, inner)
    # SpatialVideoTransformer: time_stack (VideoTransformerBlock; use_spatial_context -> the
    # temporal cross-attention reads context_dim), time_pos_embed, time_mixer
    for d in range(cfg.transformer_depth):
        b = f"{p}.time_stack.{d}"
        yield from _norm(f"{b}.norm_in", inner)
        yield from _feed_forward(f"{b}.ff_in", inner, inner)
        yield from _attention(f"{b}.attn1", inner, inner)
        yield from _feed_forward(f"{b}.ff", inner, inner)
        yield from _norm(f"{b}.norm2", inner)
        yield from _attention(f"{b}.attn2", inner, ctx)
        yield from _norm(f"{b}.norm1", inner)
        yield from _norm(f"{b}.norm3", inner)
    yield from _linear(f"{p}.time_pos_embed.0", 4 * ch, ch)
    yield from _linear(f"{p}.time_pos_embed.2", ch, 4 * ch)
    yield f"{p}.time_mixer.mix_factor", (1,)


# --------------------------------------------------------------------------------- UNet


def video_unet_shapes(cfg: SGMConfig, prefix: str = "model.diffusion_model.") -> Iterator[tuple[str, Shape]]:
    """VideoUNet.__init__, block by block (num_classes "sequential", conv_resample, no
    resblock_updown, dims 2)."""
    mc = cfg.model_channels
    temb = 4 * mc
    yield from _linear(f"{prefix}time_embed.0", temb, mc)
    yield from _linear(f"{prefix}time_embed.2", temb, temb)
    yield from _linear(f"{prefix}label_emb.0.0", temb, cfg.adm_in_channels)
    yield from _linear(f"{prefix}label_emb.0.2", temb, temb)
    yield from _conv(f"{prefix}input_blocks.0.0", mc, cfg.in_channels, (3, 3))
    chans = [mc]
    ch, ds, idx = mc, 1, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            p = f"{prefix}input_blocks.{idx}"
            yield from _video_resblock(f"{p}.0", ch, mult * mc, temb, cfg)
            ch = mult * mc
            if ds in cfg.attention_resolutions:
                yield from _spatial_video_transformer(f"{p}.1", ch, cfg)
            chans.append(ch)
            idx += 1
        if level != len(cfg.channel_mult) - 1:
            yield from _conv(f"{prefix}input_blocks.{idx}.0.op", ch, ch, (3, 3))  # Downsample
            chans.append(ch)
            ds *= 2
            idx += 1
    yield from _video_resblock(f"{prefix}middle_block.0", ch, ch, temb, cfg)
    yield from _spatial_video_transformer(f"{prefix}middle_block.1", ch, cfg)
    yield from _video_resblock(f"{prefix}middle_block.2", ch, ch, temb, cfg)
    idx = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
        for i in range(cfg.num_res_blocks + 1):
            p = f"{prefix}output_blocks.{idx}"
            yield from _video_resblock(f"{p}.0", ch + chans.pop(), mc * mult, temb, cfg)
            ch = mc * mult
            n_layers = 1
            if ds in cfg.attention_resolutions:
                yield from _spatial_video_transformer(f"{p}.1", ch, cfg)
                n_layers = 2
            if level and i == cfg.num_res_blocks:
                yield from _conv(f"{p}.{n_layers}.conv", ch, ch, (3, 3))  # Upsample
                ds //= 2
            idx += 1
    yield from _norm(f"{prefix}out.0", ch)
    yield from _conv(f"{prefix}out.2", cfg.out_channels, mc, (3, 3))


# ------------------------------------------------------------------------------ open_clip


def open_clip_shapes(cfg: SGMConfig, prefix: str) -> Iterator[tuple[str, Shape]]:
    """open_clip ``CLIP`` (v2.24) after ``del model.transformer``: the whole VisionTransformer
    plus the text tower's leftovers on the CLIP object itself."""
    w, v = cfg.clip_width, f"{prefix}visual"
    grid = cfg.clip_image // cfg.clip_patch
    yield f"{v}.class_embedding", (w,)
    yield f"{v}.positional_embedding", (grid * grid + 1, w)
    yield f"{v}.proj", (w, cfg.clip_embed)
    yield f"{v}.conv1.weight", (w, 3, cfg.clip_patch, cfg.clip_patch)  # bias=False
    yield from _norm(f"{v}.ln_pre", w)
    for i in range(cfg.clip_layers):
        b = f"{v}.transformer.resblocks.{i}"  # ResidualAttentionBlock
        yield from _norm(f"{b}.ln_1", w)
        yield f"{b}.attn.in_proj_weight", (3 * w, w)  # nn.MultiheadAttention
        yield f"{b}.attn.in_proj_bias", (3 * w,)
        yield from _linear(f"{b}.attn.out_proj", w, w)
        yield from _norm(f"{b}.ln_2", w)
        yield from _linear(f"{b}.mlp.c_fc", cfg.clip_mlp_ratio * w, w)
        yield from _linear(f"{b}.mlp.c_proj", w, cfg.clip_mlp_ratio * w)
    yield from _norm(f"{v}.ln_post", w)
    # text side: CLIP.__init__ keeps these on the model; only model.transformer is deleted
    yield f"{prefix}positional_embedding", (cfg.text_context, cfg.text_width)
    yield f"{prefix}text_projection", (cfg.text_width, cfg.clip_embed)
    yield f"{prefix}logit_scale", ()
    yield f"{prefix}token_embedding.weight", (cfg.text_vocab, cfg.text_width)
    yield from _norm(f"{prefix}ln_final", cfg.text_width)


# ------------------------------------------------------------------------------ autoencoders


def _ae_resnet(p: str, ch: int, out: int) -> Iterator[tuple[str, Shape]]:
    """model.ResnetBlock with temb_channels 0 (no temb_proj); nin_shortcut when ch != out."""
    yield from _norm(f"{p}.norm1", ch)
    yield from _conv(f"{p}.conv1", out, ch, (3, 3))
    yield from _norm(f"{p}.norm2", out)
    yield from _conv(f"{p}.conv2", out, out, (3, 3))
    if ch != out:
        yield from _conv(f"{p}.nin_shortcut", out, ch, (1, 1))


def _ae_video_resnet(p: str, ch: int, out: int, cfg: SGMConfig) -> Iterator[tuple[str, Shape]]:
    """temporal_ae.VideoResBlock: ResnetBlock + time_stack (openaimodel ResBlock, dims 3,
    skip_t_emb) + mix_factor (merge_strategy learned)."""
    yield from _ae_resnet(p, ch, out)
    yield from _openai_resblock(f"{p}.time_stack", out, out, 0, cfg.video_kernel_size, skip_t_emb=True)
    yield f"{p}.mix_factor", (1,)


def _ae_attn(p: str, ch: int) -> Iterator[tuple[str, Shape]]:
    """model.AttnBlock / MemoryEfficientAttnBlock: GroupNorm + 1x1 convs q, k, v, proj_out."""
    yield from _norm(f"{p}.norm", ch)
    for n in ("q", "k", "v", "proj_out"):
        yield from _conv(f"{p}.{n}", ch, ch, (1, 1))


def encoder_shapes(cfg: SGMConfig, p: str) -> Iterator[tuple[str, Shape]]:
    """model.Encoder (attn_resolutions [] -> no per-level attention; double_z)."""
    ch, mult = cfg.ae_ch, cfg.ae_ch_mult
    yield from _conv(f"{p}.conv_in", ch, 3, (3, 3))
    in_mult = (1, *mult)
    for i in range(len(mult)):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(cfg.ae_num_res_blocks):
            yield from _ae_resnet(f"{p}.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != len(mult) - 1:
            yield from _conv(f"{p}.down.{i}.downsample.conv", block_in, block_in, (3, 3))
    c = ch * mult[-1]
    yield from _ae_resnet(f"{p}.mid.block_1", c, c)
    yield from _ae_attn(f"{p}.mid.attn_1", c)
    yield from _ae_resnet(f"{p}.mid.block_2", c, c)
    yield from _norm(f"{p}.norm_out", c)
    yield from _conv(f"{p}.conv_out", 2 * cfg.z_channels, c, (3, 3))


def decoder_shapes(cfg: SGMConfig, p: str, video: bool = False) -> Iterator[tuple[str, Shape]]:
    """model.Decoder, or temporal_ae.VideoDecoder (time_mode conv-only: VideoResBlocks, plain
    attention, AE3DConv conv_out with time_mix_conv)."""
    ch, mult = cfg.ae_ch, cfg.ae_ch_mult

    def res(q: str, a: int, b: int) -> Iterator[tuple[str, Shape]]:
        return _ae_video_resnet(q, a, b, cfg) if video else _ae_resnet(q, a, b)

    block_in = ch * mult[-1]
    yield from _conv(f"{p}.conv_in", block_in, cfg.z_channels, (3, 3))
    yield from res(f"{p}.mid.block_1", block_in, block_in)
    yield from _ae_attn(f"{p}.mid.attn_1", block_in)
    yield from res(f"{p}.mid.block_2", block_in, block_in)
    for i in reversed(range(len(mult))):
        block_out = ch * mult[i]
        for j in range(cfg.ae_num_res_blocks + 1):
            yield from res(f"{p}.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            yield from _conv(f"{p}.up.{i}.upsample.conv", block_in, block_in, (3, 3))
    yield from _norm(f"{p}.norm_out", block_in)
    yield from _conv(f"{p}.conv_out", 3, block_in, (3, 3))
    if video:
        yield from _conv(f"{p}.conv_out.time_mix_conv", 3, 3, cfg.video_kernel_size)


# ------------------------------------------------------------------------------- the file


def sgm_shapes(cfg: SGMConfig = SV3D_U) -> dict[str, Shape]:
    """Every tensor of the SGM checkpoint for ``cfg``: {key: shape}."""
    out: dict[str, Shape] = {}
    items = [
        video_unet_shapes(cfg),
        open_clip_shapes(cfg, "conditioner.embedders.0.open_clip.model."),
        encoder_shapes(cfg, "conditioner.embedders.1.encoder.encoder"),
        decoder_shapes(cfg, "conditioner.embedders.1.encoder.decoder"),
        _conv("conditioner.embedders.1.encoder.quant_conv", 2 * cfg.embed_dim, 2 * cfg.z_channels, (1, 1)),
        _conv("conditioner.embedders.1.encoder.post_quant_conv", cfg.z_channels, cfg.embed_dim, (1, 1)),
        # embedders 2.. (ConcatTimestepEmbedderND) hold no tensors
        decoder_shapes(cfg, "first_stage_model.decoder", video=cfg.first_stage == "video"),
    ]
    for it in items:
        for k, s in it:
            assert k not in out, k
            out[k] = s
    return out


def sgm_numel(cfg: SGMConfig = SV3D_U) -> int:
    return sum(math.prod(s) for s in sgm_shapes(cfg).values())


def write_sgm_file(path: Path | str, cfg: SGMConfig = TINY_SV3D_U, *, seed: int = 0, dtype=None, std: float = 0.05):
    """Write a random SV3D checkpoint in the SGM layout to ``path``; returns ``path``.

    Weights ~ N(0, std); norm weights ~ 1 + N(0, std) (a working network, not a trained one);
    ``mix_factor`` small. ``dtype`` defaults to float32 (the released files are float32).
    """
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for k, shape in sgm_shapes(cfg).items():
        t = torch.randn(shape, generator=gen) * std
        if k.endswith(".weight") and len(shape) == 1:  # GroupNorm / LayerNorm scales
            t = t + 1.0
        tensors[k] = t.to(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
