"""Panels draw without errors, and every property and operator they name exists.

bpy has no window to draw into, so a recording layout stands in for ``UILayout``: it checks
each ``prop``/``prop_enum`` name against the data's RNA and each operator id against
``bpy.ops``, then lets drawing continue.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import REPO, synthetic_head  # noqa: E402


class FakeLayout:
    def __init__(self, calls):
        self.calls = calls
        self.enabled = True
        self.scale_y = 1.0
        self.use_property_split = False

    def _child(self, *args, **kwargs):
        return FakeLayout(self.calls)

    row = column = box = split = _child

    def _check_prop(self, data, name):
        if name.startswith('["'):
            key = name[2:-2]
            assert key in data.keys(), f"no ID property {key!r} on {data}"
        else:
            assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"

    def prop(self, data, name, **kwargs):
        self._check_prop(data, name)
        self.calls.append(("prop", name))

    def prop_enum(self, data, name, value, **kwargs):
        self._check_prop(data, name)
        assert value in data.bl_rna.properties[name].enum_items.keys(), value
        self.calls.append(("prop_enum", name, value))

    def operator(self, idname, **kwargs):
        group, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, group), name), f"no operator {idname}"
        self.calls.append(("operator", idname))
        op = type("OpProps", (), {})()
        return op

    def label(self, **kwargs):
        self.calls.append(("label", kwargs.get("text", "")))

    def progress(self, **kwargs):
        self.calls.append(("progress", kwargs.get("factor")))

    def template_icon(self, **kwargs):
        self.calls.append(("template_icon",))

    def template_list(self, *args, **kwargs):
        self.calls.append(("template_list",))


def _draw(panel_cls, context):
    calls = []
    panel = type("P", (), {"layout": FakeLayout(calls)})()
    panel_cls.draw(panel, context)
    return calls


def test_panels_draw_idle_and_busy(addon):
    from blender_addon import prefs, splats, ui

    ctx = bpy.context
    for cls in (
        ui.PORTRAITSPLAT_PT_main,
        ui.PORTRAITSPLAT_PT_jobs,
        ui.PORTRAITSPLAT_PT_splats,
        ui.PORTRAITSPLAT_PT_turntable,
    ):
        _draw(cls, ctx)
    # with a splat object active, a running job and an error
    obj = splats.create_splat_object(ctx.scene, "h", synthetic_head(50))
    ctx.view_layer.update()
    ctx.view_layer.objects.active = obj
    rt = ctx.window_manager.portraitsplat
    rt.active_job, rt.stage, rt.progress, rt.eta = "job", "fit", 0.4, 12.0
    rt.status, rt.status_is_error, rt.hint = "No face found", True, "Use a frontal photo"
    calls = _draw(ui.PORTRAITSPLAT_PT_main, ctx)
    assert ("progress", pytest.approx(0.4)) in calls or any(c[0] == "prop" and c[1] == "progress" for c in calls)
    assert ("label", "Use a frontal photo") in calls
    assert [c[2] for c in calls if c[0] == "prop_enum"] == ["photo", "stylize", "instax"]
    ctx.scene.portraitsplat.photo = str(REPO / "examples" / "astronaut.jpg")
    _draw(ui.PORTRAITSPLAT_PT_main, ctx)
    from blender_addon import props

    # Background Blender makes no icons (icon_id stays 0), but the thumbnail must have loaded.
    previews = list(props._previews["collection"].values())
    assert len(previews) == 1 and tuple(previews[0].image_size) == (256, 256)
    calls = _draw(ui.PORTRAITSPLAT_PT_splats, ctx)
    assert ("operator", "portraitsplat.display") in calls
    # preferences draw in every connection mode
    entry = ctx.preferences.addons.new()
    entry.module = prefs.ADDON_ID
    try:
        real = prefs.get_prefs(ctx)
        for mode in ("LAUNCH", "FILE", "ADDRESS"):
            real.connection_mode, real.host = mode, "10.0.0.5"
            calls = []
            prefs.PORTRAITSPLAT_AP_preferences.draw(_WithLayout(real, FakeLayout(calls)), ctx)
            assert calls
        assert ("label", "A remote backend requires its signing key") in calls
    finally:
        ctx.preferences.addons.remove(entry)


class _WithLayout:
    """The real preferences, with a stand-in ``layout``."""

    def __init__(self, real, layout):
        self.__dict__["_real"], self.__dict__["layout"] = real, layout

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_unavailable_pipeline_is_greyed_out(addon):
    from blender_addon import controller, ui
    from blender_addon.core.protocol import Welcome

    conn = controller.connection()
    conn.welcome = Welcome(
        server_version="0",
        protocol_version="1.0",
        pipelines=["photo"],
        unavailable={"stylize": "model sd15 missing: run python -m backend models download"},
        worker_state="ready",
    )
    try:
        assert controller.pipeline_available(bpy.context, "photo") == (True, "")
        ok, why = controller.pipeline_available(bpy.context, "stylize")
        assert not ok and "models download" in why
        bpy.context.scene.portraitsplat.pipeline = "stylize"
        calls = _draw(ui.PORTRAITSPLAT_PT_main, bpy.context)
        assert ("label", why) in calls
        with pytest.raises(RuntimeError, match="unavailable"):
            bpy.context.scene.portraitsplat.photo = __file__
            conn.client = object()  # connected, as far as submit can tell
            bpy.ops.portraitsplat.generate()
    finally:
        conn.welcome = None
        conn.client = None
