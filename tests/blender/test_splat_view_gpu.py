"""The splat view drawn by Blender's GPU backend (headless: EGL, e.g. Mesa's llvmpipe) matches
the backend's reference renderer, follows object transforms and re-sorts only when needed.

Every test here skips, with the reason, where Blender cannot start a GPU backend; the probe
runs in a subprocess so that a machine without EGL cannot take the test run down with it.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import REPO, synthetic_head  # noqa: E402

BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"
PROBE = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import bpy  # noqa: F401  (gpu is importable only after bpy)
import gpu
from blender_addon import splat_view
splat_view.ensure_gpu()
print("GPU", gpu.platform.backend_type_get(), gpu.platform.renderer_get())
"""


@functools.cache
def gpu_backend() -> str | None:
    """'OPENGL llvmpipe ...' where Blender starts a GPU backend here, else None (with why in skip)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")]
    if out.returncode == 0 and lines:
        return lines[-1][4:]
    _why.append((out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"])
    return None


_why: list = []


@pytest.fixture
def gpu_addon(addon):
    if gpu_backend() is None:
        pytest.skip(f"Blender cannot start a GPU backend on this machine: {_why[-1] if _why else ''}")
    from blender_addon import splat_view

    splat_view.ensure_gpu()
    yield addon


def _camera(name: str, location, target, lens: float = 50.0):
    from mathutils import Vector

    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    bpy.context.scene.collection.objects.link(cam)
    cam.data.lens = lens
    cam.data.clip_start = 0.01
    cam.location = location
    cam.rotation_euler = (Vector(target) - Vector(location)).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    return cam


def _opencv_camera(cam, width: int, height: int) -> dict:
    """The same camera as the backend's Cameras want it: OpenCV world->camera and K."""
    from blender_addon import splat_view

    view, proj = splat_view.camera_matrices(bpy.context.scene, cam, width, height)
    viewmat = np.diag([1.0, -1.0, -1.0, 1.0]) @ view
    K = np.array(
        [
            [proj[0, 0] * width / 2, 0.0, width / 2 * (1 - proj[0, 2])],
            [0.0, proj[1, 1] * height / 2, height / 2 * (1 + proj[1, 2])],
            [0.0, 0.0, 1.0],
        ]
    )
    return {"viewmat": viewmat, "K": K, "width": width, "height": height}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def test_splat_view_matches_the_backend_reference_render(gpu_addon, tmp_path):
    """A PLY with SH degree 3, imported as the user would (PLY axes, the axis change in the
    object's rotation), drawn offscreen from a 3/4 camera with a non-square image, against
    the backend's torch reference of the same PLY from the same camera: PSNR >= 30 dB."""
    if not BACKEND_PYTHON.exists():
        pytest.skip(f"no backend venv at {BACKEND_PYTHON} for the reference render (run scripts/test.sh once)")
    from blender_addon import splat_view
    from blender_addon.core.splat_ply import write_ply

    ply = tmp_path / "head.ply"
    write_ply(ply, synthetic_head(4000, seed=21, sh_rest=15), frame="ply")
    assert bpy.ops.portraitsplat.import_ply(filepath=str(ply)) == {"FINISHED"}
    obj = bpy.context.active_object
    assert abs(obj.rotation_euler[0] + math.pi / 2) < 1e-6  # the file's axes stay in the mesh
    cam = _camera("ref", (0.35, -0.45, 0.12), (0.0, 0.0, 0.0), lens=60)
    width, height = 160, 120
    np.savez(tmp_path / "camera.npz", **_opencv_camera(cam, width, height))
    ref_path = tmp_path / "ref.npy"
    out = subprocess.run(
        [
            str(BACKEND_PYTHON),
            str(REPO / "tests/blender/reference_render.py"),
            str(ply),
            str(tmp_path / "camera.npz"),
            str(ref_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ref = np.load(ref_path)

    got = splat_view.render_offscreen(bpy.context.scene, cam, width, height, objects=[obj])
    assert got.shape == ref.shape == (height, width, 4)
    covered = ref[..., 3] > 0.5
    assert 0.1 < covered.mean() < 0.8, "the head fills part of the frame"
    p_rgb, p_alpha = psnr(got[..., :3], ref[..., :3]), psnr(got[..., 3], ref[..., 3])
    print(f"splat view vs backend reference: PSNR rgb {p_rgb:.1f} dB, alpha {p_alpha:.1f} dB")
    assert p_rgb >= 30.0 and p_alpha >= 30.0, (p_rgb, p_alpha)
    # not trivially equal by being empty or flat: the image has structure, and a wrong camera loses
    assert got[covered][:, :3].std() > 0.02
    assert psnr(got[:, ::-1, :3], ref[..., :3]) < p_rgb - 6


def test_linked_duplicate_draws_with_its_own_transform(gpu_addon):
    """A linked duplicate moved by t, seen from a camera moved by t, looks exactly like the
    original seen from the original camera: the draw uses each instance's matrix_world."""
    from blender_addon import splat_view, splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(1500, seed=22, sh_rest=3), tag="d")
    obj.rotation_euler = (0.0, 0.0, 0.4)
    dup = obj.copy()  # linked: shares obj.data
    bpy.context.scene.collection.objects.link(dup)
    t = np.array([0.5, 0.2, -0.1])
    dup.location = tuple(t)
    for o in (obj, dup):
        o.portraitsplat_splat_view = True
    cam_a = _camera("a", (0.1, -0.5, 0.05), (0.0, 0.0, 0.0))
    cam_b = _camera("b", tuple(np.array((0.1, -0.5, 0.05)) + t), tuple(t))
    a = splat_view.render_offscreen(bpy.context.scene, cam_a, 64, 64, objects=[obj])
    b = splat_view.render_offscreen(bpy.context.scene, cam_b, 64, 64, objects=[dup])
    assert a[..., 3].mean() > 0.05
    assert psnr(a, b) > 45
    both = splat_view.render_offscreen(bpy.context.scene, cam_b, 64, 64)  # every enabled instance
    assert psnr(both, b) > 45  # the original is out of this camera's view
    obj.portraitsplat_splat_view = dup.portraitsplat_splat_view = False
    assert splat_view.render_offscreen(bpy.context.scene, cam_b, 64, 64)[..., 3].max() == 0.0


def test_sorts_only_when_the_view_changes_enough(gpu_addon):
    from blender_addon import splat_view, splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(800, seed=23), tag="s")
    cam = _camera("s", (0.0, -0.5, 0.0), (0.0, 0.0, 0.0))
    first = splat_view.render_offscreen(bpy.context.scene, cam, 48, 48, objects=[obj])
    (entry,) = [e for k, e in splat_view._views.items() if k[1] == ("offscreen", "s")]
    assert entry.cache.sorts == 1
    cam.location.x += 0.005  # 5 mm: under the re-sort threshold
    bpy.context.view_layer.update()
    splat_view.render_offscreen(bpy.context.scene, cam, 48, 48, objects=[obj])
    assert entry.cache.sorts == 1
    cam.location.x += 0.1
    bpy.context.view_layer.update()
    moved = splat_view.render_offscreen(bpy.context.scene, cam, 48, 48, objects=[obj])
    assert entry.cache.sorts == 2 and np.abs(moved - first).max() > 0.05


def test_toggle_hides_the_proxy_in_the_viewport_only(addon):
    from blender_addon import splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(100, seed=24), tag="p")
    mod = obj.modifiers[splats.MODIFIER_NAME]
    obj.portraitsplat_splat_view = True
    assert not mod.show_viewport and mod.show_render
    obj.portraitsplat_splat_view = False
    assert mod.show_viewport and mod.show_render


