"""MVDream (METHOD A.5): our multi-view UNet loads the LDM-keyed weights, mixes views only in
self-attention, listens to the camera; the SDS term renders 4 views 90 deg apart and its
gradient reaches the Gaussians. Tiny random models (backend.testing), CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend import models
from backend.gaussians.cameras import spherical_cameras
from backend.gaussians.loop import render_model
from backend.gaussians.model import GaussianModel
from backend.guidance.mvdream import (
    MVDreamGuidance,
    MVDreamSettings,
    build_multiview_unet,
    mvdream_camera_matrices,
)
from backend.testing import save_tiny_mvdream
from blender_addon.core.splat_arrays import SplatArrays


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return models.load_mvdream(save_tiny_mvdream(tmp_path_factory.mktemp("mv") / "mvdream"))


@pytest.fixture(scope="module")
def unet(parts):
    return build_multiview_unet(parts)


def _inputs(views: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(views, 4, size, size, generator=g)
    ctx = torch.randn(views, 77, 32, generator=g)
    cam = mvdream_camera_matrices(spherical_cameras(90.0 * torch.arange(views), 15.0, 2.0, 40.0, 8, 8))
    return x, torch.full((views,), 500), ctx, cam


# --- loading ------------------------------------------------------------------------------------


def test_strict_load_round_trips_the_file_bit_exact(parts, unet):
    on_disk = load_file(str(parts.path / "unet" / "diffusion_pytorch_model.safetensors"))
    state = unet.state_dict()
    assert state.keys() == on_disk.keys() and len(state) > 100
    for key, tensor in on_disk.items():
        assert torch.equal(state[key], tensor), key
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training


@pytest.mark.parametrize("change", ["missing", "renamed", "reshaped"])
def test_mismatched_state_dict_raises_model_corrupt(parts, change):
    state = dict(parts.unet_state_dict)
    key = "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    if change == "missing":
        del state[key]
    elif change == "renamed":
        state[key.replace("attn1", "attn_1")] = state.pop(key)
    else:
        state[key] = state[key][:, :-1]
    with pytest.raises(models.ModelCorruptError) as err:
        build_multiview_unet(dataclasses.replace(parts, unet_state_dict=state))
    assert key in str(err.value) and "mvdream" in err.value.hint
    if change == "renamed":
        assert "attn_1" in str(err.value)


# --- the network --------------------------------------------------------------------------------


def test_cross_view_attention_mixes_views_only_when_on(unet):
    x, t, ctx, cam = _inputs()
    x2 = x.clone()
    x2[2] += torch.randn(x2[2].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on, on2 = unet(x, t, ctx, cam), unet(x2, t, ctx, cam)
        off, off2 = unet(x, t, ctx, cam, cross_view=False), unet(x2, t, ctx, cam, cross_view=False)
    assert (on[1] - on2[1]).abs().max() > 1e-4  # view 2's change reaches view 1
    assert torch.equal(off[1], off2[1])  # ...only through the multi-view self-attention
    assert (off[2] - off2[2]).abs().max() > 1e-4
    assert (on - off).abs().max() > 1e-4


def test_views_of_different_objects_do_not_mix(unet):
    """A batch of two 4-view groups: changing group 0 leaves group 1 untouched."""
    x, t, ctx, cam = (torch.cat([v, v]) for v in _inputs())
    x2 = x.clone()
    x2[:4] = torch.randn(x2[:4].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = unet(x, t, ctx, cam), unet(x2, t, ctx, cam)
    assert torch.equal(a[4:], b[4:]) and (a[:4] - b[:4]).abs().max() > 1e-4


def test_camera_embedding_is_live(unet):
    x, t, ctx, cam = _inputs()
    rolled = cam.roll(1, dims=0)  # the same 4 cameras, each view assigned its neighbour's
    with torch.no_grad():
        base, moved, none = unet(x, t, ctx, cam), unet(x, t, ctx, rolled), unet(x, t, ctx, None)
    assert (base - moved).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every view changes
    assert (base - none).abs().max() > 1e-4


# --- camera convention ---------------------------------------------------------------------------


def test_camera_matrices_match_mvdream_get_camera_by_hand():
    """MVDream's get_camera(elevation=0, azimuth=a): OpenGL c2w for a camera on the unit sphere
    of a y-up world (a=0 at +z), then rows (x, -z, y) into the z-up world. By hand:

    a = 0:  position (0, -1, 0); right +x; up +z; backward -y (looks toward +y)
    a = 90: position (1, 0, 0);  right +y; up +z; backward +x
    """
    expected = torch.tensor(
        [
            [[1, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]],
            [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
        ],
        dtype=torch.float32,
    ).reshape(2, 16)
    target = (0.1, -0.2, 0.05)
    # any distance and any target: MVDream normalises the position about the look-at point
    cams = spherical_cameras([0.0, 90.0], 0.0, [0.7, 3.0], 40.0, 16, 16, target=target)
    got = mvdream_camera_matrices(cams, target)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# --- the guidance term ---------------------------------------------------------------------------


def _gaussians(n: int = 150, seed: int = 0) -> GaussianModel:
    rng = np.random.default_rng(seed)
    return GaussianModel.from_splats(
        SplatArrays(
            means=(rng.normal(size=(n, 3)) * 0.06).astype(np.float32),
            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
            log_scales=np.full((n, 3), np.log(0.02), np.float32),
            opacity_logits=np.full(n, 0.5, np.float32),
            sh0=rng.normal(size=(n, 3)).astype(np.float32),
        )
    )


@pytest.fixture(scope="module")
def term_and_model(parts, unet):
    model = _gaussians()
    settings = MVDreamSettings(resolution=32)
    term = MVDreamGuidance(
        unet,
        parts.text_encoder,
        parts.tokenizer,
        parts.vae,
        parts.scheduler,
        prompt="a marble bust",
        settings=settings,
        seed=3,
        radius=0.2,
        render_fn=lambda cams: render_model(model, cams, background=torch.ones(3)),
    )
    return term, model


def test_term_loss_is_finite_and_reaches_the_gaussians(term_and_model):
    term, model = term_and_model
    loss = term(None, None, step=0)["loss_mvdream"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ("means", "sh0", "opacities", "scales"):
        grad = model.params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name
        model.params[name].grad = None


def test_term_feeds_the_unet_cfg_pairs_with_cameras_and_one_t(term_and_model, monkeypatch):
    term, _ = term_and_model
    seen = {}
    real = term.unet

    def spy(x, t, context, camera, num_frames):
        seen.update(x=x, t=t, context=context, camera=camera, num_frames=num_frames)
        return real(x, t, context, camera, num_frames=num_frames)

    monkeypatch.setattr(term, "unet", spy)
    term(None, None, step=5)
    x, t, ctx, cam = seen["x"], seen["t"], seen["context"], seen["camera"]
    assert seen["num_frames"] == 4 and x.shape == (8, 4, 4, 4)  # 32 px / 8
    assert torch.equal(x[:4], x[4:]) and torch.equal(cam[:4], cam[4:])  # camera in both branches
    assert (t == t[0]).all()  # one t for all views
    lo, hi = term.settings.schedule.bounds(5)
    assert lo <= int(t[0]) <= hi
    assert torch.equal(ctx[0], ctx[3]) and torch.equal(ctx[4], ctx[7]) and not torch.equal(ctx[0], ctx[4])
    torch.testing.assert_close(cam[:4], mvdream_camera_matrices(term.cameras(5)))


def test_cameras_are_90_degrees_apart_from_a_seeded_random_start(term_and_model):
    term, _ = term_and_model
    cams = term.cameras(0)
    assert len(cams) == 4 and cams.width == cams.height == 32
    az = cams.azimuth_deg.double()
    torch.testing.assert_close(torch.diff(az), torch.full((3,), 90.0, dtype=torch.float64), atol=1e-4, rtol=0)
    # the recorded azimuths are the real camera positions (head frame: az 0 at -Y, 90 at +X)
    c = cams.camera_centers().double()
    measured = torch.rad2deg(torch.atan2(c[:, 0], -c[:, 1]))
    torch.testing.assert_close(
        torch.remainder(measured - az + 180, 360) - 180, torch.zeros(4, dtype=torch.float64), atol=1e-3, rtol=0
    )
    starts = {round(float(term.cameras(s).azimuth_deg[0]), 3) for s in range(4)}
    assert len(starts) == 4  # each step its own start
    torch.testing.assert_close(term.cameras(2).viewmats, term.cameras(2).viewmats)  # seeded by step
    s = term.settings
    expected_distance = s.camera_distance * 0.2 / np.tan(np.radians(s.fov_deg) / 2)
    torch.testing.assert_close(
        c.norm(dim=-1), torch.full((4,), expected_distance, dtype=torch.float64), atol=1e-5, rtol=0
    )


# --- CUDA, half precision --------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_term_on_cuda_in_half_precision(tmp_path, dtype):
    parts = models.load_mvdream(save_tiny_mvdream(tmp_path / "mvdream"), dtype=dtype, device="cuda")
    unet = build_multiview_unet(parts, device="cuda", dtype=dtype)
    assert next(unet.parameters()).dtype == dtype
    model = GaussianModel.from_splats(_gaussians().to_splats(), device="cuda")
    term = MVDreamGuidance(
        unet,
        parts.text_encoder,
        parts.tokenizer,
        parts.vae,
        parts.scheduler,
        prompt="a marble bust",
        settings=MVDreamSettings(resolution=64),
        device="cuda",
        dtype=dtype,
        render_fn=lambda cams: render_model(model, cams, background=torch.ones(3, device="cuda")),
    )
    loss = term(None, None, step=0)["loss_mvdream"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 0
    loss.backward()
    grad = model.params["means"].grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_full_size_unet_runs_in_half_precision(dtype):
    from backend.guidance.mvdream import FULL_SIZE_CONFIG, MultiViewUNet

    with torch.device("cuda"):
        unet = MultiViewUNet.from_config(FULL_SIZE_CONFIG)
    unet = unet.to(dtype).eval()
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(8, 4, 32, 32, device="cuda", generator=g)
    ctx = torch.randn(8, 77, 1024, device="cuda", generator=g)
    cam = mvdream_camera_matrices(spherical_cameras(90.0 * torch.arange(4), 15.0, 2.0, 40.0, 8, 8)).repeat(2, 1)
    with torch.no_grad():
        half = unet(x, torch.full((8,), 500, device="cuda"), ctx, cam.cuda(), num_frames=4)
        full = unet.float()(x, torch.full((8,), 500, device="cuda"), ctx, cam.cuda(), num_frames=4)
    assert half.shape == (8, 4, 32, 32) and half.dtype == torch.float32 and torch.isfinite(half).all()
    rel = (half - full).norm() / full.norm()
    assert rel < 0.05, float(rel)  # half precision follows the fp32 network
