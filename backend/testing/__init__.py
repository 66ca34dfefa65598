"""Tiny random models, saved to disk in the same layout as the public weights.

No test may download anything, yet the loaders in :mod:`backend.models` must be exercised
on the files users will have. So each factory here builds a 1-layer, 8-64-channel model
from constructor arguments under a fixed seed (diffusers' ``get_dummy_components`` habit)
and **saves it the way the public repository lays it out**. Tests then load it back through
the very same ``from_pretrained``/loader code (:func:`backend.models.load_sd15`, ...).

Factories (each takes a folder and returns the path the matching loader expects):

============================  =========================================  ===========================
factory                       real counterpart (see shared/WEIGHTS.md)    loader
============================  =========================================  ===========================
:func:`save_tiny_sd15`        stable-diffusion-v1-5 (fp16 variant files)  ``models.load_sd15``
:func:`save_tiny_controlnet`  ControlNetMediaPipeFace/diffusion_sd15      ``models.load_controlnet``
:func:`save_tiny_ip_adapter`  h94/IP-Adapter-FaceID faceid_sd15.bin       ``models.load_ip_adapter_faceid``
:func:`save_tiny_mvdream`     ashawkey/mvdream-sd2.1-diffusers            ``models.load_mvdream``
:func:`save_tiny_sv3d`        SV3D in diffusers blocks (sv3d_u shape)     ``models.load_sv3d``
:func:`save_tiny_taesd`       madebyollin/taesd                           ``models.load_taesd``
:func:`save_tiny_insightface` insightface buffalo_l pack (5 ONNX files)   ``models.load_insightface``
============================  =========================================  ===========================

:func:`save_tiny_model_root` writes all but SV3D into a model root laid out as
``python -m backend models download`` leaves it (pytest: the ``tiny_models_root`` and
``tiny_sv3d_path`` session fixtures in ``tests/conftest.py``).

Sizes are deliberately tiny (whole set: a few MB, built in a few seconds on a CPU); what is
kept faithful is the *structure*: folder names, file names, config keys, state-dict key
names, tensor ranks, the 512-d identity embedding, 77-token prompts, the VAE's 8x
down-sampling and SD's noise schedule.

Usage (pytest; see ``tests/test_models.py``)::

    @pytest.fixture(scope="session")
    def tiny_sd15(tmp_path_factory):
        return save_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15")

    def test_unet(tiny_sd15):
        sd = load_sd15(tiny_sd15)
        ...
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SEED = 0

# --- sizes -----------------------------------------------------------------------------
#: Text/cross-attention width of the tiny SD1.5 (real: 768).
TINY_CROSS_DIM = 32
#: ArcFace embedding width: kept at the real 512 so the insightface output feeds it directly.
ID_EMBED_DIM = 512
#: LoRA rank of the tiny IP-Adapter-FaceID (real: 128).
TINY_LORA_RANK = 4
#: SD1.5's training noise schedule (scheduler/scheduler_config.json of the real repo).
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# --- helpers ---------------------------------------------------------------------------


def _seeded(seed: int = SEED) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


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


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses (GPT-2's table)."""
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    )
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


#: Merges of the tiny tokenizer: enough to make a few common prompt words single tokens.
_TINY_MERGES = [
    "t h",
    "th e</w>",
    "o f</w>",
    "i n</w>",
    "p h",
    "ph o",
    "pho t",
    "phot o</w>",
    "s t",
    "st y",
    "sty l",
    "styl e</w>",
    "p o",
    "po r",
    "por t",
    "port r",
    "portr a",
    "portra i",
    "portrai t</w>",
]


def save_tiny_clip_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer folder (``vocab.json``, ``merges.txt``, configs) generated in code.

    Vocabulary: the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token
    per merge in :data:`_TINY_MERGES`, then ``<|startoftext|>`` and ``<|endoftext|>``, as in
    the real CLIP vocabulary (49,408 tokens there). Any text tokenises (it falls back to
    bytes); prompts are padded to 77 tokens like SD's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    for sym in alphabet:
        vocab[sym + "</w>"] = len(vocab)
    for merge in _TINY_MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special},
    )
    return folder


def tiny_vocab_size(folder: Path) -> int:
    return len(json.loads((Path(folder) / "vocab.json").read_text()))


def _tiny_text_encoder(vocab_size: int, hidden: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=hidden,
    )
    return CLIPTextModel(cfg).eval()


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


def _write_model_index(folder: Path, entries: dict[str, tuple[str, str]], class_name: str) -> None:
    import diffusers

    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    index.update({k: [lib, cls] for k, (lib, cls) in entries.items()})
    _write_json(Path(folder) / "model_index.json", index)


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


