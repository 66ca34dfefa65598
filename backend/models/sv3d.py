"""SV3D's checkpoints -> diffusers building blocks (``SV3DParts``).

Users have Stability's single file (``sv3d_u.safetensors`` / ``sv3d_p.safetensors`` from
stabilityai/sv3d) in the SGM layout of Stability-AI/generative-models. This module converts
it, at load time, into the diffusers/transformers blocks the rest of the code drives:

================================================  ==========================================
SGM keys (``scripts/sampling/configs/sv3d_*.yaml``)  becomes
================================================  ==========================================
``model.diffusion_model.*`` (``VideoUNet``)        ``UNetSpatioTemporalConditionModel``
``conditioner.embedders.0.open_clip.model.visual.*``  ``CLIPVisionModelWithProjection``
(open_clip ViT-H-14 image tower)
``conditioner.embedders.1.encoder.{encoder,        the VAE's encoder + quant_conv (the one the
quant_conv}.*`` (the conditioning autoencoder)     reference encodes the input view with)
``first_stage_model.decoder.*`` (2D ``Decoder``)   the VAE's decoder (what the reference decodes
                                                   with): a diffusers ``AutoencoderKL`` without
                                                   post_quant_conv; an SVD-style ``VideoDecoder``
                                                   gives ``AutoencoderKLTemporalDecoder``
================================================  ==========================================

plus a ``CLIPImageProcessor`` (OpenAI CLIP mean/std at the tower's input size) and the EDM
``EulerDiscreteScheduler``, both built in code. Nothing is fetched from a hub: every config
is derived from the tensor shapes in the file and SGM's yaml constants (head widths 64 for
the UNet, 80 for ViT-H; latent scale 0.18215).

The conversion runs in two steps. :func:`plan_sv3d` works on ``{key: shape}`` alone (the
safetensors header), derives the configs, maps every tensor the diffusers modules expect to
its source key and a transform, and is strict: a missing key, a wrong shape or a key on no
list is a :class:`ModelCorruptError`. :func:`convert_sv3d` then reads the tensors. So
:func:`probe_sv3d` validates a 9 GB file in milliseconds without torch, and
:func:`load_sv3d` maps each tensor once. Nothing is cached on disk: with no dtype change the
converted modules hold memory-mapped views of the file (as fast as loading a converted copy),
and a CUDA load casts on the device (bench/results/sv3d_convert.md).

Usage::

    parts = load_sv3d(model_path("sv3d_u"))            # folder, file or diffusers folder
    probe_sv3d(Path(".../sv3d_u.safetensors"), "sv3d_u")   # header only; raises if unusable
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import ModelMissingError

from .registry import ModelCorruptError
from .sv3d_convert import (
    DROPPED,
    VECTOR_WIDTH,
    SV3DPlan,
    _bad,
    convert_sv3d,
    iter_sources,
    plan_sv3d,
    read_header,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DROPPED",
    "ModelCorruptError",
    "SV3DParts",
    "SV3DPlan",
    "VECTOR_WIDTH",
    "convert_sv3d",
    "find_checkpoint",
    "iter_sources",
    "load_sv3d",
    "load_sv3d_file",
    "plan_sv3d",
    "probe_sv3d",
    "read_header",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # FrozenOpenCLIPImageEmbedder.mean
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: EDM Euler with v-prediction (WEIGHTS.md "SV3D"; same numbers as backend/testing/sv3d.py).
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_type="continuous",
    interpolation_type="linear",
    steps_offset=1,
)


# ---------------------------------------------------------------------------------- loading


@dataclass
class SV3DParts:
    """SV3D as diffusers building blocks."""

    unet: Any  # diffusers.UNetSpatioTemporalConditionModel
    vae: Any  # diffusers.AutoencoderKL (SV3D's image decoder) or AutoencoderKLTemporalDecoder
    image_encoder: Any  # transformers.CLIPVisionModelWithProjection
    feature_extractor: Any  # transformers.CLIPImageProcessor
    scheduler: Any  # diffusers.EulerDiscreteScheduler (EDM, v-prediction)
    path: Path


def find_checkpoint(path: Path | str, variant: str | None = None) -> Path | None:
    """The single SV3D file at ``path``: the file itself, or ``<variant>.safetensors`` in the
    folder (without ``variant``: the one ``sv3d_*.safetensors`` there). None if there is none."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        return None
    names = [f"{variant}.safetensors"] if variant else [f"{v}.safetensors" for v in VECTOR_WIDTH]
    found = [p / n for n in names if (p / n).is_file()]
    if len(found) > 1:
        raise ModelCorruptError(
            f"{p} holds both {found[0].name} and {found[1].name}.",
            hint="Keep each variant in its own model folder (python -m backend models download puts them there).",
        )
    return found[0] if found else None


