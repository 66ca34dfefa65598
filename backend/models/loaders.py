"""Loaders: a model's folder (or single file) -> working modules (diffusers ``from_pretrained``
/ ``from_single_file``, the IP-Adapter-FaceID state dict, MVDream, SV3D, insightface
``FaceAnalysis``). Heavy imports stay inside each loader.

Strict: before anything is loaded, the files' keys and shapes are held against the layout the
module needs (:mod:`.probe`, the same check ``models check`` runs), since ``from_pretrained``
only warns about missing or unexpected keys (and leaves missing ones random)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import ModelMissingError, PortraitSplatError

from . import layouts as L
from . import probe as probes
from .registry import REGISTRY, ModelCorruptError
from .store import _corrupt, model_path, verify_folder, verify_safetensors
from .sv3d import SV3DParts, load_sv3d  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch


# --- loaders -------------------------------------------------------------------------------


def _path_for(name: str, path: Path | str | None) -> Path:
    return Path(path) if path is not None else model_path(name)


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder holds ``*.fp16.safetensors`` (the variant we download)."""
    return "fp16" if any(Path(folder).glob("*.fp16.safetensors")) else None


def _load(name: str | None, folder: Path, fn: Callable[[], Any], check: Callable[[], None] | None = None) -> Any:
    """Run a from_pretrained call, after an integrity check and the strict layout ``check``,
    turning read failures into :class:`ModelCorruptError` / :class:`ModelMissingError` naming the fix."""
    if not Path(folder).exists():
        spec = REGISTRY.get(name or "")
        hint = f"Run: {spec.download_command}" if spec else ""
        raise ModelMissingError(f"No model folder at {folder}.", hint=hint)
    verify_folder(folder, name)
    if check is not None:
        check()
    try:
        return fn()
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, PortraitSplatError):
            raise
        raise _corrupt(name, Path(folder), f"loading failed: {exc.__class__.__name__}: {str(exc)[:300]}") from exc


@dataclass
class SD15:
    """The parts of Stable Diffusion 1.5 our guidance uses (no pipeline object)."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler: Any  # diffusers.DDIMScheduler (SD1.5's betas)
    path: Path = field(default=Path())

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _dt(dtype) -> dict:
    """``from_pretrained`` keyword for a dtype (diffusers and transformers both take ``dtype=``):
    loading in the target dtype keeps the modules that must stay float32 in float32."""
    return {"dtype": dtype} if dtype is not None else {}


def load_sd15(
    path: Path | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    scheduler: str = "ddim",
    name: str = "sd15",
    config: Path | str | None = None,
) -> SD15:
    """Load SD1.5's UNet, VAE, text encoder, tokenizer and a scheduler from a diffusers folder
    or a single ``.safetensors``/``.ckpt`` file (A1111/ComfyUI).

    ``path`` defaults to ``model_path("sd15")``. The fp16 variant files are picked when present.
    A single file is converted with diffusers' ``from_single_file`` and the SD1.5 configs and
    tokenizer shipped in backend/models/configs/sd15 (``config``: another folder in that layout).
    ``scheduler``: ``"ddim"`` or ``"ddpm"`` (same betas, read from ``scheduler/``). All modules
    are in eval mode with gradients off.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = _path_for(name, path)
    sched_cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[scheduler]
    if folder.is_file():
        from .single_file import load_sd15_parts

        verify_folder(folder, name)
        unet, vae, te, tok, cfg_dir = load_sd15_parts(folder, config_dir=Path(config) if config else None, dtype=dtype)
        sch = sched_cls.from_pretrained(cfg_dir, subfolder="scheduler")
        for m in (unet, vae, te):
            m.eval().requires_grad_(False).to(device)
        return SD15(unet, vae, te, tok, sch, folder)

    def go():
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", variant=_variant(folder / "unet"), **_dt(dtype)
        )
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype))
        te = CLIPTextModel.from_pretrained(
            folder / "text_encoder", variant=_variant(folder / "text_encoder"), **_dt(dtype)
        )
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        sch = sched_cls.from_pretrained(folder, subfolder="scheduler")
        return unet, vae, te, tok, sch

    unet, vae, te, tok, sch = _load(name, folder, go, lambda: probes.probe_sd15_folder(folder, name))
    for m in (unet, vae, te):
        m.eval().requires_grad_(False).to(device)
    return SD15(unet, vae, te, tok, sch, folder)


