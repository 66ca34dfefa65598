"""The add-on's SPZ / .splat / glTF splat import and export, and Blender's own glTF importer
reading our files (the splat GLB as its point-cloud fallback, and the mesh GLB)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import REPO, synthetic_head  # noqa: E402

from blender_addon import splats  # noqa: E402
from blender_addon.core.formats import dotsplat, gltf, spz  # noqa: E402

SPZ_POS = 0.5 / 4096 + 1e-6


def _enable_gltf():
    import addon_utils

    mod = addon_utils.enable("io_scene_gltf2", default_set=True)
    if mod is None:
        pytest.skip("Blender's glTF add-on (io_scene_gltf2) is not available")


def _rot_err(a, b) -> float:
    d = np.abs(np.sum(a.unit_quats().astype(np.float64) * b.unit_quats(), axis=1))
    return float(2 * np.arccos(np.clip(d, 0.0, 1.0)).max())


@pytest.mark.parametrize(
    ("op", "suffix", "write", "pos", "sh"),
    [
        ("import_spz", ".spz", spz.write_spz, SPZ_POS, True),
        ("import_splat", ".splat", dotsplat.write_splat, 1e-6, False),
        ("import_gltf_splats", ".glb", gltf.write_glb, 1e-6, True),
    ],
)
def test_import_lands_in_blender_axes(addon, tmp_path, op, suffix, write, pos, sh):
    s = synthetic_head(n=500, sh_rest=3)
    path = tmp_path / f"head{suffix}"
    write(path, s)
    assert getattr(bpy.ops.portraitsplat, op)(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    assert splats.is_splat_object(obj) and obj.name == "head"
    assert tuple(obj.rotation_euler) == (0.0, 0.0, 0.0)  # readers return Blender's (head) axes
    got = splats.read_splats(obj.data)
    assert np.abs(got.means - s.means).max() <= pos
    assert _rot_err(got, s) < 0.03  # .splat: 8-bit wxyz
    assert (got.shN is not None) == sh


def test_import_spz_written_in_ply_axes(addon, tmp_path):
    s = synthetic_head(n=300)
    spz.write_spz(tmp_path / "st.spz", s, frame="rdf")  # as PlayCanvas splat-transform writes SPZ
    assert bpy.ops.portraitsplat.import_spz(filepath=str(tmp_path / "st.spz"), frame="rdf") == {"FINISHED"}
    got = splats.read_splats(bpy.context.view_layer.objects.active.data)
    assert np.abs(got.means - s.means).max() <= SPZ_POS


def test_bad_file_is_reported_not_raised(addon, tmp_path):
    (tmp_path / "junk.spz").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="Cannot import junk.spz"):
        bpy.ops.portraitsplat.import_spz(filepath=str(tmp_path / "junk.spz"))
    assert not [o for o in bpy.data.objects if splats.is_splat_object(o)]


@pytest.mark.parametrize(
    ("op", "suffix", "read", "pos"),
    [
        ("export_spz", ".spz", spz.read_spz, SPZ_POS),
        ("export_splat", ".splat", dotsplat.read_splat, 1e-6),
        ("export_gltf_splats", ".glb", gltf.read_glb, 1e-6),
    ],
)
def test_export_bakes_the_object_transform(addon, tmp_path, op, suffix, read, pos):
    s = synthetic_head(n=400, sh_rest=8)
    obj = splats.create_splat_object(bpy.context.scene, "head", s)
    obj.location = (0.1, 0.0, 0.0)
    obj.rotation_euler = (0.0, 0.0, np.pi / 2)  # a quarter turn about Z: x -> y
    bpy.context.view_layer.update()
    bpy.context.view_layer.objects.active = obj
    out = tmp_path / f"out{suffix}"
    assert getattr(bpy.ops.portraitsplat, op)(filepath=str(out)) == {"FINISHED"}
    got = read(out)
    expect = np.stack([0.1 - s.means[:, 1], s.means[:, 0], s.means[:, 2]], axis=1)
    assert np.abs(got.means - expect).max() <= pos + 1e-6
    out2 = tmp_path / f"raw{suffix}"
    assert getattr(bpy.ops.portraitsplat, op)(filepath=str(out2), apply_transform=False) == {"FINISHED"}
    assert np.abs(read(out2).means - s.means).max() <= pos


def test_file_menus_hold_the_formats(addon):
    from blender_addon import ops_formats

    draw_import = bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    draw_export = bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize()
    assert ops_formats.menu_import in draw_import and ops_formats.menu_export in draw_export
    for op, _ in ops_formats.IMPORTS + ops_formats.EXPORTS:
        assert hasattr(bpy.types, op.__name__), op.__name__


def test_blender_gltf_importer_reads_our_splat_glb_as_points(bpy_clean, tmp_path):
    _enable_gltf()
    s = synthetic_head(n=300)
    gltf.write_glb(tmp_path / "splats.glb", s)
    assert bpy.ops.import_scene.gltf(filepath=str(tmp_path / "splats.glb")) == {"FINISHED"}
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    assert len(meshes) == 1 and len(meshes[0].data.vertices) == 300 and not meshes[0].data.polygons
    obj = meshes[0]
    co = np.array([tuple(obj.matrix_world @ v.co) for v in obj.data.vertices])
    np.testing.assert_allclose(co, s.means, atol=1e-6)  # glTF's Y-up turned back: our head frame


def test_blender_gltf_importer_reads_our_mesh_glb(bpy_clean, tmp_path):
    """The mesh comes from the backend (torch, trimesh: the main venv), written here by it."""
    main_python = REPO / ".venv" / "bin" / "python"
    if not main_python.exists():
        pytest.skip("the main venv (.venv) is needed to extract the mesh")
    _enable_gltf()
    script = (
        "import numpy as np, sys\n"
        "from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0\n"
        "from backend.export.mesh import MeshOptions, extract_mesh, write_mesh\n"
        "r = np.random.default_rng(0); d = r.normal(size=(5000, 3)); d /= np.linalg.norm(d, axis=1, keepdims=True)\n"
        "n = len(d); rgb = np.where(d[:, 2:] > 0, [0.9, 0.1, 0.1], [0.1, 0.2, 0.9])\n"
        "s = SplatArrays((d * [0.075, 0.095, 0.115]).astype(np.float32), np.tile(np.float32([1, 0, 0, 0]), (n, 1)),\n"
        "    np.full((n, 3), np.log(0.004), np.float32), logit(np.full(n, 0.95)), rgb_to_sh0(rgb))\n"
        "res = extract_mesh(s, MeshOptions(faces=3000, resolution=48, image_size=96, views=14))\n"
        "assert res.watertight\n"
        "write_mesh(sys.argv[1], res)\n"
    )
    out = tmp_path / "mesh.glb"
    proc = subprocess.run(
        [str(main_python), "-c", script, str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert bpy.ops.import_scene.gltf(filepath=str(out)) == {"FINISHED"}
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    assert len(meshes) == 1
    me = meshes[0].data
    assert 1000 < len(me.polygons) <= 3000
    assert "Color" in me.attributes or me.color_attributes  # vertex colours came through
    dims = np.array(meshes[0].dimensions)
    assert dims[2] > dims[1] > dims[0]  # tall along Blender +Z, deep along Y: upright in the head frame
