"""Single-file checkpoints (A1111 / ComfyUI): SD1.5 and its ControlNets -> diffusers modules.

This module's one job is loading the ``.safetensors``/``.ckpt`` files artists already keep
(``models/Stable-diffusion/``, ``models/checkpoints/``, ``models/ControlNet/``): original LDM key
names, the diffusers configs of the same model shipped with us (backend/models/configs), and
diffusers' own ``from_single_file`` conversion, so no hub is needed. Each file is first held
against the LDM layout strictly (:mod:`.probe`: no missing, no unexpected keys beyond the known
harmless extras such as A1111's ``model_ema.*``), and after loading no parameter may be left
unset. ``.ckpt`` files are read with ``torch.load(weights_only=True)``: a pickle that needs
anything but tensors is refused, never executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import layouts as L
from .header import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from .probe import (
    CONTROLNET_CONFIG_DIR,
    SD15_CONFIG_DIR,
    layout_error,
    probe_controlnet_file,
    probe_sd15_file,
    read_json,
)
from .registry import ModelCorruptError

if TYPE_CHECKING:
    import torch

SINGLE_FILE_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES


def read_state_dict(path: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a single file: safetensors, or a torch pickle with ``weights_only=True``
    (memory-mapped when the file is in the zip format); a ``state_dict`` wrapper is unwrapped."""
    import torch

    path = Path(path)
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelCorruptError(
            f"The checkpoint {path} could not be read with weights_only=True: {exc.__class__.__name__}: {str(exc)[:200]}.",
            hint=f"Use a .safetensors copy of it, or python -m backend models download --only {name or 'NAME'}",
        ) from exc
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise layout_error(name, path, "it holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _no_meta(name: str, path: Path, *modules: Any) -> None:
    for m in modules:
        left = [n for n, p in m.named_parameters() if p.device.type == "meta"]
        if left:
            raise layout_error(name, path, f"{len(left)} parameters were not set from it, e.g. {left[0]}")


def _text_encoder(sd: dict[str, torch.Tensor], cfg_dir: Path, path: Path, dtype: Any) -> Any:
    """``cond_stage_model.transformer.*`` -> ``CLIPTextModel`` (strict), as FrozenCLIPEmbedder
    wrapped it. transformers >= 5 has no ``text_model`` level inside ``CLIPTextModel``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg_dir / "text_encoder"))
    own = set(model.state_dict())
    state = {}
    for k, v in sd.items():
        if not k.startswith(L.SD_TEXT_PREFIX) or k.endswith("embeddings.position_ids"):
            continue
        key = k[len(L.SD_TEXT_PREFIX) :]
        if key not in own and key.startswith("text_model."):
            key = key[len("text_model.") :]
        state[key] = v
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise layout_error("sd15", path, f"its text encoder does not fit: {str(exc)[:300]}") from exc
    return model.to(dtype) if dtype is not None else model


def load_sd15_parts(
    path: Path, *, config_dir: Path | None = None, dtype: torch.dtype | None = None
) -> tuple[Any, Any, Any, Any, Path]:
    """(unet, vae, text_encoder, tokenizer, config folder) from an SD1.5 single file.

    ``config_dir``: a diffusers folder layout holding ``unet/``, ``vae/``, ``text_encoder/``
    configs and ``scheduler/`` (default: SD1.5's, shipped). The tokenizer comes from
    ``config_dir/tokenizer`` when it has ``vocab.json``, else SD1.5's shipped one.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from .clip_tokenizer import tokenizer_dir

    path, cfg_dir = Path(path), Path(config_dir or SD15_CONFIG_DIR)
    probe_sd15_file(path, cfg_dir)
    sd = read_state_dict(path, "sd15")
    kw: dict[str, Any] = {"config": str(cfg_dir), "local_files_only": True}
    if dtype is not None:
        kw["dtype"] = dtype
    unet_sd = {k: v for k, v in sd.items() if k.startswith(L.SD_UNET_PREFIX)}
    vae_sd = {k: v for k, v in sd.items() if k.startswith(L.SD_VAE_PREFIX)}
    unet = UNet2DConditionModel.from_single_file(unet_sd, subfolder="unet", **kw)
    vae = AutoencoderKL.from_single_file(vae_sd, subfolder="vae", **kw)
    te = _text_encoder(sd, cfg_dir, path, dtype)
    _no_meta("sd15", path, unet, vae, te)
    tok_dir = cfg_dir / "tokenizer" if (cfg_dir / "tokenizer" / "vocab.json").is_file() else tokenizer_dir()
    return unet, vae, te, CLIPTokenizer.from_pretrained(tok_dir), cfg_dir


def load_controlnet_file(path: Path, *, config_dir: Path | None = None, dtype: torch.dtype | None = None) -> Any:
    """``diffusers.ControlNetModel`` from a single-file SD1.5 ControlNet (``control_model.*``
    as A1111/ComfyUI keep it, or a bare cldm state dict), config from ``config_dir``
    (default: SD1.5 ControlNet's, shipped)."""
    from diffusers import ControlNetModel

    path, cfg_dir = Path(path), Path(config_dir or CONTROLNET_CONFIG_DIR)
    read_json(cfg_dir / "config.json", "controlnet_face")
    prefix = probe_controlnet_file(path, cfg_dir)
    sd = read_state_dict(path, "controlnet_face")
    state = {L.CONTROL_PREFIX + k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    kw: dict[str, Any] = {"config": str(cfg_dir), "local_files_only": True}
    if dtype is not None:
        kw["dtype"] = dtype
    net = ControlNetModel.from_single_file(state, **kw)
    _no_meta("controlnet_face", path, net)
    return net
