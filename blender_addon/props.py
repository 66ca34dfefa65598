"""Property groups: what the user picks (saved with the scene) and what the backend reports
(window-manager runtime state, never saved)."""

import os

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

STYLE_PRESETS = (
    ("CARTOON", "3D Cartoon", "3D cartoon style"),
    ("ORC", "Green Orc", "green orc style"),
    ("STATUE", "Golden Statue", "golden statue style"),
    ("REALISTIC", "Realistic", "realistic style"),
    ("CUSTOM", "Custom", "Use the free prompt below"),
)
STYLE_PROMPTS = {key: prompt for key, _, prompt in STYLE_PRESETS if key != "CUSTOM"}

PIPELINES = (
    ("photo", "Photo", "Fit the head to the photo itself (no extra model weights)"),
    ("stylize", "Stylize", "Stylised head from the photo and a style prompt (SAS + MVDream)"),
    ("instax", "Instax3D", "Orbit-video generation, then a Gaussian fit"),
)
QUALITY_PRESETS = (
    ("preview", "Preview", "Seconds: a quick look"),
    ("fast", "Fast", "Minutes: good enough for most uses"),
    ("paper", "Paper", "The published settings: slowest, best"),
)

# Thumbnail previews of the chosen photo; created in register(), removed in unregister().
_previews = {"collection": None}


def photo_icon_id(path: str) -> int:
    pcoll = _previews["collection"]
    if pcoll is None or not path:
        return 0
    path = bpy.path.abspath(path)
    if not os.path.isfile(path):
        return 0
    key = f"{path}:{os.path.getmtime(path)}"
    if key not in pcoll:
        pcoll.load(key, path, "IMAGE")
    return pcoll[key].icon_id


def style_prompt(settings) -> str:
    if settings.style == "CUSTOM":
        return settings.prompt.strip()
    extra = settings.prompt.strip()
    base = STYLE_PROMPTS[settings.style]
    return f"{base}, {extra}" if extra else base


class PORTRAITSPLAT_PG_settings(bpy.types.PropertyGroup):
    photo: StringProperty(name="Photo", description="Portrait photo (JPEG or PNG)", subtype="FILE_PATH")
    style: EnumProperty(name="Style", items=STYLE_PRESETS, default="CARTOON")
    prompt: StringProperty(
        name="Prompt", description="Free style prompt; added to the preset, or used alone with Custom"
    )
    pipeline: EnumProperty(name="Pipeline", items=PIPELINES, default="photo")
    preset: EnumProperty(name="Quality", items=QUALITY_PRESETS, default="preview")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same photo, settings and seed give the same head")


class PORTRAITSPLAT_PG_job(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    state: StringProperty(name="State")
    pipeline: StringProperty(name="Pipeline")
    label: StringProperty(name="Label")


class PORTRAITSPLAT_PG_runtime(bpy.types.PropertyGroup):
    """Live state mirrored from the backend by the controller timer."""

    connected: BoolProperty(name="Connected", default=False)
    backend_info: StringProperty(name="Backend")
    status: StringProperty(name="Status", description="Last message from the backend")
    status_is_error: BoolProperty(default=False)
    hint: StringProperty(name="Hint")
    active_job: StringProperty(name="Active Job")
    stage: StringProperty(name="Stage")
    progress: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0, default=0.0)
    eta: FloatProperty(name="ETA", subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE", default=-1.0)
    previews_received: IntProperty(default=0)
    available_pipelines: StringProperty(description="Comma-separated pipelines the backend can run")
    jobs: CollectionProperty(type=PORTRAITSPLAT_PG_job)
    jobs_index: IntProperty(default=0)


class PORTRAITSPLAT_PG_turntable(bpy.types.PropertyGroup):
    mode: EnumProperty(
        name="Motion",
        items=(("ORBIT", "Orbit Camera", "The camera circles the head"), ("SPIN", "Spin Object", "The head turns")),
        default="ORBIT",
    )
    frames: IntProperty(name="Frames", default=48, min=1, max=10000)
    resolution: IntProperty(name="Resolution", default=512, min=16, max=8192, subtype="PIXEL")
    engine: EnumProperty(
        name="Engine",
        items=(
            ("CYCLES", "Cycles", ""),
            ("EEVEE", "EEVEE", ""),
            ("SPLAT_VIEW", "Splat View (OpenGL)", "The true splats as the viewport's splat view draws them"),
        ),
        default="CYCLES",
    )
    samples: IntProperty(name="Samples", default=32, min=1, max=4096)
    elevation: FloatProperty(name="Elevation", default=0.1745, subtype="ANGLE", min=-1.5, max=1.5)
    output_dir: StringProperty(name="Output", default="//turntable/", subtype="DIR_PATH")
    video: BoolProperty(name="Video", default=True, description="Also write an MP4 when this Blender has FFmpeg")
    transparent: BoolProperty(name="Transparent Background", default=False)


classes = (
    PORTRAITSPLAT_PG_settings,
    PORTRAITSPLAT_PG_job,
    PORTRAITSPLAT_PG_runtime,
    PORTRAITSPLAT_PG_turntable,
)


def register_properties() -> None:
    import bpy.utils.previews

    _previews["collection"] = bpy.utils.previews.new()
    bpy.types.Scene.portraitsplat = PointerProperty(type=PORTRAITSPLAT_PG_settings)
    bpy.types.Scene.portraitsplat_turntable = PointerProperty(type=PORTRAITSPLAT_PG_turntable)
    bpy.types.WindowManager.portraitsplat = PointerProperty(type=PORTRAITSPLAT_PG_runtime)


def unregister_properties() -> None:
    import bpy.utils.previews

    del bpy.types.WindowManager.portraitsplat
    del bpy.types.Scene.portraitsplat_turntable
    del bpy.types.Scene.portraitsplat
    if _previews["collection"] is not None:
        bpy.utils.previews.remove(_previews["collection"])
        _previews["collection"] = None
