"""Densification: gsplat's hooks on CPU with our info dict, and SAS surface-guided placement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, split
from gsplat.utils import normalized_quat_to_rotmat

from backend.gaussians.strategies import (
    PRESETS,
    STRATEGY_KINDS,
    SurfaceGuidedStrategy,
    _knn_cdist,
    displaced_duplicate,
    displaced_split,
    gaussian_offsets,
    knn,
    make_strategy,
    pca_normals,
    shortest_axes,
    surface_normals,
)
from blender_addon.core.frames import matrix_to_quat

W = H = 64


def make_splats(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, sh_degree: int = 1):
    """gsplat-shaped ParameterDict and one Adam per key (create_splats_with_optimizers shape)."""
    n = len(means)
    k = (sh_degree + 1) ** 2 - 1
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(means.float().clone()),
            "quats": torch.nn.Parameter(quats.float().clone()),
            "scales": torch.nn.Parameter(log_scales.float().clone()),
            "opacities": torch.nn.Parameter(torch.zeros(n)),  # sigmoid 0.5: nothing is pruned
            "sh0": torch.nn.Parameter(torch.linspace(-1.0, 1.0, n * 3).reshape(n, 1, 3)),
            "shN": torch.nn.Parameter(torch.zeros(n, k, 3)),
        }
    )
    optimizers = {key: torch.optim.Adam([p], lr=1e-3) for key, p in params.items()}
    return params, optimizers


def random_splats(n: int, seed: int = 0, scale_range=(0.002, 0.03)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.1
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    log_scales = lo + (hi - lo) * torch.rand(n, 3, generator=g)
    return make_splats(means, quats, log_scales)


def adam_step(params, optimizers):
    """One real optimiser step so that every Adam moment exists and is non-zero."""
    loss = sum((p**2).sum() for p in params.values())
    loss.backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad()


def fake_render_info(params, weights: torch.Tensor, absgrad: torch.Tensor | None = None):
    """A gsplat-shaped info dict (packed=False, C = 1) whose means2d is differentiable.

    ``means2d`` is a stand-in projection of the means, so after ``loss.backward()`` its grad is
    ``weights`` [N, 2]. ``absgrad`` [N, 2], if given, is set as the renderer would set it.
    """
    n = len(params["means"])
    means2d = params["means"][None, :, :2] * 100.0 + 32.0  # [1, N, 2], non-leaf
    info = {
        "means2d": means2d,
        "radii": torch.full((1, n, 2), 3, dtype=torch.int32),
        "width": W,
        "height": H,
        "n_cameras": 1,
        "gaussian_ids": None,
        "depths": torch.ones(1, n),
    }
    loss = (means2d * weights[None]).sum()
    return info, loss, absgrad


def run_refine_step(strategy, params, optimizers, weights, absgrad=None, step=100, seed=0):
    """Pre-backward hook, backward, post-backward hook at a refine step; returns the state."""
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    info, loss, absgrad = fake_render_info(params, weights, absgrad)
    strategy.step_pre_backward(params, optimizers, state, step, info)
    loss.backward()
    if absgrad is not None:
        info["means2d"].absgrad = absgrad[None].clone()
    torch.manual_seed(seed)
    strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    return state


def assert_optimizers_match(params, optimizers):
    n = len(params["means"])
    for key, p in params.items():
        assert p.shape[0] == n
        opt = optimizers[key]
        assert opt.param_groups[0]["params"][0] is p
        st = opt.state[p]
        if st:  # empty before the first optimiser step (densifying then is allowed)
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape


# --------------------------------------------------------------------------- (a) hooks on CPU


@pytest.mark.parametrize("kind", ["default", "absgrad", "surface"])
def test_gsplat_hooks_grow_on_cpu_and_rewrite_adam_state(kind):
    n = 500
    params, optimizers = random_splats(n)
    adam_step(params, optimizers)
    before = {k: v.detach().clone() for k, v in params.items()}
    exp_avg_before = optimizers["means"].state[params["means"]]["exp_avg"].clone()
    weights = torch.zeros(n, 2)
    weights[:200] = 0.01  # E = 0.01 * sqrt(2) * W/2 = 0.45 >> threshold for the first 200
    absgrad = weights.abs() if kind == "absgrad" else None
    strategy = make_strategy(kind, refine_start_iter=0)
    state = run_refine_step(strategy, params, optimizers, weights, absgrad)

    big = torch.exp(before["scales"][:200]).max(-1).values > strategy.grow_scale3d
    n_split, n_dupli = int(big.sum()), int((~big).sum())
    assert n_split > 20 and n_dupli > 20
    assert len(params["means"]) == n + n_dupli + n_split  # split: -1 parent +2 children
    assert_optimizers_match(params, optimizers)
    assert state["grad2d"].shape == (len(params["means"]),)  # reset to zeros for the next window
    assert state["grad2d"].abs().sum() == 0
    # untouched Gaussians (not grown) keep their values and moments at the front, in order
    kept = torch.cat([torch.where(~big)[0], torch.arange(200, n)])
    torch.testing.assert_close(params["sh0"][: len(kept)].detach(), before["sh0"][kept])
    torch.testing.assert_close(optimizers["means"].state[params["means"]]["exp_avg"][: len(kept)], exp_avg_before[kept])
    # the optimisers still step with the new shapes
    adam_step(params, optimizers)


# --------------------------------------------------------------------------- (b) surface placement


def sphere_splats(n: int, radius: float, tangent_scale: float, normal_scale: float, tilt_deg: float, seed: int):
    """Fibonacci-sphere centres; discs tangent to the sphere, each tilted by up to tilt_deg."""
    rng = np.random.default_rng(seed)
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    normal = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)
    t1 = np.cross(normal, rng.normal(size=(n, 3)))
    t1 /= np.linalg.norm(t1, axis=-1, keepdims=True)
    t2 = np.cross(normal, t1)
    frame = np.stack([t1, t2, normal], -1)  # columns: local x, y, z (z = shortest axis)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.radians(tilt_deg) * rng.uniform(size=n)
    K = np.cross(np.eye(3)[None], axis[:, None])  # [n, 3, 3]: row i = e_i x a, i.e. skew(a)
    tilt = np.eye(3) + np.sin(angle)[:, None, None] * K + (1 - np.cos(angle))[:, None, None] * (K @ K)
    quats = matrix_to_quat(tilt @ frame)
    log_scales = np.log(np.array([tangent_scale, tangent_scale, normal_scale]))[None].repeat(n, 0)
    return make_splats(torch.from_numpy(radius * normal), torch.from_numpy(quats), torch.from_numpy(log_scales))


def off_surface_share(means: torch.Tensor, radius: float, tol: float) -> float:
    return ((means.detach().double().norm(dim=-1) - radius).abs() > tol).double().mean().item()


def test_surface_guided_split_keeps_new_points_on_the_surface():
    """METHOD A.3: tangent-plane placement vs 3DGS's isotropic N(0, s_old), same seeds."""
    n, radius = 2000, 0.1
    shares = {}
    for kind in ("default", "surface"):
        params, optimizers = sphere_splats(n, radius, tangent_scale=0.005, normal_scale=0.0015, tilt_deg=20.0, seed=0)
        # every Gaussian is above the scale threshold, so every one is split (both kinds)
        strategy = make_strategy(kind, refine_start_iter=0, grow_scale3d=0.004)
        run_refine_step(strategy, params, optimizers, torch.full((n, 2), 0.01), seed=1)
        assert len(params["means"]) == 2 * n  # all parents replaced by two children each
        shares[kind] = off_surface_share(params["means"], radius, tol=0.01 * radius)
    print(
        f"\nshare of new points > 1% of the radius off the sphere: "
        f"isotropic {shares['default']:.3f}, surface-guided {shares['surface']:.3f}"
    )
    assert shares["default"] > 0.3  # the isotropic placement really scatters
    assert shares["surface"] * 2 <= shares["default"]
    assert shares["surface"] < 0.05