# --- MVDream -----------------------------------------------------------------------------

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
    """
    C = cfg["model_channels"]
    E = 4 * C
    ctx = cfg["context_dim"]
    heads_ch = cfg["num_head_channels"]
    shapes: dict[str, tuple[int, ...]] = {}

    def lin(prefix, d_in, d_out, bias=True):
        shapes[f"{prefix}.weight"] = (d_out, d_in)
        if bias:
            shapes[f"{prefix}.bias"] = (d_out,)

    def conv(prefix, c_in, c_out, k):
        shapes[f"{prefix}.weight"] = (c_out, c_in, k, k)
        shapes[f"{prefix}.bias"] = (c_out,)

    def norm(prefix, c):
        shapes[f"{prefix}.weight"] = (c,)
        shapes[f"{prefix}.bias"] = (c,)

    def resblock(prefix, c_in, c_out):
        norm(f"{prefix}.in_layers.0", c_in)
        conv(f"{prefix}.in_layers.2", c_in, c_out, 3)
        lin(f"{prefix}.emb_layers.1", E, c_out)
        norm(f"{prefix}.out_layers.0", c_out)
        conv(f"{prefix}.out_layers.3", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{prefix}.skip_connection", c_in, c_out, 1)

    def transformer(prefix, c):
        inner = (c // heads_ch) * heads_ch
        norm(f"{prefix}.norm", c)
        lin(f"{prefix}.proj_in", c, inner)
        b = f"{prefix}.transformer_blocks.0"
        for attn, kv in (("attn1", inner), ("attn2", ctx)):
            lin(f"{b}.{attn}.to_q", inner, inner, bias=False)
            lin(f"{b}.{attn}.to_k", kv, inner, bias=False)
            lin(f"{b}.{attn}.to_v", kv, inner, bias=False)
            lin(f"{b}.{attn}.to_out.0", inner, inner)
        lin(f"{b}.ff.net.0.proj", inner, 2 * 4 * inner)
        lin(f"{b}.ff.net.2", 4 * inner, inner)
        for n in ("norm1", "norm2", "norm3"):
            norm(f"{b}.{n}", inner)
        lin(f"{prefix}.proj_out", inner, c)

    lin("time_embed.0", C, E)
    lin("time_embed.2", E, E)
    lin("camera_embed.0", cfg["camera_dim"], E)
    lin("camera_embed.2", E, E)
    conv("input_blocks.0.0", cfg["in_channels"], C, 3)
    chans, ch, ds, n = [C], C, 1, 1
    mults = cfg["channel_mult"]
    for level, mult in enumerate(mults):
        for _ in range(cfg["num_res_blocks"]):
            resblock(f"input_blocks.{n}.0", ch, mult * C)
            ch = mult * C
            if ds in cfg["attention_resolutions"]:
                transformer(f"input_blocks.{n}.1", ch)
            chans.append(ch)
            n += 1
        if level != len(mults) - 1:
            conv(f"input_blocks.{n}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2
            n += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    n = 0
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(cfg["num_res_blocks"] + 1):
            skip = chans.pop()
            resblock(f"output_blocks.{n}.0", ch + skip, mult * C)
            ch = mult * C
            k = 1
            if ds in cfg["attention_resolutions"]:
                transformer(f"output_blocks.{n}.1", ch)
                k = 2
            if level and i == cfg["num_res_blocks"]:
                conv(f"output_blocks.{n}.{k}.conv", ch, ch, 3)
                ds //= 2
            n += 1
    norm("out.0", ch)
    conv("out.2", C, cfg["out_channels"], 3)
    return shapes


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


# --- SV3D ----------------------------------------------------------------------------------

#: Width of SV3D's vector ("added time") input per variant (shared/WEIGHTS.md):
#: sv3d_u: cond_aug only (256); sv3d_p: cond_aug + polar + azimuth (256 + 512 + 512).
SV3D_VECTOR_DIMS = {"sv3d_u": 256, "sv3d_p": 1280}


def save_tiny_sv3d(folder: Path, *, seed: int = SEED + 50, frames: int = 21) -> Path:
    """Tiny SV3D (``sv3d_u`` shape) as diffusers blocks; returns ``folder``.

    ``unet/``: ``UNetSpatioTemporalConditionModel`` with in 8 channels (4 noise + 4 image
    latent), out 4, one 256-d added-time input (cond_aug), 21 frames, widths 32/64 (the
    spatio-temporal blocks hard-code 32 GroupNorm groups). ``vae/``: ``AutoencoderKLTemporalDecoder``.
    ``image_encoder/``: ``CLIPVisionModelWithProjection`` whose projection width equals the
    UNet's cross-attention width (the single image token). ``feature_extractor/``,
    ``scheduler/`` (Euler, EDM v-prediction, sigma_max 700), ``model_index.json``.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    _seeded(seed)
    UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=SV3D_VECTOR_DIMS["sv3d_u"],
        projection_class_embeddings_input_dim=SV3D_VECTOR_DIMS["sv3d_u"],
        layers_per_block=1,
        cross_attention_dim=TINY_CROSS_DIM,
        num_attention_heads=(2, 4),
        num_frames=frames,
    ).eval().save_pretrained(folder / "unet")
    _seeded(seed + 1)
    AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval().save_pretrained(folder / "vae")
    _seeded(seed + 2)
    vis = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=TINY_CROSS_DIM,
    )
    CLIPVisionModelWithProjection(vis).eval().save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor"
    )
    EulerDiscreteScheduler(
        **SD15_SCHEDULE,
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_type="continuous",
        interpolation_type="linear",
        steps_offset=1,
    ).save_pretrained(folder / "scheduler")
    _write_model_index(
        folder,
        {
            "unet": ("diffusers", "UNetSpatioTemporalConditionModel"),
            "vae": ("diffusers", "AutoencoderKLTemporalDecoder"),
            "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
            "feature_extractor": ("transformers", "CLIPImageProcessor"),
            "scheduler": ("diffusers", "EulerDiscreteScheduler"),
        },
        "StableVideoDiffusionPipeline",
    )
    return folder


