"""Add-on preferences: how to reach the backend."""

import os
import tempfile

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

ADDON_ID = __package__  # "bl_ext.<repo>.portraitsplat" when installed as an extension

CONNECTION_MODES = (
    ("LAUNCH", "Launch Local Backend", "Start 'python -m backend serve' with the Python below and connect to it"),
    ("FILE", "Connection File", "Connect to a running backend through the connection file it wrote"),
    ("ADDRESS", "Host and Ports", "Connect to a running backend by address, ports and signing key"),
)


def default_state_dir() -> str:
    """Per-user writable folder for the launched backend's jobs and connection file."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="backend", create=True)
    except (ValueError, AttributeError, KeyError):
        # Not installed as an extension (tests, development checkouts).
        return os.path.join(tempfile.gettempdir(), "portraitsplat-backend")


class PORTRAITSPLAT_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    connection_mode: EnumProperty(name="Backend", items=CONNECTION_MODES, default="LAUNCH")
    python_path: StringProperty(
        name="Backend Python",
        description="Python interpreter of the venv where the PortraitSplat backend is installed",
        subtype="FILE_PATH",
    )
    backend_dir: StringProperty(
        name="Backend Source",
        description="Optional: a PortraitSplat source checkout to run from (added to PYTHONPATH)",
        subtype="DIR_PATH",
    )
    state_dir: StringProperty(
        name="Job Folder",
        description="Where the launched backend keeps jobs and results (empty: a per-user folder)",
        subtype="DIR_PATH",
    )
    launch_timeout: IntProperty(name="Start Timeout", default=120, min=5, max=3600, subtype="TIME_ABSOLUTE")
    connection_file: StringProperty(
        name="Connection File", description="JSON file written by 'python -m backend serve'", subtype="FILE_PATH"
    )
    host: StringProperty(name="Host", default="127.0.0.1")
    request_port: IntProperty(name="Request Port", default=0, min=0, max=65535)
    pub_port: IntProperty(name="Progress Port", default=0, min=0, max=65535)
    key: StringProperty(name="Key", description="Signing key from the backend's connection file", subtype="PASSWORD")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "connection_mode", expand=True)
        col = layout.column()
        if self.connection_mode == "LAUNCH":
            col.prop(self, "python_path")
            col.prop(self, "backend_dir")
            col.prop(self, "state_dir")
            col.prop(self, "launch_timeout")
            if not self.python_path:
                col.label(text="Set the python of the venv where the backend is installed", icon="INFO")
        elif self.connection_mode == "FILE":
            col.prop(self, "connection_file")
        else:
            col.prop(self, "host")
            row = col.row()
            row.prop(self, "request_port")
            row.prop(self, "pub_port")
            col.prop(self, "key")
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                col.label(text="A remote backend requires its signing key", icon="LOCKED")


class _Defaults:
    """Preference defaults, used when the add-on runs without being enabled (tests, scripts)."""

    def __init__(self):
        for name, prop in PORTRAITSPLAT_AP_preferences.__annotations__.items():
            setattr(self, name, prop.keywords.get("default", ""))


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        return _Defaults()
    return addon.preferences


classes = (PORTRAITSPLAT_AP_preferences,)