def test_instances_drawn_once_each_with_their_transform(addon):
    """The object itself, a linked duplicate and a collection instance each draw once (with
    their own matrices), and the proxy's own Geometry Nodes instances never do."""
    from blender_addon import splat_view, splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(200, seed=26), tag="i")
    obj.portraitsplat_splat_view = True
    obj.modifiers[splats.MODIFIER_NAME].show_viewport = True  # the proxy shown too: its instances are not splats
    dup = obj.copy()
    bpy.context.scene.collection.objects.link(dup)
    dup.location = (1.0, 0.0, 0.0)
    empty = bpy.data.objects.new("instancer", None)
    empty.instance_type = "COLLECTION"
    empty.instance_collection = obj.users_collection[0]
    empty.location = (0.0, 2.0, 0.0)
    bpy.context.scene.collection.objects.link(empty)
    bpy.context.view_layer.update()
    found = splat_view.enabled_instances(bpy.context.evaluated_depsgraph_get())
    origins = sorted(tuple(np.round(m[:3, 3], 6)) for _, m, _ in found)
    assert origins == [(0.0, 0.0, 0.0), (0.0, 2.0, 0.0), (1.0, 0.0, 0.0)], origins
    assert all(o.data == obj.data for o, _, _ in found)
    assert len({k for _, _, k in found}) == 3


