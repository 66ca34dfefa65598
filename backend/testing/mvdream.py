"""Tiny MVDream: the multi-view UNet's state dict (LDM key names) and the diffusers-style folder.

This module's one job is MVDream's factories: the tiny UNet config with the real
``unet/config.json`` keys, every state-dict key with its shape (:func:`mvdream_unet_shapes`,
which :mod:`backend.guidance.mvdream_unet` must load strictly), random tensors for them, and
the ashawkey/mvdream-sd2.1-diffusers folder layout around them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import _tiny_text_encoder, save_tiny_clip_tokenizer, tiny_vocab_size
from .common import SD15_SCHEDULE, SEED, TINY_CROSS_DIM, _write_json, _write_model_index
from .sd15 import _tiny_vae

#: The tiny MVDream UNet config: the real ``unet/config.json`` keys (LDM ``openaimodel`` names,
#: configs/sd-v2-base.yaml), tiny values. Real: model_channels 320, channel_mult [1, 2, 4, 4],
#: num_res_blocks 2, attention_resolutions [4, 2, 1], num_head_channels 64, context_dim 1024.
#: ``model_channels`` stays a multiple of 32 because LDM's GroupNorm32 has 32 groups.
TINY_MVDREAM_UNET_CONFIG = {
    "_class_name": "MultiViewUNetModel",
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [1],  # downsample rates that get a transformer (level 0 here)
    "num_head_channels": 8,
    "transformer_depth": 1,
    "context_dim": TINY_CROSS_DIM,
    "use_linear_in_transformer": True,
    "use_checkpoint": False,
    "legacy": False,
    "camera_dim": 16,
    "num_frames": 4,
}


def mvdream_unet_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key of an MVDream (LDM ``openaimodel`` + camera) UNet state dict with its shape.

    Structure, for model_channels ``C``, time-embedding width ``E = 4C``:

    - ``time_embed.{0,2}``: Linear(C, E), Linear(E, E); ``camera_embed.{0,2}``: Linear(16, E), Linear(E, E).
    - ``input_blocks.0.0``: Conv(in, C, 3).
    - per level (mult ``m``), ``num_res_blocks`` times: ``input_blocks.{n}.0`` a ResBlock to ``m*C``
      (``in_layers.0`` GroupNorm, ``in_layers.2`` Conv3, ``emb_layers.1`` Linear(E, out),
      ``out_layers.0`` GroupNorm, ``out_layers.3`` Conv3, ``skip_connection`` Conv1 when the width
      changes), then ``input_blocks.{n}.1`` a SpatialTransformer when the level's downsample rate
      is in ``attention_resolutions``; between levels ``input_blocks.{n}.0.op`` (Conv3 stride 2).
    - ``middle_block.{0,1,2}``: ResBlock, SpatialTransformer, ResBlock.
    - ``output_blocks``: levels reversed, ``num_res_blocks + 1`` ResBlocks each taking the
      concatenated skip, optional SpatialTransformer, and ``.{k}.conv`` Upsample at a level's end.
    - ``out.0`` GroupNorm, ``out.2`` Conv(C, out, 3).
    - SpatialTransformer (linear proj): ``norm``, ``proj_in``, ``transformer_blocks.0.{attn1,attn2}.
      {to_q,to_k,to_v}`` (no bias), ``.to_out.0``, ``ff.net.0.proj`` (GEGLU, 2x4 widths), ``ff.net.2``,
      ``norm1..3``, ``proj_out``. attn1 is the multi-view self-attention, attn2 the text cross-attention.

    The keys come from :func:`backend.models.layouts.ldm_unet_shapes` (the layout the loader
    checks), which tests/test_conformance.py holds against the original ldm ``UNetModel``.
    """
    from backend.models.layouts import LdmUNet, ldm_unet_shapes

    return ldm_unet_shapes(LdmUNet.from_ldm(cfg))


def tiny_mvdream_unet_state_dict(cfg: dict | None = None, *, seed: int = SEED + 40) -> dict[str, torch.Tensor]:
    """Random tensors for :func:`mvdream_unet_shapes` (norm weights near 1, the rest small)."""
    cfg = cfg or TINY_MVDREAM_UNET_CONFIG
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in mvdream_unet_shapes(cfg).items():
        t = torch.randn(shape, generator=gen) * 0.05
        if len(shape) == 1 and key.endswith("weight"):
            t = t + 1.0
        out[key] = t
    return out


def save_tiny_mvdream(folder: Path, *, seed: int = SEED + 40) -> Path:
    """Tiny MVDream in the ashawkey/mvdream-sd2.1-diffusers layout; returns ``folder``.

    ``unet/config.json`` (:data:`TINY_MVDREAM_UNET_CONFIG`) + ``unet/diffusion_pytorch_model.safetensors``
    (LDM key names, :func:`mvdream_unet_shapes`); SD2.1-style ``text_encoder/``, ``tokenizer/``,
    ``vae/``, ``scheduler/`` (DDIM, epsilon, SD's betas) and ``model_index.json``.
    """
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    folder = Path(folder)
    _write_json(folder / "unet" / "config.json", TINY_MVDREAM_UNET_CONFIG)
    save_file(tiny_mvdream_unet_state_dict(seed=seed), str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    tok = save_tiny_clip_tokenizer(folder / "tokenizer")
    _tiny_text_encoder(tiny_vocab_size(tok), TINY_CROSS_DIM, seed + 1).save_pretrained(folder / "text_encoder")
    _tiny_vae(seed + 2).save_pretrained(folder / "vae")
    DDIMScheduler(
        **SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    ).save_pretrained(folder / "scheduler")
    _write_model_index(
        folder,
        {
            "unet": ("mvdream", "MultiViewUNetModel"),
            "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "DDIMScheduler"),
        },
        "MVDreamPipeline",
    )
    return folder
