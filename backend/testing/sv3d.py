"""Tiny SV3D: the ``sv3d_u``-shaped orbit video model as diffusers blocks.

This module's one job is :func:`save_tiny_sv3d`: a spatio-temporal UNet, temporal-decoder
VAE, CLIP image encoder, feature extractor and EDM scheduler saved in the diffusers layout
that ``models.load_sv3d`` reads, with the vector-input widths of both SV3D variants.
"""

from __future__ import annotations

from pathlib import Path

from .common import SD15_SCHEDULE, SEED, TINY_CROSS_DIM, _seeded, _write_model_index

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
