"""A tiny turntable frame (Cycles, and EEVEE where Blender can start a GPU backend, e.g.
Mesa's software EGL) shows the head in the splats' own colours."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import synthetic_head  # noqa: E402


def _load_rgba(path) -> np.ndarray:
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(h, w, 4)
    finally:
        bpy.data.images.remove(img)


@pytest.mark.parametrize("engine", ["CYCLES", "EEVEE"])
@pytest.mark.parametrize("points", [False, True], ids=["ellipsoids", "points"])
def test_turntable_frame_shows_splat_colours(addon, tmp_path, points, engine):
    from blender_addon import splats, turntable

    cloud = synthetic_head(2000, seed=11)
    obj = splats.create_splat_object(bpy.context.scene, "head", cloud, tag="tt")
    splats.set_display(obj, points=points)
    settings = turntable.TurntableSettings(
        frames=4, resolution=64, engine=engine, samples=4, output_dir=str(tmp_path), video=False, transparent=True
    )
    try:
        result = turntable.render_turntable(bpy.context.scene, obj, settings, only_frames=[0])
    except RuntimeError as exc:  # EEVEE needs a GPU backend (OpenGL/EGL); Cycles never does
        if engine == "EEVEE" and any(w in str(exc) for w in ("GPU", "EGL", "OpenGL", "context")):
            pytest.skip(f"this machine cannot start EEVEE's GPU backend: {exc}")
        raise
    assert len(result.frames) == 1
    rgba = _load_rgba(result.frames[0])
    assert rgba.shape == (64, 64, 4)
    covered = rgba[..., 3] > 0.5
    assert 0.1 < covered.mean() < 0.9, "the head should fill part of the frame, not all or none"
    assert rgba[covered][:, :3].std() > 0.01, "not a flat image"
    # Frame 1 looks at the face (from -Y), so both the skin and the blue +X side show.
    seen = cloud.means[:, 1] < 0.0
    expected = np.clip(0.5 + 0.28209479 * cloud.sh0[seen], 0, 1).mean(axis=0)
    got = rgba[covered][:, :3].mean(axis=0)
    np.testing.assert_allclose(got, expected, atol=0.08)


def test_turntable_orbit_turns_the_view(addon, tmp_path):
    from blender_addon import splats, turntable

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(300, seed=12), tag="tt2")
    scene = bpy.context.scene
    settings = turntable.TurntableSettings(frames=8, resolution=32, output_dir=str(tmp_path), video=False)
    cam = turntable.setup_turntable(scene, obj, settings)
    assert scene.camera == cam and scene.frame_end - scene.frame_start + 1 == 8
    centre = np.array(bpy.data.objects[turntable.PIVOT_NAME].location)
    scene.frame_set(scene.frame_start)
    p0 = np.array(cam.matrix_world.translation) - centre
    scene.frame_set(scene.frame_start + 2)  # a quarter turn later
    p1 = np.array(cam.matrix_world.translation) - centre
    assert p0[1] < -0.2 and abs(p0[0]) < 1e-4  # in front of the face
    np.testing.assert_allclose(np.linalg.norm(p0[:2]), np.linalg.norm(p1[:2]), rtol=1e-5)
    assert p1[0] > 0.2 and abs(p1[1]) < 1e-4  # now at the head's +X side
    turntable.remove_turntable(scene, obj)
    assert bpy.data.objects.get(turntable.CAMERA_NAME) is None


@pytest.mark.skipif(not getattr(bpy.app.build_options, "codec_ffmpeg", False), reason="no FFmpeg in this build")
def test_turntable_video(addon, tmp_path):
    from blender_addon import splats, turntable

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(200, seed=13), tag="tt3")
    settings = turntable.TurntableSettings(frames=3, resolution=32, samples=1, output_dir=str(tmp_path), video=True)
    result = turntable.render_turntable(bpy.context.scene, obj, settings)
    assert len(result.frames) == 3 and result.video and (tmp_path / "turntable.mp4").stat().st_size > 0


def test_turntable_spin_turns_the_object_and_restores_it(addon, tmp_path):
    from blender_addon import splats, turntable

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(300, seed=14), tag="tt4")
    obj.rotation_euler[2] = 0.25
    scene = bpy.context.scene
    settings = turntable.TurntableSettings(mode="SPIN", frames=4, resolution=32, output_dir=str(tmp_path), video=False)
    cam = turntable.setup_turntable(scene, obj, settings)
    scene.frame_set(scene.frame_start)
    cam0 = np.array(cam.matrix_world.translation)
    assert obj.rotation_euler[2] == pytest.approx(0.25)
    scene.frame_set(scene.frame_start + 1)
    assert obj.rotation_euler[2] == pytest.approx(0.25 - np.pi / 2, abs=1e-5)
    np.testing.assert_allclose(np.array(cam.matrix_world.translation), cam0)  # the camera stays
    turntable.remove_turntable(scene, obj)
    assert obj.rotation_euler[2] == pytest.approx(0.25)
    assert obj.animation_data is None or len(obj.animation_data.drivers) == 0


def test_turntable_operator_uses_the_panel_settings(addon, tmp_path):
    from blender_addon import splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(200, seed=15), tag="tt5")
    bpy.context.view_layer.update()
    bpy.context.view_layer.objects.active = obj
    tt = bpy.context.scene.portraitsplat_turntable
    tt.frames, tt.resolution, tt.samples, tt.output_dir, tt.video = 2, 32, 1, str(tmp_path) + "/", False
    assert bpy.ops.portraitsplat.turntable() == {"FINISHED"}
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["turntable_0001.png", "turntable_0002.png"]
