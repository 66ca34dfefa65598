"""Tiny checkpoints built by the *reference* implementations, saved as their users have them.

This module's one job is the conformance side of the loader tests: each factory instantiates
the original code's own modules at tiny width and writes their state dicts in the layout the
public files have, so a loader test proves our code reads what the reference code wrote (not
what our own saver wrote). The reference packages are test dependencies (scripts/env.sh):

- ``stable-diffusion-sdkit`` 2.1.5: the original Stability/CompVis ``ldm`` package
  (``openaimodel.UNetModel``, ``diffusionmodules.model.Encoder``/``Decoder``);
- ``ip-adapter`` 0.1.0: tencent-ailab's IP-Adapter (``MLPProjModel``, ``LoRAAttnProcessor``,
  ``LoRAIPAttnProcessor``). Its package ``__init__`` imports a diffusers name that diffusers
  0.42 moved, so the two source files are loaded on their own (:func:`ip_adapter_faceid_module`);
- ``clip-anytorch`` 2.6.0: OpenAI CLIP's ``SimpleTokenizer`` and its BPE file (its package
  ``__init__`` needs torchvision, so ``simple_tokenizer.py`` is loaded on its own).

Nothing here is imported by ``backend.testing``'s ``__init__``: import it explicitly.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import torch

from .common import SEED, _seeded

# --- loading reference sources that cannot be imported as packages ---------------------------


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the reference package {name!r} is not installed (scripts/env.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_file(mod_name: str, path: Path) -> types.ModuleType:
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def ip_adapter_faceid_module() -> types.SimpleNamespace:
    """tencent-ailab's ``LoRAAttnProcessor``, ``LoRAIPAttnProcessor`` (attention_processor_faceid.py,
    loaded as a file) and ``MLPProjModel`` (the class definition of ip_adapter_faceid.py, compiled
    on its own: that module's other imports name ``diffusers.pipelines.controlnet.MultiControlNetModel``,
    which diffusers 0.42 no longer has)."""
    root = _package_dir("ip_adapter")
    procs = _load_file("_reference_ip_adapter_attention_processor_faceid", root / "attention_processor_faceid.py")
    source = (root / "ip_adapter_faceid.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MLPProjModel")
    namespace: dict[str, Any] = {"torch": torch, "__name__": "_reference_ip_adapter_faceid"}
    exec(compile(ast.Module(body=[cls], type_ignores=[]), str(root / "ip_adapter_faceid.py"), "exec"), namespace)
    return types.SimpleNamespace(
        MLPProjModel=namespace["MLPProjModel"],
        LoRAAttnProcessor=procs.LoRAAttnProcessor,
        LoRAIPAttnProcessor=procs.LoRAIPAttnProcessor,
    )


def clip_simple_tokenizer() -> Any:
    """OpenAI CLIP's ``SimpleTokenizer`` (clip-anytorch's ``clip/simple_tokenizer.py``) on its BPE file."""
    root = _package_dir("clip")
    mod = _load_file("_reference_clip_simple_tokenizer", root / "simple_tokenizer.py")
    return mod.SimpleTokenizer(str(root / "bpe_simple_vocab_16e6.txt.gz"))


def clip_bpe_file() -> Path:
    return _package_dir("clip") / "bpe_simple_vocab_16e6.txt.gz"


# --- tiny SD1.5 in the LDM layout ----------------------------------------------------------

#: Tiny SD1.5: LDM's GroupNorm32 needs channels divisible by 32, so 32/64 wide.
TINY_LDM_UNET = dict(
    model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,), context_dim=32
)
TINY_LDM_VAE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, projection_dim=32)


def tiny_sd15_config_dir(folder: Path) -> Path:
    """SD1.5's shipped diffusers configs (backend/models/configs/sd15) with the tiny sizes of
    :data:`TINY_LDM_UNET`/:data:`TINY_LDM_VAE`/:data:`TINY_TEXT` (vocabulary kept at 49408, so
    the real tokenizer feeds it)."""
    from backend.models.probe import SD15_CONFIG_DIR

    folder = Path(folder)
    shutil.copytree(SD15_CONFIG_DIR, folder, dirs_exist_ok=True)

    def edit(rel: str, **kw: Any) -> None:
        p = folder / rel
        cfg = json.loads(p.read_text())
        cfg.update(kw)
        p.write_text(json.dumps(cfg, indent=2) + "\n")

    edit(
        "unet/config.json",
        block_out_channels=[32, 64],
        layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
        sample_size=8,
    )
    edit(
        "vae/config.json",
        block_out_channels=[32, 64],
        layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        sample_size=32,
    )
    edit("text_encoder/config.json", **TINY_TEXT)
    return folder


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter random (LDM zero-initialises its output convs: a zero UNet would make
    any two implementations agree)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=gen) * std)
    return module


def ldm_unet(seed: int = SEED, randomise: bool = True, **over: Any) -> torch.nn.Module:
    """ldm ``openaimodel.UNetModel`` (spatial transformer, SD1.5 settings unless ``over``);
    ``randomise=False`` keeps ldm's own init (use it on the meta device)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    kw: dict[str, Any] = dict(
        image_size=8,
        in_channels=4,
        out_channels=4,
        model_channels=TINY_LDM_UNET["model_channels"],
        attention_resolutions=list(TINY_LDM_UNET["attention_resolutions"]),
        num_res_blocks=TINY_LDM_UNET["num_res_blocks"],
        channel_mult=list(TINY_LDM_UNET["channel_mult"]),
        num_heads=8,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=TINY_LDM_UNET["context_dim"],
        use_checkpoint=False,
        legacy=False,
    )
    kw.update(over)
    _seeded(seed)
    unet = UNetModel(**kw).eval()
    return _randomise(unet, seed) if randomise else unet


