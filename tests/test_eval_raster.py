"""backend.eval's compiled forward rasteriser against the torch reference, and the orbit's views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.eval.orbit import orbit_angles, orbit_cameras_for, render_views, wrap_degrees
from backend.eval.raster import rasterise
from backend.gaussians.cameras import spherical_cameras
from backend.gaussians.loop import render_model
from backend.gaussians.model import GaussianModel
from blender_addon.core.splat_arrays import SplatArrays, logit


def _blob_model(n: int = 400, sh_degree: int = 0, seed: int = 0) -> GaussianModel:
    """Anisotropic splats on a head-sized ellipsoid, random colours and opacities."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = (d * [0.08, 0.1, 0.12]).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    shN = rng.normal(scale=0.3, size=(n, (sh_degree + 1) ** 2 - 1, 3)).astype(np.float32) if sh_degree else None
    splats = SplatArrays(
        means=means,
        quats=quats,
        log_scales=np.log(rng.uniform(0.004, 0.02, size=(n, 3))).astype(np.float32),
        opacity_logits=logit(rng.uniform(0.05, 0.99, size=n).astype(np.float32)),
        sh0=rng.normal(scale=0.8, size=(n, 3)).astype(np.float32),
        shN=shN,
    )
    return GaussianModel.from_splats(splats, "photo", total_steps=1)


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_fast_rasteriser_matches_the_reference(sh_degree):
    model = _blob_model(sh_degree=sh_degree)
    # a non-square image, a camera close enough to clip splats at the border, one from above
    cams = spherical_cameras([0.0, 130.0, 250.0], [0.0, 40.0, -15.0], [0.6, 0.35, 0.5], 35.0, 72, 56)
    bg = (0.2, 0.4, 1.0)
    rgb, alpha = rasterise(model, cams, bg)
    with torch.no_grad():
        ref = render_model(model, cams, background=torch.tensor(bg))
    assert rgb.shape == (3, 56, 72, 3) and alpha.shape == (3, 56, 72)
    assert alpha.max() > 0.9 and alpha.min() < 0.01  # the head and the background are both on screen
    np.testing.assert_allclose(alpha, ref.alpha[..., 0].numpy(), atol=2e-4)
    np.testing.assert_allclose(rgb, ref.rgb.numpy(), atol=2e-4)


def test_render_views_fast_and_reference_agree_as_images():
    model = _blob_model(300, seed=1)
    cams = orbit_cameras_for(np.array([0.0, 90.0]), np.zeros(2), 48)
    fast, fast_a = render_views(model, cams, "fast")
    ref, ref_a = render_views(model, cams, "reference")
    assert fast.dtype == np.uint8 and fast.shape == (2, 48, 48, 3)
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
    np.testing.assert_allclose(fast_a, ref_a, atol=1e-4)
    with pytest.raises(ValueError, match="renderer"):
        render_views(model, cams, "gsplat")


def test_orbit_angles_cover_the_ring_then_the_pitched_views():
    yaw, pitch = orbit_angles(24)
    assert len(yaw) == 28 and np.all(pitch[:24] == 0) and set(pitch[24:]) == {20.0, -20.0}
    assert yaw[0] == 0 and yaw[6] == 90 and yaw[12] == 180 and yaw[18] == -90
    assert np.all((yaw > -180) & (yaw <= 180))
    np.testing.assert_array_equal(wrap_degrees([-180.0, 190.0, 360.0, -45.0]), [180.0, -170.0, 0.0, -45.0])
    # the camera at yaw 90 stands on +X, the head's (the subject's) left
    cams = orbit_cameras_for(np.array([90.0]), np.zeros(1), 32)
    assert cams.camera_centers()[0, 0] > 0.7
