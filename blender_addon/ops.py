"""Operators: each ``execute`` hands off to controller/splats/turntable/core and reports."""

import json
import os

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import controller, splats, turntable
from .core.frames import head_to_file, to_file_axes
from .core.splat_arrays import SplatArrays
from .core.splat_ply import SplatPlyError, read_ply, write_ply

FRAME_ITEMS = (
    ("ply", "3DGS / OpenCV (Y down)", "x right, y down, z forward: what 3DGS trainers and viewers write"),
    ("head", "Blender (Z up)", "Metres, +Z up, face toward -Y: PortraitSplat's head frame"),
)


def _report_user_error(op, exc: controller.UserError) -> set[str]:
    op.report({"ERROR"}, str(exc))
    return {"CANCELLED"}


class PORTRAITSPLAT_OT_connect(bpy.types.Operator):
    """Connect to the backend (launching it first when the preferences say so)"""

    bl_idname = "portraitsplat.connect"
    bl_label = "Connect"

    def execute(self, context):
        try:
            welcome = controller.connect(context)
        except controller.UserError as exc:
            controller.set_status(context, exc.message, error=True, hint=exc.hint)
            return _report_user_error(self, exc)
        self.report({"INFO"}, f"Connected to backend {welcome.server_version} ({welcome.device})")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_disconnect(bpy.types.Operator):
    """Disconnect, and stop the backend if this add-on launched it"""

    bl_idname = "portraitsplat.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        controller.disconnect(context)
        return {"FINISHED"}


class PORTRAITSPLAT_OT_generate(bpy.types.Operator):
    """Send the photo to the backend and stream the head into the scene"""

    bl_idname = "portraitsplat.generate"
    bl_label = "Generate"

    pipeline: StringProperty(
        name="Pipeline", description="Override the panel's pipeline (scripts)", options={"SKIP_SAVE"}
    )
    options: StringProperty(
        name="Options", description="Extra pipeline options as JSON (scripts)", options={"SKIP_SAVE"}
    )

    @classmethod
    def poll(cls, context):
        return not controller.runtime(context).active_job

    def execute(self, context):
        try:
            options = json.loads(self.options) if self.options else {}
        except ValueError as exc:
            self.report({"ERROR"}, f"Options are not valid JSON: {exc}")
            return {"CANCELLED"}
        try:
            job_id = controller.submit(context, context.scene.portraitsplat, pipeline=self.pipeline, options=options)
        except controller.UserError as exc:
            controller.set_status(context, exc.message, error=True, hint=exc.hint)
            return _report_user_error(self, exc)
        self.report({"INFO"}, f"PortraitSplat job {job_id} submitted")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_cancel(bpy.types.Operator):
    """Cancel the running job"""

    bl_idname = "portraitsplat.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return bool(controller.runtime(context).active_job)

    def execute(self, context):
        try:
            controller.cancel(context)
        except controller.UserError as exc:
            return _report_user_error(self, exc)
        return {"FINISHED"}


class PORTRAITSPLAT_OT_refresh_jobs(bpy.types.Operator):
    """Fetch the backend's job list"""

    bl_idname = "portraitsplat.refresh_jobs"
    bl_label = "Refresh Jobs"

    def execute(self, context):
        try:
            controller.connect(context)
            controller.refresh_jobs(context)
        except controller.UserError as exc:
            return _report_user_error(self, exc)
        return {"FINISHED"}


class PORTRAITSPLAT_OT_import_job(bpy.types.Operator):
    """Import (or re-import) a finished job's result into the scene"""

    bl_idname = "portraitsplat.import_job"
    bl_label = "Import Result"

    job_id: StringProperty(name="Job")

    def execute(self, context):
        try:
            controller.connect(context)
            controller.fetch_result(context, self.job_id)  # never waits: the timer shows it when it comes
        except controller.UserError as exc:
            return _report_user_error(self, exc)
        self.report({"INFO"}, f"Fetching the result of job {self.job_id}")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_delete_job(bpy.types.Operator):
    """Delete an ended job and its folder on the backend (objects already in the scene stay)"""

    bl_idname = "portraitsplat.delete_job"
    bl_label = "Delete Job"

    job_id: StringProperty(name="Job")

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        try:
            controller.connect(context)
            freed = controller.delete_job(context, self.job_id)
        except controller.UserError as exc:
            return _report_user_error(self, exc)
        self.report({"INFO"}, f"Deleted job {self.job_id} ({freed / 2**20:.1f} MiB freed)")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_import_ply(bpy.types.Operator, ImportHelper):
    """Import a 3D Gaussian splat PLY (INRIA layout, from PortraitSplat or other tools)"""

    bl_idname = "portraitsplat.import_ply"
    bl_label = "Import Gaussian Splat PLY"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    frame: EnumProperty(name="File Axes", items=FRAME_ITEMS, default="ply")
    scale: FloatProperty(name="Scale", default=1.0, min=1e-6, description="Object scale (the file's unit in metres)")

    def execute(self, context):
        try:
            # the file's axes as they are: the axis change goes in the object's transform
            arrays = read_ply(self.filepath, frame="head", copy=False)
        except (SplatPlyError, OSError) as exc:
            self.report({"ERROR"}, f"Cannot import {os.path.basename(self.filepath)}: {exc}")
            return {"CANCELLED"}
        name = os.path.splitext(os.path.basename(self.filepath))[0]
        obj = splats.create_splat_object(context.scene, name, arrays, tag=self.filepath, state="imported")
        splats.set_file_axes(obj, self.frame)
        obj.scale = (self.scale,) * 3
        _select_only(context, obj)
        self.report({"INFO"}, f"Imported {len(arrays)} splats")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_export_ply(bpy.types.Operator, ExportHelper):
    """Export the active splat object as a 3DGS PLY, with its transform baked in"""

    bl_idname = "portraitsplat.export_ply"
    bl_label = "Export Gaussian Splat PLY"

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    frame: EnumProperty(name="File Axes", items=FRAME_ITEMS, default="ply")
    apply_transform: BoolProperty(name="Apply Object Transform", default=True)

    @classmethod
    def poll(cls, context):
        return splats.is_splat_object(context.active_object)

    def execute(self, context):
        obj = context.active_object
        try:
            arrays = export_arrays(obj, apply_transform=self.apply_transform, frame=self.frame)
            write_ply(self.filepath, arrays, frame="head")  # already in the file's axes
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, f"Cannot export '{obj.name}': {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(arrays)} splats to {self.filepath}")
        return {"FINISHED"}


