"""File > Import / Export of splats as SPZ, antimatter15 .splat and glTF KHR_gaussian_splatting.

The codecs are :mod:`.core.formats` (numpy only). Every reader returns the head frame, which
is Blender's (metres, +Z up, face toward -Y), so an imported object needs no rotation; the
export bakes the selected splat object's world transform (optional) and the writer turns the
cloud into the file's own axes (SPZ: RUB, or RDF for files meant for PlayCanvas tools;
.splat: the PLY's RDF; glTF: +Y up, front toward +Z).
"""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import splats
from .core.formats import dotsplat, gltf, spz

SPZ_FRAME_ITEMS = (
    ("rub", "SPZ spec (RUB)", "x right, y up, z back: Niantic's SPZ convention, what its tools read"),
    ("rdf", "PLY axes (RDF)", "x right, y down, z forward: how PlayCanvas splat-transform stores SPZ"),
)
_ERRORS = (ValueError, OSError)  # each codec's typed error is a ValueError


def _select_only(context, obj) -> None:
    context.view_layer.update()
    for other in context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


class _ImportSplats(ImportHelper):
    bl_options = {"REGISTER", "UNDO"}
    scale: FloatProperty(name="Scale", default=1.0, min=1e-6, description="Object scale (the file's unit in metres)")

    def read(self, path: str):  # -> SplatArrays in the head frame
        raise NotImplementedError

    def execute(self, context):
        try:
            arrays = self.read(self.filepath)
        except _ERRORS as exc:
            self.report({"ERROR"}, f"Cannot import {os.path.basename(self.filepath)}: {exc}")
            return {"CANCELLED"}
        name = os.path.splitext(os.path.basename(self.filepath))[0]
        obj = splats.create_splat_object(context.scene, name, arrays, tag=self.filepath, state="imported")
        splats.set_file_axes(obj, "head")  # already turned to Blender's axes
        obj.scale = (self.scale,) * 3
        _select_only(context, obj)
        self.report({"INFO"}, f"Imported {len(arrays)} splats")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_import_spz(bpy.types.Operator, _ImportSplats):
    """Import Gaussian splats from a Niantic SPZ file (versions 2 to 4)"""

    bl_idname = "portraitsplat.import_spz"
    bl_label = "Import Gaussian Splat SPZ"
    filename_ext = ".spz"
    filter_glob: StringProperty(default="*.spz", options={"HIDDEN"})
    frame: EnumProperty(name="File Axes", items=SPZ_FRAME_ITEMS, default="rub")

    def read(self, path):
        return spz.read_spz(path, frame=self.frame)


class PORTRAITSPLAT_OT_import_splat(bpy.types.Operator, _ImportSplats):
    """Import Gaussian splats from an antimatter15 .splat file"""

    bl_idname = "portraitsplat.import_splat"
    bl_label = "Import Gaussian Splat .splat"
    filename_ext = ".splat"
    filter_glob: StringProperty(default="*.splat", options={"HIDDEN"})

    def read(self, path):
        return dotsplat.read_splat(path)


class PORTRAITSPLAT_OT_import_gltf_splats(bpy.types.Operator, _ImportSplats):
    """Import Gaussian splats from a glTF binary with KHR_gaussian_splatting"""

    bl_idname = "portraitsplat.import_gltf_splats"
    bl_label = "Import Gaussian Splat glTF"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def read(self, path):
        return gltf.read_glb(path)


class _ExportSplats(ExportHelper):
    apply_transform: BoolProperty(name="Apply Object Transform", default=True)

    @classmethod
    def poll(cls, context):
        return splats.is_splat_object(context.active_object)

    def write(self, path: str, arrays) -> None:
        raise NotImplementedError

    def execute(self, context):
        from .ops import export_arrays

        obj = context.active_object
        try:
            arrays = export_arrays(obj, apply_transform=self.apply_transform, frame="head")
            self.write(self.filepath, arrays)
        except _ERRORS as exc:
            self.report({"ERROR"}, f"Cannot export '{obj.name}': {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(arrays)} splats to {self.filepath}")
        return {"FINISHED"}


class PORTRAITSPLAT_OT_export_spz(bpy.types.Operator, _ExportSplats):
    """Export the active splat object as Niantic SPZ (quantised, about 5x smaller than PLY)"""

    bl_idname = "portraitsplat.export_spz"
    bl_label = "Export Gaussian Splat SPZ"
    filename_ext = ".spz"
    filter_glob: StringProperty(default="*.spz", options={"HIDDEN"})
    frame: EnumProperty(name="File Axes", items=SPZ_FRAME_ITEMS, default="rub")
    version: IntProperty(name="Version", default=3, min=2, max=3, description="SPZ version (3: finer rotations)")

    def write(self, path, arrays):
        spz.write_spz(path, arrays, frame=self.frame, version=self.version)


class PORTRAITSPLAT_OT_export_splat(bpy.types.Operator, _ExportSplats):
    """Export the active splat object as antimatter15 .splat (8-bit colour, no view-dependent bands)"""

    bl_idname = "portraitsplat.export_splat"
    bl_label = "Export Gaussian Splat .splat"
    filename_ext = ".splat"
    filter_glob: StringProperty(default="*.splat", options={"HIDDEN"})

    def write(self, path, arrays):
        dotsplat.write_splat(path, arrays)


class PORTRAITSPLAT_OT_export_gltf_splats(bpy.types.Operator, _ExportSplats):
    """Export the active splat object as glTF binary with KHR_gaussian_splatting (Y up)"""

    bl_idname = "portraitsplat.export_gltf_splats"
    bl_label = "Export Gaussian Splat glTF"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def write(self, path, arrays):
        gltf.write_glb(path, arrays)


IMPORTS = (
    (PORTRAITSPLAT_OT_import_spz, "Gaussian Splat (.spz)"),
    (PORTRAITSPLAT_OT_import_splat, "Gaussian Splat (.splat)"),
    (PORTRAITSPLAT_OT_import_gltf_splats, "Gaussian Splat glTF (.glb)"),
)
EXPORTS = (
    (PORTRAITSPLAT_OT_export_spz, "Gaussian Splat (.spz)"),
    (PORTRAITSPLAT_OT_export_splat, "Gaussian Splat (.splat)"),
    (PORTRAITSPLAT_OT_export_gltf_splats, "Gaussian Splat glTF (.glb)"),
)


def menu_import(self, context):
    for op, text in IMPORTS:
        self.layout.operator(op.bl_idname, text=text)


def menu_export(self, context):
    for op, text in EXPORTS:
        self.layout.operator(op.bl_idname, text=text)


classes = tuple(op for op, _ in IMPORTS + EXPORTS)


def register_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister_menus() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