def load_ip_adapter_state_dict(path: Path | str) -> dict[str, dict[str, torch.Tensor]]:
    """Read an IP-Adapter(-FaceID) file: the ``.bin`` (torch pickle, loaded with
    ``weights_only=True``) or a ``.safetensors`` with ``image_proj.``/``ip_adapter.`` prefixes."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            verify_safetensors(path, "ip_adapter_faceid")
            from safetensors.torch import load_file

            flat = load_file(str(path))
            sd: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
            for k, v in flat.items():
                head, _, rest = k.partition(".")
                if head in sd:
                    sd[head][rest] = v
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except ModelCorruptError:
        raise
    except Exception as exc:
        raise _corrupt("ip_adapter_faceid", path, f"{exc.__class__.__name__}: {str(exc)[:200]}") from exc
    if not isinstance(sd, dict) or not {"image_proj", "ip_adapter"} <= set(sd):
        raise _corrupt("ip_adapter_faceid", path, "it has no 'image_proj' and 'ip_adapter' entries")
    return sd


def load_ip_adapter_faceid(
    unet, path: Path | str | None = None, *, scale: float = 1.0, lora_scale: float = 1.0, adapter_name: str = "faceid"
) -> Any:
    """Load IP-Adapter-FaceID into a diffusers ``UNet2DConditionModel`` in place; returns it.

    ``path``: the ``ip-adapter-faceid_sd15.bin`` file or the folder holding it (default:
    ``model_path("ip_adapter_faceid")``). Uses the same diffusers code as the pipeline-level
    ``load_ip_adapter``: the image projection becomes ``unet.encoder_hid_proj`` and the
    cross-attention processors get ``to_k_ip``/``to_v_ip``. The LoRA part is applied through
    PEFT (``unet.load_lora_adapter``); diffusers' pipeline loader would only *warn* and skip it
    without PEFT, so this raises instead.

    Call the UNet with ``added_cond_kwargs={"image_embeds": [E]}``, ``E: [B, 1, 512]`` (zeros for
    the unconditional half; note projected zeros are not zero tokens).
    """
    path = Path(path) if path is not None else model_path("ip_adapter_faceid")
    if path.is_dir():
        path = path / "ip-adapter-faceid_sd15.bin"
    if not path.is_file():
        raise ModelMissingError(
            f"No IP-Adapter-FaceID file at {path}.", hint=f"Run: {REGISTRY['ip_adapter_faceid'].download_command}"
        )
    return apply_ip_adapter_faceid(
        unet,
        load_ip_adapter_state_dict(path),
        scale=scale,
        lora_scale=lora_scale,
        adapter_name=adapter_name,
        source=path,
    )


def apply_ip_adapter_faceid(
    unet,
    sd: dict,
    *,
    scale: float = 1.0,
    lora_scale: float = 1.0,
    adapter_name: str = "faceid",
    source: Path | str = "(in memory)",
) -> Any:
    """Load an IP-Adapter-FaceID state dict (``{"image_proj": ..., "ip_adapter": ...}``) into
    ``unet`` in place, as :func:`load_ip_adapter_faceid` does with a file (benches build one in
    memory with :func:`backend.testing.tiny_ip_adapter_state_dict`). ``source`` names it in errors."""
    path = Path(source)
    n_proc = len(unet.attn_processors)
    ids = {int(k.split(".")[0]) for k in sd["ip_adapter"] if k.split(".")[0].isdigit()}
    if ids and max(ids) + 1 != n_proc:
        raise _corrupt(
            "ip_adapter_faceid",
            path,
            f"it is for a UNet with {max(ids) + 1} attention processors, this UNet has {n_proc}",
        )
    _check_ip_adapter(unet, sd, path)
    try:
        unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
        loras = unet._load_ip_adapter_loras([sd])
    except (KeyError, RuntimeError) as exc:
        raise _corrupt("ip_adapter_faceid", path, f"its tensors do not fit this UNet: {str(exc)[:200]}") from exc
    if loras:
        try:
            import peft  # noqa: F401
        except ImportError as exc:
            raise ModelMissingError(
                "IP-Adapter-FaceID's LoRA needs the 'peft' package.",
                hint="pip install peft (it is in pyproject's dependencies)",
            ) from exc
        unet.load_lora_adapter(loras[0], prefix="unet", adapter_name=adapter_name)
        unet.set_adapters([adapter_name], weights=[lora_scale])
    set_ip_adapter_scale(unet, scale)
    unet.requires_grad_(False)
    return unet


def _check_ip_adapter(unet, sd: dict, path: Path) -> None:
    """Every key and shape of the file against tencent-ailab's layout for this UNet (strict:
    diffusers' loader would pick the keys it knows and ignore the rest)."""
    cfg = unet.config
    chans, rev = list(cfg.block_out_channels), list(reversed(cfg.block_out_channels))

    def hidden(name: str) -> int:
        if name.startswith("mid_block"):
            return chans[-1]
        block = int(name.split(".")[1])
        return rev[block] if name.startswith("up_blocks") else chans[block]

    procs = [(n, hidden(n), not n.endswith("attn1.processor")) for n in unet.attn_processors]
    found = {f"{part}.{k}": tuple(v.shape) for part in ("image_proj", "ip_adapter") for k, v in sd[part].items()}
    rank = found.get("ip_adapter.0.to_q_lora.down.weight", (probes.FACEID_LORA_RANK,))[0]
    expected = L.ip_adapter_faceid_shapes(procs, int(cfg.cross_attention_dim), rank)
    diff = L.compare(found, expected)
    if not diff.ok:
        raise probes.layout_error("ip_adapter_faceid", path, diff.describe())


