"""``blender_addon.core`` is shared with the backend: it must never pull in bpy or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import importlib, pkgutil, sys
import blender_addon, blender_addon.core as core
for m in pkgutil.iter_modules(core.__path__):
    importlib.import_module("blender_addon.core." + m.name)
bad = [m for m in ("bpy", "torch", "mathutils", "bpy_extras") if m in sys.modules]
assert not bad, f"blender_addon.core imported {bad}"
print(sorted(m.name for m in pkgutil.iter_modules(core.__path__)))
"""


def test_core_imports_without_bpy():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert "splat_arrays" in out and "backend_launcher" in out


def test_build_addon_never_imports_bpy():
    code = "import sys, runpy; runpy.run_path('build_addon.py', run_name='not_main'); assert 'bpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_backend_launcher_reports_missing_python(tmp_path):
    import pytest

    from blender_addon.core.backend_launcher import BackendCommand, BackendLaunchError, launch_backend

    cmd = BackendCommand(
        python=str(tmp_path / "nope" / "python"), connection_file=tmp_path / "c.json", state_dir=tmp_path
    )
    with pytest.raises(BackendLaunchError) as err:
        launch_backend(cmd)
    assert "does not exist" in err.value.message and "Backend Python" in err.value.hint


def test_backend_launcher_reports_early_exit(tmp_path):
    import pytest

    from blender_addon.core.backend_launcher import BackendCommand, BackendLaunchError, launch_backend

    # A stand-in backend that fails at start-up (as a venv without the models would).
    pkg = tmp_path / "backend"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("import sys\nprint('boom: no such thing', file=sys.stderr)\nsys.exit(3)\n")
    cmd = BackendCommand(
        python=sys.executable,
        connection_file=tmp_path / "c.json",
        state_dir=tmp_path / "s",
        extra_args=[],
        workdir=tmp_path,
    )
    cmd_argv = cmd.argv()
    assert cmd_argv[1:4] == ["-m", "backend", "serve"]
    with pytest.raises(BackendLaunchError) as err:
        launch_backend(cmd, timeout=30)
    assert "exited with code 3" in err.value.message and "boom" in err.value.message
    assert "backend.log" in err.value.hint


def test_backend_launcher_waits_for_connection_file(tmp_path):
    from blender_addon.core.backend_launcher import BackendCommand, launch_backend

    # A stand-in backend: writes its connection file atomically after a short delay, then idles.
    pkg = tmp_path / "backend"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import json, os, sys, time\n"
        "path = sys.argv[sys.argv.index('--connection-file') + 1]\n"
        "time.sleep(0.3)\n"
        "open(path + '.tmp', 'w').write(json.dumps({'ip': '127.0.0.1', 'router_port': 1, 'pub_port': 2, 'key': 'k'}))\n"
        "os.replace(path + '.tmp', path)\n"
        "time.sleep(60)\n"
    )
    conn = tmp_path / "state" / "connection.json"
    conn.parent.mkdir()
    conn.write_text('{"stale": true}')  # a previous run's file must not be mistaken for this one's
    proc = launch_backend(
        BackendCommand(python=sys.executable, connection_file=conn, state_dir=tmp_path / "state", workdir=tmp_path)
    )
    try:
        assert proc.connection_info["router_port"] == 1 and proc.alive()
    finally:
        assert proc.stop(timeout=5) is not None
    assert not proc.alive()
