"""build_addon.py: the extension zip bundles pyzmq for cp311 AND cp313 on every platform."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_addon", REPO / "build_addon.py")
build_addon = importlib.util.module_from_spec(spec)
sys.modules["build_addon"] = build_addon  # dataclasses look their module up there
spec.loader.exec_module(build_addon)

EXPECTED = [
    "plyfile-1.1.3-py3-none-any.whl",
    "pyzmq-26.4.0-cp311-cp311-macosx_10_15_universal2.whl",
    "pyzmq-26.4.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    "pyzmq-26.4.0-cp311-cp311-win_amd64.whl",
    "pyzmq-26.4.0-cp313-cp313-macosx_10_15_universal2.whl",
    "pyzmq-26.4.0-cp313-cp313-manylinux_2_28_x86_64.whl",
    "pyzmq-26.4.0-cp313-cp313-win_amd64.whl",
]


def _fake_wheels(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        with zipfile.ZipFile(folder / name, "w") as zf:
            zf.writestr("placeholder.txt", name)
    return folder


def test_offline_build_lists_every_wheel_and_a_valid_manifest(tmp_path):
    wheels = _fake_wheels(tmp_path / "wheels", EXPECTED)
    path = build_addon.build(tmp_path / "dist", wheels, offline=True)
    assert path.name == "portraitsplat-0.1.0.zip"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert {"__init__.py", "splats.py", "controller.py", "core/splat_arrays.py", "core/backend_launcher.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert sorted(Path(w).name for w in manifest["wheels"]) == EXPECTED
    assert {f"wheels/{w}" for w in EXPECTED} <= names
    assert sorted(manifest["platforms"]) == ["linux-x64", "macos-arm64", "windows-x64"]
    assert manifest["blender_version_min"] == "4.2.0" and manifest["type"] == "add-on"
    assert set(manifest["permissions"]) == {"network", "files"}
    assert "build" not in manifest or "wheels" not in manifest["build"]


@pytest.mark.parametrize("drop", ["pyzmq-26.4.0-cp313-cp313-win_amd64.whl", "plyfile-1.1.3-py3-none-any.whl"])
def test_missing_wheel_fails_loudly_and_writes_no_zip(tmp_path, drop):
    wheels = _fake_wheels(tmp_path / "wheels", [w for w in EXPECTED if w != drop])
    with pytest.raises(build_addon.BuildError, match="refusing to build a partial extension"):
        build_addon.build(tmp_path / "dist", wheels, offline=True)
    assert not list((tmp_path / "dist").glob("*.zip")) if (tmp_path / "dist").exists() else True


def test_abi3_wheel_is_not_accepted_for_cp313():
    # Blender reads cp311 + cp312-abi3 as "Python 3.11 only" and refuses the add-on on 5.1+.
    names = [w for w in EXPECTED if "cp313" not in w] + [
        "pyzmq-27.3.0-cp312-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
        "pyzmq-27.3.0-cp312-abi3-win_amd64.whl",
        "pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl",
    ]
    manifest = {
        "schema_version": "1.0.0",
        "id": "x",
        "version": "1",
        "name": "x",
        "tagline": "x",
        "maintainer": "x",
        "type": "add-on",
        "license": ["x"],
        "blender_version_min": "4.2.0",
        "platforms": ["linux-x64", "windows-x64", "macos-arm64"],
        "wheels": [f"./wheels/{n}" for n in names],
        "permissions": {"network": "n", "files": "f"},
    }
    problems = build_addon.check_manifest(manifest, names)
    assert any("CPython 3.13 on linux-x64" in p for p in problems)
    assert any("abi3" in p for p in problems)


def test_manifest_platform_mismatch_is_reported():
    manifest = tomllib.loads(build_addon.render_manifest(build_addon.MANIFEST.read_text(), EXPECTED))
    manifest["platforms"] = ["linux-x64", "windows-x64", "macos-arm64", "linux-arm64"]
    assert any("platforms" in p for p in build_addon.check_manifest(manifest, EXPECTED))


@pytest.mark.slow
def test_real_build_downloads_all_wheels(tmp_path):
    """Downloads the real wheels (cached in build/wheels) and checks the zip."""
    path = build_addon.build(tmp_path / "dist", REPO / "build" / "wheels")
    manifest = build_addon.check_zip(path)
    assert sorted(Path(w).name for w in manifest["wheels"]) == EXPECTED