def test_surface_guided_clone_moves_copy_within_tangent_plane():
    n, radius = 2000, 0.1
    params, optimizers = sphere_splats(n, radius, tangent_scale=0.003, normal_scale=0.001, tilt_deg=20.0, seed=2)
    parents = params["means"].detach().clone()
    strategy = make_strategy("surface", refine_start_iter=0)  # all scales < 0.01: all cloned
    run_refine_step(strategy, params, optimizers, torch.full((n, 2), 0.01))
    means = params["means"].detach()
    assert len(means) == 2 * n
    torch.testing.assert_close(means[:n], parents)  # originals stay
    step = means[n:] - parents  # copies moved ...
    assert step.norm(dim=-1).median() > 0.001
    normal = parents / parents.norm(dim=-1, keepdim=True)
    along_normal = (step * normal).sum(-1).abs()  # ... within the tangent plane
    assert along_normal.max() < 0.05 * step.norm(dim=-1).max()
    assert off_surface_share(means[n:], radius, tol=0.01 * radius) < 0.05


# --------------------------------------------------------------------------- (c) normals


def test_pca_normal_of_a_plane_patch_is_the_plane_normal():
    g = torch.Generator().manual_seed(0)
    plane_n = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)
    u = torch.nn.functional.normalize(torch.linalg.cross(plane_n, torch.tensor([1.0, 0.0, 0.0])), dim=0)
    v = torch.linalg.cross(plane_n, u)
    ab = torch.rand(400, 2, generator=g) * 0.1
    points = torch.tensor([0.02, 0.01, -0.03]) + ab[:, :1] * u + ab[:, 1:] * v
    normals, ok = pca_normals(points, torch.arange(400), k=6)
    assert ok.all()
    assert (normals @ plane_n).abs().min() > 0.999