def probe_sv3d(path: Path, variant: str) -> None:
    """Raise :class:`ModelCorruptError` unless :func:`load_sv3d` would accept SV3D ``variant``
    at ``path`` (its folder, the single file, or a diffusers folder). Reads the safetensors
    header (or the UNet's config.json) only: no torch, no tensors, milliseconds."""
    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        got = json.loads((p / "unet" / "config.json").read_text()).get("projection_class_embeddings_input_dim")
        if got != VECTOR_WIDTH.get(variant):
            raise _bad(
                p, f"its UNet takes a {got}-d vector input, {variant} needs {VECTOR_WIDTH.get(variant)}", variant
            )
        return
    file = find_checkpoint(p, variant)
    if file is None:
        raise ModelMissingError(
            f"No {variant}.safetensors at {p}.", hint=f"Run: python -m backend models download --only {variant}"
        )
    plan_sv3d(read_header(file, variant), variant, path=file)


def load_sv3d(
    path: Path | str,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    variant: str | None = None,
) -> SV3DParts:
    """SV3D's parts from ``path``: the model folder holding ``sv3d_u.safetensors`` /
    ``sv3d_p.safetensors``, that file itself, or a folder in the diffusers layout (``unet/``,
    ``vae/``, ``image_encoder/``, ``feature_extractor/``, ``scheduler/``; e.g.
    :func:`backend.testing.save_tiny_sv3d`). ``variant``, when given, must match the file's.

    Single files are converted at load time (:func:`plan_sv3d`, :func:`convert_sv3d`); a file
    that is not SV3D, the other variant, or incomplete raises :class:`ModelCorruptError` naming
    ``python -m backend models download --only <variant>``. ``dtype`` defaults to float32.
    """
    p = Path(path)
    if p.is_dir() and (p / "unet").is_dir():
        return _load_diffusers_folder(p, dtype=dtype, device=device)
    file = find_checkpoint(p, variant)
    if file is None:
        what = "no such file or folder" if not p.exists() else "neither sv3d_u.safetensors/sv3d_p.safetensors nor unet/"
        raise ModelMissingError(
            f"No SV3D checkpoint at {p} ({what}).",
            hint=f"Run: python -m backend models download --only {variant or 'sv3d_u'}",
        )
    return load_sv3d_file(file, variant=variant, dtype=dtype, device=device)


def load_sv3d_file(
    file: Path | str, *, variant: str | None = None, dtype: torch.dtype | None = None, device: str = "cpu"
) -> SV3DParts:
    """Convert and load one SGM-layout SV3D file (see :func:`load_sv3d`).

    The tensors are memory-mapped, not copied, when they keep the file's dtype. On the CPU they
    are cast tensor by tensor; for another device the modules are built in the file's dtype and
    ``.to(device, dtype)`` casts on the device (no second copy of the weights in host memory).
    """
    import torch
    from safetensors import safe_open

    file = Path(file)
    plan = plan_sv3d(read_header(file, variant), variant, path=file)
    dtype = dtype or torch.float32
    cast_here = torch.device(device).type == "cpu"
    try:
        with safe_open(str(file), framework="pt") as fh:
            state = convert_sv3d(plan, fh.get_tensor, dtype if cast_here else None)
    except (OSError, RuntimeError, ValueError) as exc:  # a damaged body behind a sound header
        raise ModelCorruptError(
            f"The weight file {file} is damaged: {exc.__class__.__name__}: {str(exc)[:200]}.",
            hint=f"Delete it and fetch it again: rm '{file}' && python -m backend models download --only {plan.variant}",
        ) from exc
    return build_parts(plan, state, file, device, dtype)


def build_parts(
    plan: SV3DPlan,
    state: dict[str, dict[str, torch.Tensor]],
    path: Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> SV3DParts:
    """Modules from ``plan``'s configs, filled (strictly, without copies) with ``state``, then
    moved to ``device``/``dtype``; returns :class:`SV3DParts`."""
    import diffusers
    import torch
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**plan.unet_config)
        vae = getattr(diffusers, plan.vae_class)(**plan.vae_config)
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**plan.clip_config))
    for module, comp in ((unet, "unet"), (vae, "vae"), (enc, "image_encoder")):
        module.load_state_dict(state.pop(comp), strict=True, assign=True)
    emb = enc.vision_model.embeddings  # its one non-persistent buffer
    emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    for module in (unet, vae, enc):
        left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"{type(module).__name__}: no value for {left[:5]}")
        module.eval().requires_grad_(False)
        # torch's own .to: diffusers' override warns on any dtype argument (even with no
        # fp32-only modules, as here); for CUDA this is where fp32 weights become fp16, on the GPU
        torch.nn.Module.to(module, device=device, dtype=dtype)
    size = plan.image_size
    fe = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # bicubic, as FrozenOpenCLIPImageEmbedder.preprocess
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )
    sch = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return SV3DParts(unet, vae, enc, fe, sch, path)


def _load_diffusers_folder(folder: Path, *, dtype: torch.dtype | None, device: str) -> SV3DParts:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from .loaders import _dt, _load, _variant

    def go():
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            folder, subfolder="unet", variant=_variant(folder / "unet"), **_dt(dtype)
        )
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype)
        )
        enc = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", **_dt(dtype))
        fe = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
        sch = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        return unet, vae, enc, fe, sch

    unet, vae, enc, fe, sch = _load(None, folder, go)
    for m in (unet, vae, enc):
        m.eval().requires_grad_(False).to(device)
    return SV3DParts(unet, vae, enc, fe, sch, folder)
