"""Each evaluation metric separates a good head from a bad one (issue #14).

The heads are built directly from the fitted head template, coloured by projecting the photo
(no optimisation): the face where the photo sees it, plain hair colour elsewhere. Bad heads
are the good one with one thing broken: a face painted on the back, a 20 deg turn, blur.
They are rendered small (256 px, 12 yaws + 4 pitched views) to keep the suite quick.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from backend.eval import evaluate_splats
from backend.eval.colour import hsv_saturation, saturation_metrics
from backend.eval.optional import optional_metrics
from backend.eval.orbit import render_orbit
from backend.face import analyse_face
from backend.prior.fit import fit_head
from backend.prior.sample import bilinear, project_colors, sample_surface
from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

SIZE, VIEWS = 256, 12
HAIR = np.array([0.30, 0.22, 0.15], np.float32)


def template_head(photo: np.ndarray, n: int = 30_000, sigma_m: float = 0.002, back_face: bool = False) -> SplatArrays:
    """Opaque splats on the template fitted to ``photo``, coloured by projecting the photo.

    With ``back_face`` the photo is also projected onto the back of the head, as if the head
    were turned 180 deg: a face painted on its back."""
    face = analyse_face(photo)
    fit = fit_head(face.landmarks2d, (photo.shape[1], photo.shape[0]), landmarks3d=face.landmarks3d)
    mesh = fit.mesh()
    pts, normals, _ = sample_surface(mesh, n, 0)
    rgb, seen = project_colors(pts, normals, photo, fit, mesh=mesh)
    front = (normals[:, 1] < -0.3) & ~seen  # facing the photo but hidden from it: nearest seen colour
    if seen.any() and front.any():
        rgb[front] = rgb[seen][cKDTree(pts[seen]).query(pts[front])[1]]
    rgb[~seen & ~front] = HAIR
    if back_face:
        back = pts[:, 1] > 0.0
        uv, _ = fit.project(pts[back] * np.array([-1.0, -1.0, 1.0], np.float32))
        rgb[back] = bilinear(photo.astype(np.float32) / 255.0, uv)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return SplatArrays(
        means=pts,
        quats=quats,
        log_scales=np.full((n, 3), np.log(sigma_m), np.float32),
        opacity_logits=np.full(n, logit(np.float32(0.95)), np.float32),
        sh0=rgb_to_sh0(rgb),
    )


@pytest.fixture(scope="session")
def grace_image() -> np.ndarray:
    """matplotlib's public-domain sample portrait of Grace Hopper, [600, 512, 3] uint8."""
    from matplotlib import cbook

    from backend.image_io import load_image

    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session")
def good_head(astronaut_image) -> SplatArrays:
    return template_head(astronaut_image)


@pytest.fixture(scope="session")
def good_eval(good_head, astronaut_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_good")
    return evaluate_splats(good_head, astronaut_image, out, views=VIEWS, size=SIZE), out


def _front_distance(figures: dict) -> float:
    by_yaw = dict((yaw, d) for yaw, d in figures["identity_by_yaw"])
    return by_yaw[0.0]


def test_a_good_head_passes_and_the_files_are_written(good_eval):
    figures, out = good_eval
    assert figures["views"] == VIEWS + 4 and figures["size"] == SIZE
    assert _front_distance(figures) < 0.6  # the same person in front
    assert figures["identity_found_30"] >= 2 and figures["identity_worst_30"] < 0.65
    assert figures["ghost_faces"] == 0 and figures["ghost_views"] == 7  # yaws 120 to -120 by 30, 2 pitched
    assert figures["pck"] > 50 and figures["pck_faces_found"] >= 5
    assert 10 < figures["saturation"] < 80
    assert figures["front_psnr_db"] > 18 and figures["front_ssim"] > 0.5
    # JSON-ready: what came back is what was written, with no NaN anywhere
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(figures, allow_nan=False))
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (2 * (192 + 28), 8 * 192, 3) and sheet.std() > 10
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out / "turntable.mp4"))
    assert frames == VIEWS


def test_a_face_painted_on_the_back_is_a_ghost(good_eval, astronaut_image):
    painted = template_head(astronaut_image, back_face=True)
    figures = evaluate_splats(painted, astronaut_image, None, views=VIEWS, size=SIZE)
    assert good_eval[0]["ghost_faces"] == 0
    assert figures["ghost_faces"] > 0
    assert all(abs(yaw) >= 120 for yaw, _ in figures["ghost_at"])


