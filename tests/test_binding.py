"""Triangle-bound Gaussians (METHOD B.2, Eq. 6) and absolute-gradient densification (Eq. 7-8)."""

import numpy as np
import pytest
import torch
from gsplat.strategy.ops import split

from backend.gaussians.binding import (
    BoundStrategy,
    bind,
    decimate,
    make_bound_strategy,
    quat_multiply,
    rotmat_to_quat,
    triangle_frames,
)
from backend.gaussians.cameras import spherical_cameras
from backend.gaussians.loop import render_model
from backend.gaussians.losses import l1
from backend.gaussians.model import GaussianModel
from backend.gaussians.render import quat_to_rotmat
from backend.gaussians.strategies import make_strategy
from backend.prior.template import build_head
from blender_addon.core.splat_arrays import SplatArrays


@pytest.fixture(scope="module")
def small_head():
    h = build_head()
    return decimate(h.vertices, h.faces, 600)


def _rotation(seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=4)
    return quat_to_rotmat(torch.tensor(q[None], dtype=torch.float64))[0].numpy()


def _frame_numpy(tri: np.ndarray):
    """The documented frame, written independently: x along v0->v1, z the normal, y = z x x."""
    v0, v1, v2 = tri
    x = (v1 - v0) / np.linalg.norm(v1 - v0)
    n = np.cross(v1 - v0, v2 - v0)
    z = n / np.linalg.norm(n)
    base = np.linalg.norm(v1 - v0)
    height = np.linalg.norm(n) / base
    return (v0 + v1 + v2) / 3, np.column_stack([x, np.cross(z, x), z]), 0.5 * (base + height)


def test_triangle_frame_definition():
    v = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.5, 1.0, 0.0]], dtype=torch.float64)
    fr = triangle_frames(v, torch.tensor([[0, 1, 2]]))
    assert torch.allclose(fr.centroids[0], torch.tensor([2.5 / 3, 1.0 / 3, 0.0], dtype=torch.float64))
    assert torch.allclose(fr.rotations[0], torch.eye(3, dtype=torch.float64))  # x along v0->v1, z = +Z (CCW)
    assert float(fr.scales[0]) == pytest.approx(0.5 * (2.0 + 1.0))  # (base + height) / 2
    assert torch.allclose(quat_to_rotmat(fr.quats.float()), fr.rotations.float(), atol=1e-6)


def test_rotmat_to_quat_round_trip_all_branches():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2000, 4, generator=g, dtype=torch.float64), dim=-1)
    q = torch.cat([q, torch.eye(4, dtype=torch.float64)])  # w, x, y, z dominant in turn
    back = rotmat_to_quat(quat_to_rotmat(q).double())
    assert torch.allclose(back, q * torch.sign(q[:, :1] + 1e-30), atol=1e-6)
    a, b = q[:10], q[10:20]
    assert torch.allclose(
        quat_to_rotmat(quat_multiply(a, b)).double(), quat_to_rotmat(a).double() @ quat_to_rotmat(b).double(), atol=1e-5
    )


def test_bind_samples_per_triangle_on_the_surface(small_head):
    v, f = small_head
    model = bind(v, f, per_triangle=4)
    assert len(model) == 4 * len(f)
    assert torch.equal(model.triangle_counts(), torch.full((len(f),), 4))
    assert set(model.optimizers) == {"means", "quats", "scales", "opacities", "sh0", "shN"}
    # every initial centre lies inside its triangle: barycentric coordinates in [0, 1]
    tri = v.astype(np.float64)[f[model.tri_ids.numpy()]]
    p = model.means.detach().double().numpy()
    e1, e2, d = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], p - tri[:, 0]
    gram = np.stack(
        [np.stack([(e1 * e1).sum(1), (e1 * e2).sum(1)], 1), np.stack([(e1 * e2).sum(1), (e2 * e2).sum(1)], 1)], 1
    )
    uv = np.linalg.solve(gram, np.stack([(d * e1).sum(1), (d * e2).sum(1)], 1)[..., None])[..., 0]
    assert uv.min() > -1e-4 and uv.sum(1).max() < 1 + 1e-4
    n = np.cross(e1, e2)
    assert np.abs((d * n / np.linalg.norm(n, axis=1, keepdims=True)).sum(1)).max() < 1e-6


