"""Registration leaves nothing behind; the bpy-free core stays bpy-free even next to bpy."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import REPO  # noqa: E402


def _our_rna_types() -> set[str]:
    return {name for name in dir(bpy.types) if name.startswith("PORTRAITSPLAT_")}


def test_register_unregister_twice(bpy_clean):
    import blender_addon

    before = _our_rna_types()
    assert before == set()
    import_menu_before = len(bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    for _ in range(2):
        blender_addon.register()
        from blender_addon import ops, prefs, props, ui

        classes = [*props.classes, *prefs.classes, *ops.classes, *ui.classes]
        assert all(cls.is_registered for cls in classes)
        assert {"PORTRAITSPLAT_OT_generate", "PORTRAITSPLAT_PT_main"} <= _our_rna_types()
        assert hasattr(bpy.types.Scene, "portraitsplat")
        assert bpy.context.scene.portraitsplat.pipeline == "photo"
        assert bpy.context.window_manager.portraitsplat.connected is False
        assert hasattr(bpy.ops.portraitsplat, "generate")
        blender_addon.unregister()
        assert _our_rna_types() == set()
        assert not any(cls.is_registered for cls in classes)
        assert not hasattr(bpy.types.Scene, "portraitsplat")
        assert not hasattr(bpy.types.Scene, "portraitsplat_turntable")
        assert not hasattr(bpy.types.WindowManager, "portraitsplat")
        assert len(bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()) == import_menu_before
        from blender_addon import controller, props

        assert props._previews["collection"] is None
        assert not bpy.app.timers.is_registered(controller.tick)
        assert not any(getattr(h, "__module__", "").startswith("blender_addon") for h in bpy.app.handlers.load_post)


def test_core_imports_without_bpy_even_in_blender_python():
    code = (
        "import sys, importlib, pkgutil, blender_addon, blender_addon.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('blender_addon.core.' + m.name)\n"
        "bad = [m for m in ('bpy', 'torch', 'mathutils') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
