"""``python -m backend convert`` and ``generate --format``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from formats_support import random_splats

from backend.cli import main
from blender_addon.core import formats
from blender_addon.core.splat_arrays import SplatArrays
from blender_addon.core.splat_ply import read_ply, write_ply

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _splats() -> SplatArrays:
    return random_splats(200, k=3, seed=2)


def test_convert_chains_through_every_format(tmp_path, capsys):
    s = _splats()
    write_ply(tmp_path / "a.ply", s)
    chain = ["a.ply", "b.glb", "c.spz", "d.ply", "e.splat", "f.ply"]
    for src, dst in zip(chain, chain[1:]):
        assert main(["convert", str(tmp_path / src), str(tmp_path / dst)]) == 0
        assert f"wrote {tmp_path / dst}" in capsys.readouterr().err
    glb = formats.read_splats(tmp_path / "b.glb")
    np.testing.assert_allclose(glb.means, s.means, atol=1e-6)  # GLB is float32
    np.testing.assert_allclose(glb.shN, s.shN, atol=1e-5)
    d = read_ply(tmp_path / "d.ply")
    assert np.abs(d.means - s.means).max() <= 0.5 / 4096 + 1e-6  # SPZ's 12 fraction bits
    assert d.shN is not None and d.shN.shape == s.shN.shape
    f = read_ply(tmp_path / "f.ply")
    assert f.shN is None  # .splat has no SH bands
    assert np.abs(f.opacity() - s.opacity()).max() < 2 / 255


def test_convert_spz_frame_and_version(tmp_path):
    s = _splats()
    write_ply(tmp_path / "a.ply", s)
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "rdf.spz"), "--spz-frame", "rdf"]) == 0
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "v2.spz"), "--spz-version", "2"]) == 0
    from blender_addon.core.formats import spz

    rdf = spz.read_spz(tmp_path / "rdf.spz", frame="rdf")
    assert np.abs(rdf.means - s.means).max() <= 0.5 / 4096 + 1e-6
    wrong = spz.read_spz(tmp_path / "rdf.spz")  # read as the spec's RUB: upside down and turned
    assert np.abs(wrong.means - s.means).max() > 0.05
    import gzip

    assert gzip.decompress((tmp_path / "v2.spz").read_bytes())[4] == 2


def test_convert_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.ply"), str(tmp_path / "x.spz")]) == 1
    assert "error [not_found]" in capsys.readouterr().err
    (tmp_path / "junk.spz").write_bytes(b"not a splat file")
    assert main(["convert", str(tmp_path / "junk.spz"), str(tmp_path / "x.glb")]) == 1
    assert "error [bad_file]" in capsys.readouterr().err
    write_ply(tmp_path / "a.ply", _splats())
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "x.fbx")]) == 2
    assert "error [bad_format]" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "x.spz"), "--mesh"]) == 2
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "x.obj"), "--faces", "10"]) == 2
    assert not (tmp_path / "x.spz").exists() and not (tmp_path / "x.obj").exists()


def test_generate_writes_each_requested_format(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTRAITSPLAT_TEST_PIPELINES", "1")
    out = tmp_path / "out"
    code = main(
        ["generate", str(EXAMPLES / "astronaut.jpg"), "--out", str(out), "--pipeline", "synthetic", "--no-eval"]
        + ["--quiet", "--format", "spz,glb,splat", "--option", "sh_degree=2"]
    )
    assert code == 0, capsys.readouterr().err
    ply = read_ply(out / "head.ply")
    for fmt in ("spz", "glb", "splat"):
        s = formats.read_splats(out / f"head.{fmt}")
        assert len(s) == len(ply)
        assert np.abs(s.means - ply.means).max() <= 0.5 / 4096 + 1e-6, fmt
    assert formats.read_splats(out / "head.glb").sh_degree == 2
    assert not (out / "head_mesh.glb").exists()


def test_generate_rejects_an_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "x.jpg", "--out", str(tmp_path), "--format", "ply,fbx"])
    assert exc.value.code == 2 and "unknown format fbx" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_to_a_mesh(tmp_path, capsys):
    trimesh = pytest.importorskip("trimesh")
    r = np.random.default_rng(0)
    d = r.normal(size=(5000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    n = len(d)
    ball = SplatArrays(
        (d * 0.08).astype(np.float32),
        np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        np.full((n, 3), np.log(0.004), np.float32),
        np.full(n, 3.0, np.float32),
        np.zeros((n, 3), np.float32),
    )
    write_ply(tmp_path / "ball.ply", ball)
    code = main(["convert", str(tmp_path / "ball.ply"), str(tmp_path / "ball.obj"), "--faces", "2000"])
    assert code == 0 and "watertight=True" in capsys.readouterr().err
    m = trimesh.load(tmp_path / "ball.obj", force="mesh")
    m.merge_vertices()
    assert m.is_watertight and len(m.faces) <= 2000
