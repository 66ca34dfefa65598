"""PortraitSplat for Blender: one portrait photo in, a Gaussian-splat head out.

This package is a Blender extension (see ``blender_manifest.toml``). Importing it does not
import ``bpy``: the bpy layer (props, prefs, ops, ui, controller, splats, turntable) loads inside
:func:`register`, so ``blender_addon.core`` stays usable from the backend and from tests.
"""

from __future__ import annotations

_registered: list = []


def _modules():
    from . import ops, ops_batch, ops_formats, prefs, props, splat_view, ui

    return props, prefs, ops, ops_batch, ops_formats, splat_view, ui


def register() -> None:
    import bpy

    from . import controller, ops, ops_formats, props, splat_view

    for module in _modules():
        for cls in module.classes:
            bpy.utils.register_class(cls)
            _registered.append(cls)
    props.register_properties()
    splat_view.register()
    bpy.types.TOPBAR_MT_file_import.append(ops.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(ops.menu_export)
    ops_formats.register_menus()
    bpy.app.handlers.load_post.append(controller.on_load_post)


def unregister() -> None:
    import bpy

    from . import controller, ops, ops_formats, props, splat_view

    controller.shutdown_all()
    splat_view.unregister()
    if controller.on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(controller.on_load_post)
    ops_formats.unregister_menus()
    bpy.types.TOPBAR_MT_file_export.remove(ops.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(ops.menu_import)
    props.unregister_properties()
    while _registered:
        bpy.utils.unregister_class(_registered.pop())
