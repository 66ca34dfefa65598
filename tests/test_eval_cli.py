"""``python -m backend eval``: what RESULT may be, and the typed errors for what it may not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.cli import build_parser, main
from backend.eval.result_io import ResultError, find_result, job_photo, read_result
from blender_addon.core.splat_arrays import SplatArrays
from blender_addon.core.splat_ply import write_ply


def _tiny_head(n: int = 50) -> SplatArrays:
    rng = np.random.default_rng(0)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1
    return SplatArrays(
        means=rng.normal(scale=0.05, size=(n, 3)).astype(np.float32),
        quats=quats,
        log_scales=np.full((n, 3), np.log(0.01), np.float32),
        opacity_logits=np.zeros(n, np.float32),
        sh0=np.zeros((n, 3), np.float32),
    )


def _blank_photo(path):
    Image.fromarray(np.full((320, 320, 3), 128, np.uint8)).save(path)
    return path


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_eval_is_a_registered_command():
    args = build_parser().parse_args(["eval", "out/demo", "--photo", "p.jpg"])
    assert args.views == 24 and args.size == 512 and args.ply_frame == "ply" and args.renderer == "fast"
    assert callable(args.func)


def test_result_may_be_a_ply_an_npz_or_a_folder_holding_one(tmp_path):
    head = _tiny_head()
    write_ply(tmp_path / "head.ply", head)
    np.savez(tmp_path / "result.npz", **head.as_dict())
    assert find_result(tmp_path) == tmp_path / "head.ply"  # generate's folder wins
    np.testing.assert_allclose(read_result(tmp_path).means, head.means, atol=1e-6)  # PLY frame -> head frame
    np.testing.assert_allclose(read_result(tmp_path / "result.npz").means, head.means)
    write_ply(tmp_path / "head_frame.ply", head, frame="head")
    np.testing.assert_allclose(read_result(tmp_path / "head_frame.ply", ply_frame="head").means, head.means)
    (tmp_path / "head.ply").unlink()
    assert find_result(tmp_path) == tmp_path / "result.npz"  # a server job folder


@pytest.mark.parametrize("what", ["missing", "empty_folder", "not_a_ply"])
def test_no_head_is_a_typed_error(tmp_path, capsys, what):
    photo = _blank_photo(tmp_path / "photo.png")
    result = {"missing": tmp_path / "nope.ply", "empty_folder": tmp_path / "empty", "not_a_ply": tmp_path / "x.ply"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.ply").write_text("hello")
    with pytest.raises(ResultError):
        read_result(result[what])
    code, err = _run(["eval", str(result[what]), "--photo", str(photo)], capsys)
    assert code == 1 and "error [no_result]" in err and "hint:" in err


def test_a_photo_without_a_face_is_a_typed_error(tmp_path, capsys):
    write_ply(tmp_path / "head.ply", _tiny_head())
    code, err = _run(["eval", str(tmp_path), "--photo", str(_blank_photo(tmp_path / "p.png"))], capsys)
    assert code == 1 and "error [no_face]" in err


def test_a_job_folder_brings_its_own_photo(tmp_path, capsys):
    np.savez(tmp_path / "result.npz", **_tiny_head().as_dict())
    code, err = _run(["eval", str(tmp_path)], capsys)
    assert code == 1 and "error [no_photo]" in err and "--photo" in err
    _blank_photo(tmp_path / "input.png")
    assert job_photo(tmp_path) == tmp_path / "input.png"
    code, err = _run(["eval", str(tmp_path)], capsys)
    assert code == 1 and "error [no_face]" in err  # the job's photo was read (and has no face)


def test_bad_view_count_is_a_typed_error(tmp_path, capsys):
    write_ply(tmp_path / "head.ply", _tiny_head())
    code, err = _run(["eval", str(tmp_path), "--photo", "p.png", "--views", "0"], capsys)
    assert code == 1 and "error [bad_option]" in err
