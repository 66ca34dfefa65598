"""Outside readers: PlayCanvas splat-transform (npm) reads our .spz and .splat, and we read
its .spz and .glb; the Khronos glTF validator (npm) checks our splat and mesh GLBs.

splat-transform 3.10 reads ply/spz/splat/... and writes ply/spz/glb/... but reads no .glb and
writes no .splat, so: our .spz and .splat go through it to PLY, which we compare with our
values; its .spz (v4 ZSTD and v3 gzip) and .glb, written from our PLY, go through our readers.

Two axis conventions differ from ours and the specs', and are checked as such:
- its SPZ holds the PLY's RDF axes (it bakes to PLY space and packs with no conversion),
  where Niantic's spec stores RUB: we write RUB, and read its files with ``frame="rdf"``;
- its GLB is in PlayCanvas's engine space, the PLY turned 180 degrees about Z (x, y negated),
  where glTF's asset front faces +Z: the same Y-up, turned 180 degrees about Y from ours.

The validator (2.0.0-dev.3.10) predates KHR_gaussian_splatting: it reports the extension
as unsupported and each of its attribute names as invalid (the same for splat-transform's
GLB), and nothing else may be wrong; Blender's glTF importer reads the same file as a point
cloud (tests/blender/test_formats_blender.py).

Installed by scripts/test.sh with npm into .cache/npm; these tests skip where it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from formats_support import random_splats

from blender_addon.core.formats import _common, dotsplat, gltf, spz
from blender_addon.core.frames import HEAD_TO_PLY
from blender_addon.core.splat_arrays import SH_C0, SplatArrays
from blender_addon.core.splat_ply import read_ply, write_ply

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / ".cache/npm/node_modules"
TOOL = Path(os.environ.get("PORTRAITSPLAT_SPLAT_TRANSFORM", NODE_MODULES / ".bin/splat-transform"))


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH: splat-transform (npm) cannot run"
    if not TOOL.exists():
        return f"splat-transform is not installed at {TOOL} (scripts/test.sh installs it with npm into .cache/npm)"
    return None


needs_splat_transform = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
needs_validator = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_MODULES / "gltf-validator/package.json").exists(),
    reason="node or the npm package gltf-validator is absent (scripts/test.sh installs it into .cache/npm)",
)


def _run(*args: str | Path) -> None:
    proc = subprocess.run([str(TOOL), "-w", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _splats(n=300, k=15, seed=5) -> SplatArrays:
    return random_splats(n, k, seed)


def _rot_err(a: SplatArrays, b: SplatArrays) -> float:
    d = np.abs(np.sum(a.unit_quats().astype(np.float64) * b.unit_quats(), axis=1))
    return float(2 * np.arccos(np.clip(d, 0.0, 1.0)).max())


def _assert_close(a: SplatArrays, b: SplatArrays, *, pos, log_scale, opacity, sh0, rot, sh=None):
    assert len(a) == len(b)
    assert np.abs(a.means - b.means).max() <= pos
    assert np.abs(a.log_scales - b.log_scales).max() <= log_scale
    assert np.abs(a.opacity() - b.opacity()).max() <= opacity
    assert np.abs(a.sh0 - b.sh0).max() <= sh0
    assert _rot_err(a, b) <= rot
    if sh is not None:
        assert a.shN is not None and b.shN is not None and a.shN.shape == b.shN.shape
        assert np.abs(a.shN - b.shN).max() <= sh


SPZ_TOL = dict(pos=0.5 / 4096 + 1e-6, log_scale=1 / 32 + 1e-5, opacity=0.5 / 255 + 1e-6, sh0=0.5 / 255 / 0.15 + 1e-5)


@needs_splat_transform
def test_splat_transform_reads_our_spz(tmp_path):
    s = _splats()
    spz.write_spz(tmp_path / "ours.spz", s)  # RUB, as the spec stores it
    _run(tmp_path / "ours.spz", tmp_path / "theirs.ply")
    theirs = read_ply(tmp_path / "theirs.ply", frame="head")  # its PLY holds the SPZ's values as they are
    ours = spz.read_spz(tmp_path / "ours.spz", frame="head")
    # the same dequantised numbers as our reader (float rounding apart) ...
    _assert_close(theirs, ours, pos=1e-6, log_scale=1e-5, opacity=1e-6, sh0=1e-5, rot=2e-3, sh=1e-6)
    # ... which are our values, in RUB axes, within SPZ's steps
    rub = _common.turn(s, _common.HEAD_TO_RUB)
    _assert_close(theirs, rub, **SPZ_TOL, rot=0.007, sh=8.5 / 128 * np.sqrt(7) + 1e-6)


@needs_splat_transform
def test_splat_transform_reads_our_rdf_spz_as_its_ply(tmp_path):
    s = _splats()
    spz.write_spz(tmp_path / "ours.spz", s, frame="rdf")  # its own convention
    _run(tmp_path / "ours.spz", tmp_path / "theirs.ply")
    theirs = read_ply(tmp_path / "theirs.ply")  # a PLY read as any PLY: back in our head frame
    _assert_close(theirs, s, **SPZ_TOL, rot=0.007)
    assert np.abs(theirs.shN - s.shN).max() < 0.2  # quantised in RDF axes, turned back


@needs_splat_transform
def test_splat_transform_reads_our_dotsplat(tmp_path):
    s = _splats(k=0)
    dotsplat.write_splat(tmp_path / "ours.splat", s)
    _run(tmp_path / "ours.splat", tmp_path / "theirs.ply")
    theirs = read_ply(tmp_path / "theirs.ply")
    # its reader maps rotation bytes as u/255*2-1 (ours and antimatter15's: (u-128)/128)
    _assert_close(theirs, s, pos=1e-6, log_scale=1e-5, opacity=0.5 / 255 + 1e-5, sh0=0.5 / 255 / SH_C0 + 1e-4, rot=0.05)


@needs_splat_transform
@pytest.mark.parametrize("version", ["3", "4"])
def test_we_read_splat_transform_spz(tmp_path, version):
    if version == "4":
        pytest.importorskip("zstandard", reason="SPZ v4 needs the zstandard package")
    s = _splats()
    write_ply(tmp_path / "ours.ply", s)
    _run("--spz-version", version, tmp_path / "ours.ply", tmp_path / "theirs.spz")
    head = (tmp_path / "theirs.spz").read_bytes()[:4]
    assert (head == b"NGSP") if version == "4" else (head[:2] == b"\x1f\x8b")
    t = spz.read_spz(tmp_path / "theirs.spz", frame="rdf")
    _assert_close(t, s, **SPZ_TOL, rot=0.007)
    assert np.abs(t.shN - s.shN).max() < 0.2  # quantised in RDF axes, turned back
    raw = spz.read_spz(tmp_path / "theirs.spz", frame="head")
    ply = _common.turn(s, HEAD_TO_PLY)
    assert np.abs(raw.shN - ply.shN).max() <= 8.5 / 128 + 1e-6  # in its own axes: SPZ's SH steps


@needs_splat_transform
def test_we_read_splat_transform_glb(tmp_path):
    s = _splats()
    write_ply(tmp_path / "ours.ply", s)
    _run(tmp_path / "ours.ply", tmp_path / "theirs.glb")
    t = gltf.read_glb(tmp_path / "theirs.glb", frame="head")
    engine = np.diag([-1.0, -1.0, 1.0]) @ HEAD_TO_PLY  # PlayCanvas engine space: PLY turned 180 deg about Z
    expect = _common.turn(s, engine)
    _assert_close(t, expect, pos=1e-6, log_scale=1e-5, opacity=1e-6, sh0=1e-6, rot=2e-3, sh=1e-5)
    # the same cloud in our glTF axes, turned 180 degrees about Y
    ours = gltf.read_glb(gltf.to_glb_bytes(s), frame="head")
    np.testing.assert_allclose(t.means, ours.means * np.float32([-1, 1, -1]), atol=1e-6)


_VALIDATE = """
import { createRequire } from 'module';
import fs from 'fs';
const require = createRequire(process.argv[1] + '/');
const validator = require('gltf-validator');
const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), { maxIssues: 200 });
console.log(JSON.stringify(report.issues));
"""


def _validate(path: Path) -> dict:
    import json

    proc = subprocess.run(
        ["node", "--input-type=module", "-e", _VALIDATE, str(NODE_MODULES), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_validator
def test_khronos_validator_finds_nothing_wrong_but_the_new_extension(tmp_path):
    s = _splats(k=8)
    gltf.write_glb(tmp_path / "ours.glb", s)
    issues = _validate(tmp_path / "ours.glb")
    assert issues["numWarnings"] == 0
    errors = [m for m in issues["messages"] if m["severity"] == 0]
    assert len(errors) == issues["numErrors"] > 0
    prefix = "/meshes/0/primitives/0/attributes/KHR_gaussian_splatting:"
    assert {m["code"] for m in errors} == {"MESH_PRIMITIVE_INVALID_ATTRIBUTE"}
    assert all(m["pointer"].startswith(prefix) for m in errors)
    infos = [m for m in issues["messages"] if m["severity"] == 2]
    assert [m["code"] for m in infos] == ["UNSUPPORTED_EXTENSION"]


@needs_validator
def test_khronos_validator_passes_our_mesh_glb(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    from backend.export.mesh import MeshResult, write_mesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    colours = np.full((len(sphere.vertices), 4), 200, np.uint8)
    write_mesh(tmp_path / "mesh.glb", MeshResult(sphere.vertices, sphere.faces, colours, True))
    issues = _validate(tmp_path / "mesh.glb")
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
