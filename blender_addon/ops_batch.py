"""Queue a batch from Blender: several photos x several styles, one backend job per head.

The file browser picks the photos (several at once, or a folder: then every photo in it);
``styles`` lists style prompts separated by ``;`` (empty: the panel's style). Pipeline,
quality and seed come from the panel. The jobs go through the connected backend's queue
(``blender_addon.core.batch``) and show in the Jobs list under their head's name
(``<photo>__<style>``); each finished head appears in the scene as it ends, with no
previews streamed meanwhile. For studio-size batches, ``python -m backend batch`` (optionally
on Ray) is the tool; this is the same naming, through the service.
"""

from __future__ import annotations

import json
import os

import bpy
from bpy.props import CollectionProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import controller
from .core.batch import BatchError, plan_heads, submit_batch

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def chosen_photos(directory: str, names: list[str]) -> list[str]:
    """The selected files, or every photo in ``directory`` when none is selected."""
    picked = [n for n in names if n]
    if not picked and os.path.isdir(directory):
        picked = sorted(n for n in os.listdir(directory) if n.lower().endswith(PHOTO_SUFFIXES))
    return [os.path.join(directory, n) for n in picked if n.lower().endswith(PHOTO_SUFFIXES)]


class PORTRAITSPLAT_OT_queue_batch(bpy.types.Operator, ImportHelper):
    """Queue one job per photo and style on the backend; watch them in the Jobs list"""

    bl_idname = "portraitsplat.queue_batch"
    bl_label = "Queue Batch"

    filter_glob: StringProperty(default="*" + ";*".join(PHOTO_SUFFIXES), options={"HIDDEN"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH")
    styles: StringProperty(
        name="Styles",
        description="Style prompts separated by ';' (empty: the panel's style); each photo gets each style",
    )
    pipeline: StringProperty(
        name="Pipeline", description="Override the panel's pipeline (scripts)", options={"SKIP_SAVE", "HIDDEN"}
    )
    options: StringProperty(
        name="Options", description="Extra pipeline options as JSON (scripts)", options={"SKIP_SAVE", "HIDDEN"}
    )

    def execute(self, context):
        from .props import style_prompt

        settings = context.scene.portraitsplat
        pipeline = self.pipeline or settings.pipeline
        photos = chosen_photos(self.directory, [f.name for f in self.files])
        styles = [s for s in self.styles.split(";") if s.strip()]
        if pipeline != "photo" and not styles:
            styles = [style_prompt(settings)]
        try:
            options = json.loads(self.options) if self.options else {}
        except ValueError as exc:
            self.report({"ERROR"}, f"Options are not valid JSON: {exc}")
            return {"CANCELLED"}
        try:
            heads = plan_heads(photos, styles)
            controller.connect(context)
            ok, why = controller.pipeline_available(context, pipeline)
            if not ok:
                raise controller.UserError(f"The '{pipeline}' pipeline is unavailable: {why}")
            queued = controller._call(
                lambda c: submit_batch(
                    c,
                    heads,
                    pipeline=pipeline,
                    preset=settings.preset,
                    seed=settings.seed,
                    options=options,
                    deliver_result=True,
                )
            )
        except (BatchError, controller.UserError) as exc:
            controller.set_status(context, exc.message, error=True, hint=exc.hint)
            self.report({"ERROR"}, f"{exc.message} {exc.hint}".strip())
            return {"CANCELLED"}
        conn = controller.connection()
        for _head, job_id in queued:
            conn.job_scene[job_id] = context.scene.name
        controller.refresh_jobs(context)
        controller.ensure_timer()
        controller.set_status(context, f"Batch of {len(queued)} heads queued: see the Jobs list")
        self.report({"INFO"}, f"PortraitSplat: {len(queued)} jobs queued")
        return {"FINISHED"}


classes = (PORTRAITSPLAT_OT_queue_batch,)
