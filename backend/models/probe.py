"""Header-level probes: does each model's loader accept the files on disk? (no torch, no tensors)

This module's one job is :func:`probe`: read the weight files' headers (:mod:`.header`) and
hold their keys and shapes against the layout the loader needs (:mod:`.layouts`), raising
:class:`ModelCorruptError` (what differs, and the fix) when they do not fit. ``models check``,
the submit-time :func:`~backend.models.store.ensure_models` (in the server process, which must
stay torch-free) and the loaders themselves all call it, so a model is "ready" exactly when its
loader would accept it. ``models link`` uses the per-layout functions to recognise files.

Probes by model: ``sd15`` (diffusers folder or single file), ``controlnet_face`` (diffusers
folder or single file), ``ip_adapter_faceid`` (against the SD1.5 UNet it will be loaded into),
``mvdream``, ``taesd``, ``clip_vit_l14``, and ``sv3d_u``/``sv3d_p`` through
``backend.models.sv3d.probe_sv3d`` when that exists. Other models have none (onnx packs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import layouts as L
from .header import HeaderError, NotWeightsOnly, TensorInfo, tensor_index
from .registry import REGISTRY, ModelCorruptError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SD15_CONFIG_DIR = CONFIG_DIR / "sd15"
CONTROLNET_CONFIG_DIR = CONFIG_DIR / "controlnet_sd15"
IP_ADAPTER_FILE = "ip-adapter-faceid_sd15.bin"
#: IP-Adapter-FaceID SD1.5's LoRA rank (tutorial_train_faceid.py ``lora_rank = 128``; WEIGHTS.md).
FACEID_LORA_RANK = 128


def _fix(name: str | None) -> str:
    spec = REGISTRY.get(name or "")
    return spec.download_command if spec else "download it again"


def layout_error(name: str | None, path: Path, why: str) -> ModelCorruptError:
    """The error for a file whose keys do not fit its model's loader."""
    what = f"model '{name}'" if name else "this model"
    return ModelCorruptError(
        f"The weight file {path} does not fit {what}: {why}.",
        hint=f"It is another model or a damaged copy. Fetch the right one: {_fix(name)} "
        "(or point the override at a matching file)",
    )


def read_index(path: Path, name: str | None = None) -> dict[str, TensorInfo]:
    """:func:`tensor_index` with its errors as :class:`ModelCorruptError` naming the fix."""
    try:
        return tensor_index(path)
    except NotWeightsOnly as exc:
        raise ModelCorruptError(
            f"The checkpoint {path} is not weights-only ({exc}); it is not loaded, since unpickling it could run code.",
            hint=f"Use a .safetensors copy of it, or {_fix(name)}",
        ) from exc
    except (HeaderError, OSError) as exc:
        raise ModelCorruptError(
            f"The weight file {path} is damaged: {exc}.",
            hint=f"Delete it and fetch it again: rm '{path}' && {_fix(name)}",
        ) from exc


def shapes_of(index: Mapping[str, TensorInfo]) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in index.items()}