# --- insightface ---------------------------------------------------------------------------
# Input/output signatures of the buffalo_l pack's ONNX files (read from the files' graphs):
#   det_10g.onnx     input "input.1" [1, 3, ?, ?] (ours: fixed 640 x 640); 9 outputs: scores [N_s, 1] x3 (strides 8, 16, 32,
#                    2 anchors per cell), boxes [N_s, 4] x3 (distances in stride units), kps [N_s, 10] x3
#   2d106det.onnx    input "data" [1, 3, 192, 192] -> "fc1" [1, 212]   (106 x (x, y) in [-1, 1])
#   1k3d68.onnx      input "data" [1, 3, 192, 192] -> "fc1" [1, 3309]  (last 68 x 3 used)
#   genderage.onnx   input "data" [1, 3, 96, 96]   -> "fc1" [1, 3]
#   w600k_r50.onnx   input "input.1" [1, 3, 112, 112] -> "683" [1, 512]
# insightface routes a file by these shapes alone (model_zoo.ModelRouter) and reads outputs by
# position, so ours are routed exactly like the real ones. (The real graphs name some outputs
# with bare numbers, e.g. "683"; torch's exporter refuses those names, so ours are spelled out.)

INSIGHTFACE_PACK_FILES = ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")


class _TinyDetector(torch.nn.Module):
    """SCRFD-shaped detector: for every stride s in (8, 16, 32) and 2 anchors per cell, a score,
    4 box distances and 10 keypoint offsets (in units of s).

    Random weights would find random faces, so the heads are *constant*: a per-pixel
    convolution of the input whose weights are zero, plus biases. The score bias peaks at one
    anchor (stride 32, cell (1, 1) = pixel (32, 32) of the detector input), which therefore
    reports one face whatever the image: box (0, 0)-(64, 64) of the 640 input, 5 keypoints
    placed like a frontal face's. The other anchors score ~0. This exercises insightface's real
    decoding path (anchors, distance2bbox, NMS, rescaling to the photo) deterministically.
    """

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        # box distances (left, top, right, bottom) and keypoint offsets (x, y) x 5 of the face
        self.register_buffer("face_box", torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
        self.register_buffer("face_kps", torch.tensor([[-0.3, -0.2, 0.3, -0.2, 0.0, 0.1, -0.25, 0.4, 0.25, 0.4]]))

    def forward(self, x):  # [1, 3, H, W]
        h = self.stem(x) * 0.0  # [1, 4, H, W], zero but graph-dependent on the input
        scores, boxes, kpss = [], [], []
        for stride in (8, 16, 32):
            f = torch.nn.functional.avg_pool2d(h, stride)  # [1, 4, H/s, W/s]
            n = f.shape[2] * f.shape[3] * 2
            base = f.mean(dim=1).reshape(-1, 1).repeat(1, 2).reshape(n, 1)  # [n, 1] zeros
            score = base + 0.01
            box = base + torch.full((1, 4), 0.5)
            kps = base + torch.zeros((1, 10))
            if stride == 32:
                # anchor of cell (row 1, col 1), first of its 2 anchors
                w_cells = f.shape[3]
                idx = (1 * w_cells + 1) * 2
                onehot = torch.zeros((n, 1))
                onehot[idx] = 1.0
                score = score + 0.98 * onehot
                box = box + onehot * self.face_box  # distances 1 stride: box (0, 0)-(64, 64)
                kps = kps + onehot * self.face_kps  # eyes, nose, mouth corners
            scores.append(score)
            boxes.append(box)
            kpss.append(kps)
        return (*scores, *boxes, *kpss)


class _TinyConvHead(torch.nn.Module):
    """Conv -> global pool -> Linear: a stand-in for a landmark/attribute/recognition net."""

    def __init__(self, n_out: int, width: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, stride=4, padding=1)
        self.fc = torch.nn.Linear(width, n_out)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.tanh(self.fc(f))


def _export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
    dynamic_hw: bool = False,
) -> None:
    axes = {input_name: {2: "height", 3: "width"}} if dynamic_hw else None
    import warnings

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=13,
            dynamo=False,
        )


