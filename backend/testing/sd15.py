"""Tiny Stable Diffusion 1.5 family: SD1.5 itself, its face ControlNet, IP-Adapter-FaceID and TAESD.

This module's one job is the SD1.5-side factories: the UNet's constructor arguments, the
8x-down-sampling VAE (shared with MVDream), the SD1.5 repository layout, the face
ControlNet, an IP-Adapter-FaceID state dict with the real key layout, and the tiny
``AutoencoderTiny``, each saved as its public repository lays it out.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import _tiny_text_encoder, save_tiny_clip_tokenizer, tiny_vocab_size
from .common import ID_EMBED_DIM, SD15_SCHEDULE, SEED, TINY_CROSS_DIM, TINY_LORA_RANK, _seeded, _write_model_index


def _randomise_zero_weights(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Give zero-initialised weight tensors (ControlNet's zero convs, ...) small random values,
    so that every branch of a tiny model has a visible effect in tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias") and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def _tiny_vae(seed: int):
    """AutoencoderKL with 4 blocks, i.e. SD's 8x down-sampling, at 8-16 channels."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_unet_kwargs() -> dict:
    """Constructor arguments of the tiny SD1.5 UNet (the ControlNet mirrors them).

    Down: cross-attention block, plain block; up: plain, cross-attention; a cross-attention
    mid block, like SD1.5 (whose 4 levels are CrossAttn x3 + plain). Attention processors in
    diffusers order: down 0 (attn1, attn2), up 1 (x2 layers: attn1, attn2, attn1, attn2),
    mid (attn1, attn2): 8 processors, so IP-Adapter keys 0..7 with odd = cross-attention.
    """
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=8,
    )


# --- Stable Diffusion 1.5 --------------------------------------------------------------


def save_tiny_sd15(folder: Path, *, seed: int = SEED, variant: str | None = "fp16") -> Path:
    """Tiny SD1.5 in the diffusers repo layout; returns ``folder``.

    ``unet/``, ``vae/``, ``text_encoder/`` (weights named ``*.fp16.safetensors`` like the fp16
    variant users download; the tensors stay float32 here), ``tokenizer/``, ``scheduler/``
    (PNDM class name and SD1.5's betas, like the real ``scheduler_config.json``) and
    ``model_index.json``.
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel

    folder = Path(folder)
    tok_dir = save_tiny_clip_tokenizer(folder / "tokenizer")
    _seeded(seed)
    unet = UNet2DConditionModel(**tiny_unet_kwargs()).eval()
    unet.save_pretrained(folder / "unet", variant=variant)
    _tiny_vae(seed + 1).save_pretrained(folder / "vae", variant=variant)
    _tiny_text_encoder(tiny_vocab_size(tok_dir), TINY_CROSS_DIM, seed + 2).save_pretrained(
        folder / "text_encoder", variant=variant
    )
    PNDMScheduler(
        **SD15_SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon"
    ).save_pretrained(folder / "scheduler")
    _write_model_index(
        folder,
        {
            "unet": ("diffusers", "UNet2DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "PNDMScheduler"),
            "safety_checker": (None, None),
            "feature_extractor": (None, None),
        },
        "StableDiffusionPipeline",
    )
    return folder


def save_tiny_controlnet(folder: Path, *, seed: int = SEED + 10, subfolder: str = "diffusion_sd15") -> Path:
    """Tiny SD1.5 ControlNet saved under ``folder/diffusion_sd15`` like CrucibleAI's repo.

    Returns ``folder`` (the repo root; the loader opens the subfolder). The zero-initialised
    convolutions get small random weights, so its residuals visibly change the UNet output.
    """
    from diffusers import ControlNetModel

    kw = tiny_unet_kwargs()
    for k in ("out_channels", "up_block_types", "sample_size"):
        kw.pop(k)
    _seeded(seed)
    net = ControlNetModel(**kw, conditioning_embedding_out_channels=(8, 8, 16, 16)).eval()
    _randomise_zero_weights(net, seed)
    net.save_pretrained(Path(folder) / subfolder)
    return Path(folder)


def tiny_ip_adapter_state_dict(
    unet, *, seed: int = SEED + 20, rank: int = TINY_LORA_RANK, id_dim: int = ID_EMBED_DIM
) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter-FaceID state dict with the real key layout, sized to ``unet``.

    ``{"image_proj": {proj.0.*, proj.2.*, norm.*}, "ip_adapter": {"{i}.to_{q,k,v,out}_lora.{down,up}.weight",
    odd i also "{i}.to_k_ip.weight", "{i}.to_v_ip.weight"}}`` with i over ``unet.attn_processors``
    in diffusers order (shared/WEIGHTS.md). ``image_proj`` maps ``id_dim`` (512) to 4 tokens of
    the UNet's cross-attention width: Linear(512, 2*512) -> GELU -> Linear(1024, 4*C) -> LayerNorm(C).
    """
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    hidden_up = list(reversed(unet.config.block_out_channels))

    def rnd(*shape, std=0.1):
        return torch.randn(shape, generator=gen) * std

    image_proj = {
        "proj.0.weight": rnd(2 * id_dim, id_dim, std=0.05),
        "proj.0.bias": rnd(2 * id_dim),
        "proj.2.weight": rnd(4 * cross, 2 * id_dim, std=0.05),
        "proj.2.bias": rnd(4 * cross),
        "norm.weight": 1.0 + rnd(cross),
        "norm.bias": rnd(cross),
    }
    ip: dict[str, torch.Tensor] = {}
    for i, name in enumerate(unet.attn_processors.keys()):
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = hidden_up[int(name.split(".")[1])]
        else:
            hidden = unet.config.block_out_channels[int(name.split(".")[1])]
        is_cross = name.endswith("attn2.processor")
        kv_in = cross if is_cross else hidden
        for proj, d_in in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
            ip[f"{i}.{proj}_lora.down.weight"] = rnd(rank, d_in)
            ip[f"{i}.{proj}_lora.up.weight"] = rnd(hidden, rank)
        if is_cross:
            assert i % 2 == 1, "cross-attention processors must sit at odd indices (attn1/attn2 pairs)"
            ip[f"{i}.to_k_ip.weight"] = rnd(hidden, cross, std=0.3)
            ip[f"{i}.to_v_ip.weight"] = rnd(hidden, cross, std=0.3)
    return {"image_proj": image_proj, "ip_adapter": ip}


def save_tiny_ip_adapter(
    folder: Path, unet=None, *, seed: int = SEED + 20, filename: str = "ip-adapter-faceid_sd15.bin"
) -> Path:
    """Write :func:`tiny_ip_adapter_state_dict` as ``folder/ip-adapter-faceid_sd15.bin``
    (``torch.save`` of the nested dict, like the real file); returns the file path.
    ``unet`` defaults to the tiny SD1.5 UNet's structure (:func:`tiny_unet_kwargs`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if unet is None:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel(**tiny_unet_kwargs())
    torch.save(tiny_ip_adapter_state_dict(unet, seed=seed), path)
    return path


# --- TAESD -------------------------------------------------------------------------------


def save_tiny_taesd(folder: Path, *, seed: int = SEED + 30) -> Path:
    """Tiny ``AutoencoderTiny`` (config.json + diffusion_pytorch_model.safetensors at the root,
    like madebyollin/taesd); 8x down-sampling, 4 latent channels, scaling_factor 1.0."""
    from diffusers import AutoencoderTiny

    _seeded(seed)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(folder)
    return Path(folder)