def test_normal_radius_falls_back_to_own_shortest_axis():
    g = torch.Generator().manual_seed(1)
    means = torch.rand(50, 3, generator=g) * 1.0  # neighbours ~0.2 apart
    quats = torch.nn.functional.normalize(torch.randn(50, 4, generator=g), dim=-1)
    log_scales = torch.log(torch.tensor([0.02, 0.005, 0.01])).repeat(50, 1)
    params, _ = make_splats(means, quats, log_scales)
    idx = torch.arange(50)
    _, ok = pca_normals(params["means"].detach(), idx, k=6, radius=0.01)
    assert not ok.any()
    normals = surface_normals(params, idx, k=6, radius=0.01)
    own = shortest_axes(params["quats"].detach(), params["scales"].detach())
    torch.testing.assert_close(normals, own)
    # the shortest axis is the rotated local y axis (scale 0.005)
    torch.testing.assert_close(own, normalized_quat_to_rotmat(quats)[:, :, 1])
    # without the radius the neighbours define a plane again
    assert pca_normals(params["means"].detach(), idx, k=6)[1].all()


def test_knn_cdist_matches_kdtree():
    g = torch.Generator().manual_seed(2)
    points = torch.rand(3000, 3, generator=g) * 0.2
    d_tree, i_tree = knn(points, points[:300], 7)
    d_cd, i_cd = _knn_cdist(points, points[:300], 7, chunk_elems=100_000)  # several chunks
    assert (i_tree == i_cd).float().mean() > 0.99
    torch.testing.assert_close(d_cd, d_tree, atol=1e-6, rtol=0)
    assert (i_tree[:, 0] == torch.arange(300)).all()


# --------------------------------------------------------------------------- (d) clone/split order


@pytest.mark.parametrize("paper_order", [False, True])
def test_clone_split_order_flag(paper_order):
    """Default = 3DGS (split > 0.01, clone <= 0.01); the flag = SAS as printed (the reverse)."""
    n = 100
    g = torch.Generator().manual_seed(3)
    means = torch.randn(n, 3, generator=g) * 0.1
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1)
    large = torch.arange(n) < 40
    scales = torch.where(large[:, None], torch.tensor(0.02), torch.tensor(0.005)).repeat(1, 3)
    params, optimizers = make_splats(means, quats, torch.log(scales))
    strategy = make_strategy("surface", refine_start_iter=0, paper_clone_split_order=paper_order)
    assert strategy.grow_scale3d == 0.01
    run_refine_step(strategy, params, optimizers, torch.full((n, 2), 0.01))
    out = torch.exp(params["scales"].detach()[:, 0])
    count = {s: int(torch.isclose(out, torch.tensor(s)).sum()) for s in (0.02, 0.005, 0.02 / 1.6, 0.005 / 1.6)}
    if not paper_order:  # 40 large split into 80 children; 60 small kept + 60 clones
        assert count == {0.02: 0, 0.005: 120, 0.02 / 1.6: 80, 0.005 / 1.6: 0}
    else:  # 40 large kept + 40 clones; 60 small split into 120 children
        assert count == {0.02: 80, 0.005: 0, 0.02 / 1.6: 0, 0.005 / 1.6: 120}
    assert_optimizers_match(params, optimizers)
    adam_step(params, optimizers)
    assert_optimizers_match(params, optimizers)


