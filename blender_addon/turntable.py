"""Turntable renders of a splat head: orbit camera or spinning object, PNG frames, MP4.

The motion is a driver on a pivot's Z rotation (``frame``-only driver expressions run even
with Python auto-execution off), so the turntable also plays in the viewport and needs no
keyframe API, which changed between Blender 4.2 and 5.x.

    settings = TurntableSettings(frames=48, resolution=512, engine="CYCLES", output_dir="/tmp/tt")
    result = render_turntable(bpy.context.scene, obj, settings)
    result.frames  # ["/tmp/tt/turntable_0001.png", ...]; result.video: path or None

``engine="SPLAT_VIEW"`` renders the splat view (:mod:`.splat_view`, what the viewport and the
backend's renderer show) through an offscreen GPU buffer instead of Cycles or EEVEE: an
"OpenGL render" of the true splats, seconds for a whole turntable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import bpy
import numpy as np
from mathutils import Vector

from . import splats

PIVOT_NAME = "PortraitSplat Turntable Pivot"
CAMERA_NAME = "PortraitSplat Turntable Camera"


@dataclass
class TurntableSettings:
    mode: str = "ORBIT"  # ORBIT: the camera circles the head; SPIN: the head turns
    frames: int = 48
    resolution: int = 512
    engine: str = "CYCLES"  # CYCLES | EEVEE | SPLAT_VIEW (the splat view, drawn offscreen)
    samples: int = 32
    elevation: float = math.radians(10.0)
    lens_mm: float = 85.0
    margin: float = 1.15  # frame the head's radius times this
    output_dir: str = "//turntable/"
    video: bool = True
    transparent: bool = False
    prefix: str = "turntable_"


@dataclass
class TurntableResult:
    frames: list[str] = field(default_factory=list)
    video: str | None = None
    messages: list[str] = field(default_factory=list)


def eevee_engine_id() -> str:
    """'BLENDER_EEVEE_NEXT' in Blender 4.2-4.5, 'BLENDER_EEVEE' again from 5.0."""
    items = bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items.keys()
    return "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in items else "BLENDER_EEVEE"


def ffmpeg_available() -> bool:
    return bool(getattr(bpy.app.build_options, "codec_ffmpeg", False))


def head_bounds(obj: bpy.types.Object) -> tuple[Vector, float]:
    """World-space centre and radius covering 98% of the splat centres."""
    mesh = obj.data
    n = len(mesh.vertices)
    if n == 0:
        return obj.matrix_world.translation.copy(), 0.12
    co = np.empty(n * 3, np.float32)
    mesh.attributes["position"].data.foreach_get("vector", co)
    co = co.reshape(n, 3).astype(np.float64)
    m = np.array(obj.matrix_world)
    world = co @ m[:3, :3].T + m[:3, 3]
    centre = np.median(world, axis=0)
    radius = float(np.percentile(np.linalg.norm(world - centre, axis=1), 98))
    return Vector(centre.tolist()), max(radius, 1e-3)


def setup_turntable(scene: bpy.types.Scene, obj: bpy.types.Object, s: TurntableSettings) -> bpy.types.Object:
    """Create (or reuse) the pivot and camera, set the frame range, engine and output."""
    centre, radius = head_bounds(obj)
    coll = splats.ensure_collection(scene)

    pivot = bpy.data.objects.get(PIVOT_NAME)
    if pivot is None:
        pivot = bpy.data.objects.new(PIVOT_NAME, None)
        pivot.empty_display_size = radius
        coll.objects.link(pivot)
    cam = bpy.data.objects.get(CAMERA_NAME)
    if cam is None:
        cam = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
        coll.objects.link(cam)
    cam.data.lens = s.lens_mm
    cam.data.sensor_fit = "AUTO"
    half_fov = 0.5 * cam.data.angle
    distance = s.margin * radius / math.sin(half_fov)
    cam.data.clip_start = max(distance - 4 * radius, 1e-3) * 0.5
    cam.data.clip_end = distance + 10 * radius

    pivot.location = centre
    pivot.rotation_euler = (0.0, 0.0, 0.0)
    cam.parent = pivot
    cam.matrix_parent_inverse.identity()
    # Camera in front of the face (face looks toward -Y), raised by the elevation angle.
    cam.location = (0.0, -distance * math.cos(s.elevation), distance * math.sin(s.elevation))
    cam.rotation_euler = (math.pi / 2 - s.elevation, 0.0, 0.0)
    scene.camera = cam

    _clear_drivers(pivot)
    _clear_drivers(obj)
    start = scene.frame_start
    expr = f"2*pi*(frame-{start})/{s.frames}"
    if s.mode == "ORBIT":
        _rotate_z_driver(pivot, expr)
    else:
        base = obj.rotation_euler[2]
        _rotate_z_driver(obj, f"{base!r}-{expr}")
        obj["portraitsplat_turntable_base_z"] = base
    scene.frame_end = start + s.frames - 1

    r = scene.render
    if s.engine != "SPLAT_VIEW":  # the splat view draws itself; the scene's engine stays
        r.engine = "CYCLES" if s.engine == "CYCLES" else eevee_engine_id()
    r.resolution_x = r.resolution_y = s.resolution
    r.resolution_percentage = 100
    r.film_transparent = s.transparent
    # Splat colours are display colours: show them unchanged.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    if s.engine == "CYCLES":
        scene.cycles.samples = s.samples
        scene.cycles.use_denoising = False
        # Dozens of overlapping translucent splats along a ray: let them all through.
        scene.cycles.transparent_max_bounces = max(scene.cycles.transparent_max_bounces, 128)
        scene.cycles.max_bounces = max(scene.cycles.max_bounces, 128)
    elif s.engine == "EEVEE":
        eevee = scene.eevee
        if hasattr(eevee, "taa_render_samples"):
            eevee.taa_render_samples = s.samples
    if not s.transparent and scene.world is None:
        scene.world = bpy.data.worlds.new("PortraitSplat World")
    _set_image_output(r, "PNG")
    return cam


def render_turntable(
    scene: bpy.types.Scene, obj: bpy.types.Object, s: TurntableSettings, only_frames: list[int] | None = None
) -> TurntableResult:
    """Render the PNG sequence (blocking), then encode a video when FFmpeg is available.

    ``only_frames`` (0-based turntable steps) renders a subset, e.g. ``[0]`` for a still.
    """
    setup_turntable(scene, obj, s)
    out_dir = bpy.path.abspath(s.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    result = TurntableResult()
    frame_was = scene.frame_current
    try:
        steps = range(s.frames) if only_frames is None else only_frames
        for frame in (scene.frame_start + i for i in steps):
            scene.frame_set(frame)
            path = os.path.join(out_dir, f"{s.prefix}{frame:04d}.png")
            if s.engine == "SPLAT_VIEW":
                _render_splat_view_frame(scene, obj, s, path)
            else:
                scene.render.filepath = path
                bpy.ops.render.render(write_still=True, scene=scene.name)
            result.frames.append(path)
    finally:
        scene.frame_set(frame_was)
    if s.video:
        if ffmpeg_available():
            result.video = encode_video(
                result.frames, os.path.join(out_dir, f"{s.prefix.rstrip('_')}.mp4"), scene.render.fps
            )
        else:
            result.messages.append("This Blender build has no FFmpeg: wrote PNG frames only")
    return result


SPLAT_VIEW_BACKGROUND = (0.05, 0.05, 0.05, 1.0)  # opaque frames: a dark grey, as the viewport's


def _render_splat_view_frame(scene: bpy.types.Scene, obj: bpy.types.Object, s: TurntableSettings, path: str) -> None:
    from . import splat_view

    background = (0.0, 0.0, 0.0, 0.0) if s.transparent else SPLAT_VIEW_BACKGROUND
    rgba = splat_view.render_offscreen(
        scene, scene.camera, s.resolution, s.resolution, objects=[obj], background=background
    )
    splat_view.save_png(rgba, path)


def encode_video(frames: list[str], path: str, fps: int) -> str:
    """Encode PNG frames to H.264 MP4 through a throwaway sequencer scene."""
    tmp = bpy.data.scenes.new("PortraitSplat Encode")
    try:
        first = bpy.data.images.load(frames[0], check_existing=False)
        tmp.render.resolution_x, tmp.render.resolution_y = first.size
        bpy.data.images.remove(first)
        tmp.render.resolution_percentage = 100
        tmp.render.fps = fps
        sed = tmp.sequence_editor_create()
        strips = sed.strips if hasattr(sed, "strips") else sed.sequences
        strip = strips.new_image("frames", frames[0], channel=1, frame_start=1)
        for f in frames[1:]:
            strip.elements.append(os.path.basename(f))
        tmp.frame_start, tmp.frame_end = 1, len(frames)
        _set_image_output(tmp.render, "FFMPEG")
        tmp.render.ffmpeg.format = "MPEG4"
        tmp.render.ffmpeg.codec = "H264"
        tmp.render.ffmpeg.constant_rate_factor = "HIGH"
        tmp.render.filepath = path
        tmp.render.use_file_extension = False
        bpy.ops.render.render(animation=True, scene=tmp.name)
    finally:
        bpy.data.scenes.remove(tmp)
    return path


def remove_turntable(scene: bpy.types.Scene, obj: bpy.types.Object | None = None) -> None:
    """Delete the pivot and camera and any spin driver; restore a spun object's rotation."""
    if obj is not None and "portraitsplat_turntable_base_z" in obj:
        _clear_drivers(obj)
        obj.rotation_euler[2] = obj["portraitsplat_turntable_base_z"]
        del obj["portraitsplat_turntable_base_z"]
    for name in (CAMERA_NAME, PIVOT_NAME):
        o = bpy.data.objects.get(name)
        if o is not None:
            data = o.data
            bpy.data.objects.remove(o)
            if data is not None and data.users == 0:
                bpy.data.cameras.remove(data)


def _set_image_output(render, file_format: str) -> None:
    settings = render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0+: choose image vs video first
        settings.media_type = "VIDEO" if file_format == "FFMPEG" else "IMAGE"
    settings.file_format = file_format
    if file_format == "PNG":
        settings.color_mode = "RGBA"


def _rotate_z_driver(target, expression: str) -> None:
    fcurve = target.driver_add("rotation_euler", 2)
    fcurve.driver.type = "SCRIPTED"
    fcurve.driver.expression = expression


def _clear_drivers(target) -> None:
    if target.animation_data is not None:
        for fc in list(target.animation_data.drivers):
            if fc.data_path == "rotation_euler" and fc.array_index == 2:
                target.animation_data.drivers.remove(fc)
