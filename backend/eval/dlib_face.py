"""dlib's face detector and 128-D ResNet face descriptor, from PyPI wheels only.

- ``dlib-bin`` (Boost Software License 1.0): dlib itself, with the HOG frontal face detector
  built into the library (no weight file).
- ``face-recognition-models`` (its LICENSE file: CC0 1.0; the models are Davis King's
  dlib-models, released into the public domain): ``dlib_face_recognition_resnet_model_v1.dat``
  (the descriptor; 0.6 is dlib's same-person threshold, 99.38% on LFW) and
  ``shape_predictor_5_face_landmarks.dat`` (the alignment it needs). The package also ships
  ``shape_predictor_68_face_landmarks.dat``; that one is trained on iBUG 300-W, whose licence
  excludes commercial use, and is never loaded here.

The package's ``__init__`` imports ``pkg_resources`` (gone from recent setuptools), so the
model folder is found with ``importlib.util.find_spec`` without importing it. dlib is imported
on first use only. One set of models per process, behind a lock (dlib objects are not
documented as thread-safe).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelMissingError

SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
FIVE_POINT_FILE = "shape_predictor_5_face_landmarks.dat"
HOG_MIN_FACE_PX = 80  # the HOG detector's window: smaller faces need upsampling

_LOCK = threading.Lock()


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelMissingError(
            "The dlib face models (the face-recognition-models package) are not installed.",
            hint="Run: pip install face-recognition-models==0.3.0 dlib-bin",
        )
    folder = Path(spec.origin).parent / "models"
    for name in (RESNET_FILE, FIVE_POINT_FILE):
        if not (folder / name).is_file():
            raise ModelMissingError(f"{folder / name} is missing.", hint="Reinstall face-recognition-models==0.3.0.")
    return folder


@functools.cache
def _models() -> tuple[Any, Any, Any]:
    try:
        import dlib
    except ImportError as exc:
        raise ModelMissingError("dlib is not installed.", hint="Run: pip install dlib-bin") from exc
    folder = models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(folder / FIVE_POINT_FILE))
    recogniser = dlib.face_recognition_model_v1(str(folder / RESNET_FILE))
    return detector, predictor, recogniser


def upsample_for(face_px: float) -> int:
    """How many 2x upsamplings bring a face of about ``face_px`` pixels to the HOG window."""
    n = 0
    while face_px * 2**n < HOG_MIN_FACE_PX and n < 3:
        n += 1
    return n


def detect(image: np.ndarray, upsample: int = 0) -> list[tuple[np.ndarray, float]]:
    """Faces in an [H, W, 3] uint8 RGB image: (box [4] x0, y0, x1, y1, HOG score), best first."""
    detector, _, _ = _models()
    with _LOCK:
        rects, scores, _ = detector.run(np.ascontiguousarray(image), upsample, 0.0)
    found = [
        (np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), float(s)) for r, s in zip(rects, scores)
    ]
    return sorted(found, key=lambda f: f[1], reverse=True)


def descriptor(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 128-D descriptor [128] float64 of the face in ``box`` (x0, y0, x1, y1)."""
    import dlib

    _, predictor, recogniser = _models()
    rect = dlib.rectangle(*(int(round(float(v))) for v in box))
    img = np.ascontiguousarray(image)
    with _LOCK:
        shape = predictor(img, rect)
        return np.asarray(recogniser.compute_face_descriptor(img, shape), np.float64)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two descriptors; < :data:`SAME_PERSON` means the same person."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
