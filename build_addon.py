#!/usr/bin/env python
"""Build the installable Blender extension: dist/portraitsplat-<version>.zip.

    python build_addon.py                    # download wheels (cached in build/wheels), build
    python build_addon.py --wheel-dir DIR    # use wheels already in DIR (offline builds)
    python build_addon.py --check dist/portraitsplat-0.1.0.zip   # verify an existing zip

The zip holds the add-on package (``blender_addon/`` without tests or caches), its
``blender_manifest.toml`` with a generated ``wheels`` list, and ``wheels/``:

- pyzmq for **CPython 3.11 and 3.13** on linux-x64, windows-x64 and macos-arm64. Blender
  4.2-5.0 embed 3.11, Blender 5.1+ embed 3.13; an extension that ships only cp311 wheels
  is refused by 5.1 ("This Python version (3.13) isn't compatible with (3.11)"). The
  wheels must be version-specific (``cp313-cp313``), not ``abi3``: Blender derives the
  Python versions an extension supports from its wheel tags, and a ``cp312-abi3`` wheel next
  to a ``cp311`` one is read as "3.11 only". So pip is asked for ``--abi cp3XX`` and pyzmq
  is pinned to a release that publishes such wheels.
- plyfile, pure Python; pinned to a release that accepts numpy 1.x (Blender 4.2-5.0 ship
  numpy 1.26; plyfile 1.1.4+ needs numpy 2).

Every (Python, platform) pair must get exactly one pyzmq wheel; if any download fails the
build stops with an error and writes no zip. The manifest's ``platforms`` must equal the
platforms the wheels cover. This script never imports bpy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "blender_addon"
MANIFEST = ADDON_DIR / "blender_manifest.toml"

PYZMQ = "pyzmq==26.4.0"
PLYFILE = "plyfile==1.1.3"
PYTHONS = ("3.11", "3.13")
# Blender platform -> pip --platform tags to try (newest first; pip also accepts older ones).
PLATFORMS = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64",),
}
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", "tests"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".blend1")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class WheelTags:
    name: str
    version: str
    python: tuple[str, ...]
    abi: tuple[str, ...]
    platform: tuple[str, ...]

    @classmethod
    def parse(cls, filename: str) -> WheelTags:
        parts = filename[:-4].split("-") if filename.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise BuildError(f"not a wheel file name: {filename}")
        return cls(
            parts[0], parts[1], tuple(parts[-3].split(".")), tuple(parts[-2].split(".")), tuple(parts[-1].split("."))
        )

    def covers_python(self, version: str) -> bool:
        tag = "cp" + version.replace(".", "")
        return tag in self.python or "py3" in self.python

    def blender_platforms(self) -> set[str]:
        if self.platform == ("any",):
            return set(PLATFORMS)
        out = set()
        for plat in self.platform:
            if plat.startswith(("manylinux", "linux")) and plat.endswith("x86_64"):
                out.add("linux-x64")
            elif plat == "win_amd64":
                out.add("windows-x64")
            elif plat.startswith("macosx") and plat.endswith(("arm64", "universal2")):
                out.add("macos-arm64")
        return out


def _pip_download(requirement: str, dest: Path, *, python: str | None = None, platforms: tuple[str, ...] = ()) -> Path:
    """Download one wheel with pip; returns its path. Raises BuildError when pip cannot."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            requirement,
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            tmp,
            "--disable-pip-version-check",
            "--quiet",
        ]
        if python is not None:
            abi = "cp" + python.replace(".", "")
            cmd += ["--python-version", python, "--implementation", "cp", "--abi", abi]
            for plat in platforms:
                cmd += ["--platform", plat]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(got) != 1:
            what = f"{requirement} for CPython {python} on {'/'.join(platforms)}" if python else requirement
            raise BuildError(f"could not download {what}:\n{proc.stderr.strip() or proc.stdout.strip()}")
        target = dest / got[0].name
        shutil.move(str(got[0]), target)
        return target