def test_opengl_turntable_frame_shows_splat_colours(gpu_addon, tmp_path):
    from blender_addon import splats, turntable

    cloud = synthetic_head(2000, seed=11)
    obj = splats.create_splat_object(bpy.context.scene, "head", cloud, tag="gl")
    settings = turntable.TurntableSettings(
        frames=4, resolution=64, engine="SPLAT_VIEW", output_dir=str(tmp_path), video=False, transparent=True
    )
    result = turntable.render_turntable(bpy.context.scene, obj, settings)
    assert [p.rsplit("/", 1)[-1] for p in result.frames] == [f"turntable_{i:04d}.png" for i in range(1, 5)]
    img = bpy.data.images.load(result.frames[0], check_existing=False)
    px = np.empty(64 * 64 * 4, np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    rgba = px.reshape(64, 64, 4)
    covered = rgba[..., 3] > 0.5
    assert 0.1 < covered.mean() < 0.9
    seen = cloud.means[:, 1] < 0.0  # frame 1 looks at the face (from -Y)
    expected = np.clip(0.5 + 0.28209479 * cloud.sh0[seen], 0, 1).mean(axis=0)
    np.testing.assert_allclose(rgba[covered][:, :3].mean(axis=0), expected, atol=0.08)


def test_srgb_framebuffer_shows_the_same_colours(gpu_addon):
    """The viewport's POST_VIEW handlers draw into an SRGB8_A8 buffer: drawn with
    ``srgb_target`` there, the stored (encoded) colours of opaque splats equal the plain
    float render's; drawn without it they would come out brighter."""
    import gpu

    from blender_addon import splat_view, splats

    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(1500, seed=25), tag="srgb")
    cam = _camera("srgb", (0.0, -0.5, 0.0), (0.0, 0.0, 0.0))
    ref = splat_view.render_offscreen(bpy.context.scene, cam, 64, 64, objects=[obj])
    view, proj = splat_view.camera_matrices(bpy.context.scene, cam, 64, 64)
    instances = [(obj, np.array(obj.matrix_world, np.float64), ("srgb",))]

    def draw(srgb: bool) -> np.ndarray:
        tex = gpu.types.GPUTexture((64, 64), format="SRGB8_A8")
        fb = gpu.types.GPUFrameBuffer(color_slots=tex)
        with fb.bind():
            fb.clear(color=(0.0, 0.0, 0.0, 0.0))
            gpu.state.viewport_set(0, 0, 64, 64)
            splat_view.draw_instances(instances, view, proj, 64, 64, ("srgb", srgb), srgb_target=srgb)
        buf = tex.read()  # the stored bytes: sRGB encoded
        return splat_view.buffer_to_numpy(buf).reshape(64, 64, 4)[::-1] / 255.0

    opaque = ref[..., 3] > 0.97
    assert opaque.mean() > 0.1
    # the same up to blending in linear light (where splats overlap) and 8 bits
    err = np.abs(draw(True)[opaque][:, :3] - ref[opaque][:, :3])
    err_plain = np.abs(draw(False)[opaque][:, :3] - ref[opaque][:, :3])
    print(f"sRGB target: mean |err| {err.mean():.4f}, without linearising {err_plain.mean():.4f}")
    assert err.mean() < 0.015 and np.percentile(err, 90) < 0.03
    assert err_plain.mean() > 3 * err.mean()


def test_viewport_draws_never_wait_for_a_sort(gpu_addon, monkeypatch):
    """With wait=False (the draw handler's way), a view that needs a re-sort is sorted on the
    worker thread: the draw returns at once with the previous order, and a later draw shows
    exactly what a waiting draw shows."""
    from blender_addon import splat_view, splats

    monkeypatch.setattr(splat_view, "SYNC_SPLATS", 0)  # even this small cloud goes to the worker
    obj = splats.create_splat_object(bpy.context.scene, "head", synthetic_head(3000, seed=27, sh_rest=3), tag="a")
    cam = _camera("async", (0.1, -0.5, 0.05), (0.0, 0.0, 0.0))
    view, proj = splat_view.camera_matrices(bpy.context.scene, cam, 64, 64)
    instances = [(obj, np.array(obj.matrix_world, np.float64), ("async",))]

    def draw(view_matrix, wait):
        import gpu

        off = gpu.types.GPUOffScreen(64, 64, format="RGBA32F")
        try:
            with off.bind():
                fb = gpu.state.active_framebuffer_get()
                fb.clear(color=(0.0, 0.0, 0.0, 0.0), depth=1.0)
                drawn = splat_view.draw_instances(instances, view_matrix, proj, 64, 64, ("async", wait), wait=wait)
                img = splat_view.buffer_to_numpy(fb.read_color(0, 0, 64, 64, 4, 0, "FLOAT")).reshape(64, 64, 4)
        finally:
            off.free()
        return drawn, img

    assert draw(view, False)[0] == 0  # nothing sorted yet: nothing drawn, no wait
    (entry,) = [e for k, e in splat_view._views.items() if k[1] == ("async", False)]
    entry.pending.result(timeout=60)
    drawn, first = draw(view, False)
    assert drawn == 3000 and entry.pending is None
    np.testing.assert_array_equal(first, draw(view, True)[1])
    turned = view @ _rot_z(0.5)  # the object turned by 0.5 rad: a re-sort
    drawn, stale = draw(turned, False)
    assert drawn == 3000 and entry.pending is not None  # drawn at once, in the old order
    entry.pending.result(timeout=60)
    _, fresh = draw(turned, False)
    np.testing.assert_array_equal(fresh, draw(turned, True)[1])
    assert np.abs(stale - fresh).max() > 0  # the stale frame's order and colours were the old ones


def _rot_z(a: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return m