# --------------------------------------------------------------------------- (e) absgrad


def test_absgrad_strategy_reads_means2d_absgrad():
    n = 300
    weights = torch.zeros(n, 2)
    weights[:, 0] = torch.where(torch.arange(n) % 2 == 0, 0.01, -0.01)  # signed grads
    absgrad = torch.zeros(n, 2)
    absgrad[:50] = 0.01  # only the first 50 have a large |grad|
    grown = {}
    for kind in ("default", "absgrad"):
        params, optimizers = random_splats(n, seed=4)
        run_refine_step(make_strategy(kind, refine_start_iter=0), params, optimizers, weights, absgrad)
        grown[kind] = len(params["means"]) - n
    # absgrad grows exactly the 50 whose .absgrad is high (a clone or a split adds one each);
    # the large signed grads of all 300 are ignored
    assert grown["absgrad"] == 50
    assert grown["default"] == n  # the plain strategy reads .grad: everyone is high
    params, optimizers = random_splats(n, seed=4)
    with pytest.raises(AttributeError):  # no .absgrad on means2d: a loud error, not a silent 0
        run_refine_step(make_strategy("absgrad", refine_start_iter=0), params, optimizers, weights)


# --------------------------------------------------------------------------- ops and presets


def test_displaced_ops_match_gsplat_ops_bookkeeping():
    """With gsplat's own offsets our ops give gsplat's params, Adam state and running state."""
    n = 200
    mask = torch.arange(n) % 3 == 0
    for op in ("duplicate", "split"):
        results = []
        for ours in (False, True):
            params, optimizers = random_splats(n, seed=5)
            adam_step(params, optimizers)
            state = {"grad2d": torch.rand(n, generator=torch.Generator().manual_seed(0)), "count": torch.ones(n)}
            torch.manual_seed(7)
            if op == "duplicate":
                if ours:
                    displaced_duplicate(params, optimizers, state, mask, torch.zeros(int(mask.sum()), 3))
                else:
                    duplicate(params, optimizers, state, mask)
            else:
                if ours:  # gsplat's samples: R (s * eps), eps = randn(2, M, 3)
                    offsets = gaussian_offsets(params, torch.where(mask)[0], 2)
                    displaced_split(params, optimizers, state, mask, offsets)
                else:
                    split(params, optimizers, state, mask)
            results.append((params, optimizers, state))
        (p0, o0, s0), (p1, o1, s1) = results
        for key in p0:
            torch.testing.assert_close(p1[key], p0[key])
            for moment in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(o1[key].state[p1[key]][moment], o0[key].state[p0[key]][moment])
        for key in s0:
            torch.testing.assert_close(s1[key], s0[key])


def test_make_strategy_kinds_presets_and_overrides():
    assert not set(PRESETS) & set(STRATEGY_KINDS)
    assert type(make_strategy("default")) is DefaultStrategy
    s = make_strategy("absgrad")
    assert type(s) is DefaultStrategy and s.absgrad and s.grow_grad2d == 0.0008
    sas = make_strategy("sas_paper")
    assert isinstance(sas, SurfaceGuidedStrategy)
    assert (sas.refine_every, sas.grow_grad2d, sas.grow_scale3d, sas.knn_k) == (100, 0.0002, 0.01, 6)
    assert sas.normal_radius is None and not sas.paper_clone_split_order
    instax = make_strategy("instax_paper")
    assert instax.absgrad and (instax.refine_every, instax.grow_grad2d) == (1000, 0.0002)
    assert make_strategy("instax_paper", grow_grad2d=0.0008).grow_grad2d == 0.0008
    assert make_strategy("photo").absgrad
    assert make_strategy("surface", normal_radius=0.01).normal_radius == 0.01
    with pytest.raises(ValueError, match="sas_paper"):
        make_strategy("mcmc")
    with pytest.raises(TypeError):
        make_strategy("default", knn_k=6)  # a surface-only setting on the plain strategy