def _perturb(model, seed=0):
    """Give the residuals non-trivial values so the checks below are not about identities."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.params["means"] += 0.3 * torch.randn(model.params["means"].shape, generator=g)
        model.params["quats"].copy_(torch.randn(model.params["quats"].shape, generator=g))
        model.params["scales"] += 0.3 * torch.randn(model.params["scales"].shape, generator=g)


def _world(model):
    with torch.no_grad():
        return (model.means.double(), quat_to_rotmat(model.quats).double(), model.scales.double())


def test_similarity_deformation_moves_every_gaussian_with_the_mesh(small_head):
    v, f = small_head
    model = bind(v, f)
    _perturb(model)
    mu0, R0, s0 = _world(model)
    Q, k, t = _rotation(1), 1.37, np.array([0.2, -0.1, 0.05])
    model.set_vertices((k * v.astype(np.float64) @ Q.T + t).astype(np.float32))
    mu1, R1, s1 = _world(model)
    Qt, tt = torch.tensor(Q), torch.tensor(t)
    assert torch.allclose(mu1, k * mu0 @ Qt.T + tt, atol=2e-6)
    assert torch.allclose(R1, Qt @ R0, atol=1e-5)  # rotation follows the triangle frame
    assert torch.allclose(s1, k * s0, rtol=1e-5)  # scale follows s_tri
    assert torch.allclose(
        model.params["tri_scale"].double(),
        k * triangle_frames(torch.tensor(v).double(), torch.tensor(f).long()).scales[model.tri_ids],
        rtol=1e-5,
    )


def test_one_triangle_moved_alone_carries_only_its_gaussians():
    # two separate triangles; rotate, scale and translate the second one only
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0.2, 0], [2.2, 1, 0.3]], np.float32) * 0.01
    f = np.array([[0, 1, 2], [3, 4, 5]])
    model = bind(v, f, per_triangle=8)
    _perturb(model, 3)
    mu0, R0, s0 = _world(model)
    Q, k, t = _rotation(7), 0.6, np.array([0.0, 0.03, -0.02])
    c = v[3:].mean(0)
    v2 = v.astype(np.float64).copy()
    v2[3:] = k * (v2[3:] - c) @ Q.T + c + t
    model.set_vertices(v2.astype(np.float32))
    mu1, R1, s1 = _world(model)
    first, second = model.tri_ids == 0, model.tri_ids == 1
    assert torch.allclose(mu1[first], mu0[first], atol=1e-7) and torch.allclose(R1[first], R0[first], atol=1e-6)
    Qt = torch.tensor(Q)
    expect = k * (mu0[second] - torch.tensor(c, dtype=torch.float64)) @ Qt.T + torch.tensor(c + t)
    assert torch.allclose(mu1[second], expect, atol=1e-6)
    assert torch.allclose(R1[second], Qt @ R0[second], atol=1e-5)
    assert torch.allclose(s1[second], k * s0[second], rtol=1e-5)


def test_non_rigid_stretch_follows_each_deformed_triangle_frame(small_head):
    v, f = small_head
    model = bind(v, f)
    _perturb(model, 5)
    stretched = v.astype(np.float64) * np.array([1.3, 0.8, 1.1])
    stretched[:, 0] += 0.05 * stretched[:, 2]  # and a shear
    model.set_vertices(stretched.astype(np.float32))
    mu, R, s = _world(model)
    ids = model.tri_ids.numpy()
    dmu = model.params["means"].detach().double().numpy()
    dR = quat_to_rotmat(model.params["quats"].detach()).double().numpy()
    ds = np.exp(model.params["scales"].detach().double().numpy())
    for i in range(0, len(model), 97):  # every 97th Gaussian, against the frame written out by hand
        c, Rt, st = _frame_numpy(stretched[f[ids[i]]])
        assert np.allclose(mu[i].numpy(), st * Rt @ dmu[i] + c, atol=2e-6)
        assert np.allclose(R[i].numpy(), Rt @ dR[i], atol=1e-5)
        assert np.allclose(s[i].numpy(), st * ds[i], rtol=1e-5)


def test_residual_split_is_the_world_space_3dgs_split(small_head):
    """gsplat's split on (dmu, dR, ds) places children exactly where a world split would."""
    v, f = small_head
    model = bind(v, f)
    _perturb(model, 9)
    mu, R, s = _world(model)
    mask = torch.zeros(len(model), dtype=torch.bool)
    mask[::50] = True
    sel = torch.where(mask)[0]
    torch.manual_seed(123)
    eps = torch.randn(2, len(sel), 3)  # the draw gsplat's split makes under this seed
    expect = (mu[sel] + torch.einsum("nij,nj,bnj->bni", R[sel], s[sel], eps.double())).reshape(-1, 3)
    ids_before = model.tri_ids.clone()
    torch.manual_seed(123)
    split(model.params, model.optimizers, {}, mask)
    mu2, R2, s2 = _world(model)
    n_rest = int((~mask).sum())
    assert len(model) == n_rest + 2 * len(sel)
    assert torch.allclose(mu2[n_rest:], expect, atol=1e-6)
    assert torch.allclose(s2[n_rest:], (s[sel] / 1.6).repeat(2, 1), rtol=1e-5)
    assert torch.allclose(R2[n_rest:], R[sel].repeat(2, 1, 1), atol=1e-6)
    assert torch.equal(model.tri_ids[n_rest:], ids_before[sel].repeat(2))


def _info_with_grads(n, grads):
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    (means2d * grads[None]).sum().backward()
    means2d.absgrad = grads[None].abs()
    return {
        "means2d": means2d,
        "radii": torch.ones(1, n, 2, dtype=torch.int32),
        "width": 2,
        "height": 2,
        "n_cameras": 1,
        "gaussian_ids": None,
    }


