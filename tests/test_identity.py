"""backend.face.identity: one FaceResult from insightface (tiny ONNX pack) or MediaPipe.

What the insightface tests exercise: insightface's own FaceAnalysis code (model routing by
ONNX signature, SCRFD anchor decoding and NMS, landmark and ArcFace crops and alignment) on
our tiny random ONNX pack. The tiny detector is constant (it reports one fixed box whatever
the image, see backend.testing._TinyDetector), so these tests check plumbing and shapes,
not detection quality.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend.errors import ModelMissingError
from backend.face import FaceResult, analyse_identity, choose_backend, insightface_available
from backend.face.identity import pose_from_68
from backend.face.pose import yaw_pitch_roll_to_rotation

# insightface 2.1 calls a scikit-image API that is deprecated (its own business, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def pack_root(tiny_models_root):
    return tiny_models_root / "insightface"


def _photo(seed=0, size=512):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_insightface_backend_returns_a_full_face_result(pack_root):
    img = _photo()
    face = analyse_identity(img, "insightface", root=pack_root)
    assert isinstance(face, FaceResult) and face.backend == "insightface" and face.model == "buffalo_l"
    # the tiny detector's box: (0, 0)-(64, 64) of its 640 x 640 input, i.e. x 512/640 in the photo
    np.testing.assert_allclose(face.bbox, [0, 0, 51.2, 51.2], atol=0.5)
    assert face.score == pytest.approx(0.99, abs=1e-3) and face.n_faces == 1
    assert face.kps5.shape == (5, 2) and face.kps5[0, 0] < face.kps5[1, 0]  # right eye on the image's left
    assert face.landmarks2d.shape == (106, 2) and face.landmark_format == "insightface106"
    assert face.landmarks3d.shape == (68, 3)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert face.yaw_pitch_roll is not None and len(face.yaw_pitch_roll) == 3
    assert face.image_size == (512, 512)
    # a different photo gives a different embedding (the recogniser reads the aligned crop)
    other = analyse_identity(_photo(1), "insightface", root=pack_root)
    assert float(face.embedding @ other.embedding) < 0.9999


def test_pack_files_are_routed_like_the_real_ones(pack_root):
    from insightface.model_zoo import model_zoo

    folder = pack_root / "models" / "buffalo_l"
    expect = {
        "det_10g.onnx": "detection",
        "w600k_r50.onnx": "recognition",
        "2d106det.onnx": "landmark_2d_106",
        "1k3d68.onnx": "landmark_3d_68",
        "genderage.onnx": "genderage",
    }
    for fname, task in expect.items():
        model = model_zoo.get_model(str(folder / fname), providers=["CPUExecutionProvider"])
        assert model.taskname == task, fname


def test_offline_backend_returns_the_same_dataclass(astronaut_image):
    face = analyse_identity(astronaut_image, "mediapipe")
    assert type(face) is FaceResult and face.backend == "mediapipe" and face.model == ""
    assert face.embedding is None and face.landmark_format == "mediapipe478"
    assert face.landmarks2d.shape == (478, 2) and face.landmarks3d.shape == (478, 3)
    assert face.n_faces == 1 and face.image_size == (512, 512)
    # 5 keypoints in insightface's order: eyes, nose, mouth corners, image-left first
    k = face.kps5
    assert k[0, 0] < k[2, 0] < k[1, 0] and k[3, 0] < k[4, 0]
    assert max(k[0, 1], k[1, 1]) < k[2, 1] < min(k[3, 1], k[4, 1])
    x0, y0, x1, y1 = face.bbox
    assert np.all((k[:, 0] > x0) & (k[:, 0] < x1) & (k[:, 1] > y0) & (k[:, 1] < y1))
    assert all(abs(a) < 15 for a in face.yaw_pitch_roll)  # the demo portrait is frontal
    assert {f.name for f in dataclasses.fields(face)} == {f.name for f in dataclasses.fields(FaceResult)}


def test_auto_picks_by_availability(tmp_path, pack_root):
    assert not insightface_available("buffalo_l", tmp_path)
    assert choose_backend("auto", root=tmp_path) == "mediapipe"
    assert insightface_available("buffalo_l", pack_root)
    assert choose_backend("auto", root=pack_root) == "insightface"
    face = analyse_identity(_photo(), "auto", root=pack_root)
    assert face.backend == "insightface"
    with pytest.raises(ValueError, match="unknown face backend"):
        choose_backend("dlib")


def test_explicit_insightface_without_pack_raises_with_fix(tmp_path):
    with pytest.raises(ModelMissingError) as exc:
        analyse_identity(_photo(), "insightface", root=tmp_path)
    assert "python -m backend models download --only buffalo_l" in exc.value.hint


@pytest.mark.parametrize("ypr", [(0.0, 0.0, 0.0), (25.0, 0.0, 0.0), (-20.0, 10.0, 0.0), (10.0, -15.0, 12.0)])
def test_pose_from_68_recovers_a_known_pose(ypr):
    from insightface.data import get_object

    model = np.asarray(get_object("meanshape_68.pkl"), np.float64) * np.array([1.0, 1.0, -1.0])  # head frame
    rot = yaw_pitch_roll_to_rotation(*ypr)
    cam_pts = model @ rot.T + np.array([0.0, 0.0, 6.0])  # head 6 units in front of the camera
    f, w, h = 512.0, 512, 512
    pts2d = cam_pts[:, :2] / cam_pts[:, 2:] * f + np.array([w / 2, h / 2])
    got = pose_from_68(pts2d, (w, h))
    np.testing.assert_allclose(got, ypr, atol=1.0)
