"""A whole tiny model root, laid out as ``python -m backend models download`` leaves it.

This module's one job is :func:`save_tiny_model_root`, which calls the per-family factories
(SD1.5, IP-Adapter-FaceID, ControlNet, MVDream, insightface, TAESD) into one folder.
"""

from __future__ import annotations

from pathlib import Path

from .insightface import save_tiny_insightface
from .mvdream import save_tiny_mvdream
from .sd15 import save_tiny_controlnet, save_tiny_ip_adapter, save_tiny_sd15, save_tiny_taesd

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
