"""One face result from either face backend: insightface (identity) or MediaPipe (offline).

Two backends measure a face:

- **insightface** (``buffalo_l`` pack by default; weights non-commercial, fetched with
  ``python -m backend models download --only buffalo_l``): SCRFD box and 5 keypoints,
  106 2D and 68 3D landmarks, and the 512-d ArcFace ``normed_embedding`` that
  IP-Adapter-FaceID was trained on.
- **mediapipe** (shipped in the wheel, always available): box, 478 landmarks in 2D and 3D,
  no identity embedding (:func:`backend.face.analyse_face`).

:func:`analyse_identity` picks one (``backend="auto"``: insightface when its package and
pack are installed, else mediapipe) and returns a :class:`FaceResult` whose ``backend``
field says which one ran. Asking for ``"insightface"`` explicitly when its pack is missing
raises :class:`backend.errors.ModelMissingError`; there is no silent fallback then.

Usage::

    from backend.face import analyse_identity
    face = analyse_identity(img)                  # [H, W, 3] uint8 RGB
    face.backend, face.embedding                  # "insightface", [512] (or "mediapipe", None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.errors import FaceTooSmallError, ModelMissingError, MultipleFacesError, NoFaceError
from backend.face.analyse import FaceAnalysis, analyse_face
from backend.face.landmarks import LANDMARKS
from backend.face.pose import rotation_to_yaw_pitch_roll

BACKENDS = ("auto", "insightface", "mediapipe")

# MediaPipe indices giving insightface's 5 keypoints, in insightface's order: the subject's
# right eye, left eye (iris centres), nose tip, right and left mouth corners. On an
# unmirrored frontal photo the first of each pair is on the image's left.
_MP_KPS5 = (
    LANDMARKS["right_iris"],
    LANDMARKS["left_iris"],
    LANDMARKS["nose_tip"],
    LANDMARKS["mouth_right"],
    LANDMARKS["mouth_left"],
)


@dataclass
class FaceResult:
    """One analysed face, whichever backend measured it.

    Pixel coordinates: x right, y down, in the input image. ``yaw_pitch_roll`` follows
    :mod:`backend.face.pose` (yaw > 0 turned to their left, pitch > 0 looking up, roll > 0
    leaning to their left shoulder), or is None when it could not be estimated.
    """

    backend: str  # "insightface" or "mediapipe"
    bbox: np.ndarray  # [4] float32 x0, y0, x1, y1
    score: float  # detector confidence, 0..1
    kps5: np.ndarray  # [5, 2] float32: right eye, left eye, nose, right/left mouth corner
    landmarks2d: np.ndarray  # [478, 2] (mediapipe) or [106, 2] (insightface) float32
    landmarks3d: np.ndarray | None  # [478, 3] (mediapipe) or [68, 3] (insightface) float32
    landmark_format: str  # "mediapipe478" or "insightface106"
    embedding: np.ndarray | None  # [512] float32, L2-normalised ArcFace; None for mediapipe
    yaw_pitch_roll: tuple[float, float, float] | None  # degrees
    n_faces: int  # faces detected in the image, this one included
    image_size: tuple[int, int]  # (width, height)
    model: str = ""  # insightface pack name ("" for mediapipe)


def from_face_analysis(face: FaceAnalysis) -> FaceResult:
    """The :class:`FaceResult` of a MediaPipe :class:`~backend.face.analyse.FaceAnalysis`."""
    return FaceResult(
        backend="mediapipe",
        bbox=np.asarray(face.bbox, dtype=np.float32),
        score=float(face.score),
        kps5=np.ascontiguousarray(face.landmarks2d[list(_MP_KPS5)], dtype=np.float32),
        landmarks2d=face.landmarks2d,
        landmarks3d=face.landmarks3d,
        landmark_format="mediapipe478",
        embedding=None,
        yaw_pitch_roll=tuple(float(v) for v in face.yaw_pitch_roll),
        n_faces=face.n_faces,
        image_size=face.image_size,
    )


# --- insightface -----------------------------------------------------------------------------

_APPS: dict[tuple[str, tuple[str, ...] | None], object] = {}


def _pack_folder(pack: str, root: Path | None) -> Path:
    """The folder holding pack ``pack``'s ``.onnx`` files. ``root`` may be that folder, an
    insightface root (``models/<pack>/``), a model root (``insightface/models/<pack>/``) or
    None (the registry's location, overrides included)."""
    from backend import models

    if root is None:
        return models.model_path(pack)
    root = Path(root)
    for cand in (root, root / "models" / pack, root / "insightface" / "models" / pack):
        if any(cand.glob("*.onnx")):
            return cand
    raise ModelMissingError(
        f"No insightface pack '{pack}' under {root}.", hint=f"Run: python -m backend models download --only {pack}"
    )


def insightface_available(pack: str = "buffalo_l", root: Path | None = None) -> bool:
    """True when the insightface package imports and the pack's files are installed."""
    try:
        import insightface  # noqa: F401
    except ImportError:
        return False
    try:
        _pack_folder(pack, root)
    except ModelMissingError:
        return False
    return True


def _insightface_app(pack: str, root: Path | None, providers: list[str] | None):
    """A prepared ``FaceAnalysis``, kept warm per pack folder (the worker reuses it)."""
    from backend import models

    folder = _pack_folder(pack, root)
    key = (str(folder), tuple(providers) if providers else None)
    if key not in _APPS:
        _APPS[key] = models.load_insightface(folder, pack, providers=providers)
    return _APPS[key]


def _mean_shape_head_frame() -> np.ndarray:
    """insightface's 68-point mean face in our head frame: x to the subject's left, y down,
    z into the head (the file's z points out of the face, so it is negated)."""
    from insightface.data import get_object

    return np.asarray(get_object("meanshape_68.pkl"), dtype=np.float64) * np.array([1.0, 1.0, -1.0])


def pose_from_68(points2d: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees, :mod:`backend.face.pose` conventions, from the 68
    landmarks' image positions: a PnP fit of insightface's mean face with a pinhole camera of
    focal length max(W, H). Uses only 2D positions, so no depth-sign convention is assumed."""
    import cv2

    model = _mean_shape_head_frame()  # [68, 3]
    pts = np.asarray(points2d, dtype=np.float64)[:, :2]  # [68, 2]
    w, h = image_size
    f = float(max(w, h))
    cam = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1.0]])
    scale = np.linalg.norm(pts.max(0) - pts.min(0)) / max(
        np.linalg.norm(model[:, :2].max(0) - model[:, :2].min(0)), 1e-9
    )
    # start the iterative fit frontal, at the depth that gives the observed size
    rvec0 = np.zeros((3, 1))
    tvec0 = np.array([[(pts[:, 0].mean() - w / 2) / scale], [(pts[:, 1].mean() - h / 2) / scale], [f / scale]])
    ok, rvec, _ = cv2.solvePnP(
        model, pts, cam, None, rvec0, tvec0, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok or not np.all(np.isfinite(rvec)):
        return None
    rot, _ = cv2.Rodrigues(rvec)  # columns: head axes in camera coordinates
    return tuple(float(v) for v in rotation_to_yaw_pitch_roll(rot))


def analyse_insightface(
    image: np.ndarray,
    *,
    pack: str = "buffalo_l",
    root: Path | None = None,
    providers: list[str] | None = None,
    refuse_multiple: bool = False,
    min_face_px: int = 48,
) -> FaceResult:
    """Measure the largest face with insightface ``FaceAnalysis``; see :func:`analyse_identity`."""
    _check_image(image)
    app = _insightface_app(pack, root, providers)
    height, width = image.shape[:2]
    faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))  # insightface wants BGR
    if not faces:
        raise NoFaceError("No face was found in the photo.")
    if refuse_multiple and len(faces) > 1:
        raise MultipleFacesError(f"The photo shows {len(faces)} faces; exactly one is needed.")
    face = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    bbox = np.asarray(face.bbox, dtype=np.float32)
    short_side = float(min(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    if short_side < min_face_px:
        raise FaceTooSmallError(
            f"The face is only about {short_side:.0f} pixels across; at least {min_face_px} are needed."
        )
    lmk3d = face.get("landmark_3d_68")
    lmk2d = face.get("landmark_2d_106")
    emb = face.get("embedding")
    if emb is not None:
        emb = np.asarray(emb, dtype=np.float32)
        emb = emb / max(float(np.linalg.norm(emb)), 1e-12)  # == face.normed_embedding
    pose = pose_from_68(lmk3d[:, :2], (width, height)) if lmk3d is not None else None
    if lmk2d is None:
        raise ModelMissingError(
            f"The insightface pack '{pack}' has no 106-point landmark model (2d106det.onnx).",
            hint=f"Run: python -m backend models download --only {pack}",
        )
    return FaceResult(
        backend="insightface",
        bbox=bbox,
        score=float(face.det_score),
        kps5=np.asarray(face.kps, dtype=np.float32),
        landmarks2d=np.asarray(lmk2d, dtype=np.float32),
        landmarks3d=None if lmk3d is None else np.asarray(lmk3d, dtype=np.float32),
        landmark_format="insightface106",
        embedding=emb,
        yaw_pitch_roll=pose,
        n_faces=len(faces),
        image_size=(width, height),
        model=pack,
    )


def _check_image(image: np.ndarray) -> None:
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    if not ok:
        raise ValueError(
            f"expected an [H, W, 3] uint8 RGB array, got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )


def choose_backend(backend: str = "auto", *, pack: str = "buffalo_l", root: Path | None = None) -> str:
    """Resolve ``"auto"`` to ``"insightface"`` (package and pack installed) or ``"mediapipe"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown face backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        return backend
    return "insightface" if insightface_available(pack, root) else "mediapipe"


def analyse_identity(
    image: np.ndarray,
    backend: str = "auto",
    *,
    pack: str = "buffalo_l",
    root: Path | None = None,
    providers: list[str] | None = None,
    refuse_multiple: bool = False,
    min_face_px: int = 48,
) -> FaceResult:
    """Find and measure the face in an ``[H, W, 3]`` uint8 RGB photo.

    ``backend``: ``"auto"`` (insightface if installed, else mediapipe), ``"insightface"`` or
    ``"mediapipe"``; the result's ``backend`` field says which ran. ``root`` is a model root,
    an insightface root or a pack folder (default: :mod:`backend.models`' location).

    Raises NoFaceError, MultipleFacesError (with ``refuse_multiple``), FaceTooSmallError, and
    ModelMissingError when ``backend="insightface"`` and the pack is not installed.
    """
    chosen = choose_backend(backend, pack=pack, root=root)
    if chosen == "insightface":
        return analyse_insightface(
            image, pack=pack, root=root, providers=providers, refuse_multiple=refuse_multiple, min_face_px=min_face_px
        )
    return from_face_analysis(analyse_face(image, refuse_multiple=refuse_multiple, min_face_px=min_face_px))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two identity embeddings (ArcFace: same person typically > 0.4)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(math.sqrt(float(a @ a) * float(b @ b)), 1e-12))