def test_gsplat_1_5_3_never_resets_opacity():
    """Canary: gsplat 1.5.3's `step % reset_every == 0 & step > 0` is always False.

    If this fails after a gsplat upgrade, opacity resets have started to happen: revisit the
    presets' ``reset_every``.
    """
    n = 50
    params, optimizers = random_splats(n, seed=6)
    with torch.no_grad():
        params["opacities"].fill_(3.0)  # sigmoid 0.95
    strategy = make_strategy("default", refine_start_iter=10_000, reset_every=100)
    run_refine_step(strategy, params, optimizers, torch.zeros(n, 2), step=100)
    assert torch.allclose(params["opacities"], torch.full((n,), 3.0))


# --------------------------------------------------------------------------- (c) units (issue 15)


def _sas_round_on_a_head(k: float):
    """One SAS densification round (through the training loop) on the METHOD A.1 init of the
    default head template, the whole scene (head, Gaussians, cameras) scaled by ``k``."""
    from backend.gaussians.cameras import orbit_cameras
    from backend.gaussians.loop import LoopConfig, optimise
    from backend.gaussians.model import GaussianModel
    from backend.gaussians.render import use_backend
    from backend.prior.sample import INIT_SCALE, head_unit, init_gaussians
    from backend.prior.template import build_head

    mesh = build_head()
    splats = init_gaussians(mesh, n=600, rng=0)  # std-dev 0.02 head units
    splats.means *= k
    splats.log_scales += np.float32(math.log(k))
    model = GaussianModel.from_splats(splats, "paper", total_steps=1)
    cams = orbit_cameras(3, radius=0.6 * k, elevation_deg=10.0, fov_deg=30.0, width=48, height=48)
    target = torch.rand(3, 48, 48, 3, generator=torch.Generator().manual_seed(0))

    def term(out, cams, step):
        return {"photo": ((out.rgb - target) ** 2).mean()}

    # refine at step 0, before any optimiser step; every seen Gaussian counts as "high gradient"
    strategy = make_strategy(
        "sas_paper", refine_start_iter=-1, refine_every=1, refine_stop_iter=10, grow_grad2d=1e-12, normal_radius=0.1
    )
    torch.manual_seed(0)
    with use_backend("torch"):
        optimise(model, LoopConfig(steps=1, scene_scale=k * head_unit(mesh)), lambda step: cams, [term], strategy)
    init_std = INIT_SCALE * head_unit(mesh) * k
    return model.params["means"].detach() / k, torch.exp(model.params["scales"].detach()).max(-1).values / init_std


@pytest.mark.parametrize("k", [0.5, 3.0])
def test_sas_densifies_the_same_scene_the_same_at_any_world_scale(k):
    """SAS's clone/split threshold 0.01 and its initial scale 0.02 are both head units (METHOD
    A.1, A.3): the same head in other world units (k x) grows the same Gaussians the same way.
    Before issue 15 the threshold read 0.01 m against a 4.6 mm init (all cloned), so a 3x
    head (13.8 mm) was split instead."""
    means_1, rel_1 = _sas_round_on_a_head(1.0)
    means_k, rel_k = _sas_round_on_a_head(k)
    assert len(means_k) == len(means_1) > 600
    torch.testing.assert_close(rel_k, rel_1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(means_k, means_1, rtol=1e-4, atol=1e-6)
    # 0.02 head units is above 0.01: every grown Gaussian was split (3DGS order, METHOD A.3)
    # into two children 1.6x smaller; none was cloned at the initial size
    grown = len(means_1) - 600
    children = rel_1 < 0.9
    assert int(children.sum()) == 2 * grown
    torch.testing.assert_close(rel_1[children], torch.full_like(rel_1[children], 1 / 1.6), rtol=1e-3, atol=0)
