"""Connection failures tell the user what happened and what to do."""

from __future__ import annotations

import json
import socket

import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")


@pytest.fixture
def prefs_entry(addon):
    from blender_addon import prefs

    entry = bpy.context.preferences.addons.new()
    entry.module = prefs.ADDON_ID
    yield prefs.get_prefs()
    bpy.context.preferences.addons.remove(entry)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_protocol_version_mismatch_names_the_fix(prefs_entry, tmp_path, monkeypatch):
    from blender_addon import controller
    from blender_addon.core import client as client_mod
    from blender_addon.core.protocol import ProtocolError

    conn = tmp_path / "connection.json"
    conn.write_text(
        json.dumps(
            {
                "ip": "127.0.0.1",
                "router_port": _free_port(),
                "pub_port": _free_port(),
                "key": "k",
                "protocol_version": "2.0",
            }
        )
    )
    prefs_entry.connection_mode, prefs_entry.connection_file = "FILE", str(conn)

    def newer_backend(self, timeout=10.0):  # what the client raises when the peer's major differs
        raise ProtocolError("version_mismatch", "the peer speaks protocol 2.0, this side speaks 1.0")

    monkeypatch.setattr(client_mod.Client, "connect", newer_backend)
    with pytest.raises(RuntimeError, match="another protocol version.*same PortraitSplat release"):
        bpy.ops.portraitsplat.connect()
    rt = controller.runtime()
    assert not rt.connected and rt.status_is_error and "same PortraitSplat release" in rt.hint
    assert controller.connection().client is None


def test_unreachable_address_times_out_with_a_hint(prefs_entry):
    from blender_addon import controller

    prefs_entry.connection_mode = "ADDRESS"
    prefs_entry.request_port, prefs_entry.pub_port = _free_port(), _free_port()
    with pytest.raises(controller.UserError) as err:
        controller.connect(bpy.context, timeout=0.5)
    assert "not reachable" in err.value.message and "python -m backend serve" in err.value.hint
    prefs_entry.request_port = 0
    with pytest.raises(controller.UserError, match="ports are not set"):
        controller.connect(bpy.context, timeout=0.5)