def read_json(path: Path, name: str | None = None) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise layout_error(name, path.parent, f"it has no {path.name}") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise layout_error(name, path, f"unreadable JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise layout_error(name, path, "not a JSON object")
    return data


def check_shapes(
    name: str | None,
    path: Path,
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    ignore: Iterable[str] = (),
) -> None:
    diff = L.compare(found, expected, ignore)
    if not diff.ok:
        raise layout_error(name, path, diff.describe())


# --- diffusers folders ---------------------------------------------------------------------


def component_weights(folder: Path, stem: str) -> list[Path]:
    """The weight files a diffusers/transformers ``from_pretrained`` reads in ``folder``, the way
    our loaders call it: the ``fp16`` variant when any ``*.fp16.safetensors`` is there, else the
    plain file, a sharded index's shards, or the ``.bin``. ``[]`` when there is none."""
    folder = Path(folder)
    fp16 = any(folder.glob("*.fp16.safetensors"))
    for tag in (".fp16",) if fp16 else ("",):
        single = folder / f"{stem}{tag}.safetensors"
        if single.is_file():
            return [single]
        index = folder / (f"{stem}.safetensors.index.fp16.json" if tag else f"{stem}.safetensors.index.json")
        if index.is_file():
            data = read_json(index)
            return sorted({folder / str(f) for f in dict(data.get("weight_map", {})).values()})
        bin_file = folder / f"{stem}{tag}.bin"
        if bin_file.is_file():
            return [bin_file]
    return []


def _folder_shapes(name: str | None, folder: Path, stem: str) -> tuple[Path, dict[str, tuple[int, ...]]]:
    files = component_weights(folder, stem)
    if not files:
        raise layout_error(name, folder, f"no {stem}.safetensors (or .fp16 / .bin) in it")
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        found.update(shapes_of(read_index(f, name)))
    return files[0], found


def _text_encoder_keys(found: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """transformers >= 5 saves ``CLIPTextModel`` without the ``text_model.`` prefix that every
    published file has; both load, so both pass (under the published names)."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in found.items()}


def probe_diffusers_component(name: str | None, folder: Path, kind: str) -> None:
    """One component folder (``config.json`` + weights) against its class's layout.
    ``kind``: ``unet`` | ``vae`` | ``text_encoder`` | ``controlnet`` | ``taesd`` | ``clip``."""
    cfg = read_json(folder / "config.json", name)
    stem = "model" if kind in ("text_encoder", "clip") else "diffusion_pytorch_model"
    path, found = _folder_shapes(name, folder, stem)
    ignore: tuple[str, ...] = ()
    if kind == "unet":
        expected = L.unet2d_shapes(cfg)
    elif kind == "controlnet":
        expected = L.controlnet_shapes(cfg)
    elif kind == "vae":
        expected = L.autoencoder_kl_shapes(cfg)
        found = {L.modern_vae_key(k): v for k, v in found.items()}
    elif kind == "taesd":
        expected = L.autoencoder_tiny_shapes(cfg)
    elif kind == "text_encoder":
        expected, found, ignore = L.clip_text_shapes(cfg), _text_encoder_keys(found), (L.CLIP_POSITION_IDS,)
    elif kind == "clip":
        expected, ignore = L.clip_shapes(cfg), (L.CLIP_POSITION_IDS,)
    else:
        raise ValueError(kind)
    try:
        check_shapes(name, path, found, expected, ignore)
    except (KeyError, TypeError, ValueError) as exc:  # a config.json without the keys a layout needs
        raise layout_error(name, folder / "config.json", f"an unusable config ({exc!r:.120})") from exc


#: ComfyUI's ``models/vae_approx/`` holds TAESD as taesd.py's two files.
TAESD_PY_STEMS = ("taesd_encoder", "taesd_decoder")


def taesd_py_files(folder: Path) -> dict[str, Path] | None:
    """``{"encoder": file, "decoder": file}`` when ``folder`` holds taesd.py's SD files
    (``taesd_encoder``/``taesd_decoder`` ``.safetensors`` or ``.pth``), else None."""
    out = {}
    for part, stem in zip(("encoder", "decoder"), TAESD_PY_STEMS):
        hits = [Path(folder) / f"{stem}{sfx}" for sfx in (".safetensors", ".pth")]
        hits = [h for h in hits if h.is_file()]
        if not hits:
            return None
        out[part] = hits[0]
    return out


def probe_taesd_py(folder: Path, name: str = "taesd") -> None:
    """taesd.py's encoder/decoder files against ``AutoencoderTiny``'s layout (SD's TAESD)."""
    files = taesd_py_files(folder)
    if files is None:
        raise layout_error(name, folder, "no taesd_encoder/taesd_decoder files in it")
    expected: dict[str, dict[str, tuple[int, ...]]] = {"encoder": {}, "decoder": {}}
    for key, shape in L.autoencoder_tiny_shapes({}).items():
        part, k = L.taesd_py_key(key)
        expected[part][k] = shape
    for part, f in files.items():
        check_shapes(name, f, shapes_of(read_index(f, name)), expected[part])


def probe_taesd(folder: Path, name: str = "taesd") -> None:
    folder = Path(folder)
    if not (folder / "config.json").is_file() and taesd_py_files(folder) is not None:
        probe_taesd_py(folder, name)
    else:
        probe_diffusers_component(name, folder, "taesd")


def probe_sd15_folder(folder: Path, name: str = "sd15") -> None:
    for sub, kind in (("unet", "unet"), ("vae", "vae"), ("text_encoder", "text_encoder")):
        probe_diffusers_component(name, Path(folder) / sub, kind)


# --- single files ----------------------------------------------------------------------------


def sd15_configs(config_dir: Path | None = None) -> tuple[dict, dict, dict]:
    d = Path(config_dir or SD15_CONFIG_DIR)
    return tuple(read_json(d / sub / "config.json") for sub in ("unet", "vae", "text_encoder"))  # type: ignore[return-value]


def sd15_single_file_expected(config_dir: Path | None = None) -> dict[str, tuple[int, ...]]:
    return L.sd15_single_file_shapes(*sd15_configs(config_dir))


def probe_sd15_file(path: Path, config_dir: Path | None = None, name: str = "sd15", index=None) -> None:
    """An SD1.5 single file (CompVis/A1111/ComfyUI keys) against the LDM layout of the
    configs in ``config_dir`` (default: SD1.5's, shipped in backend/models/configs/sd15)."""
    index = read_index(path, name) if index is None else index
    kind = other_sd_family(index)
    if kind:
        raise layout_error(name, path, f"it is {kind}, not SD1.5")
    check_shapes(name, path, shapes_of(index), sd15_single_file_expected(config_dir), L.SD_SINGLE_FILE_EXTRAS)


def other_sd_family(keys: Iterable[str]) -> str:
    """A name for a Stable Diffusion single file of another family ("" when none is recognised)."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        video = any("time_stack" in k or "time_mixer" in k for k in keys)
        return "an SGM video checkpoint (SVD/SV3D)" if video else "an SDXL-style checkpoint (conditioner.embedders)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "an SD2.x checkpoint (OpenCLIP text encoder)"
    return ""


def controlnet_prefix(keys: Iterable[str]) -> str | None:
    """``"control_model."`` (A1111/ComfyUI files), ``""`` (bare cldm state dict) or None (not a
    single-file ControlNet)."""
    keys = list(keys)
    if any(k.startswith(L.CONTROL_PREFIX + "input_hint_block.") for k in keys):
        return L.CONTROL_PREFIX
    if any(k.startswith("input_hint_block.") for k in keys):
        return ""
    return None


def probe_controlnet_file(path: Path, config_dir: Path | None = None, name: str = "controlnet_face", index=None) -> str:
    """A single-file SD1.5 ControlNet (lllyasviel cldm keys); returns its key prefix."""
    index = read_index(path, name) if index is None else index
    prefix = controlnet_prefix(index)
    if prefix is None:
        raise layout_error(name, path, "it is not a ControlNet (no input_hint_block)")
    cfg = read_json(Path(config_dir or CONTROLNET_CONFIG_DIR) / "config.json")
    expected = L.prefixed(prefix, L.ldm_controlnet_shapes(L.LdmUNet.from_diffusers(cfg)))
    check_shapes(name, path, shapes_of(index), expected)
    return prefix


def controlnet_folder(path: Path, subfolder: str | None = "diffusion_sd15") -> Path:
    """The folder holding the ControlNet's config.json: ``path/diffusion_sd15`` (the registry's
    layout) or ``path`` itself."""
    path = Path(path)
    if subfolder and (path / subfolder).is_dir():
        return path / subfolder
    return path


# --- IP-Adapter-FaceID ---------------------------------------------------------------------


def ip_adapter_file(path: Path) -> Path:
    path = Path(path)
    return path / IP_ADAPTER_FILE if path.is_dir() else path


def probe_ip_adapter(path: Path, unet_config: Mapping | None = None, name: str = "ip_adapter_faceid") -> None:
    """IP-Adapter-FaceID against the SD1.5 UNet it goes into (``unet_config``; default SD1.5's):
    an ``MLPProjModel`` from 512-d and one LoRA (+ to_k_ip/to_v_ip on cross-attention)
    processor per attention processor, all of one rank."""
    path = ip_adapter_file(path)
    found = shapes_of(read_index(path, name))
    if not any(k.startswith("image_proj.") for k in found) or not any(k.startswith("ip_adapter.") for k in found):
        raise layout_error(name, path, "it has no 'image_proj' and 'ip_adapter' entries")
    cfg = dict(unet_config) if unet_config is not None else sd15_configs()[0]
    rank = found.get("ip_adapter.0.to_q_lora.down.weight", (FACEID_LORA_RANK,))[0]
    expected = L.ip_adapter_faceid_shapes(L.unet_attn_processors(cfg), int(cfg["cross_attention_dim"]), rank)
    check_shapes(name, path, found, expected)


# --- per model -------------------------------------------------------------------------------


def _sd15(path: Path, ctx: Mapping[str, Any]) -> None:
    if path.is_file():
        probe_sd15_file(path)
    else:
        probe_sd15_folder(path)


def _controlnet(path: Path, ctx: Mapping[str, Any]) -> None:
    if path.is_file():
        probe_controlnet_file(path)
    else:
        probe_diffusers_component("controlnet_face", controlnet_folder(path), "controlnet")


def _ip_adapter(path: Path, ctx: Mapping[str, Any]) -> None:
    probe_ip_adapter(path, ctx.get("sd15_unet_config"))


def probe_mvdream(folder: Path, name: str = "mvdream") -> None:
    """ashawkey/mvdream-sd2.1-diffusers: the multi-view UNet's LDM keys (+ ``camera_embed``)
    from ``unet/config.json``, and the SD2.1 text encoder and VAE."""
    folder = Path(folder)
    cfg = read_json(folder / "unet" / "config.json", name)
    files = sorted((folder / "unet").glob("*.safetensors"))
    if not files:
        raise layout_error(name, folder / "unet", "no unet/*.safetensors")
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        found.update(shapes_of(read_index(f, name)))
    try:
        expected = L.ldm_unet_shapes(L.LdmUNet.from_ldm(cfg))
    except (KeyError, TypeError, ValueError) as exc:
        raise layout_error(name, folder / "unet" / "config.json", f"an unusable config ({exc!r:.120})") from exc
    check_shapes(name, files[0], found, expected)
    probe_diffusers_component(name, folder / "text_encoder", "text_encoder")
    probe_diffusers_component(name, folder / "vae", "vae")


def _sv3d(variant: str) -> Callable[[Path, Mapping[str, Any]], None]:
    def run(path: Path, ctx: Mapping[str, Any]) -> None:
        try:
            from .sv3d import probe_sv3d  # type: ignore[attr-defined]
        except ImportError:
            return  # no probe yet (backend/models/sv3d.py gains one separately)
        probe_sv3d(Path(path), variant)

    return run


PROBES: dict[str, Callable[[Path, Mapping[str, Any]], None]] = {
    "sd15": _sd15,
    "controlnet_face": _controlnet,
    "ip_adapter_faceid": _ip_adapter,
    "mvdream": lambda p, ctx: probe_mvdream(p),
    "taesd": lambda p, ctx: probe_taesd(p),
    "clip_vit_l14": lambda p, ctx: probe_diffusers_component("clip_vit_l14", p, "clip"),
    "sv3d_u": _sv3d("sv3d_u"),
    "sv3d_p": _sv3d("sv3d_p"),
}


def probe(name: str, path: Path, **ctx: Any) -> None:
    """Raise :class:`ModelCorruptError` when model ``name``'s files at ``path`` do not have the
    layout its loader needs (header reads only). ``ctx``: ``sd15_unet_config`` for the
    IP-Adapter (the UNet it goes into). A model without a probe passes."""
    fn = PROBES.get(name)
    if fn is not None:
        fn(Path(path), ctx)
