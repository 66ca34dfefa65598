"""The CPU tile rasteriser (backend="numba") against the torch reference: images, gradients, info.

Every comparison runs the two backends on the same tensors. In float64 the two agree to
rounding (1e-9 here), so any difference in a rule (box, threshold, clamp, termination, the
order of splats) or in a gradient term shows up; a float32 check covers the training dtype.
"""

from __future__ import annotations

import pytest
import torch
from gsplat.strategy import DefaultStrategy

from backend.gaussians.cameras import Cameras, intrinsics_from_fov, look_at, spherical_cameras
from backend.gaussians.raster_cpu import TILE
from backend.gaussians.render import render, resolve_backend, use_backend

F64 = torch.float64


def _leaves(n: int, seed: int, dtype=F64, sh_degree: int | None = None) -> dict[str, torch.Tensor]:
    """Anisotropic splats on a head-sized shell: raw parameters, each a leaf with .grad."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * torch.tensor([0.08, 0.1, 0.115])
    colors = torch.rand(n, 3, generator=g)
    if sh_degree is not None:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.4
    p = {
        "means": d + torch.randn(n, 3, generator=g) * 0.01,
        "quats": torch.randn(n, 4, generator=g),
        "log_scales": torch.log(torch.rand(n, 3, generator=g) * 0.012 + 0.003),
        # opacities from 0.003 (culled: under 1/255 everywhere) to 0.9997 (clamped at 0.99)
        "logit_op": torch.linspace(-6.0, 8.0, n)[torch.randperm(n, generator=g)],
        "colors": colors,
    }
    return {k: v.to(dtype).requires_grad_() for k, v in p.items()}


def _cams(dtype=F64) -> Cameras:
    # non-square, sizes not multiples of the tile; close enough that splats cross the border
    cams = spherical_cameras([0.0, 130.0, 250.0], [5.0, 40.0, -15.0], [0.6, 0.35, 0.5], 35.0, 72, 56)
    return Cameras(cams.viewmats.to(dtype), cams.Ks.to(dtype), cams.width, cams.height)


def _run(p, cams, backend, sh_degree=None, absgrad=True, seed=0):
    for v in p.values():
        v.grad = None
    dt = p["means"].dtype
    out = render(
        p["means"],
        p["quats"],
        p["log_scales"].exp(),
        torch.sigmoid(p["logit_op"]),
        p["colors"],
        cams,
        sh_degree=sh_degree,
        background=torch.tensor([0.2, 0.4, 1.0], dtype=dt),
        absgrad=absgrad,
        backend=backend,
    )
    g = torch.Generator().manual_seed(seed + 1)
    w_rgb = torch.randn(out.rgb.shape, generator=g).to(dt)
    w_a, w_d = torch.randn(out.alpha.shape, generator=g).to(dt), torch.randn(out.alpha.shape, generator=g).to(dt)
    loss = (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + (out.depth * out.alpha.detach() * w_d).sum()
    loss.backward()
    grads = {k: v.grad.clone() for k, v in p.items()}
    grads["means2d"] = out.info["means2d"].grad.clone()
    if absgrad:
        grads["absgrad"] = out.info["means2d"].absgrad.clone()
    return out, grads


def _assert_same(p, cams, sh_degree=None, atol=1e-9, grad_rtol=1e-7):
    fast, g_fast = _run(p, cams, "numba", sh_degree)
    ref, g_ref = _run(p, cams, "torch", sh_degree)
    torch.testing.assert_close(fast.rgb, ref.rgb, atol=atol, rtol=0)
    torch.testing.assert_close(fast.alpha, ref.alpha, atol=atol, rtol=0)
    covered = ref.alpha > 1e-3
    torch.testing.assert_close(fast.depth[covered], ref.depth[covered], atol=atol * 10, rtol=0)
    assert torch.equal(fast.info["radii"], ref.info["radii"])
    for k, g in g_ref.items():
        scale = g.abs().max()
        assert scale > 0, k
        err = (g_fast[k] - g).abs().max() / scale
        assert err <= grad_rtol, (k, err.item())
    return fast, ref


def test_random_scene_images_and_gradients_match_the_reference():
    p = _leaves(600, seed=0)
    fast, ref = _assert_same(p, _cams())
    assert ref.alpha.max() > 0.9 and ref.alpha.min() < 0.01  # the head and the background are on screen
    assert (ref.info["radii"] == 0).all(-1).any()  # some splats are culled (opacity < 1/255 or off screen)


def test_sh_coefficients_get_the_reference_gradients():
    p = _leaves(300, seed=1, sh_degree=2)
    _assert_same(p, _cams(), sh_degree=2)


def test_splats_behind_and_beside_the_camera():
    cam = Cameras(
        look_at((0.0, -0.3, 0.0), (0.0, 0.0, 0.0))[None].to(F64),
        intrinsics_from_fov(60.0, 40, 40)[None].to(F64),
        40,
        40,
    )
    p = _leaves(400, seed=2)
    with torch.no_grad():
        p["means"].mul_(3.0).add_(torch.tensor([0.0, -0.3, 0.0], dtype=F64))  # a cloud around the camera
    fast, ref = _assert_same(p, cam)
    z = ref.info["depths"][0]
    assert (z < 0).sum() > 50 and (z > 0.01).sum() > 50  # splats behind the camera, and in front of it
    assert (fast.info["radii"][0][z < 0.01] == 0).all()  # behind the near plane: culled
    g = {k: v.grad for k, v in p.items()}
    assert all(torch.isfinite(v).all() for v in g.values())


def test_splats_on_tile_borders_and_larger_than_tiles():
    """Centres exactly on tile corners and edges, boxes from 1 px to several tiles wide."""
    cam = Cameras(
        look_at((0.0, -0.6, 0.0), (0.0, 0.0, 0.0))[None].to(F64),
        intrinsics_from_fov(40.0, 64, 48)[None].to(F64),
        64,
        48,
    )
    K, V = cam.Ks[0], cam.viewmats[0]
    px = torch.tensor([TILE, TILE, 2 * TILE, 2 * TILE + 0.5, 3 * TILE - 0.5, TILE + 3.0, 40.0, 0.0, 64.0], dtype=F64)
    py = torch.tensor([TILE, 2 * TILE, TILE, TILE, TILE + 0.25, 7.0, 2 * TILE, 10.0, 47.5], dtype=F64)
    depth = 0.6 + 0.01 * torch.arange(len(px), dtype=F64)
    cam_pts = torch.stack([(px - K[0, 2]) / K[0, 0] * depth, (py - K[1, 2]) / K[1, 1] * depth, depth], -1)
    world = (cam_pts - V[:3, 3]) @ V[:3, :3]  # camera -> world
    n = len(px)
    scales = torch.tensor([0.0003, 0.002, 0.01, 0.1, 0.001, 0.004, 0.02, 0.006, 0.005], dtype=F64)
    p = {
        "means": world,
        "quats": torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=F64),
        "log_scales": (scales[:, None] * torch.tensor([1.0, 0.7, 1.3], dtype=F64)).log(),
        "logit_op": torch.full((n,), 1.5, dtype=F64),
        "colors": torch.rand(n, 3, generator=torch.Generator().manual_seed(4), dtype=F64),
    }
    p = {k: v.clone().requires_grad_() for k, v in p.items()}
    fast, ref = _assert_same(p, cam)
    r = ref.info["radii"][0]
    assert r.min() <= 2 and r.max() >= 2 * TILE  # from a pixel to several tiles


def test_equal_depths_blend_in_index_order():
    """Splats at exactly the same depth (float32 coordinates make such ties common) composite
    in index order in both backends (gsplat's stable sort does the same)."""
    p = _leaves(200, seed=10)
    with torch.no_grad():
        p["means"][1::2] = p["means"][::2] + torch.tensor([0.004, 0.0, 0.003], dtype=F64)  # same y: same depth
        p["logit_op"].fill_(2.0)
    cam = Cameras(  # looks along +y: depth = y + 0.6
        look_at((0.0, -0.6, 0.0), (0.0, 0.0, 0.0))[None].to(F64),
        intrinsics_from_fov(40.0, 64, 48)[None].to(F64),
        64,
        48,
    )
    fast, ref = _assert_same(p, cam)
    z = ref.info["depths"][0]
    assert torch.equal(z[1::2], z[::2])


def test_near_degenerate_covariances():
    """Needles and discs: one or two scale axes 1e-7 m, so the 2D covariance is the 0.3 px^2
    low-pass in some direction (conic entries up to ~3 and extreme eccentricity)."""
    p = _leaves(400, seed=5)
    with torch.no_grad():
        ls = p["log_scales"]
        ls[:150, 0] = -16.0  # discs
        ls[150:300, :2] = -16.0  # needles
        ls[300:, :] = torch.log(torch.tensor(0.03))  # large ones that span several tiles
    _assert_same(p, _cams())


def test_float32_agrees_with_the_reference():
    p = _leaves(800, seed=6, dtype=torch.float32)
    cams = _cams(torch.float32)
    fast, g_fast = _run(p, cams, "numba")
    ref, g_ref = _run(p, cams, "torch")
    assert (fast.rgb - ref.rgb).abs().max() < 1e-5
    assert (fast.alpha - ref.alpha).abs().max() < 1e-5
    for k, g in g_ref.items():
        assert (g_fast[k] - g).abs().max() <= 1e-4 * g.abs().max(), k
    assert fast.rgb.dtype == torch.float32 and g_fast["means"].dtype == torch.float32


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    cam = Cameras(
        look_at((0.0, -0.6, 0.0), (0.0, 0.0, 0.0))[None].to(F64),
        intrinsics_from_fov(40.0, 24, 20)[None].to(F64),
        24,
        20,
    )
    n = 8
    params = {
        "means": torch.randn(n, 3, dtype=F64) * 0.03,
        "quats": torch.randn(n, 4, dtype=F64),
        "log_scales": torch.log(torch.rand(n, 3, dtype=F64) * 0.02 + 0.01),
        "logit_op": torch.randn(n, dtype=F64),
        "colors": torch.rand(n, 3, dtype=F64),
    }
    target = torch.rand(1, 20, 24, 3, dtype=F64)

    def loss_fn(p):
        out = render(
            p["means"],
            p["quats"],
            p["log_scales"].exp(),
            torch.sigmoid(p["logit_op"]),
            p["colors"],
            cam,
            background=torch.tensor([0.3, 0.3, 0.3], dtype=F64),
            backend="numba",
        )
        return ((out.rgb - target) ** 2).sum() + out.alpha.sum() + (out.depth * out.alpha).sum()

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss_fn(leaves).backward()
    eps, checked = 1e-6, 0
    for name, p in params.items():
        flat = p.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            fd = (loss_fn(plus) - loss_fn(minus)).item() / (2 * eps)
            an = leaves[name].grad.view(-1)[i].item()
            assert abs(fd - an) <= 1e-5 * max(1.0, abs(fd)), (name, i, fd, an)
            checked += 1
    assert checked > 25


def test_info_drives_gsplat_strategy_as_the_reference_does():
    """gsplat's DefaultStrategy (absgrad) reads means2d.absgrad, radii, width, height and n_cameras:
    the same grad2d, count and max-radius state from either backend."""
    states = []
    for backend in ("numba", "torch"):
        p = _leaves(500, seed=7, dtype=torch.float32)
        strategy = DefaultStrategy(absgrad=True, refine_start_iter=10_000)
        state = strategy.initialize_state()
        out, _ = _run(p, _cams(torch.float32), backend)
        strategy._update_state(
            {"means": p["means"]}, state, out.info, packed=False
        )  # what step_post_backward does first
        assert out.info["n_cameras"] == 3 and (out.info["width"], out.info["height"]) == (72, 56)
        assert out.info["radii"].dtype == torch.int32 and out.info["radii"].shape == (3, 500, 2)
        assert out.info["gaussian_ids"] is None
        states.append(state)
    fast, ref = states
    assert torch.equal(fast["count"], ref["count"])
    assert ref["grad2d"].max() > 0
    torch.testing.assert_close(fast["grad2d"], ref["grad2d"], atol=1e-4 * ref["grad2d"].max(), rtol=0)


def test_gradients_are_deterministic_and_nothing_on_screen_is_fine():
    p = _leaves(300, seed=8)
    _, a = _run(p, _cams(), "numba")
    _, b = _run(p, _cams(), "numba")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        p["means"].add_(torch.tensor([0.0, 0.0, 5.0], dtype=F64))  # everything far above the frame
    out, g = _run(p, _cams(), "numba")
    assert (out.info["radii"] == 0).all()
    torch.testing.assert_close(out.rgb, torch.tensor([0.2, 0.4, 1.0], dtype=F64).expand_as(out.rgb))
    assert all((v == 0).all() for v in g.values())


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "numba"
    with use_backend("torch"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("numba", "cpu") == "numba"  # an explicit choice wins
    assert resolve_backend("auto", "cpu") == "numba"
    with pytest.raises(ValueError, match="unknown render backend"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="unknown render backend"), use_backend("fast"):
        pass
    p = _leaves(10, seed=9)
    with pytest.raises(ValueError, match="at most 4 features"):
        render(p["means"], p["quats"], p["log_scales"].exp(), p["logit_op"].sigmoid(), torch.rand(10, 5), _cams())
