"""Face detection, counting, landmarks, pose and crops on the demo photo and synthetic scenes.

MediaPipe runs on the CPU in a few milliseconds per 512 px image once warm; the first call
in the process pays ~0.5 s for the import.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.errors import FaceTooSmallError, MultipleFacesError, NoFaceError
from backend.face import (
    FACE_OVAL,
    LANDMARKS,
    LEFT_IRIS,
    RIGHT_IRIS,
    analyse_face,
    crop_face,
    head_pose,
    head_rotation,
    square_crop,
)
from backend.face.detect import box_iou
from backend.face.pose import yaw_pitch_roll_to_rotation

# Measured by hand on examples/astronaut.jpg (viewing a 2x crop): cheek to cheek, brows to
# chin bottom, in pixels x0, y0, x1, y1.
ASTRONAUT_FACE_BOX = np.array([180, 85, 270, 178], np.float32)


@pytest.fixture(scope="module")
def astro(astronaut_image):
    return analyse_face(astronaut_image)


def _two_face_scene(astronaut_image, big_on_left: bool) -> np.ndarray:
    """Two copies of the astronaut's head side by side: one 300 px tile, one 200 px."""
    head = np.ascontiguousarray(astronaut_image[20:280, 100:360])
    big = cv2.resize(head, (300, 300), interpolation=cv2.INTER_AREA)
    small = cv2.resize(head, (200, 200), interpolation=cv2.INTER_AREA)
    scene = np.full((320, 560, 3), 200, np.uint8)
    if big_on_left:
        scene[10:310, 10:310], scene[60:260, 340:540] = big, small
    else:
        scene[10:310, 250:550], scene[60:260, 20:220] = big, small
    return scene


# --------------------------------------------------------------------------- the models


def test_models_ship_in_the_wheel():
    import mediapipe

    root = Path(mediapipe.__file__).parent / "modules"
    for rel in (
        "face_detection/face_detection_short_range.tflite",
        "face_detection/face_detection_full_range_sparse.tflite",
        "face_landmark/face_landmark_with_attention.tflite",
    ):
        assert (root / rel).stat().st_size > 100_000, rel


def test_importing_backend_face_does_not_import_mediapipe():
    code = "import sys, backend.face; assert 'mediapipe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# --------------------------------------------------------------------------- the demo photo


def test_astronaut_one_face_where_measured(astro):
    assert astro.n_faces == 1
    assert astro.image_size == (512, 512)
    assert astro.score > 0.8
    assert astro.bbox.dtype == np.float32 and astro.bbox.shape == (4,)
    assert box_iou(astro.bbox, ASTRONAUT_FACE_BOX) > 0.5


def test_astronaut_landmarks_fill_the_face_box(astro):
    lm2, lm3 = astro.landmarks2d, astro.landmarks3d
    assert lm2.shape == (478, 2) and lm3.shape == (478, 3)
    assert lm2.dtype == np.float32 and lm3.dtype == np.float32
    np.testing.assert_array_equal(lm2, lm3[:, :2])
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    pad_x, pad_y = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    assert np.all((lm2[:, 0] > x0 - pad_x) & (lm2[:, 0] < x1 + pad_x))
    assert np.all((lm2[:, 1] > y0 - pad_y) & (lm2[:, 1] < y1 + pad_y))
    span = lm2.max(axis=0) - lm2.min(axis=0)
    assert span[0] > 0.8 * (x1 - x0) and span[1] > 0.8 * (y1 - y0)  # not collapsed


def test_astronaut_landmark_geometry(astro):
    p = {name: astro.landmarks3d[i] for name, i in LANDMARKS.items()}
    x, y, z = (lambda n: p[n][0]), (lambda n: p[n][1]), (lambda n: p[n][2])
    # nose between the eyes; the subject's left eye is on the image's right
    assert x("right_eye_inner") < x("nose_tip") < x("left_eye_inner")
    assert x("right_eye_outer") < x("right_eye_inner") < x("left_eye_inner") < x("left_eye_outer")
    assert x("mouth_right") < x("nose_tip") < x("mouth_left")
    assert x("right_cheek") < x("right_eye_outer") and x("left_eye_outer") < x("left_cheek")
    # top to bottom
    eye_y = (y("left_iris") + y("right_iris")) / 2
    assert y("forehead") < y("left_brow_inner") < eye_y < y("nose_tip") < y("upper_lip")
    assert y("upper_lip") < y("mouth_upper_inner") <= y("mouth_lower_inner") < y("lower_lip") < y("chin")
    assert y("left_eye_top") < y("left_iris") < y("left_eye_bottom")
    assert y("right_eye_top") < y("right_iris") < y("right_eye_bottom")
    # irises inside the eye corners
    assert x("right_eye_outer") < x("right_iris") < x("right_eye_inner")
    assert x("left_eye_inner") < x("left_iris") < x("left_eye_outer")
    # depth: the nose tip is nearer the camera (smaller z) than the eyes and the cheeks
    assert z("nose_tip") < z("nose_bridge") < z("left_cheek")
    assert z("nose_tip") < min(z("left_eye_outer"), z("right_eye_outer")) - 10