def _find_cached(cache: Path, name: str, version: str, python: str | None, blender_platform: str | None) -> Path | None:
    for whl in sorted(cache.glob("*.whl")):
        tags = WheelTags.parse(whl.name)
        if tags.name.lower() != name.lower() or tags.version != version:
            continue
        if python is not None and not ("cp" + python.replace(".", "") in tags.abi and tags.covers_python(python)):
            continue
        if blender_platform is not None and blender_platform not in tags.blender_platforms():
            continue
        return whl
    return None


def collect_wheels(cache: Path, *, offline: bool = False) -> dict[tuple[str, str], Path]:
    """One wheel per (python, platform) for pyzmq, plus the plyfile wheel under key ("py3", "any")."""
    cache.mkdir(parents=True, exist_ok=True)
    plan: dict[tuple[str, str], Path] = {}
    zname, zver = PYZMQ.split("==")
    missing = []
    for python in PYTHONS:
        for platform, pip_tags in PLATFORMS.items():
            whl = _find_cached(cache, zname, zver, python, platform)
            if whl is None and not offline:
                try:
                    whl = _pip_download(PYZMQ, cache, python=python, platforms=pip_tags)
                except BuildError as exc:
                    missing.append(str(exc))
                    continue
            if whl is None:
                missing.append(f"{PYZMQ} for CPython {python} on {platform}: not in {cache}")
                continue
            plan[(python, platform)] = whl
    pname, pver = PLYFILE.split("==")
    whl = _find_cached(cache, pname, pver, None, None)
    if whl is None and not offline:
        try:
            whl = _pip_download(PLYFILE, cache)
        except BuildError as exc:
            missing.append(str(exc))
    if whl is None and not any(PLYFILE in m for m in missing):
        missing.append(f"{PLYFILE}: not in {cache}")
    if whl is not None:
        plan[("py3", "any")] = whl
    if missing:
        raise BuildError("refusing to build a partial extension; missing wheels:\n  " + "\n  ".join(missing))
    return plan


def render_manifest(source: str, wheels: list[str]) -> str:
    """The source manifest with a generated ``wheels = [...]`` (replacing any existing one)."""
    text = re.sub(r"(?ms)^wheels\s*=\s*\[.*?\]\s*\n", "", source)
    block = "wheels = [\n" + "".join(f'  "./wheels/{w}",\n' for w in sorted(wheels)) + "]\n"
    # top-level keys must come before the first [table]
    m = re.search(r"(?m)^\[", text)
    at = m.start() if m else len(text)
    return text[:at] + block + "\n" + text[at:]


def check_manifest(manifest: dict, wheel_names: list[str]) -> list[str]:
    """Problems with a manifest against the wheels in the zip (empty list: all good)."""
    problems = []
    for key in (
        "schema_version",
        "id",
        "version",
        "name",
        "tagline",
        "maintainer",
        "type",
        "license",
        "blender_version_min",
    ):
        if key not in manifest:
            problems.append(f"manifest lacks '{key}'")
    if manifest.get("type") != "add-on":
        problems.append("manifest type must be 'add-on'")
    if tuple(int(x) for x in str(manifest.get("blender_version_min", "0")).split(".")[:2]) < (4, 2):
        problems.append("blender_version_min must be 4.2.0 or later (extensions)")
    listed = sorted(Path(w).name for w in manifest.get("wheels", []))
    if listed != sorted(wheel_names):
        problems.append(f"manifest wheels {listed} differ from the zip's wheels {sorted(wheel_names)}")
    for w in manifest.get("wheels", []):
        if not w.startswith("./wheels/"):
            problems.append(f"wheel path {w!r} must start with ./wheels/")
    perms = manifest.get("permissions", {})
    for needed in ("network", "files"):
        if needed not in perms:
            problems.append(f"[permissions] lacks '{needed}' (the add-on uses sockets and files)")
    for key, reason in perms.items():
        if (
            not isinstance(reason, str)
            or not reason
            or len(reason) > 64
            or not (reason[-1].isalnum() or reason[-1] in ")]}")
        ):
            problems.append(f"[permissions] {key}: a reason of at most 64 characters not ending in punctuation")
    tags = [WheelTags.parse(w) for w in wheel_names]
    zmq = [t for t in tags if t.name.lower() == "pyzmq"]
    covered = set()
    for python in PYTHONS:
        for platform in PLATFORMS:
            hits = [
                t
                for t in zmq
                if t.covers_python(python)
                and "cp" + python.replace(".", "") in t.abi
                and platform in t.blender_platforms()
            ]
            if len(hits) != 1:
                problems.append(f"{len(hits)} pyzmq wheels for CPython {python} on {platform}, expected 1")
            else:
                covered.add(platform)
    if any("abi3" in t.abi for t in zmq):
        problems.append("abi3 pyzmq wheels make Blender believe the extension supports one Python only")
    if not any(t.name.lower() == "plyfile" for t in tags):
        problems.append("no plyfile wheel")
    if sorted(manifest.get("platforms", [])) != sorted(covered):
        problems.append(
            f"manifest platforms {manifest.get('platforms')} differ from the wheels' platforms {sorted(covered)}"
        )
    return problems


def check_zip(path: Path) -> dict:
    """Verify a built zip; returns its manifest. Raises BuildError listing every problem."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if "blender_manifest.toml" not in names or "__init__.py" not in names:
            raise BuildError(f"{path} lacks blender_manifest.toml or __init__.py at its top level")
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
        wheels = [n[len("wheels/") :] for n in names if n.startswith("wheels/") and n.endswith(".whl")]
        problems = check_manifest(manifest, wheels)
        if any(n.endswith((".pyc",)) or "__pycache__" in n for n in names):
            problems.append("the zip contains compiled caches")
        if any(n.startswith("core/") for n in names) is False:
            problems.append("the zip lacks core/")
    if problems:
        raise BuildError(f"{path} is not a valid extension:\n  " + "\n  ".join(problems))
    return manifest


def addon_files() -> list[Path]:
    out = []
    for path in sorted(ADDON_DIR.rglob("*")):
        rel = path.relative_to(ADDON_DIR)
        if path.is_dir() or any(part in EXCLUDE_DIRS for part in rel.parts) or path.name.endswith(EXCLUDE_SUFFIXES):
            continue
        if path.name == "blender_manifest.toml" or rel.parts[0] == "wheels":
            continue
        out.append(path)
    return out


def build(out_dir: Path, cache: Path, *, offline: bool = False) -> Path:
    plan = collect_wheels(cache, offline=offline)
    wheels = sorted({p.name: p for p in plan.values()}.items())
    manifest_text = render_manifest(MANIFEST.read_text(encoding="utf-8"), [name for name, _ in wheels])
    manifest = tomllib.loads(manifest_text)
    problems = check_manifest(manifest, [name for name, _ in wheels])
    if problems:
        raise BuildError("manifest does not match the wheels:\n  " + "\n  ".join(problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for path in addon_files():
            zf.write(path, path.relative_to(ADDON_DIR).as_posix())
        for name, path in wheels:
            zf.write(path, f"wheels/{name}", compress_type=zipfile.ZIP_STORED)
    check_zip(tmp)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    ap.add_argument("--wheel-dir", type=Path, default=None, help="use wheels from this folder, download nothing")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "wheels", help="wheel download cache")
    ap.add_argument("--check", type=Path, default=None, help="only verify an existing zip")
    args = ap.parse_args(argv)
    try:
        if args.check is not None:
            manifest = check_zip(args.check)
            print(f"{args.check}: valid extension {manifest['id']} {manifest['version']}")
            for w in manifest["wheels"]:
                print(f"  {w}")
            return 0
        path = build(args.out, args.wheel_dir or args.cache, offline=args.wheel_dir is not None)
    except BuildError as exc:
        print(f"build_addon: error: {exc}", file=sys.stderr)
        return 1
    manifest = check_zip(path)
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB) for {', '.join(manifest['platforms'])}")
    for w in manifest["wheels"]:
        print(f"  {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