def set_ip_adapter_scale(unet, scale: float) -> None:
    """Weight of the identity tokens in every decoupled cross-attention (0 switches it off)."""
    for proc in unet.attn_processors.values():
        if hasattr(proc, "scale") and hasattr(proc, "to_k_ip"):
            proc.scale = [scale] * len(proc.scale)


def load_controlnet(
    path: Path | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    subfolder: str | None = "diffusion_sd15",
    config: Path | str | None = None,
) -> Any:
    """The MediaPipe-face ControlNet for SD1.5 (``diffusers.ControlNetModel``) from the repo
    folder's ``diffusion_sd15/`` (default ``model_path("controlnet_face")``; a folder that holds
    ``config.json`` itself works too), or from a single file as A1111/ComfyUI keep it
    (``control_v2p_sd15_mediapipe_face.safetensors``: ``control_model.*`` keys), converted with
    the SD1.5 ControlNet config shipped in backend/models/configs (``config``: another folder)."""
    from diffusers import ControlNetModel

    folder = _path_for("controlnet_face", path)
    if folder.is_file():
        from .single_file import load_controlnet_file

        verify_folder(folder, "controlnet_face")
        net = load_controlnet_file(folder, config_dir=Path(config) if config else None, dtype=dtype)
        return net.eval().requires_grad_(False).to(device)
    sub = probes.controlnet_folder(folder, subfolder)
    net = _load(
        "controlnet_face",
        sub,
        lambda: ControlNetModel.from_pretrained(sub, variant=_variant(sub), **_dt(dtype)),
        lambda: probes.probe_diffusers_component("controlnet_face", sub, "controlnet"),
    )
    return net.eval().requires_grad_(False).to(device)


def load_clip(path: Path | str | None = None, *, device: str = "cpu") -> tuple[Any, Any]:
    """(``transformers.CLIPModel``, ``CLIPProcessor``) of the ``clip_vit_l14`` entry, for eval."""
    from transformers import CLIPModel, CLIPProcessor

    folder = _path_for("clip_vit_l14", path)
    model = _load(
        "clip_vit_l14",
        folder,
        lambda: CLIPModel.from_pretrained(folder, use_safetensors=True),
        lambda: probes.probe_diffusers_component("clip_vit_l14", folder, "clip"),
    )
    processor = _load("clip_vit_l14", folder, lambda: CLIPProcessor.from_pretrained(folder))
    return model.eval().requires_grad_(False).to(device), processor


def load_taesd(path: Path | str | None = None, *, dtype: torch.dtype | None = None, device: str = "cpu") -> Any:
    """``diffusers.AutoencoderTiny`` (latents already in the UNet's scale), from madebyollin/taesd's
    diffusers folder or from a folder with taesd.py's ``taesd_encoder``/``taesd_decoder`` files
    (ComfyUI's ``models/vae_approx/``), mapped onto the same module."""
    from diffusers import AutoencoderTiny

    folder = _path_for("taesd", path)
    if folder.is_dir() and not (folder / "config.json").is_file() and probes.taesd_py_files(folder):
        vae = _load("taesd", folder, lambda: _taesd_from_py_files(folder, dtype), lambda: probes.probe_taesd_py(folder))
        return vae.eval().requires_grad_(False).to(device)
    vae = _load(
        "taesd",
        folder,
        lambda: AutoencoderTiny.from_pretrained(folder, **_dt(dtype)),
        lambda: probes.probe_diffusers_component("taesd", folder, "taesd"),
    )
    return vae.eval().requires_grad_(False).to(device)