def test_astronaut_pose_is_near_frontal(astro):
    yaw, pitch, roll = astro.yaw_pitch_roll
    assert abs(yaw) < 10 and abs(pitch) < 15 and abs(roll) < 10


def test_mirrored_photo_swaps_left_and_right(astronaut_image, astro):
    flipped = analyse_face(np.ascontiguousarray(astronaut_image[:, ::-1]))
    width = astronaut_image.shape[1]
    for name, idx in LANDMARKS.items():
        if not name.startswith("left_"):
            continue
        mirror = flipped.landmarks2d[idx].copy()
        mirror[0] = width - mirror[0]
        twin = astro.landmarks2d[LANDMARKS[name.replace("left_", "right_")]]
        assert np.abs(mirror - twin).max() < 3.0, name
    assert flipped.yaw_pitch_roll[0] == pytest.approx(-astro.yaw_pitch_roll[0], abs=3)
    assert flipped.yaw_pitch_roll[2] == pytest.approx(-astro.yaw_pitch_roll[2], abs=3)


def test_rotating_the_photo_clockwise_increases_roll(astronaut_image, astro):
    turn = cv2.getRotationMatrix2D((256, 256), -15, 1.0)  # OpenCV: negative = clockwise on screen
    rotated = cv2.warpAffine(astronaut_image, turn, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    roll = analyse_face(rotated).yaw_pitch_roll[2]
    assert roll - astro.yaw_pitch_roll[2] == pytest.approx(15, abs=3)


def test_face_in_a_wide_frame_gets_the_same_landmarks(astronaut_image, astro):
    # The mesh graph alone finds no face here; the detector-guided crop must.
    wide = np.full((512, 900, 3), 200, np.uint8)
    wide[:, 100:612] = astronaut_image
    face = analyse_face(wide)
    assert face.n_faces == 1 and face.image_size == (900, 512)
    np.testing.assert_allclose(face.landmarks2d - [100, 0], astro.landmarks2d, atol=2.0)


# --------------------------------------------------------------------------- pose conventions


@pytest.mark.parametrize("ypr", [(20, 0, 0), (0, 15, 0), (0, 0, 10), (25, -10, 5)])
def test_head_pose_recovers_known_rotation(astro, ypr):
    centre = astro.landmarks3d.mean(axis=0)
    frontal = (astro.landmarks3d - centre) @ head_rotation(astro.landmarks3d)  # head frame = camera frame
    assert head_pose(frontal) == pytest.approx((0, 0, 0), abs=1e-6)
    posed = frontal @ yaw_pitch_roll_to_rotation(*ypr).T
    assert head_pose(posed) == pytest.approx(ypr, abs=1e-6)


def test_head_pose_signs_mean_what_the_docs_say(astro):
    centre = astro.landmarks3d.mean(axis=0)
    frontal = (astro.landmarks3d - centre) @ head_rotation(astro.landmarks3d)
    nose, left_eye = LANDMARKS["nose_tip"], LANDMARKS["left_eye_outer"]

    def moved(ypr, idx):
        return (frontal @ yaw_pitch_roll_to_rotation(*ypr).T)[idx] - frontal[idx]

    assert moved((20, 0, 0), nose)[0] > 3  # turned to their left: nose moves to image right
    assert moved((0, 20, 0), nose)[1] < -3  # looking up: nose moves up the image
    assert moved((0, 0, 20), left_eye)[1] > 3  # leaning to their left shoulder: left eye drops


# --------------------------------------------------------------------------- counting, errors


@pytest.mark.parametrize("kind", ["noise", "blank"])
def test_no_face(kind):
    rng = np.random.default_rng(0)
    if kind == "noise":
        img = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    else:
        img = np.full((384, 384, 3), 128, np.uint8)
    with pytest.raises(NoFaceError) as info:
        analyse_face(img)
    assert info.value.code == "no_face"


@pytest.mark.parametrize("big_on_left", [True, False])
def test_two_faces_counted_and_largest_chosen(astronaut_image, big_on_left):
    scene = _two_face_scene(astronaut_image, big_on_left)
    face = analyse_face(scene)
    assert face.n_faces == 2
    big_tile_x = (10, 310) if big_on_left else (250, 550)
    centre_x = (face.bbox[0] + face.bbox[2]) / 2
    assert big_tile_x[0] < centre_x < big_tile_x[1]
    assert face.bbox[2] - face.bbox[0] > 90  # the 300 px tile's face, not the 200 px one's (~75)
    assert big_tile_x[0] < face.landmarks2d[LANDMARKS["nose_tip"], 0] < big_tile_x[1]


def test_two_faces_refused_when_asked(astronaut_image):
    with pytest.raises(MultipleFacesError) as info:
        analyse_face(_two_face_scene(astronaut_image, True), refuse_multiple=True)
    assert info.value.code == "multiple_faces" and "2 faces" in info.value.message


def test_tiny_face_is_too_small(astronaut_image):
    canvas = np.full((512, 512, 3), 120, np.uint8)
    canvas[100:300, 150:350] = cv2.resize(astronaut_image, (200, 200), interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceTooSmallError) as info:
        analyse_face(canvas)  # the face box is ~39 px
    assert info.value.code == "face_too_small" and "at least 48" in info.value.message
    small = analyse_face(canvas, min_face_px=30)  # found all the same: size is the only problem
    assert small.n_faces == 1 and 30 < small.bbox[2] - small.bbox[0] < 48


def test_rejects_non_uint8_rgb():
    with pytest.raises(ValueError):
        analyse_face(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        analyse_face(np.zeros((64, 64), np.uint8))


def test_concurrent_calls_agree(astronaut_image, astro):
    results = [None] * 4

    def work(i):
        results[i] = analyse_face(astronaut_image).landmarks2d

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lm in results:
        np.testing.assert_allclose(lm, astro.landmarks2d, atol=1e-3)


# --------------------------------------------------------------------------- crops


def test_crop_face_square_and_contains_landmarks(astronaut_image, astro):
    crop, box = crop_face(astronaut_image, astro, margin=0.6, size=256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0
    lo, hi = astro.landmarks2d.min(axis=0), astro.landmarks2d.max(axis=0)
    assert x0 < lo[0] and hi[0] < x1 and y0 < lo[1] and hi[1] < y1
    assert (x1 - x0) == pytest.approx(2.2 * max(hi - lo), abs=2)


def test_square_crop_maps_pixels_and_pads_by_replication():
    img = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    crop, box = square_crop(img, centre=(60, 50), side=40, size=40)  # no resize
    np.testing.assert_array_equal(box, [40, 30, 80, 70])
    np.testing.assert_array_equal(crop, img[30:70, 40:80])
    crop, box = square_crop(img, centre=(0, 0), side=20, size=20)  # reaches past the corner
    np.testing.assert_array_equal(box, [-10, -10, 10, 10])
    np.testing.assert_array_equal(crop[10:, 10:], img[:10, :10])
    np.testing.assert_array_equal(crop[0, 0], img[0, 0])  # replicated corner


# --------------------------------------------------------------------------- index tables


def test_landmark_indices_match_mediapipe_groups():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def members(edges):
        return {i for edge in edges for i in edge}

    left_eye, right_eye = members(fmc.FACEMESH_LEFT_EYE), members(fmc.FACEMESH_RIGHT_EYE)
    for name in ("left_eye_outer", "left_eye_inner", "left_eye_top", "left_eye_bottom"):
        assert LANDMARKS[name] in left_eye, name
        assert LANDMARKS[name.replace("left_", "right_")] in right_eye, name
    for side, edges in (("left", fmc.FACEMESH_LEFT_EYEBROW), ("right", fmc.FACEMESH_RIGHT_EYEBROW)):
        assert {LANDMARKS[f"{side}_brow_outer"], LANDMARKS[f"{side}_brow_inner"]} <= members(edges)
    lips = members(fmc.FACEMESH_LIPS)
    for name in ("upper_lip", "mouth_upper_inner", "mouth_lower_inner", "lower_lip", "mouth_left", "mouth_right"):
        assert LANDMARKS[name] in lips, name
    assert {LANDMARKS[n] for n in ("nose_tip", "nose_bottom", "nose_bridge")} <= members(fmc.FACEMESH_NOSE)
    assert set(LEFT_IRIS[1:]) == members(fmc.FACEMESH_LEFT_IRIS)
    assert set(RIGHT_IRIS[1:]) == members(fmc.FACEMESH_RIGHT_IRIS)
    # FACE_OVAL is MediaPipe's oval as one ordered closed loop
    loop_edges = {(a, b) for a, b in zip(FACE_OVAL, FACE_OVAL[1:] + FACE_OVAL[:1])}
    assert loop_edges == set(fmc.FACEMESH_FACE_OVAL)
    for name in ("forehead", "chin", "left_cheek", "right_cheek", "left_jaw", "right_jaw"):
        assert LANDMARKS[name] in FACE_OVAL, name


def test_oval_extremes_on_the_demo_photo(astro):
    oval = astro.landmarks2d[FACE_OVAL]
    assert FACE_OVAL[int(np.argmax(oval[:, 1]))] == LANDMARKS["chin"]
    assert abs(astro.landmarks2d[LANDMARKS["forehead"], 1] - oval[:, 1].min()) < 3
