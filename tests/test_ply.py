"""INRIA PLY: exact round trips, header order, frame conversion, other tools' files, bad files."""

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from backend.gaussians.ply import SplatPlyError, property_names, read_ply, to_ply_bytes, write_ply
from blender_addon.core import frames
from blender_addon.core.splat_arrays import SplatArrays


def _random_splats(n=257, k=15, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    return SplatArrays(f(n, 3), f(n, 4), f(n, 3), f(n), f(n, 3), f(n, k, 3) if k else None)


@pytest.mark.parametrize("k", [0, 3, 15])
def test_head_frame_round_trip_is_bit_exact(tmp_path, k):
    s = _random_splats(k=k)
    write_ply(tmp_path / "a.ply", s, frame="head")
    t = read_ply(tmp_path / "a.ply", frame="head")
    for name, arr in s.as_dict().items():
        assert np.array_equal(arr, t.as_dict()[name]), name
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temp file


def test_header_follows_inria_property_order():
    data = PlyData.read(__import__("io").BytesIO(to_ply_bytes(_random_splats(k=15))))
    names = [p.name for p in data["vertex"].properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == property_names(45)
    assert all(p.val_dtype in ("f4", "float32") for p in data["vertex"].properties)


def test_f_rest_is_channel_major():
    s = _random_splats(n=4, k=3)
    v = PlyData.read(__import__("io").BytesIO(to_ply_bytes(s, frame="head")))["vertex"]
    # f_rest_0..2 are red's three coefficients, f_rest_3..5 green's
    assert np.array_equal(np.stack([v[f"f_rest_{i}"] for i in range(3)], 1), s.shN[:, :, 0])
    assert np.array_equal(np.stack([v[f"f_rest_{i}"] for i in range(3, 6)], 1), s.shN[:, :, 1])


def test_default_ply_frame_is_rdf_and_round_trips():
    # a point on the face side (-Y in the head frame) and one on top (+Z)
    means = np.float32([[0.0, -0.1, 0.0], [0.0, 0.0, 0.1]])
    s = SplatArrays(
        means,
        np.float32([[1, 0, 0, 0]] * 2),
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.float32),
        np.zeros((2, 3), np.float32),
    )
    v = PlyData.read(__import__("io").BytesIO(to_ply_bytes(s)))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    np.testing.assert_allclose(xyz[0], [0, 0, -0.1], atol=1e-7)  # face looks toward -z
    np.testing.assert_allclose(xyz[1], [0, -0.1, 0], atol=1e-7)  # up is -y (y down)
    t = read_ply(to_ply_bytes(_random_splats()))
    u = _random_splats()
    np.testing.assert_allclose(t.means, u.means, atol=1e-6)
    np.testing.assert_allclose(frames.quat_to_matrix(t.quats), frames.quat_to_matrix(u.quats), atol=1e-5)


def test_reads_another_tools_file_without_normals_or_f_rest(tmp_path):
    n = 10
    r = np.random.default_rng(3)
    names = [
        "x",
        "y",
        "z",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
        "extra",
    ]
    v = np.empty(n, dtype=[(k, "f4") for k in names])
    for k in names:
        v[k] = r.normal(size=n)
    PlyData([PlyElement.describe(v, "vertex")], text=True).write(str(tmp_path / "other.ply"))
    s = read_ply(tmp_path / "other.ply", frame="head")
    assert len(s) == n and s.shN is None
    np.testing.assert_array_equal(s.opacity_logits, v["opacity"])


def test_rejects_non_splat_ply_and_garbage(tmp_path):
    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "mesh.ply"))
    with pytest.raises(SplatPlyError, match="missing properties"):
        read_ply(tmp_path / "mesh.ply")
    with pytest.raises(SplatPlyError):
        read_ply(b"definitely not a ply file")


@pytest.mark.parametrize("dtype", ["<f4", ">f8"])
def test_views_without_copies_hold_the_same_values(tmp_path, dtype):
    # copy=False (the add-on's importer) returns views into one table; the values are the same
    s = _random_splats(k=8)
    write_ply(tmp_path / "a.ply", s, frame="head")
    if dtype != "<f4":  # another tool's big-endian doubles: converted column by column
        v = PlyData.read(str(tmp_path / "a.ply"))["vertex"].data
        PlyData([PlyElement.describe(v.astype([(n, dtype) for n in v.dtype.names]), "vertex")], byte_order=">").write(
            str(tmp_path / "a.ply")
        )
    views = read_ply(tmp_path / "a.ply", frame="head", copy=False)
    copies = read_ply(tmp_path / "a.ply", frame="head")
    for name, arr in copies.as_dict().items():
        assert arr.flags.c_contiguous
        np.testing.assert_array_equal(views.as_dict()[name], arr, err_msg=name)
        np.testing.assert_array_equal(arr, s.as_dict()[name], err_msg=name)
    assert not views.shN.flags.c_contiguous  # a strided view, not a copy


def test_sh_rotation_is_one_block_matrix_for_all_splats():
    # the fast path equals the per-splat product of each band matrix
    from blender_addon.core.sh import band_matrices, rotate_sh

    s = _random_splats(n=50, k=15)
    rot = frames.HEAD_TO_PLY @ frames.quat_to_matrix(np.array([0.9, 0.1, -0.3, 0.2]))
    got = rotate_sh(s.shN, rot)
    want = np.empty_like(s.shN, dtype=np.float64)
    for ell, d in enumerate(band_matrices(rot, 3), start=1):
        sl = slice(ell * ell - 1, (ell + 1) ** 2 - 1)
        for i in range(len(s)):
            want[i, sl, :] = d @ s.shN[i, sl, :].astype(np.float64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