def _taesd_from_py_files(folder: Path, dtype: torch.dtype | None) -> Any:
    """SD's TAESD (``AutoencoderTiny`` defaults are madebyollin/taesd's config) from taesd.py files."""
    from diffusers import AutoencoderTiny

    from .single_file import read_state_dict

    files = probes.taesd_py_files(folder) or {}
    parts = {part: read_state_dict(f, "taesd") for part, f in files.items()}
    vae = AutoencoderTiny()
    state = {}
    for key in vae.state_dict():
        part, k = L.taesd_py_key(key)
        state[key] = parts[part][k]
    vae.load_state_dict(state, strict=True)
    return vae.to(dtype) if dtype is not None else vae


@dataclass
class MVDreamParts:
    """MVDream's files, loaded. The UNet is not a diffusers class: its LDM-keyed state dict
    and config are handed to our own module (backend/guidance/mvdream.py)."""

    unet_config: dict
    unet_state_dict: dict
    text_encoder: Any
    tokenizer: Any
    vae: Any
    scheduler: Any
    path: Path


def load_mvdream(
    path: Path | str | None = None, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> MVDreamParts:
    """Load ashawkey/mvdream-sd2.1-diffusers: config + state dict of the multi-view UNet, and
    the SD2.1 text encoder, tokenizer, VAE and DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = _path_for("mvdream", path)

    def go():
        cfg = json.loads((folder / "unet" / "config.json").read_text())
        files = sorted((folder / "unet").glob("*.safetensors"))
        if not files:
            raise OSError(f"no unet/*.safetensors in {folder}")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        te = CLIPTextModel.from_pretrained(
            folder / "text_encoder", variant=_variant(folder / "text_encoder"), **_dt(dtype)
        )
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype))
        sch = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        return cfg, state, te, tok, vae, sch

    cfg, state, te, tok, vae, sch = _load("mvdream", folder, go, lambda: probes.probe_mvdream(folder))
    if dtype is not None or device != "cpu":
        state = {k: (v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)) for k, v in state.items()}
    for m in (te, vae):
        m.eval().requires_grad_(False).to(device)
    return MVDreamParts(cfg, state, te, tok, vae, sch, folder)


def load_insightface(
    root: Path | str | None = None,
    name: str = "buffalo_l",
    *,
    providers: list[str] | None = None,
    det_size: tuple[int, int] = (640, 640),
    det_thresh: float = 0.5,
):
    """A prepared ``insightface.app.FaceAnalysis`` for pack ``name``.

    ``root``: an insightface root (holding ``models/<name>/``) or the pack folder itself;
    default: the registry's location (``<models root>/insightface``, or an override).
    ``providers`` default to CUDA when onnxruntime has it, else CPU. ``det_size`` is one
    detector resolution (insightface 2 otherwise runs two, 128 and 640).
    """
    import onnxruntime
    from insightface.app import FaceAnalysis

    if root is None:
        pack = model_path(name)
    else:
        root = Path(root)
        pack = root if any(root.glob("*.onnx")) else root / "models" / name
    spec = REGISTRY.get(name)
    if not any(pack.glob("*.onnx")):
        hint = f"Run: {spec.download_command}" if spec else ""
        raise ModelMissingError(f"No insightface pack '{name}' at {pack}.", hint=hint)
    verify_folder(pack, name if spec else None)
    if providers is None:
        avail = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    try:
        app = FaceAnalysis(name=str(pack), providers=providers)
    except Exception as exc:
        raise _corrupt(
            name if spec else None, pack, f"insightface could not open it: {exc.__class__.__name__}: {str(exc)[:200]}"
        ) from exc
    ctx = 0 if providers and providers[0] == "CUDAExecutionProvider" else -1
    app.prepare(ctx_id=ctx, det_size=det_size, det_thresh=det_thresh)
    return app
