"""The CPU half of the splat viewport (core.splat_view): order, re-sort rule, covariances,
packing. bpy-free code, tested here beside the viewport it feeds; runs without bpy too."""

from __future__ import annotations

import numpy as np

from blender_addon.core import frames
from blender_addon.core.splat_view import (
    INSTANCE_FLOATS,
    ViewCache,
    camera_position,
    covariances,
    depth_order,
    pack_instances,
    sh_colors,
    view_changed,
)


def _look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Object-to-view 4x4 (camera looks down -Z, +Y up), as Blender's view matrix."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    f = (target - eye) / np.linalg.norm(target - eye)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = r, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def test_depth_order_is_back_to_front():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5000, 3)).astype(np.float32)
    view = _look_at([0.3, -4.0, 0.5])
    order = depth_order(means, view)
    assert sorted(order.tolist()) == list(range(5000))
    dist = np.linalg.norm(means[order] - camera_position(view), axis=1)
    depth = -(means[order] @ view[2, :3] + view[2, 3])  # distance along the view axis
    span = depth.max() - depth.min()
    assert np.all(np.diff(depth) <= span / 65535 + 1e-6)  # non-increasing up to one quantum
    assert dist[0] > dist[-1]
    assert depth_order(np.zeros((0, 3), np.float32), view).shape == (0,)


def test_resort_only_when_the_view_changes_enough():
    a = _look_at([0.0, -4.0, 0.0])
    assert view_changed(None, a) and not view_changed(a, a)
    small = _look_at([0.01, -4.0, 0.0])  # 0.14 degrees and 1 cm
    assert not view_changed(a, small)
    assert view_changed(a, _look_at([0.5, -4.0, 0.0]))  # ~7 degrees
    n = 300
    rng = np.random.default_rng(1)
    cache = ViewCache(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        opacity=np.full(n, 0.5, np.float32),
        sh0=np.zeros((n, 3), np.float32),
        shN=None,
        cov=np.zeros((n, 6), np.float32),
    )
    rows = cache.update(a)
    assert rows is not None and rows.shape == (n, INSTANCE_FLOATS)
    assert cache.update(small) is None and cache.sorts == 1
    assert cache.update(_look_at([4.0, 0.0, 0.0])) is not None and cache.sorts == 2


def test_covariances_are_r_s_s_rt():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(50, 4)).astype(np.float32)
    ls = rng.normal(size=(50, 3)).astype(np.float32) - 3
    cov = covariances(q, ls)
    r = frames.quat_to_matrix(q)
    full = r @ (np.exp(2.0 * ls.astype(np.float64))[:, :, None] * np.eye(3)) @ np.swapaxes(r, 1, 2)
    iu = np.triu_indices(3)
    np.testing.assert_allclose(cov, full[:, iu[0], iu[1]], rtol=1e-5, atol=1e-12)


def test_pack_follows_the_draw_order():
    n = 7
    means = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    order = np.array([6, 0, 5, 1, 4, 2, 3])
    rows = pack_instances(means, np.arange(n, dtype=np.float32), np.ones((n, 6), np.float32), means * 0.1, order)
    np.testing.assert_array_equal(rows[:, 0:3], means[order])
    np.testing.assert_array_equal(rows[:, 3], order.astype(np.float32))
    np.testing.assert_allclose(rows[:, 10:13], means[order] * 0.1)


def test_pack_pads_whole_texture_rows_with_invisible_splats():
    n = 5
    means = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    order = np.arange(n)[::-1]
    opacity = np.full(n, 0.5, np.float32)
    rows = pack_instances(means, opacity, np.ones((n, 6), np.float32), means * 0.1, order, pad_to=4)
    assert rows.shape == (8, 16)
    np.testing.assert_array_equal(
        rows[:n], pack_instances(means, opacity, np.ones((n, 6), np.float32), means * 0.1, order)
    )
    assert not rows[n:].any()  # opacity 0: the vertex shader culls them
    assert pack_instances(means, opacity, np.ones((n, 6), np.float32), means, order, pad_to=5).shape == (5, 16)


def test_view_cache_rows_equal_the_plain_pipeline():
    """ViewCache's fast path (rows packed once, SH by band, one row gather) gives what
    depth_order + sh_colors (einsum of the renderer's basis) + pack_instances give."""
    from blender_addon.core.sh import sh_basis_terms
    from blender_addon.core.splat_arrays import SH_C0

    n = 2500
    rng = np.random.default_rng(5)
    means = rng.normal(size=(n, 3)).astype(np.float32)
    sh0 = rng.normal(size=(n, 3)).astype(np.float32)
    shN = (0.3 * rng.normal(size=(n, 15, 3))).astype(np.float32)
    opacity = rng.random(n).astype(np.float32)
    cov = rng.normal(size=(n, 6)).astype(np.float32)
    view = _look_at([0.7, -3.0, 1.1])
    cache = ViewCache(means, opacity, sh0, shN, cov, pad_to=1024)
    rows = cache.update(view)
    assert rows is not None and rows.shape == (3072, INSTANCE_FLOATS)
    cam = camera_position(view)
    d = means - cam
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    basis = np.stack(sh_basis_terms(d[:, 0], d[:, 1], d[:, 2], 3), axis=1).astype(np.float64)
    rgb = np.maximum(0.5 + SH_C0 * sh0 + np.einsum("nk,nkc->nc", basis, shN.astype(np.float64)), 0.0)
    np.testing.assert_allclose(sh_colors(sh0, shN, means, cam), rgb, atol=2e-5)
    order = depth_order(means, view)
    want = pack_instances(means, opacity, cov, rgb.astype(np.float32), order, pad_to=1024)
    np.testing.assert_array_equal(rows[:, :10], want[:, :10])
    np.testing.assert_allclose(rows[:, 10:], want[:, 10:], atol=2e-5)
    assert rgb.min() == 0.0 and rgb.max() > 1.0  # the clamp at 0 is exercised, no clamp at 1
