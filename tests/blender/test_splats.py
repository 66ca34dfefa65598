"""Splat clouds as mesh proxies: attribute fidelity, in-place updates, PLY round trips."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import synthetic_head  # noqa: E402

from blender_addon.core.frames import PLY_TO_HEAD, bake_transform, similarity_parts  # noqa: E402
from blender_addon.core.sh import rotate_sh  # noqa: E402
from blender_addon.core.splat_arrays import sh0_to_rgb, sigmoid  # noqa: E402
from blender_addon.core.splat_ply import read_ply, write_ply  # noqa: E402


def _attr(mesh, name, width):
    a = mesh.attributes[name]
    key = {"FLOAT": "value", "QUATERNION": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color"}[a.data_type]
    out = np.empty(len(mesh.vertices) * width, np.float32)
    a.data.foreach_get(key, out)
    return out.reshape(-1, width) if width > 1 else out


def _unit(q):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q


def test_import_synthetic_cloud_matches_arrays(addon):
    from blender_addon import splats

    cloud = synthetic_head(1500, sh_rest=3)
    obj = splats.create_splat_object(bpy.context.scene, "head", cloud, tag="t1", state="final")
    mesh = obj.data
    assert len(mesh.vertices) == 1500 and len(mesh.polygons) == 0
    assert obj.users_collection[0].name == splats.COLLECTION_NAME
    assert tuple(obj.location) == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(_attr(mesh, "position", 3), cloud.means)
    np.testing.assert_array_equal(_attr(mesh, "f_dc", 3), cloud.sh0)
    np.testing.assert_array_equal(_attr(mesh, "opacity_logit", 1), cloud.opacity_logits)
    np.testing.assert_array_equal(_attr(mesh, "log_scale", 3), cloud.log_scales)
    np.testing.assert_allclose(_attr(mesh, "rotation", 4), _unit(cloud.quats), atol=1e-6)
    np.testing.assert_allclose(_attr(mesh, "opacity", 1), sigmoid(cloud.opacity_logits), atol=1e-6)
    np.testing.assert_allclose(_attr(mesh, "scale", 3), np.exp(cloud.log_scales), rtol=1e-6)
    lin = _attr(mesh, "color", 4)[:, :3]
    np.testing.assert_allclose(lin, splats.srgb_to_linear(sh0_to_rgb(cloud.sh0)), atol=1e-6)
    for k in range(3):
        np.testing.assert_array_equal(_attr(mesh, f"f_rest_{k}", 3), cloud.shN[:, k, :])
    back = splats.read_splats(mesh)
    np.testing.assert_array_equal(back.means, cloud.means)
    np.testing.assert_array_equal(back.shN, cloud.shN)
    # A head is about 0.23 m tall: real-world scale, no unit conversion.
    height = cloud.means[:, 2].max() - cloud.means[:, 2].min()
    assert 0.15 < height < 0.3


def test_in_place_update_keeps_object_and_mesh(addon):
    from blender_addon import splats

    obj = splats.create_splat_object(
        bpy.context.scene, "live", synthetic_head(500, seed=1), tag="job-1", state="preview"
    )
    mesh, obj_ptr, mesh_ptr = obj.data, obj.as_pointer(), obj.data.as_pointer()
    twin = obj.copy()  # a linked duplicate (Alt+D): shares the mesh
    bpy.context.scene.collection.objects.link(twin)
    n_meshes = len(bpy.data.meshes)
    for n, seed in ((500, 2), (1200, 3), (300, 4)):  # same count, more, fewer
        cloud = synthetic_head(n, seed=seed)
        splats.update_splat_object(obj, cloud, state="preview")
        assert obj.as_pointer() == obj_ptr and obj.data.as_pointer() == mesh_ptr and obj.data == mesh
        assert len(mesh.vertices) == n
        np.testing.assert_array_equal(_attr(mesh, "f_dc", 3), cloud.sh0)
        assert twin.data == mesh
    assert len(bpy.data.meshes) == n_meshes
    splats.update_splat_object(obj, synthetic_head(800, seed=5), state="final")
    assert splats.find_object("job-1") in (obj, twin) and obj["portraitsplat_state"] == "final"
    # The display modifier survives updates and evaluates to instances.
    assert obj.modifiers[splats.MODIFIER_NAME].node_group.name == splats.NODE_GROUP_NAME
    splats.set_display(obj, points=True)
    assert splats.get_display(obj)[0] is True


def test_ply_import_keeps_file_axes_and_turns_the_object(addon, tmp_path):

    cloud = synthetic_head(600, seed=8, sh_rest=15)  # head frame
    src = tmp_path / "in.ply"
    write_ply(src, cloud)  # RDF / OpenCV frame, as 3DGS tools write it
    raw = read_ply(src, frame="head")  # the file's values, unconverted
    assert bpy.ops.portraitsplat.import_ply(filepath=str(src)) == {"FINISHED"}
    obj = bpy.context.active_object
    mesh = obj.data
    # the mesh holds the file's values untouched; the axis change is the object's rotation
    np.testing.assert_array_equal(_attr(mesh, "position", 3), raw.means)
    np.testing.assert_array_equal(_attr(mesh, "f_dc", 3), raw.sh0)
    np.testing.assert_array_equal(_attr(mesh, "log_scale", 3), raw.log_scales)
    np.testing.assert_array_equal(_attr(mesh, "opacity_logit", 1), raw.opacity_logits)
    np.testing.assert_allclose(_attr(mesh, "rotation", 4), _unit(raw.quats), atol=1e-6)
    np.testing.assert_allclose(_attr(mesh, "rotation_norm", 1), np.linalg.norm(raw.quats, axis=1), rtol=1e-6)
    for k in range(15):
        np.testing.assert_array_equal(_attr(mesh, f"f_rest_{k}", 3), raw.shN[:, k, :])
    np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3], PLY_TO_HEAD, atol=1e-7)
    world = _attr(mesh, "position", 3) @ np.array(obj.matrix_world)[:3, :3].T
    np.testing.assert_allclose(world, cloud.means, atol=1e-6)  # upright in Blender


def test_ply_round_trip_is_value_exact(addon, tmp_path):
    from plyfile import PlyData

    cloud = synthetic_head(900, seed=9, sh_rest=15)
    cloud.quats[:5] *= np.array([0.1, 3.0, 7.5, 1.0, 0.5], np.float32)[:, None]  # raw, unnormalised
    src, out = tmp_path / "in.ply", tmp_path / "out.ply"
    write_ply(src, cloud)
    bpy.ops.portraitsplat.import_ply(filepath=str(src))
    assert bpy.ops.portraitsplat.export_ply(filepath=str(out)) == {"FINISHED"}
    a, b = PlyData.read(str(src))["vertex"].data, PlyData.read(str(out))["vertex"].data
    assert a.dtype == b.dtype
    for name in a.dtype.names:
        if name.startswith("rot_"):  # |q| * (q / |q|) in float32: within an ulp or two
            np.testing.assert_allclose(b[name], a[name], rtol=3e-7, atol=0)
        else:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    # the same file in Blender's axes, without the object's transform: still the same values
    bpy.ops.portraitsplat.export_ply(filepath=str(out), apply_transform=False)
    b = PlyData.read(str(out))["vertex"].data
    np.testing.assert_array_equal(b["f_rest_44"], a["f_rest_44"])
    np.testing.assert_array_equal(b["x"], a["x"])


def test_exported_ply_equals_input_after_transform_bake(addon, tmp_path):
    from mathutils import Euler, Matrix, Vector

    from blender_addon import splats

    cloud = synthetic_head(700, seed=6, sh_rest=8)
    src = tmp_path / "in.ply"
    write_ply(src, cloud)  # RDF / OpenCV frame, as 3DGS tools write it
    bpy.ops.portraitsplat.import_ply(filepath=str(src))
    obj = bpy.context.active_object
    assert splats.is_splat_object(obj) and len(obj.data.vertices) == 700
    # the user moves the head (in Blender's axes), on top of the file's axis change
    user = Matrix.LocRotScale(Vector((0.1, -0.2, 1.5)), Euler((0.3, -0.2, 1.1)), Vector((1.7, 1.7, 1.7)))
    obj.matrix_world = user @ obj.matrix_world
    bpy.context.view_layer.update()
    out = tmp_path / "out.ply"
    assert bpy.ops.portraitsplat.export_ply(filepath=str(out), frame="head") == {"FINISHED"}
    got = read_ply(out, frame="head")
    user = np.array(user)
    means, quats, log_scales = bake_transform(user, cloud.means, cloud.quats, cloud.log_scales)
    np.testing.assert_allclose(got.means, means, atol=1e-5)
    np.testing.assert_allclose(got.log_scales, log_scales, atol=1e-5)
    dots = np.abs(np.sum(_unit(got.quats) * _unit(quats), axis=1))  # q and -q are one rotation
    np.testing.assert_allclose(dots, 1.0, atol=1e-5)
    np.testing.assert_array_equal(got.sh0, cloud.sh0)
    np.testing.assert_array_equal(got.opacity_logits, cloud.opacity_logits)
    # the view-dependent bands turn with the object (the colour maths is tested in test_sh)
    np.testing.assert_allclose(got.shN, rotate_sh(cloud.shN, similarity_parts(user)[0]), atol=1e-5)
    assert np.max(np.abs(got.shN - cloud.shN)) > 0.01
    # in PLY axes too: the file reads back as the same head
    bpy.ops.portraitsplat.export_ply(filepath=str(out))
    np.testing.assert_allclose(read_ply(out).means, means, atol=1e-5)


def test_import_foreign_ply_without_f_rest(addon, tmp_path):
    from plyfile import PlyData, PlyElement

    # Another tool's layout: no normals, no f_rest, properties in a different order, doubles.
    cloud = synthetic_head(100, seed=7)
    names = [
        "x",
        "y",
        "z",
        "opacity",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
        "scale_0",
        "scale_1",
        "scale_2",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
    ]
    cols = [*cloud.means.T, cloud.opacity_logits, *cloud.quats.T, *cloud.log_scales.T, *cloud.sh0.T]
    v = np.empty(100, dtype=[(n, "f8") for n in names])
    for n, c in zip(names, cols):
        v[n] = c
    path = tmp_path / "foreign.ply"
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    assert bpy.ops.portraitsplat.import_ply(filepath=str(path), frame="head") == {"FINISHED"}
    obj = bpy.context.active_object
    np.testing.assert_allclose(_attr(obj.data, "position", 3), cloud.means, atol=1e-7)
    assert not any(a.name.startswith("f_rest_") for a in obj.data.attributes)


def test_import_rejects_non_splat_ply(addon, tmp_path):
    from plyfile import PlyData, PlyElement

    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = tmp_path / "mesh.ply"
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    with pytest.raises(RuntimeError, match="not a Gaussian splat file"):
        bpy.ops.portraitsplat.import_ply(filepath=str(path))