def test_another_persons_photo_is_not_the_same_identity(good_head, good_eval, grace_image):
    figures = evaluate_splats(good_head, grace_image, None, views=VIEWS, size=SIZE)
    assert _front_distance(good_eval[0]) < 0.6
    assert _front_distance(figures) > 0.6
    assert figures["identity_worst_30"] > 0.6
    assert figures["identity_same_person_45"] == 0 < good_eval[0]["identity_same_person_45"]


def test_a_wrongly_turned_head_loses_pck(good_head, good_eval, astronaut_image):
    turn = Rotation.from_euler("z", 20, degrees=True).as_matrix().astype(np.float32)
    turned = dataclasses.replace(good_head, means=(good_head.means @ turn.T).astype(np.float32))
    figures = evaluate_splats(turned, astronaut_image, None, views=VIEWS, size=SIZE)
    assert figures["pck"] < good_eval[0]["pck"] - 30
    assert figures["pck5"] < good_eval[0]["pck5"] - 30


def test_a_blurred_head_loses_front_fidelity(good_head, good_eval, astronaut_image):
    blurred = dataclasses.replace(good_head, log_scales=(good_head.log_scales + np.log(3.0)).astype(np.float32))
    figures = evaluate_splats(blurred, astronaut_image, None, views=VIEWS, size=SIZE)
    good = good_eval[0]
    assert figures["front_psnr_db"] < good["front_psnr_db"] - 3
    assert figures["front_ssim"] < good["front_ssim"] - 0.1


def test_saturation_rises_with_colour_and_ignores_the_background(good_head):
    assert hsv_saturation(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])).tolist() == [1.0, 0.0, 0.0]
    rgb = 0.5 + 0.28209479177387814 * good_head.sh0
    grey = dataclasses.replace(good_head, sh0=rgb_to_sh0(np.repeat(rgb.mean(1, keepdims=True), 3, 1)))
    vivid = dataclasses.replace(
        good_head, sh0=rgb_to_sh0(np.clip((rgb - rgb.mean(1, keepdims=True)) * 2.5 + 0.5, 0, 1))
    )
    figures = [
        saturation_metrics(render_orbit(h, 4, 64, pitched=False))["saturation"] for h in (grey, good_head, vivid)
    ]
    assert figures[0] < 2 < figures[1] < figures[2]


def test_a_missing_model_is_skipped_with_the_command_that_fixes_it(monkeypatch, astronaut_image):
    import backend.eval.optional as optional

    monkeypatch.setattr(optional, "insightface_available", lambda pack: False)
    figures, skipped = optional_metrics(None, astronaut_image)  # type: ignore[arg-type]
    assert "arcface_ipa" not in figures  # skipped, never a silent zero
    assert any("ArcFace" in line and "python -m backend models download" in line for line in skipped)
    assert any("CLIP" in line for line in skipped)


def test_the_cli_evaluates_a_head_ply(good_head, astronaut_image, tmp_path, capsys):
    from backend.cli import main
    from blender_addon.core.splat_ply import write_ply

    write_ply(tmp_path / "head.ply", good_head)  # the PLY (RDF) frame, as generate writes it
    Image.fromarray(astronaut_image).save(tmp_path / "photo.png")
    code = main(["eval", str(tmp_path), "--photo", str(tmp_path / "photo.png"), "--views", "8", "--size", "192"])
    assert code == 0
    headline = json.loads(capsys.readouterr().out.splitlines()[-2])
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert headline["ghost_faces"] == figures["ghost_faces"] == 0
    assert figures["pck"] > 50  # read in the right frame: the face is where the landmarks are
    assert (tmp_path / "eval" / "contact_sheet.png").is_file() and (tmp_path / "eval" / "turntable.mp4").is_file()


def test_a_featureless_back_of_the_head_is_not_a_face(astronaut_image):
    """MediaPipe's mesh graph accepts a uniform dark head seen from behind; a face needs contrast."""
    from backend.eval.faces import MIN_FACE_CONTRAST, face_contrast

    lm = analyse_face(astronaut_image).landmarks2d
    assert face_contrast(astronaut_image, lm) > 2 * MIN_FACE_CONTRAST
    dark = np.full_like(astronaut_image, 255)
    cv2.ellipse(dark, (256, 200), (120, 150), 0, 0, 360, (20, 16, 14), -1)
    dark = cv2.GaussianBlur(dark, (0, 0), 3)
    assert face_contrast(dark, lm) < MIN_FACE_CONTRAST
