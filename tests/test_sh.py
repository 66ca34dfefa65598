"""The SH basis, and view-dependent colour turning with the splats (PLY frame change, export bake).

The colour checks go through the renderer's own SH evaluation (``backend.gaussians.render
.eval_sh``): a rotated cloud with rotated coefficients, seen from the rotated camera, must show
the same colours as the original.
"""

import io

import numpy as np
import pytest
import torch
from plyfile import PlyData

from backend.gaussians.render import eval_sh
from blender_addon.core import frames
from blender_addon.core.sh import _fibonacci_sphere, band_matrices, rotate_sh, sh_basis
from blender_addon.core.splat_arrays import SplatArrays
from blender_addon.core.splat_ply import SplatPlyError, read_ply, to_ply_bytes


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _cloud(n=300, k=15, seed=0) -> SplatArrays:
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    return SplatArrays(0.1 * f(n, 3), f(n, 4), f(n, 3) - 4, f(n), f(n, 3), 0.3 * f(n, k, 3))


def _colours(means, sh0, shN, cam) -> np.ndarray:
    """The renderer's SH colour of every splat seen from ``cam``, without its clamp at 0."""
    coeffs = torch.from_numpy(np.concatenate([sh0[:, None, :], shN], axis=1).astype(np.float64))
    coeffs[:, 0, :] += 100.0  # lift the DC so eval_sh's clamp at 0 never bites; the sums are compared
    degree = {3: 1, 8: 2, 15: 3}[shN.shape[1]]
    out = eval_sh(
        coeffs, torch.from_numpy(np.asarray(means, np.float64)), torch.from_numpy(np.asarray(cam, np.float64)), degree
    )
    return out.numpy()


@pytest.mark.parametrize("k", [3, 8, 15])
def test_rotated_cloud_looks_the_same_from_the_rotated_camera(k):
    s = _cloud(k=k)
    rot = _rotation(1)
    cam = np.array([0.3, -0.8, 0.2])
    before = _colours(s.means, s.sh0, s.shN, cam)
    after = _colours(s.means @ rot.T, s.sh0, rotate_sh(s.shN, rot), rot @ cam)
    np.testing.assert_allclose(after, before, atol=2e-5)
    # and the view dependence is real: without turning the bands the colours differ
    unturned = _colours(s.means @ rot.T, s.sh0, s.shN, rot @ cam)
    assert np.max(np.abs(unturned - before)) > 0.05


def test_basis_is_orthonormal_on_the_sphere():
    # a wrong constant or term breaks this; 4 pi * mean over evenly spread points ~ the integral
    y = sh_basis(_fibonacci_sphere(20_000), 3)
    gram = 4 * np.pi * (y.T @ y) / len(y)
    np.testing.assert_allclose(gram, np.eye(15), atol=2e-3)


def test_band_matrices_are_orthogonal_and_compose():
    r1, r2 = _rotation(2), _rotation(3)
    for d1, d2, d12 in zip(band_matrices(r1, 3), band_matrices(r2, 3), band_matrices(r2 @ r1, 3)):
        np.testing.assert_allclose(d1 @ d1.T, np.eye(len(d1)), atol=1e-10)
        np.testing.assert_allclose(d2 @ d1, d12, atol=1e-10)
    for d in band_matrices(np.eye(3), 3):
        np.testing.assert_allclose(d, np.eye(len(d)), atol=1e-12)
    assert rotate_sh(None, r1) is None


def test_mirrors_and_non_rotations_are_refused():
    with pytest.raises(ValueError, match="proper rotation"):
        band_matrices(np.diag([1.0, 1.0, -1.0]), 1)
    with pytest.raises(ValueError, match="proper rotation"):
        band_matrices(2 * np.eye(3), 1)


def test_ply_frame_file_shows_the_same_colours_as_the_head_frame():
    s = _cloud(k=15, seed=4)
    cam_head = np.array([0.0, -0.6, 0.1])  # in front of the face
    v = PlyData.read(io.BytesIO(to_ply_bytes(s)))["vertex"]  # what a 3DGS viewer reads
    xyz = np.stack([v[c] for c in "xyz"], 1)
    rest = np.stack([v[f"f_rest_{i}"] for i in range(45)], 1).reshape(-1, 3, 15).transpose(0, 2, 1)
    seen_by_viewer = _colours(xyz, s.sh0, rest, frames.HEAD_TO_PLY @ cam_head)
    np.testing.assert_allclose(seen_by_viewer, _colours(s.means, s.sh0, s.shN, cam_head), atol=2e-4)
    back = read_ply(to_ply_bytes(s))
    np.testing.assert_allclose(back.shN, s.shN, atol=1e-5)


def test_bake_turns_the_sh_bands_with_the_object():
    s = _cloud(k=8, seed=5)
    rot = _rotation(6)
    matrix = np.eye(4)
    matrix[:3, :3] = 1.7 * rot
    matrix[:3, 3] = [0.1, -0.2, 1.5]
    baked = frames.bake_splats(matrix, s)
    cam = np.array([0.4, 0.5, -0.3])
    world_cam = 1.7 * rot @ cam + matrix[:3, 3]
    np.testing.assert_allclose(
        _colours(baked.means, baked.sh0, baked.shN, world_cam), _colours(s.means, s.sh0, s.shN, cam), atol=2e-4
    )
    np.testing.assert_array_equal(baked.sh0, s.sh0)
    np.testing.assert_array_equal(baked.opacity_logits, s.opacity_logits)


def test_ply_with_a_band_count_that_is_not_sh_is_a_typed_error(tmp_path):
    from plyfile import PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(6)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = np.zeros(3, dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "odd.ply"))
    with pytest.raises(SplatPlyError, match="6 f_rest"):
        read_ply(tmp_path / "odd.ply")


@pytest.mark.parametrize("k", [0, 3, 15])
def test_viewport_colours_match_the_renderer(k):
    # the splat view's per-view colour (numpy) is the backend renderer's eval_sh
    from blender_addon.core.splat_view import sh_colors

    s = _cloud(k=max(k, 3), seed=6)
    shN = s.shN if k else None
    cam = np.array([0.2, -0.9, 0.3])
    coeffs = np.concatenate([s.sh0[:, None, :], shN if k else np.zeros((len(s), 0, 3), np.float32)], axis=1)
    want = eval_sh(
        torch.from_numpy(coeffs),
        torch.from_numpy(s.means),
        torch.from_numpy(cam.astype(np.float32)),
        {0: 0, 3: 1, 15: 3}[k],
    )
    np.testing.assert_allclose(sh_colors(s.sh0, shN, s.means, cam), want.numpy(), atol=2e-5)
