"""Cameras: OpenCV look-at in the head frame, orbits, random and multi-view samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.gaussians.cameras import (
    Cameras,
    MultiViewSampler,
    RandomViewSampler,
    fov_y_deg,
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
)


def project(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of world points [P, 3] into every camera -> [C, P, 3] (u, v, depth)."""
    hom = torch.cat([points, torch.ones(len(points), 1)], -1)  # [P, 4]
    cam = torch.einsum("cij,pj->cpi", cams.viewmats, hom)[..., :3]  # [C, P, 3]
    uvw = torch.einsum("cij,cpj->cpi", cams.Ks, cam)
    return torch.cat([uvw[..., :2] / uvw[..., 2:3], cam[..., 2:3]], -1)


def test_intrinsics_square_pixels_centred():
    K = intrinsics_from_fov(60.0, 320, 240)
    assert K[0, 0] == pytest.approx(K[1, 1])
    assert K[1, 1] == pytest.approx(120.0 / np.tan(np.radians(30.0)), rel=1e-6)
    assert (K[0, 2].item(), K[1, 2].item()) == (160.0, 120.0)
    assert fov_y_deg(K, 240).item() == pytest.approx(60.0, abs=1e-4)


def test_look_at_puts_target_on_optical_axis():
    eye = torch.tensor([0.3, -0.5, 0.2])
    target = torch.tensor([0.01, 0.02, -0.03])
    cams = Cameras(look_at(eye, target)[None], intrinsics_from_fov(40.0, 200, 100)[None], 200, 100)
    u, v, depth = project(cams, target[None])[0, 0]
    assert (u.item(), v.item()) == (pytest.approx(100.0, abs=1e-3), pytest.approx(50.0, abs=1e-3))
    assert depth.item() == pytest.approx((target - eye).norm().item(), rel=1e-5)
    # rotation is proper and orthonormal; the centre comes back
    R = cams.viewmats[0, :3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.det(R).item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(cams.camera_centers()[0], eye, atol=1e-6, rtol=0)


def test_front_camera_sees_plus_x_right_and_plus_z_up():
    cams = orbit_cameras(1, radius=1.0, elevation_deg=0.0, fov_deg=40.0, width=64, height=64)
    torch.testing.assert_close(cams.camera_centers()[0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    uvd = project(cams, torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]]))[0]
    cx, cy = 32.0, 32.0
    assert uvd[0, 0] > cx + 1.0 and uvd[0, 1] == pytest.approx(cy, abs=1e-4)  # +X -> right
    assert uvd[1, 1] < cy - 1.0 and uvd[1, 0] == pytest.approx(cx, abs=1e-4)  # +Z -> up
    assert (uvd[:, 2] > 0).all()  # in front of the camera


