"""The built zip installs as a Blender extension, picks this Python's pyzmq wheel and registers.

Runs on every bpy of the matrix (scripts/test_blender_matrix.sh): 4.2, 4.5 and 5.0 embed
CPython 3.11 and must pick the cp311 wheel, 5.1+ embed 3.13 and must pick cp313.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.blender
pytest.importorskip("bpy")

from conftest import REPO  # noqa: E402

INSTALL = r"""
import sys, bpy
zip_path = sys.argv[-1]
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
assert result == {"FINISHED"}, result
mod = "bl_ext.user_default.portraitsplat"
assert mod in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
prefs = bpy.context.preferences.addons[mod].preferences
assert prefs.connection_mode == "LAUNCH", prefs
assert hasattr(bpy.types.Scene, "portraitsplat") and hasattr(bpy.ops.portraitsplat, "generate")
assert hasattr(bpy.types.Object, "portraitsplat_splat_view") and hasattr(bpy.ops.portraitsplat, "splat_view")
import glob, os
site = glob.glob(os.path.join(bpy.utils.user_resource("EXTENSIONS"), ".local", "lib", "python*", "site-packages"))[0]
tag = "cp%d%d" % sys.version_info[:2]
wheels = open(glob.glob(os.path.join(site, "pyzmq-*.dist-info", "WHEEL"))[0]).read()
assert f"Tag: {tag}-{tag}-" in wheels, wheels
sys.path.insert(0, site)
for name in [m for m in sys.modules if m == "zmq" or m.startswith("zmq.")]:
    del sys.modules[name]
import zmq
assert zmq.__file__.startswith(site), zmq.__file__
bpy.ops.preferences.addon_disable(module=mod)
assert not hasattr(bpy.types.Scene, "portraitsplat")
assert not hasattr(bpy.types.Object, "portraitsplat_splat_view")
print("OK", tag, zmq.pyzmq_version())
"""


def test_built_zip_installs_and_enables(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(dist)], cwd=REPO, check=True)
    zip_path = next(dist.glob("portraitsplat-*.zip"))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    out = subprocess.run([sys.executable, "-c", INSTALL, str(zip_path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert tag in ("cp311", "cp313"), f"no Blender embeds Python {tag}"
    assert f"OK {tag} 26.4.0" in out.stdout, out.stdout[-3000:]


def test_blender_validates_the_built_zip(tmp_path):
    import bpy

    cli = os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    if not os.path.isfile(cli):
        pytest.skip(f"no blender_ext.py at {cli}")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(dist)], cwd=REPO, check=True)
    zip_path = next(dist.glob("portraitsplat-*.zip"))
    out = subprocess.run([sys.executable, cli, "validate", str(zip_path)], capture_output=True, text=True)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr
