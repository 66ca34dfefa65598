"""SV3D's checkpoints -> diffusers building blocks (``SV3DParts``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import ModelCorruptError

if TYPE_CHECKING:
    import torch


@dataclass
class SV3DParts:
    """SV3D as diffusers building blocks."""

    unet: Any  # diffusers.UNetSpatioTemporalConditionModel
    vae: Any  # diffusers.AutoencoderKLTemporalDecoder
    image_encoder: Any  # transformers.CLIPVisionModelWithProjection
    feature_extractor: Any  # transformers.CLIPImageProcessor
    scheduler: Any  # diffusers.EulerDiscreteScheduler (EDM, v-prediction)
    path: Path


def load_sv3d(path: Path | str, *, dtype: torch.dtype | None = None, device: str = "cpu") -> SV3DParts:
    """SV3D from a folder in the diffusers layout (``unet/``, ``vae/``, ``image_encoder/``,
    ``feature_extractor/``, ``scheduler/``), e.g. the tiny one from
    :func:`backend.testing.save_tiny_sv3d` or a converted checkpoint.

    stabilityai/sv3d ships single-file SGM checkpoints (``sv3d_u.safetensors``); converting
    their keys to these blocks belongs to backend/guidance/sv3d.py. Given such a file, this
    raises with that pointer rather than guessing.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = Path(path)
    if folder.is_file() or not (folder / "unet").is_dir():
        raise ModelCorruptError(
            f"{folder} is not an SV3D folder in the diffusers layout (unet/, vae/, image_encoder/, ...).",
            hint="Single-file SGM checkpoints (sv3d_u.safetensors) need converting first; see backend/guidance/sv3d.py.",
        )

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

    from .loaders import _dt, _load, _variant

    unet, vae, enc, fe, sch = _load(None, folder, go)
    for m in (unet, vae, enc):
        m.eval().requires_grad_(False).to(device)
    return SV3DParts(unet, vae, enc, fe, sch, folder)
