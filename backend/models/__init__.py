"""Pretrained models: one registry, where they live, how to get them, how to load them.

One import point, ``backend.models``, over four modules with one job each: ``registry``
(what each model is), ``store`` (where it is, whether it is intact, ``models check``),
``fetch`` (``models download``) and ``loaders`` (folder -> modules); ``cli`` wires
the two commands.

Every pretrained weight file the backend uses is named here, by a short name, with its
source repository, revision, files, size, licence and purpose (facts: shared/WEIGHTS.md).
Nothing else in the backend opens a weight file by itself: pipelines and guidance terms ask
this module for a path (:func:`model_path`) or a loaded module (:func:`load_sd15`, ...).

Where models live
    ``$PORTRAITSPLAT_MODELS`` (default ``<repo>/.cache/models``), one folder per model:
    ``<root>/<name>/`` holds that repository's files in their own layout (``unet/``,
    ``vae/``, ...). insightface packs go where insightface looks for them:
    ``<root>/insightface/models/<pack>/*.onnx``.

Overrides (a model you already have somewhere else)
    1. ``PORTRAITSPLAT_MODEL_<NAME>=/path`` (name upper-cased), e.g. ``PORTRAITSPLAT_MODEL_SD15``;
    2. a TOML file, ``$PORTRAITSPLAT_MODELS_CONFIG`` or ``<root>/models.toml``::

           [paths]
           sd15 = "/data/stable-diffusion-v1-5"
           buffalo_l = "/data/insightface/models/buffalo_l"

    An override points at the same folder the default would (for insightface packs: the pack
    folder holding the ``.onnx`` files).

Getting them
    ``python -m backend models download [--only NAME ...]`` (huggingface_hub, with progress
    and resume; insightface packs from insightface's own release). ``HF_HUB_OFFLINE=1``
    disables downloads: the command then says so instead of trying.
    ``python -m backend models check`` prints what is present, sizes, licences and the fix.

Failing clearly
    A missing model raises :class:`backend.errors.ModelMissingError` naming the command that
    fetches it; a truncated or unreadable file raises :class:`ModelCorruptError`; a gated
    repository without access raises :class:`ModelGatedError` (how to accept the licence and
    set ``HF_TOKEN``); a full disk raises :class:`DiskFullError`. A pipeline checks its models
    at submit time (:func:`ensure_models`); nothing falls back silently to another pipeline.

Usage::

    from backend import models
    models.ensure_models("stylize")                     # raises if anything is missing
    sd = models.load_sd15(dtype=torch.float16, device="cuda")
    models.load_ip_adapter_faceid(sd.unet)
    controlnet = models.load_controlnet()
    app = models.load_insightface()
"""

from __future__ import annotations

from backend.errors import ModelMissingError

from .fetch import DownloadResult, default_download_names, download
from .loaders import (
    SD15,
    MVDreamParts,
    SV3DParts,
    apply_ip_adapter_faceid,
    load_clip,
    load_controlnet,
    load_insightface,
    load_ip_adapter_faceid,
    load_ip_adapter_state_dict,
    load_mvdream,
    load_sd15,
    load_sv3d,
    load_taesd,
    set_ip_adapter_scale,
)
from .registry import (
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_ROOT,
    GB,
    MB,
    REGISTRY,
    REPO_ROOT,
    DiskFullError,
    ModelCorruptError,
    ModelGatedError,
    ModelSpec,
    get_spec,
    required_models,
)
from .store import (
    ModelStatus,
    check,
    ensure_models,
    format_check,
    insightface_root,
    model_path,
    models_root,
    verify_folder,
    verify_safetensors,
)

__all__ = [
    "ModelMissingError",
    "DownloadResult",
    "default_download_names",
    "download",
    "SD15",
    "MVDreamParts",
    "SV3DParts",
    "apply_ip_adapter_faceid",
    "load_clip",
    "load_controlnet",
    "load_insightface",
    "load_ip_adapter_faceid",
    "load_ip_adapter_state_dict",
    "load_mvdream",
    "load_sd15",
    "load_sv3d",
    "load_taesd",
    "set_ip_adapter_scale",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_ROOT",
    "GB",
    "MB",
    "REGISTRY",
    "REPO_ROOT",
    "DiskFullError",
    "ModelCorruptError",
    "ModelGatedError",
    "ModelSpec",
    "get_spec",
    "required_models",
    "ModelStatus",
    "check",
    "ensure_models",
    "format_check",
    "insightface_root",
    "model_path",
    "models_root",
    "verify_folder",
    "verify_safetensors",
]