class LdmAutoencoder(torch.nn.Module):
    """ldm ``Encoder``/``Decoder`` plus the two 1x1 convs ldm's ``AutoencoderKL`` adds
    (``quant_conv``: 2z -> 2·embed, ``post_quant_conv``: embed -> z), under its attribute names."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, embed_dim: int):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        dd = dict(
            double_z=True,
            z_channels=z_channels,
            resolution=32,
            in_channels=3,
            out_ch=3,
            ch=ch,
            ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=[],
            dropout=0.0,
        )
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quant_conv = torch.nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, z_channels, 1)

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def ldm_autoencoder(seed: int = SEED + 1, **over: Any) -> LdmAutoencoder:
    kw = dict(TINY_LDM_VAE)
    kw.update(over)
    _seeded(seed)
    return _randomise(LdmAutoencoder(**kw).eval(), seed)  # type: ignore[return-value]


def clip_text_model(config_dir: Path, seed: int = SEED + 2) -> torch.nn.Module:
    """transformers ``CLIPTextModel`` from ``config_dir/text_encoder`` (what FrozenCLIPEmbedder wraps)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    return CLIPTextModel(CLIPTextConfig.from_pretrained(Path(config_dir) / "text_encoder")).eval()


def text_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPTextModel`` keys as every published file has them (``text_model.`` first):
    transformers >= 5 drops that level from the module itself."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def sd15_single_file_state(
    unet: torch.nn.Module, vae: torch.nn.Module, text: torch.nn.Module, *, a1111_extras: bool = True
):
    """The state dict of CompVis' ``LatentDiffusion`` for SD1.x, as ``.ckpt``/``.safetensors``
    files hold it: ``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.*``; with ``a1111_extras`` also what those files typically
    carry besides (``model_ema.decay``/``num_updates``, the DDPM schedule buffers, CLIP's
    ``position_ids``)."""
    sd: dict[str, torch.Tensor] = {}
    sd.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    sd.update({"cond_stage_model.transformer." + k: v for k, v in text_model_keys(text.state_dict()).items()})
    if a1111_extras:
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
        for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "posterior_variance"):
            sd[name] = torch.linspace(0.001, 0.9, 1000)
    return {k: v.contiguous() for k, v in sd.items()}