def test_bound_strategy_judges_clone_or_split_by_world_size():
    # one big triangle (s_tri = 10 cm) and one tiny one (s_tri = 1 mm); the same residual ds
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [1, 0, 0], [1.001, 0, 0], [1, 0.001, 0]], np.float32)
    model = bind(v, np.array([[0, 1, 2], [3, 4, 5]]), per_triangle=1)
    with torch.no_grad():
        model.params["scales"].fill_(np.log(0.5))  # world: 5 cm on the big one (s_tri 10 cm), 0.5 mm on the small one
    strategy = make_bound_strategy("absgrad", refine_start_iter=0, refine_every=1, grow_grad2d=1e-3)
    strategy.check_sanity(model.params, model.optimizers)
    state = strategy.initialize_state()
    info = _info_with_grads(2, torch.ones(2, 2))
    strategy.step_post_backward(model.params, model.optimizers, state, 1, info)
    # gsplat's grow_scale3d is 1 cm: the small one is cloned, the big one split
    assert len(model) == 4
    assert torch.bincount(model.tri_ids).tolist() == [2, 2]
    size = model.scales.detach().max(dim=-1).values
    big, small = size[model.tri_ids == 0], size[model.tri_ids == 1]
    s_big, s_small = (float(x) for x in triangle_frames(torch.tensor(v), torch.tensor([[0, 1, 2], [3, 4, 5]])).scales)
    assert torch.allclose(small, torch.full((2,), 0.5 * s_small), rtol=1e-4)  # cloned: same size
    assert torch.allclose(big, torch.full((2,), 0.5 * s_big / 1.6), rtol=1e-4)  # split: 1.6x smaller


def test_make_bound_strategy_takes_preset_settings():
    s = make_bound_strategy("instax_paper")
    assert isinstance(s, BoundStrategy) and s.absgrad and (s.refine_every, s.grow_grad2d) == (1000, 0.0002)
    assert make_bound_strategy("absgrad", grow_grad2d=0.0008).grow_grad2d == 0.0008
    with pytest.raises(ValueError):
        make_bound_strategy("surface")


# ------------------------------------------------------------------ absolute gradients (Eq. 7-8)


def _symmetric_case(bound: bool):
    """One Gaussian seen head-on, centred on a pixel corner, asked to shrink: the pixels left of
    it pull its 2D centre left and those on the right pull it right, so the summed gradient
    cancels while the per-pixel absolute sum does not."""
    cam = spherical_cameras([0.0], [0.0], [0.5], [30.0], 32, 32)
    if bound:
        v = np.array([[-0.01, 0, -0.01], [0.01, 0, -0.01], [0.0, 0, 0.01]], np.float32)  # facing -Y
        model = bind(v, np.array([[0, 2, 1]]), per_triangle=1, opacity=0.9)
        with torch.no_grad():
            model.params["means"].zero_()  # at the centroid; move the mesh so that it is the origin
            model.set_vertices(v - model.means.detach()[0].numpy())
            model.params["scales"].fill_(float(np.log(0.02 / float(model.params["tri_scale"][0]))))
            model.params["sh0"].fill_(1.0)
    else:
        model = GaussianModel.from_splats(
            SplatArrays(
                means=np.zeros((1, 3), np.float32),
                quats=np.float32([[1, 0, 0, 0]]),
                log_scales=np.full((1, 3), np.log(0.02), np.float32),
                opacity_logits=np.float32([2.2]),
                sh0=np.float32([[1.0, -1.0, -1.0]]),
            )
        )
    with torch.no_grad():
        target = render_model(model, cam, background=torch.ones(3)).rgb.clone()
        # the target: the same splat at half the size
        model.params["scales"] -= np.log(2.0)
        target = render_model(model, cam, background=torch.ones(3)).rgb.clone()
        model.params["scales"] += np.log(2.0)
    return model, cam, target


@pytest.mark.parametrize("bound", [False, True])
def test_absgrad_densifies_where_per_pixel_gradients_cancel(bound):
    grown = {}
    for kind in ("default", "absgrad"):
        model, cam, target = _symmetric_case(bound)
        settings = dict(refine_start_iter=0, refine_every=1, grow_grad2d=0.0002)  # the paper's threshold
        strategy = make_bound_strategy(kind, **settings) if bound else make_strategy(kind, **settings)
        strategy.check_sanity(model.params, model.optimizers)
        state = strategy.initialize_state()
        out = render_model(model, cam, background=torch.ones(3), absgrad=True)
        strategy.step_pre_backward(model.params, model.optimizers, state, 1, out.info)
        l1(out.rgb, target).backward()
        g = out.info["means2d"]
        assert float(g.grad.norm()) < 1e-6 < float(g.absgrad.norm())  # the cancellation
        strategy.step_post_backward(model.params, model.optimizers, state, 1, out.info)
        grown[kind] = len(model) - 1
    assert grown == {"default": 0, "absgrad": 1}


def test_degenerate_triangle_gets_a_finite_frame():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    fr = triangle_frames(v, torch.tensor([[0, 1, 2], [3, 4, 5]]))  # the first is a line
    assert torch.isfinite(fr.rotations).all() and torch.isfinite(fr.scales).all()
    R = fr.rotations[0]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-9) and float(
        fr.scales[0]
    ) == pytest.approx(0.5)  # (base + 0) / 2
