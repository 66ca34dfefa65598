"""Tiny random models, saved to disk in the same layout as the public weights.

No test may download anything, yet the loaders in :mod:`backend.models` must be exercised
on the files users will have. So each factory here builds a 1-layer, 8-64-channel model
from constructor arguments under a fixed seed (diffusers' ``get_dummy_components`` habit)
and **saves it the way the public repository lays it out**. Tests then load it back through
the very same ``from_pretrained``/loader code (:func:`backend.models.load_sd15`, ...).

Factories (each takes a folder and returns the path the matching loader expects):

============================  =========================================  ===========================
factory                       real counterpart (see shared/WEIGHTS.md)    loader
============================  =========================================  ===========================
:func:`save_tiny_sd15`        stable-diffusion-v1-5 (fp16 variant files)  ``models.load_sd15``
:func:`save_tiny_controlnet`  ControlNetMediaPipeFace/diffusion_sd15      ``models.load_controlnet``
:func:`save_tiny_ip_adapter`  h94/IP-Adapter-FaceID faceid_sd15.bin       ``models.load_ip_adapter_faceid``
:func:`save_tiny_mvdream`     ashawkey/mvdream-sd2.1-diffusers            ``models.load_mvdream``
:func:`save_tiny_sv3d`        SV3D in diffusers blocks (sv3d_u shape)     ``models.load_sv3d``
:func:`save_tiny_taesd`       madebyollin/taesd                           ``models.load_taesd``
:func:`save_tiny_insightface` insightface buffalo_l pack (5 ONNX files)   ``models.load_insightface``
============================  =========================================  ===========================

:func:`save_tiny_model_root` writes all but SV3D into a model root laid out as
``python -m backend models download`` leaves it (pytest: the ``tiny_models_root`` and
``tiny_sv3d_path`` session fixtures in ``tests/conftest.py``).

Sizes are deliberately tiny (whole set: a few MB, built in a few seconds on a CPU); what is
kept faithful is the *structure*: folder names, file names, config keys, state-dict key
names, tensor ranks, the 512-d identity embedding, 77-token prompts, the VAE's 8x
down-sampling and SD's noise schedule.

Usage (pytest; see ``tests/test_models.py``)::

    @pytest.fixture(scope="session")
    def tiny_sd15(tmp_path_factory):
        return save_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15")

    def test_unet(tiny_sd15):
        sd = load_sd15(tiny_sd15)
        ...

Modules, one model family each: :mod:`.clip` (tokenizer, text encoder), :mod:`.sd15` (SD1.5,
ControlNet, IP-Adapter-FaceID, TAESD), :mod:`.mvdream`, :mod:`.sv3d`, :mod:`.insightface`,
:mod:`.root` (the whole model root) and :mod:`.common` (seed, sizes, writers). Every name is
importable from ``backend.testing`` itself, as before the split.
"""

from .clip import _tiny_text_encoder as _tiny_text_encoder
from .clip import save_tiny_clip, save_tiny_clip_tokenizer, tiny_vocab_size
from .common import ID_EMBED_DIM, SD15_SCHEDULE, SEED, TINY_CROSS_DIM, TINY_LORA_RANK
from .insightface import INSIGHTFACE_PACK_FILES, save_tiny_insightface
from .insightface import _TinyDetector as _TinyDetector
from .mvdream import TINY_MVDREAM_UNET_CONFIG, mvdream_unet_shapes, save_tiny_mvdream, tiny_mvdream_unet_state_dict
from .root import TINY_ROOT_MODELS, save_tiny_model_root
from .sd15 import (
    save_tiny_controlnet,
    save_tiny_ip_adapter,
    save_tiny_sd15,
    save_tiny_taesd,
    tiny_ip_adapter_state_dict,
    tiny_unet_kwargs,
)
from .sv3d import SV3D_VECTOR_DIMS, save_tiny_sv3d

__all__ = [
    "SEED",
    "TINY_CROSS_DIM",
    "ID_EMBED_DIM",
    "TINY_LORA_RANK",
    "SD15_SCHEDULE",
    "save_tiny_clip",
    "save_tiny_clip_tokenizer",
    "tiny_vocab_size",
    "tiny_unet_kwargs",
    "save_tiny_sd15",
    "save_tiny_controlnet",
    "tiny_ip_adapter_state_dict",
    "save_tiny_ip_adapter",
    "save_tiny_taesd",
    "TINY_MVDREAM_UNET_CONFIG",
    "mvdream_unet_shapes",
    "tiny_mvdream_unet_state_dict",
    "save_tiny_mvdream",
    "SV3D_VECTOR_DIMS",
    "save_tiny_sv3d",
    "INSIGHTFACE_PACK_FILES",
    "save_tiny_insightface",
    "TINY_ROOT_MODELS",
    "save_tiny_model_root",
]