def save_file_state(state: dict[str, torch.Tensor], path: Path, *, ckpt_wrapper: bool = True) -> Path:
    """``.safetensors`` as is; ``.ckpt``/``.pth`` as Lightning saved them (``{"state_dict": ...,
    "global_step": N}``) when ``ckpt_wrapper``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 470000} if ckpt_wrapper else state, path)
    return path


# --- ControlNet (lllyasviel cldm layout) ----------------------------------------------------


def cldm_controlnet_state(
    unet: torch.nn.Module, hint_channels: int = 3, seed: int = SEED + 3
) -> dict[str, torch.Tensor]:
    """cldm ``ControlNet``'s state dict for a UNet's settings: the reference UNet's own
    ``time_embed``/``input_blocks``/``middle_block`` tensors (cldm builds them with the same code,
    lllyasviel/ControlNet cldm/cldm.py lines 132-278), the ``input_hint_block`` convs and one 1x1
    zero conv per input block plus ``middle_block_out`` (cldm.py lines 145-163, 212, 237, 278).
    The package imports torchvision and pytorch_lightning, so it is not instantiated."""
    gen = torch.Generator().manual_seed(seed)
    own = unet.state_dict()
    sd = {k: v.clone() for k, v in own.items() if k.split(".")[0] in ("time_embed", "input_blocks", "middle_block")}
    C = own["input_blocks.0.0.weight"].shape[0]
    convs = ((0, hint_channels, 16), (2, 16, 16), (4, 16, 32), (6, 32, 32), (8, 32, 96), (10, 96, 96), (12, 96, 256))
    for idx, c_in, c_out in (*convs, (14, 256, C)):
        sd[f"input_hint_block.{idx}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.05
        sd[f"input_hint_block.{idx}.bias"] = torch.randn(c_out, generator=gen) * 0.05
    n_in = 1 + max(int(k.split(".")[1]) for k in own if k.startswith("input_blocks."))
    for i in range(n_in):
        prefix = f"input_blocks.{i}."
        outs = [v.shape[0] for k, v in own.items() if k.startswith(prefix) and k.endswith("weight") and v.ndim == 4]
        c = outs[-1]
        sd[f"zero_convs.{i}.0.weight"] = torch.randn(c, c, 1, 1, generator=gen) * 0.05
        sd[f"zero_convs.{i}.0.bias"] = torch.randn(c, generator=gen) * 0.05
    c = own["middle_block.2.out_layers.3.weight"].shape[0]
    sd["middle_block_out.0.weight"] = torch.randn(c, c, 1, 1, generator=gen) * 0.05
    sd["middle_block_out.0.bias"] = torch.randn(c, generator=gen) * 0.05
    return {k: v.contiguous() for k, v in sd.items()}


def tiny_controlnet_config_dir(folder: Path) -> Path:
    """The shipped SD1.5 ControlNet config at the sizes of :data:`TINY_LDM_UNET`."""
    from backend.models.probe import CONTROLNET_CONFIG_DIR

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((CONTROLNET_CONFIG_DIR / "config.json").read_text())
    cfg.update(
        block_out_channels=[32, 64],
        layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        cross_attention_dim=32,
    )
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# --- IP-Adapter-FaceID ---------------------------------------------------------------------


def ip_adapter_faceid_reference(unet: Any, rank: int = 4, seed: int = SEED + 4) -> tuple[Any, Any]:
    """(``MLPProjModel``, ``ModuleList`` of processors) as tencent-ailab's tutorial_train_faceid.py
    builds them for ``unet`` (a diffusers ``UNet2DConditionModel``): one ``LoRAAttnProcessor``
    per self-attention and one ``LoRAIPAttnProcessor`` per cross-attention, in
    ``unet.attn_processors`` order, hidden size by block. Parameters random."""
    ref = ip_adapter_faceid_module()
    cfg = unet.config
    procs = []
    for name in unet.attn_processors.keys():
        cross = None if name.endswith("attn1.processor") else cfg.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = cfg.block_out_channels[int(name[len("down_blocks.")])]
        if cross is None:
            procs.append(ref.LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=rank))
        else:
            procs.append(ref.LoRAIPAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=rank))
    _seeded(seed)
    proj = ref.MLPProjModel(cross_attention_dim=cfg.cross_attention_dim, id_embeddings_dim=512, num_tokens=4)
    layers = torch.nn.ModuleList(procs)
    _randomise(proj, seed)
    _randomise(layers, seed + 1, std=0.1)
    return proj, layers


def save_ip_adapter_faceid_reference(path: Path, unet: Any, rank: int = 4) -> tuple[Path, Any, Any]:
    """``torch.save({"image_proj": ..., "ip_adapter": ...})`` exactly as the reference's README
    turns a training checkpoint into ``ip_adapter.bin``; returns (path, proj, layers)."""
    proj, layers = ip_adapter_faceid_reference(unet, rank)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": proj.state_dict(), "ip_adapter": layers.state_dict()}, path)
    return path, proj, layers


# --- MVDream (ashawkey/mvdream-sd2.1-diffusers) ----------------------------------------------

#: The tiny MVDream UNet's LDM settings (SD2.1's style: linear transformer projections, a fixed
#: head width) and the ``unet/config.json`` ashawkey's converter writes for them: the LDM
#: params minus ``legacy``/``use_linear_in_transformer``/``use_spatial_transformer``, which
#: convert_mvdream_to_diffusers.py pops before saving (lines 408-414).
TINY_MVDREAM_LDM = dict(
    image_size=8,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=8,
    transformer_depth=1,
    context_dim=32,
    use_checkpoint=False,
    camera_dim=16,
)


def mvdream_reference_unet(seed: int = SEED + 5) -> torch.nn.Module:
    """ldm ``UNetModel`` with MVDream's SD2.1 settings plus ``camera_embed`` (Linear(16, 4C),
    SiLU, Linear(4C, 4C); ashawkey mv_unet.py ``MultiViewUNetModel``), parameters random."""
    kw = {k: v for k, v in TINY_MVDREAM_LDM.items() if k != "camera_dim"}
    unet = ldm_unet(seed, use_linear_in_transformer=True, num_heads=-1, **kw)
    E = 4 * int(TINY_MVDREAM_LDM["model_channels"])  # type: ignore[call-overload]
    unet.camera_embed = torch.nn.Sequential(
        torch.nn.Linear(int(TINY_MVDREAM_LDM["camera_dim"]), E),  # type: ignore[call-overload]
        torch.nn.SiLU(),
        torch.nn.Linear(E, E),
    )
    return _randomise(unet, seed)


def save_mvdream_reference(folder: Path, seed: int = SEED + 5) -> tuple[Path, torch.nn.Module]:
    """A tiny ashawkey/mvdream-sd2.1-diffusers folder whose ``unet/`` was written from the
    reference modules (the rest from :func:`backend.testing.save_tiny_mvdream`)."""
    from safetensors.torch import save_file

    from .common import _write_json
    from .mvdream import save_tiny_mvdream

    folder = save_tiny_mvdream(Path(folder))
    unet = mvdream_reference_unet(seed)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    save_file(
        {k: v.contiguous() for k, v in unet.state_dict().items()},
        str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    _write_json(folder / "unet" / "config.json", {"_class_name": "MultiViewUNetModel", **TINY_MVDREAM_LDM})
    return folder, unet


# --- full-size layouts without data (for header-level probes and models link) ---------------


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> Path:
    """A ``.safetensors`` file with a real header for ``shapes`` and no data written (a sparse
    file of the right length): what the header-level probes and ``models link`` read of a
    multi-GB checkpoint, at no disk cost."""
    import struct

    width = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, shape in shapes.items():
        n = width
        for s in shape:
            n *= int(s)
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def sd15_reference_shapes() -> dict[str, tuple[int, ...]]:
    """Full-size SD1.5 single-file keys and shapes from the reference modules on the meta
    device (ldm UNetModel and AutoencoderKL parts per v1-inference.yaml, CLIPTextModel ViT-L/14's
    text tower), with A1111's usual extras."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from backend.models.probe import SD15_CONFIG_DIR

    with torch.device("meta"):
        unet = ldm_unet(
            randomise=False,
            model_channels=320,
            attention_resolutions=[4, 2, 1],
            num_res_blocks=2,
            channel_mult=[1, 2, 4, 4],
            context_dim=768,
        )
        ae = LdmAutoencoder(128, (1, 2, 4, 4), 2, 4, 4)
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    shapes = {}
    shapes.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.state_dict().items()})
    shapes.update({"first_stage_model." + k: tuple(v.shape) for k, v in ae.state_dict().items()})
    text = text_model_keys({k: v for k, v in te.state_dict().items()})
    shapes.update({"cond_stage_model.transformer." + k: tuple(v.shape) for k, v in text.items()})
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (1, 77)
    shapes["model_ema.decay"], shapes["model_ema.num_updates"] = (), ()
    shapes["alphas_cumprod"] = (1000,)
    return shapes
