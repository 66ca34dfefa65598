"""The registry: every pretrained model by short name (repository, revision, files, size,
licence, purpose; facts from shared/WEIGHTS.md), the environment names, and the errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelMissingError, PortraitSplatError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_ROOT = "PORTRAITSPLAT_MODELS"
ENV_CONFIG = "PORTRAITSPLAT_MODELS_CONFIG"
ENV_PREFIX = "PORTRAITSPLAT_MODEL_"
GB = 1000**3
MB = 1000**2


# --- errors --------------------------------------------------------------------------------


class ModelCorruptError(ModelMissingError):
    """A model's file is there but cannot be read (truncated download, wrong file)."""

    code = "model_corrupt"


class ModelGatedError(ModelMissingError):
    """The model's repository is gated and this account/token has no access."""

    code = "model_gated"


class DiskFullError(PortraitSplatError):
    code = "disk_full"
    hint = (
        f"Free some space, or put the models on a larger disk: {ENV_ROOT}=/big/disk python -m backend models download"
    )


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained model.

    ``source`` is ``"hf"`` (a Hugging Face repository, fetched with ``allow_patterns``) or
    ``"insightface"`` (a model pack from insightface's release, unzipped into the model root).
    ``required`` lists glob patterns, relative to the model folder, that must each match at
    least one file for the model to count as present. ``subfolder`` is where the loader looks
    inside the folder. ``pipelines`` names the pipelines that cannot run without it.

    The registry holds only models some code reads (tests/test_models.py pins it): ``loader``
    names the :mod:`backend.models` function that opens the folder, and every entry is either
    needed by a pipeline (``pipelines``) or ``optional`` with its readers in ``used_by``
    (a pipeline that loads it when an option asks for it, or ``"eval"``).
    """

    name: str
    repo: str
    purpose: str
    licence: str
    size_bytes: int
    source: str = "hf"
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    subfolder: str | None = None
    gated: bool = False
    pipelines: tuple[str, ...] = ()
    optional: bool = False
    used_by: tuple[str, ...] = ()
    loader: str = ""
    url: str = ""

    @property
    def page(self) -> str:
        return self.url or (f"https://huggingface.co/{self.repo}" if self.source == "hf" else "")

    @property
    def download_command(self) -> str:
        return f"python -m backend models download --only {self.name}"


_SD15_FILES = (
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/*",
    "scheduler/*",
)

# Revisions are branch names until someone with hub access pins each to a commit hash.
REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="clip_vit_l14",
            loader="load_clip",
            repo="openai/clip-vit-large-patch14",
            purpose="CLIP ViT-L/14 (transformers): eval's CLIP-ID, CLIP-style (SAS Table 1) and CLIP MVC (Instax3D)",
            licence="MIT",
            size_bytes=int(1.71 * GB),
            allow_patterns=(
                "config.json",
                "model.safetensors",
                "preprocessor_config.json",
                "tokenizer*",
                "vocab.json",
                "merges.txt",
                "special_tokens_map.json",
            ),
            required=("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"),
            optional=True,
            used_by=("eval",),  # backend.eval.clip_metrics; the CLIP figures are skipped without it
        ),
        ModelSpec(
            name="sd15",
            loader="load_sd15",
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            purpose="Stable Diffusion 1.5 (fp16): SAS identity/style guidance",
            licence="CreativeML OpenRAIL-M",
            size_bytes=int(2.13 * GB),
            allow_patterns=_SD15_FILES,
            required=(
                "model_index.json",
                "unet/config.json",
                "unet/*.safetensors",
                "vae/*.safetensors",
                "text_encoder/*.safetensors",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "scheduler/scheduler_config.json",
            ),
            pipelines=("stylize",),
        ),
        ModelSpec(
            name="ip_adapter_faceid",
            loader="load_ip_adapter_faceid",
            repo="h94/IP-Adapter-FaceID",
            purpose="IP-Adapter-FaceID for SD1.5: ArcFace identity -> decoupled cross-attention (+LoRA)",
            licence="research only (trained on insightface embeddings; see model card)",
            size_bytes=97 * MB,
            allow_patterns=("ip-adapter-faceid_sd15.bin",),
            required=("ip-adapter-faceid_sd15.bin",),
            pipelines=("stylize",),
        ),
        ModelSpec(
            name="controlnet_face",
            loader="load_controlnet",
            repo="CrucibleAI/ControlNetMediaPipeFace",
            purpose="MediaPipe-face landmark ControlNet, SD1.5 subfolder only (the repo is ~31 GB)",
            licence="OpenRAIL",
            size_bytes=723 * MB,
            subfolder="diffusion_sd15",
            allow_patterns=("diffusion_sd15/config.json", "diffusion_sd15/*.safetensors"),
            required=("diffusion_sd15/config.json", "diffusion_sd15/*.safetensors"),
            pipelines=("stylize",),
        ),
        ModelSpec(
            name="mvdream",
            loader="load_mvdream",
            repo="ashawkey/mvdream-sd2.1-diffusers",
            purpose="MVDream multi-view UNet (SD2.1 base, LDM keys) + SD2.1 text encoder/VAE: 3D SDS",
            licence="CreativeML OpenRAIL-M",
            size_bytes=int(2.6 * GB),
            allow_patterns=(
                "model_index.json",
                "*/config.json",
                "unet/*.safetensors",
                "vae/*.safetensors",
                "text_encoder/*.safetensors",
                "tokenizer/*",
                "scheduler/*",
            ),
            required=(
                "unet/config.json",
                "unet/*.safetensors",
                "vae/*.safetensors",
                "text_encoder/*.safetensors",
                "tokenizer/vocab.json",
                "scheduler/scheduler_config.json",
            ),
            pipelines=("stylize",),
        ),
        ModelSpec(
            name="sv3d_u",
            loader="load_sv3d",
            repo="stabilityai/sv3d",
            purpose="SV3D_u orbit-video model (no camera input; Instax3D generation stage)",
            licence="Stability AI Community License (non-commercial; gated)",
            size_bytes=int(9.36 * GB),
            allow_patterns=("sv3d_u.safetensors",),
            required=("sv3d_u.safetensors",),
            gated=True,
            pipelines=("instax",),
        ),
        ModelSpec(
            name="sv3d_p",
            loader="load_sv3d",
            repo="stabilityai/sv3d",
            purpose="SV3D_p orbit-video model (camera path input; optional Instax3D variant)",
            licence="Stability AI Community License (non-commercial; gated)",
            size_bytes=int(9.37 * GB),
            allow_patterns=("sv3d_p.safetensors",),
            required=("sv3d_p.safetensors",),
            gated=True,
            optional=True,
            used_by=("instax",),  # with the option sv3d_variant="sv3d_p" (backend.guidance.sv3d.load_sv3d)
        ),
        ModelSpec(
            name="buffalo_l",
            loader="load_insightface",
            repo="buffalo_l",
            source="insightface",
            purpose="insightface pack: SCRFD detector, 106/68 landmarks, ArcFace w600k_r50 (FaceID's embedding)",
            licence="non-commercial research only (insightface models)",
            size_bytes=326 * MB,
            required=("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx"),
            url="https://github.com/deepinsight/insightface/tree/master/python-package",
            pipelines=("stylize",),
        ),
        ModelSpec(
            name="taesd",
            loader="load_taesd",
            repo="madebyollin/taesd",
            purpose="Tiny SD autoencoder: ~9x cheaper latent encode/decode (speed preset)",
            licence="MIT",
            size_bytes=int(9.8 * MB),
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
            required=("config.json", "diffusion_pytorch_model.safetensors"),
            pipelines=("stylize",),
        ),  # the stylize pipeline's default ("fast") preset encodes with it
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def required_models(pipeline: str) -> list[str]:
    """Names of the models ``pipeline`` cannot run without (``[]`` for the weight-free ones).

    Composite names (``"instax+stylize"``) need the union of their parts.
    """
    parts = pipeline.split("+")
    return [s.name for s in REGISTRY.values() if any(p in s.pipelines for p in parts)]
