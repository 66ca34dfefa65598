"""The PortraitSplat tab in the 3D View sidebar (N panel)."""

from __future__ import annotations

import bpy

from . import controller, splats
from .props import PIPELINES, photo_icon_id


class PORTRAITSPLAT_UL_jobs(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        icons = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL", "running": "PLAY", "queued": "TIME"}
        row.label(text=item.label or item.job_id, icon=icons.get(item.state, "DOT"))
        row.label(text=item.state)
        sub = row.row()
        sub.enabled = item.state == "done"
        op = sub.operator("portraitsplat.import_job", text="", icon="IMPORT")
        op.job_id = item.job_id
        sub = row.row()
        sub.enabled = item.state not in ("queued", "running")
        op = sub.operator("portraitsplat.delete_job", text="", icon="TRASH")
        op.job_id = item.job_id


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "PortraitSplat"


class PORTRAITSPLAT_PT_main(_Panel, bpy.types.Panel):
    bl_label = "PortraitSplat"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.portraitsplat
        rt = context.window_manager.portraitsplat

        row = layout.row(align=True)
        if rt.connected:
            row.label(text=rt.backend_info or "Connected", icon="LINKED")
            row.operator("portraitsplat.disconnect", text="", icon="X")
        else:
            row.label(text="Backend not connected", icon="UNLINKED")
            row.operator("portraitsplat.connect", text="Connect")

        box = layout.box()
        box.prop(settings, "photo")
        icon = photo_icon_id(settings.photo)
        if icon:
            box.template_icon(icon_value=icon, scale=6.0)

        col = layout.column(align=True)
        col.label(text="Pipeline")
        for key, label, _ in PIPELINES:
            available, why = controller.pipeline_available(context, key)
            r = col.row(align=True)
            r.enabled = available
            r.prop_enum(settings, "pipeline", key, text=label if available else f"{label} (unavailable)")
        ok, why = controller.pipeline_available(context, settings.pipeline)
        if not ok:
            col.label(text=why, icon="ERROR")

        style = layout.column()
        style.enabled = settings.pipeline != "photo"  # the photo pipeline keeps the photo's look
        style.prop(settings, "style")
        style.prop(settings, "prompt", text="Prompt")

        row = layout.row(align=True)
        row.prop(settings, "preset", text="")
        row.prop(settings, "seed")

        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("portraitsplat.generate", icon="SHADERFX")
        row.operator("portraitsplat.cancel", text="", icon="CANCEL")

        if rt.active_job or rt.stage:
            eta = f" - {rt.eta:.0f} s left" if rt.eta >= 0 else ""
            text = f"{rt.stage or 'waiting'}{eta}"
            if hasattr(layout, "progress"):
                layout.progress(factor=rt.progress, type="BAR", text=text)
            else:
                layout.prop(rt, "progress", text=text, slider=True)
        if rt.status:
            layout.label(text=rt.status, icon="ERROR" if rt.status_is_error else "INFO")
        if rt.hint:
            layout.label(text=rt.hint, icon="QUESTION")


class PORTRAITSPLAT_PT_jobs(_Panel, bpy.types.Panel):
    bl_label = "Jobs"
    bl_parent_id = "PORTRAITSPLAT_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        rt = context.window_manager.portraitsplat
        self.layout.template_list("PORTRAITSPLAT_UL_jobs", "", rt, "jobs", rt, "jobs_index", rows=4)
        self.layout.operator("portraitsplat.refresh_jobs", icon="FILE_REFRESH")
        self.layout.operator("portraitsplat.queue_batch", icon="DOCUMENTS")


class PORTRAITSPLAT_PT_splats(_Panel, bpy.types.Panel):
    bl_label = "Splats"
    bl_parent_id = "PORTRAITSPLAT_PT_main"

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        if splats.is_splat_object(obj):
            points, _size = splats.get_display(obj)
            layout.label(text=f"{obj.name}: {len(obj.data.vertices):,} splats ({obj.get(splats.STATE_TAG, '')})")
            row = layout.row(align=True)
            row.operator("portraitsplat.display", text="Ellipsoids", depress=not points).mode = "ELLIPSOIDS"
            row.operator("portraitsplat.display", text="Points", depress=points).mode = "POINTS"
            layout.prop(obj, "portraitsplat_splat_view", text="Splat View (true Gaussians)", toggle=True)
            mod = obj.modifiers.get(splats.MODIFIER_NAME)
            if mod is not None and mod.node_group is not None:
                layout.prop(*splats.modifier_input(mod, "Size"), text="Size (sigmas)")
        else:
            layout.label(text="Select a splat object", icon="INFO")
        row = layout.row(align=True)
        row.operator("portraitsplat.import_ply", text="Import PLY", icon="IMPORT")
        row.operator("portraitsplat.export_ply", text="Export PLY", icon="EXPORT")


class PORTRAITSPLAT_PT_turntable(_Panel, bpy.types.Panel):
    bl_label = "Turntable"
    bl_parent_id = "PORTRAITSPLAT_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        tt = context.scene.portraitsplat_turntable
        layout = self.layout
        layout.use_property_split = True
        for name in (
            "mode",
            "frames",
            "resolution",
            "engine",
            "samples",
            "elevation",
            "output_dir",
            "transparent",
            "video",
        ):
            layout.prop(tt, name)
        layout.operator("portraitsplat.turntable", icon="RENDER_ANIMATION")


classes = (
    PORTRAITSPLAT_UL_jobs,
    PORTRAITSPLAT_PT_main,
    PORTRAITSPLAT_PT_jobs,
    PORTRAITSPLAT_PT_splats,
    PORTRAITSPLAT_PT_turntable,
)
