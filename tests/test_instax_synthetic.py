"""Instax3D construction on synthetic ground truth (METHOD B.2): a known template-bound head,
rendered from SV3D's 21-view orbit, is reconstructed by the pipeline's own code."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.gaussians.binding import bind, decimate
from backend.gaussians.cameras import orbit_cameras
from backend.gaussians.loop import render_model
from backend.gaussians.losses import psnr
from backend.guidance.sv3d import orbit_azimuths
from backend.pipelines.instax import PRESETS, fit_to_orbit, head_frame_cameras, orbit_world_cameras, reconstruct
from backend.prior.fit import MEDIAPIPE_INDEX, pose_from_euler
from backend.prior.template import build_head
from blender_addon.core.splat_arrays import rgb_to_sh0


def _face_colours(p: np.ndarray) -> np.ndarray:
    """Skin, dark hair on top and at the back, a red mouth band and two dark eyes."""
    rgb = np.tile(np.float32([0.85, 0.65, 0.5]), (len(p), 1))
    rgb[(p[:, 2] > 0.04) | (p[:, 1] > 0.03)] = [0.25, 0.15, 0.1]
    rgb[(p[:, 1] < -0.06) & (np.abs(p[:, 2] + 0.06) < 0.012)] = [0.8, 0.1, 0.15]
    rgb[(p[:, 1] < -0.06) & (np.abs(np.abs(p[:, 0]) - 0.032) < 0.01) & (np.abs(p[:, 2]) < 0.01)] = [0.1, 0.1, 0.3]
    return rgb


def test_reconstruct_known_bound_head_from_21_orbit_views_reaches_30db_held_out():
    torch.manual_seed(0)
    head = build_head()
    v, f = decimate(head.vertices, head.faces, 750)
    gt = bind(v, f, rng=0, opacity=0.9)  # 4 per triangle: ~3000 Gaussians
    with torch.no_grad():
        gt.params["sh0"].copy_(torch.from_numpy(rgb_to_sh0(_face_colours(gt.means.numpy())))[:, None])
        g = torch.Generator().manual_seed(3)
        gt.params["means"][:, 2] += 0.1 * torch.randn(len(gt), generator=g)  # off the surface a little
        gt.params["scales"] += 0.2 * torch.randn(len(gt), 3, generator=g)
    size = 40
    # SV3D's orbit: 21 frames at elevation 10, the last one the front view
    train = orbit_cameras(
        21, radius=0.65, elevation_deg=10, fov_deg=30, width=size, height=size, start_azimuth_deg=360 / 21
    )
    held = orbit_cameras(7, radius=0.65, elevation_deg=15, fov_deg=30, width=size, height=size, start_azimuth_deg=25)
    bg = torch.ones(3)
    with torch.no_grad():
        frames = (render_model(gt, train, background=bg).rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        held_imgs = render_model(gt, held, background=bg).rgb

    cfg = replace(
        PRESETS["fast"],
        target_faces=None,
        steps=300,
        fit_res=size,
        preview_every=0,
        strategy_overrides={"refine_every": 100, "refine_start_iter": 100, "refine_stop_iter": 250},
    )
    model, metrics = reconstruct(frames, train, v, f, cfg, seed=1)  # a different sampling of the triangles
    with torch.no_grad():
        after = psnr(render_model(model, held, background=bg).rgb, held_imgs)
    print(f"held-out PSNR {after:.2f} dB, train {metrics['fit_psnr_db']:.2f} dB, {len(model)} splats")
    assert after >= 30.0, metrics


def _anchor_landmarks(cams, params, head_to_world_cams):
    """Fake MediaPipe landmarks [478, 2] per camera: the template's anchors projected."""
    from backend.prior.template import build_head as bh

    anchors = bh(params).anchor_array(list(MEDIAPIPE_INDEX))
    out = []
    for i in range(len(head_to_world_cams)):
        V = head_to_world_cams.viewmats[i].double().numpy()
        K = head_to_world_cams.Ks[i].double().numpy()
        pc = anchors @ V[:3, :3].T + V[:3, 3]
        uv = (pc[:, :2] / pc[:, 2:]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
        lm = np.zeros((478, 2))
        lm[list(MEDIAPIPE_INDEX.values())] = uv
        out.append(lm)
    return out


@pytest.mark.parametrize("direction", [1, -1])
def test_fit_template_recovers_head_frame_cameras_and_orbit_direction(direction):
    from backend.gaussians.cameras import Cameras

    az = orbit_azimuths(21)
    world = orbit_world_cameras(az, 10.0, 576, direction)  # the orbit SV3D really made
    # truth: the head sits in the orbit world turned by 8 deg yaw, 0.3 m from the origin's scale
    R = pose_from_euler(8.0, -3.0, 2.0)
    s, t = 2.0 / 0.55, np.array([0.02, -0.01, 0.03])  # world units per metre; head centre
    V = world.viewmats.double().numpy()
    truth = np.zeros_like(V)
    truth[:, :3, :3] = V[:, :3, :3] @ R
    truth[:, :3, 3] = (V[:, :3, :3] @ t + V[:, :3, 3]) / s
    truth[:, 3, 3] = 1
    head_cams = Cameras(torch.tensor(truth, dtype=torch.float32), world.Ks, 576, 576)
    lms = _anchor_landmarks(None, build_head().params, head_cams)
    landmarks = {20: lms[20], 19: lms[19], 0: lms[0]}  # the reference (last) and its neighbours

    fit = fit_to_orbit(landmarks, world)  # backend.prior.multiview.fit_template on the orbit's cameras
    got = head_frame_cameras(fit, world).viewmats.double().numpy()
    centres = lambda M: -np.einsum("cji,cj->ci", M[:, :3, :3], M[:, :3, 3])  # noqa: E731
    assert np.abs(centres(got) - centres(truth)).max() < 0.03  # metres, on a ~0.55 m orbit
    rot_err = np.degrees(np.arccos(np.clip((np.einsum("cij,cij->c", got[:, :3, :3], truth[:, :3, :3]) - 1) / 2, -1, 1)))
    assert rot_err.max() < 2.0
    assert fit.scale == pytest.approx(s, rel=0.05)
    # the wrong turning direction makes the frames disagree about the head's rotation
    wrong = fit_to_orbit(landmarks, orbit_world_cameras(az, 10.0, 576, -direction))
    assert fit.rotation_spread_deg < 2.0 < wrong.rotation_spread_deg
