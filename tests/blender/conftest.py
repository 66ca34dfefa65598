"""Fixtures for the bpy tests. Run them in the Blender venv (scripts/setup_blender_venv.sh):

    .venv-blender/bin/python -m pytest tests/blender -m blender

Every test module here is marked ``blender`` and skips cleanly when ``bpy`` is absent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Keep Blender's user config, extensions and caches out of the home folder. Must be set
# before bpy is first imported.
if importlib.util.find_spec("bpy") is not None and "BLENDER_USER_RESOURCES" not in os.environ:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="portraitsplat-blender-user-")


def synthetic_head(n: int = 2000, seed: int = 0, sh_rest: int = 0):
    """A head-sized ellipsoid shell of splats (metres, head frame), skin-toned with a blue
    right side (+X), as SplatArrays."""
    from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = (d * np.array([0.075, 0.095, 0.115])).astype(np.float32)
    rgb = np.clip(np.array([0.80, 0.56, 0.45]) + 0.08 * rng.normal(size=(n, 3)), 0.02, 0.98)
    rgb[means[:, 0] > 0.04] = (0.2, 0.3, 0.8)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    return SplatArrays(
        means=means,
        quats=q,
        log_scales=(np.log(0.006) + 0.3 * rng.normal(size=(n, 3))).astype(np.float32),
        opacity_logits=logit(rng.uniform(0.6, 0.99, size=n)),
        sh0=rgb_to_sh0(rgb).astype(np.float32),
        shN=None if not sh_rest else (0.1 * rng.normal(size=(n, sh_rest, 3))).astype(np.float32),
    )


@pytest.fixture
def bpy_clean():
    """A fresh, empty Blender session per test."""
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.fixture
def addon(bpy_clean):
    """The add-on registered (as a development package, not an installed extension)."""
    import blender_addon

    blender_addon.register()
    yield blender_addon
    blender_addon.unregister()