def export_arrays(obj, *, apply_transform: bool = True, frame: str = "head") -> SplatArrays:
    """The object's splats in the axes of a ``frame`` file, with its world transform baked into
    positions, rotations, scales and SH bands (``apply_transform=False``: only the change
    from the mesh's own axes). An imported PLY exported untouched is its file's data as is."""
    arrays = splats.read_splats(obj.data)
    to_head = np.array(obj.matrix_world) if apply_transform else splats.file_axes_matrix(obj)
    return to_file_axes(head_to_file(frame) @ to_head, arrays)


class PORTRAITSPLAT_OT_display(bpy.types.Operator):
    """Show the selected splat objects as ellipsoids or as fast points"""

    bl_idname = "portraitsplat.display"
    bl_label = "Splat Display"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(
        name="Display",
        items=(("ELLIPSOIDS", "Ellipsoids", "Oriented, scaled ellipsoids"), ("POINTS", "Points", "Fast points")),
    )

    def execute(self, context):
        objs = [o for o in context.selected_objects if splats.is_splat_object(o)]
        if not objs and splats.is_splat_object(context.active_object):
            objs = [context.active_object]
        for obj in objs:
            splats.set_display(obj, points=self.mode == "POINTS")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_turntable(bpy.types.Operator):
    """Render a turntable of the active splat head (PNG frames, and MP4 with FFmpeg)"""

    bl_idname = "portraitsplat.turntable"
    bl_label = "Render Turntable"

    @classmethod
    def poll(cls, context):
        return splats.is_splat_object(context.active_object)

    def execute(self, context):
        tt = context.scene.portraitsplat_turntable
        settings = turntable.TurntableSettings(
            mode=tt.mode,
            frames=tt.frames,
            resolution=tt.resolution,
            engine=tt.engine,
            samples=tt.samples,
            elevation=tt.elevation,
            output_dir=tt.output_dir,
            video=tt.video,
            transparent=tt.transparent,
        )
        result = turntable.render_turntable(context.scene, context.active_object, settings)
        for msg in result.messages:
            self.report({"WARNING"}, msg)
        where = result.video or os.path.dirname(result.frames[0])
        self.report({"INFO"}, f"Turntable: {len(result.frames)} frames in {where}")
        return {"FINISHED"}


def _select_only(context, obj) -> None:
    context.view_layer.update()  # newly linked objects join view_layer.objects on controller
    for o in context.view_layer.objects:
        o.select_set(False)
    if obj.name in context.view_layer.objects:
        obj.select_set(True)
        context.view_layer.objects.active = obj


def menu_import(self, context):
    self.layout.operator(PORTRAITSPLAT_OT_import_ply.bl_idname, text="Gaussian Splat (.ply)")


def menu_export(self, context):
    self.layout.operator(PORTRAITSPLAT_OT_export_ply.bl_idname, text="Gaussian Splat (.ply)")


classes = (
    PORTRAITSPLAT_OT_connect,
    PORTRAITSPLAT_OT_disconnect,
    PORTRAITSPLAT_OT_generate,
    PORTRAITSPLAT_OT_cancel,
    PORTRAITSPLAT_OT_refresh_jobs,
    PORTRAITSPLAT_OT_import_job,
    PORTRAITSPLAT_OT_delete_job,
    PORTRAITSPLAT_OT_import_ply,
    PORTRAITSPLAT_OT_export_ply,
    PORTRAITSPLAT_OT_display,
    PORTRAITSPLAT_OT_turntable,
)
