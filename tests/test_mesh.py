"""Mesh export: a watertight, decimated, vertex-coloured surface from splats, in each file's axes."""

from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from backend.export.mesh import MeshOptions, extract_mesh, mesh_format, write_mesh  # noqa: E402
from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0  # noqa: E402

RADIUS = 0.08


def _ball(n=6000, seed=0) -> SplatArrays:
    """Splats on a sphere of radius 8 cm: red above the equator (head +Z), blue below; a few
    half-transparent, the way a fitted cloud leaves gaps that rays slip through."""
    r = np.random.default_rng(seed)
    d = r.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rgb = np.where(d[:, 2:] > 0, [0.9, 0.1, 0.1], [0.1, 0.2, 0.9])
    opacity = np.where(r.random(n) < 0.1, 0.3, 0.95)
    return SplatArrays(
        (d * RADIUS).astype(np.float32),
        np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        np.full((n, 3), np.log(0.003), np.float32),
        logit(opacity),
        rgb_to_sh0(rgb),
    )


OPTS = MeshOptions(faces=1500, resolution=48, image_size=96, views=14)


@pytest.fixture(scope="module")
def ball_mesh():
    return extract_mesh(_ball(), OPTS)


def test_mesh_is_watertight_within_budget_and_the_right_size(ball_mesh):
    m = ball_mesh.trimesh()
    assert ball_mesh.watertight and m.is_watertight and m.is_winding_consistent
    assert 500 < len(m.faces) <= OPTS.faces
    assert m.euler_number == 2  # one closed piece, no tunnels
    assert m.volume > 0  # outward normals
    # the seen surface lies about 1.5 sigma (3 mm splats) outside the splat centres
    radii = np.linalg.norm(m.vertices, axis=1)
    assert RADIUS + 0.002 < np.median(radii) < RADIUS + 0.007, np.median(radii)
    assert np.percentile(np.abs(radii - np.median(radii)), 95) < 0.004  # round, not lumpy
    volume = 4 / 3 * np.pi * np.median(radii) ** 3
    assert abs(m.volume / volume - 1) < 0.05, m.volume / volume


def test_vertex_colours_come_from_the_splats(ball_mesh):
    v, c = ball_mesh.vertices, ball_mesh.colors.astype(np.float64) / 255
    top, bottom = v[:, 2] > 0.03, v[:, 2] < -0.03
    np.testing.assert_allclose(c[top, :3].mean(0), [0.9, 0.1, 0.1], atol=0.12)
    np.testing.assert_allclose(c[bottom, :3].mean(0), [0.1, 0.2, 0.9], atol=0.12)
    assert np.all(c[:, 3] == 1.0)


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_files_reload_watertight_in_their_axes(ball_mesh, tmp_path, fmt):
    path = tmp_path / f"head.{fmt}"
    write_mesh(path, ball_mesh)
    assert mesh_format(path) == fmt and not list(tmp_path.glob(".*tmp*"))
    m = trimesh.load(path, force="mesh", process=True)
    m.merge_vertices()  # OBJ/GLB readers may split vertices per face attribute
    assert m.is_watertight and len(m.faces) == len(ball_mesh.faces)
    colours = np.asarray(m.visual.vertex_colors, np.float64)[:, :3] / 255
    up = 1 if fmt in ("glb", "obj") else 2  # glTF and OBJ: +Y up; PLY: the head frame's +Z
    top = m.vertices[:, up] > 0.03
    assert colours[top, 0].mean() > 0.6 and colours[top, 2].mean() < 0.3, fmt  # red on top


def test_glb_face_front_is_plus_z(tmp_path):
    # a lump on the face side (head -Y) must end up at glTF +Z
    s = _ball()
    nose = s.means[:, 1] < -0.06
    s.means[nose] *= np.float32(1.3)
    r = extract_mesh(s, OPTS)
    write_mesh(tmp_path / "a.glb", r)
    m = trimesh.load(tmp_path / "a.glb", force="mesh")
    assert m.vertices[:, 2].max() > 0.095 and m.vertices[:, 2].min() > -0.095


def test_bad_requests():
    with pytest.raises(ValueError, match="a mesh is written as"):
        mesh_format("head.fbx")
    with pytest.raises(ValueError, match="no splats"):
        extract_mesh(SplatArrays.empty(), OPTS)