def save_tiny_insightface(root: Path, pack: str = "buffalo_l", *, seed: int = SEED + 60) -> Path:
    """A tiny insightface model pack at ``root/models/<pack>/`` (the layout ``FaceAnalysis``
    reads); returns ``root``.

    Five ONNX files, exported here with ``torch.onnx.export``, with the same file names,
    input/output names and shapes as the buffalo_l pack (see the table above), so
    ``insightface.app.FaceAnalysis`` routes and runs them through its real code: detection
    (constant, see :class:`_TinyDetector`), 106-point 2D and 68-point 3D landmarks, gender/age and
    the 512-d recognition embedding (random weights: a deterministic function of the aligned crop).
    """
    folder = Path(root) / "models" / pack
    folder.mkdir(parents=True, exist_ok=True)
    _seeded(seed)
    _export_onnx(
        _TinyDetector(),
        torch.zeros(1, 3, 640, 640),
        folder / "det_10g.onnx",
        "input.1",
        [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)],
    )
    _export_onnx(_TinyConvHead(212), torch.zeros(1, 3, 192, 192), folder / "2d106det.onnx", "data", ["fc1"])
    _export_onnx(_TinyConvHead(3309), torch.zeros(1, 3, 192, 192), folder / "1k3d68.onnx", "data", ["fc1"])
    _export_onnx(_TinyConvHead(3), torch.zeros(1, 3, 96, 96), folder / "genderage.onnx", "data", ["fc1"])
    _export_onnx(
        _TinyConvHead(ID_EMBED_DIM, width=16),
        torch.zeros(1, 3, 112, 112),
        folder / "w600k_r50.onnx",
        "input.1",
        ["embedding"],
    )
    return Path(root)


# --- a whole model root --------------------------------------------------------------------

#: What :func:`save_tiny_model_root` can write, in the registry's layout (backend.models).
TINY_ROOT_MODELS = ("sd15", "ip_adapter_faceid", "controlnet_face", "mvdream", "buffalo_l", "taesd")


def save_tiny_model_root(root: Path, names: tuple[str, ...] = TINY_ROOT_MODELS) -> Path:
    """A model root laid out exactly like ``python -m backend models download`` leaves it:
    ``<root>/sd15/``, ``<root>/ip_adapter_faceid/ip-adapter-faceid_sd15.bin``,
    ``<root>/controlnet_face/diffusion_sd15/``, ``<root>/mvdream/``, ``<root>/taesd/`` and
    ``<root>/insightface/models/buffalo_l/``. Point ``PORTRAITSPLAT_MODELS`` (or the loaders'
    ``root``/``path`` arguments) at it. SV3D is not included: the public checkpoint is a single
    SGM file, not this layout (use :func:`save_tiny_sv3d` with ``models.load_sv3d``)."""
    root = Path(root)
    writers = {
        "sd15": lambda: save_tiny_sd15(root / "sd15"),
        "ip_adapter_faceid": lambda: save_tiny_ip_adapter(root / "ip_adapter_faceid"),
        "controlnet_face": lambda: save_tiny_controlnet(root / "controlnet_face"),
        "mvdream": lambda: save_tiny_mvdream(root / "mvdream"),
        "buffalo_l": lambda: save_tiny_insightface(root / "insightface", "buffalo_l"),
        "taesd": lambda: save_tiny_taesd(root / "taesd"),
    }
    for name in names:
        writers[name]()
    return root