def test_azimuth_90_is_plus_x_counter_clockwise_from_above():
    cams = orbit_cameras(4, radius=2.0, elevation_deg=0.0, fov_deg=40.0, width=64, height=64)
    expected = torch.tensor([[0.0, -2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-2.0, 0.0, 0.0]])
    torch.testing.assert_close(cams.camera_centers(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("elevation", [-20.0, 0.0, 15.0, 60.0])
def test_orbit_radius_elevation_and_even_spacing(elevation):
    target = (0.0, 0.01, 0.05)
    cams = orbit_cameras(
        21,
        radius=0.8,
        elevation_deg=elevation,
        fov_deg=33.8,
        width=576,
        height=576,
        start_azimuth_deg=10.0,
        target=target,
    )
    assert len(cams) == 21
    rel = cams.camera_centers().double() - torch.tensor(target, dtype=torch.float64)
    torch.testing.assert_close(rel.norm(dim=-1), torch.full((21,), 0.8, dtype=torch.float64), atol=1e-5, rtol=0)
    elev = torch.rad2deg(torch.asin(rel[:, 2] / rel.norm(dim=-1)))
    torch.testing.assert_close(elev, torch.full((21,), elevation, dtype=torch.float64), atol=1e-3, rtol=0)
    az = torch.rad2deg(torch.atan2(rel[:, 0], -rel[:, 1]))  # 0 at -Y, 90 at +X
    steps = torch.remainder(torch.diff(torch.cat([az, az[:1]])), 360.0)
    torch.testing.assert_close(steps, torch.full((21,), 360.0 / 21, dtype=torch.float64), atol=1e-3, rtol=0)
    assert az[0].item() == pytest.approx(10.0, abs=1e-3)
    # every camera looks at the target
    uv = project(cams, torch.tensor([target]))[:, 0, :2]
    torch.testing.assert_close(uv, torch.full((21, 2), 288.0), atol=1e-2, rtol=0)


def test_look_at_straight_down_is_continuous_with_front_orbit():
    top = look_at((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    near_top = look_at((0.0, -np.cos(np.radians(89.9)), np.sin(np.radians(89.9))), (0.0, 0.0, 0.0))
    torch.testing.assert_close(top, near_top, atol=3e-3, rtol=0)
    below = look_at((0.0, 0.0, -1.0), (0.0, 0.0, 0.0))
    near_below = look_at((0.0, -np.cos(np.radians(89.9)), -np.sin(np.radians(89.9))), (0.0, 0.0, 0.0))
    torch.testing.assert_close(below, near_below, atol=3e-3, rtol=0)


def test_cameras_indexing_and_device():
    cams = orbit_cameras(6, 1.0, 10.0, 40.0, 32, 24)
    one = cams[2]
    assert len(one) == 1 and one.width == 32 and one.height == 24
    torch.testing.assert_close(one.viewmats[0], cams.viewmats[2])
    assert one.azimuth_deg.item() == pytest.approx(120.0)
    assert len(cams[1:4]) == 3 and len(cams[-1]) == 1
    moved = cams.to("cpu")
    assert moved.viewmats.dtype == torch.float32 and moved.Ks.dtype == torch.float32
    both = Cameras.cat([cams[0], cams[3:]])
    assert len(both) == 4 and both.radius.shape == (4,)
    torch.testing.assert_close(cams.camera_to_world() @ cams.viewmats, torch.eye(4).expand(6, 4, 4), atol=1e-5, rtol=0)


def test_random_sampler_ranges_and_reproducibility():
    sampler = RandomViewSampler((0.5, 0.7), (-10.0, 30.0), (-90.0, 90.0), (30.0, 45.0), 64, 64, seed=3)
    cams = sampler.sample(step=7, batch=64)
    assert len(cams) == 64
    assert cams.radius.min() >= 0.5 and cams.radius.max() <= 0.7
    assert cams.elevation_deg.min() >= -10.0 and cams.elevation_deg.max() <= 30.0
    assert cams.azimuth_deg.min() >= -90.0 and cams.azimuth_deg.max() <= 90.0
    fov = fov_y_deg(cams.Ks, 64)
    assert fov.min() >= 30.0 - 1e-3 and fov.max() <= 45.0 + 1e-3
    torch.testing.assert_close(cams.camera_centers().norm(dim=-1), cams.radius, atol=1e-5, rtol=0)
    # same (seed, step) -> same cameras whatever was drawn in between; new step -> new cameras
    sampler.sample(step=8, batch=5)
    torch.testing.assert_close(sampler.sample(step=7, batch=64).viewmats, cams.viewmats)
    assert not torch.allclose(sampler.sample(step=8, batch=64).viewmats, cams.viewmats)


def test_multiview_sampler_four_views_exactly_90_degrees_apart():
    sampler = MultiViewSampler((0.6, 0.8), (0.0, 30.0), (30.0, 40.0), 256, 256, seed=1)
    cams = sampler.sample(step=0, batch=3)
    assert len(cams) == 12
    az = cams.azimuth_deg.reshape(3, 4).double()
    # exact in float64; the labels are stored as float32 (~1e-5 deg rounding at 300 deg)
    torch.testing.assert_close(torch.diff(az, dim=1), torch.full((3, 3), 90.0, dtype=torch.float64), atol=1e-4, rtol=0)
    # the groups start at different random azimuths but share radius / elevation / FoV
    assert len(set(az[:, 0].tolist())) == 3
    for name in ("elevation_deg", "radius"):
        v = getattr(cams, name).reshape(3, 4)
        assert (v == v[:, :1]).all()
    # the geometry agrees with the azimuth labels: consecutive centres 90 deg apart about Z
    c = cams.camera_centers().double().reshape(3, 4, 3)
    ang = torch.rad2deg(torch.atan2(c[..., 0], -c[..., 1]))
    torch.testing.assert_close(
        torch.remainder(torch.diff(ang, dim=1), 360.0), torch.full((3, 3), 90.0, dtype=torch.float64), atol=1e-3, rtol=0
    )
