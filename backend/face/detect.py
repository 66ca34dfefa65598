"""Find and count faces: MediaPipe's two BlazeFace detectors, merged.

The short-range model is best when the face fills much of the frame; the full-range model
finds smaller, farther faces (down to about 30 px in a 512 px image) that the short-range
model misses. Both run on every image and their boxes are merged, so that one face seen by
both models counts once and a small second face in the background still counts.

Large images are first shrunk (area-averaged) so that the long side is at most
:data:`DETECT_MAX_SIDE`; the detectors see 128/192 px inputs anyway and area averaging
keeps small faces sharper than the graph's own resize. A face smaller than about 6% of
the image's long side is therefore not found; :func:`detect_faces` documents this limit
rather than tiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from backend.face import _mediapipe

DETECT_MAX_SIDE = 1024
# Two boxes are one face when they overlap this much (IoU), or when the smaller one lies
# mostly inside the larger (intersection over the smaller area).
MERGE_IOU = 0.3
MERGE_CONTAINED = 0.7


@dataclass(frozen=True)
class FaceBox:
    box: np.ndarray  # [4] float32 x0, y0, x1, y1 in input-image pixels; may pass the border
    score: float  # detector confidence, 0..1
    models: tuple[str, ...]  # which detectors found it

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height


def detect_faces(image: np.ndarray) -> list[FaceBox]:
    """All faces in an ``[H, W, 3]`` uint8 RGB image, largest first.

    Each face's box is the box of its highest-scoring detection (BlazeFace boxes run from
    about the brows to the chin, cheek to cheek).
    """
    height, width = image.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]

    found: list[FaceBox] = []
    for model in (_mediapipe.SHORT_RANGE, _mediapipe.FULL_RANGE):
        result = _mediapipe.run(model, small)
        for det in result.detections or ():
            rel = det.location_data.relative_bounding_box
            box = np.array(
                [rel.xmin * sw, rel.ymin * sh, (rel.xmin + rel.width) * sw, (rel.ymin + rel.height) * sh],
                dtype=np.float32,
            ) / np.float32(scale)
            found.append(FaceBox(box=box, score=float(det.score[0]), models=(model,)))
    faces = merge_boxes(found)
    return sorted(faces, key=lambda f: f.area, reverse=True)


def merge_boxes(found: list[FaceBox]) -> list[FaceBox]:
    """Greedy merge, best score first: a box that overlaps a kept box joins it."""
    kept: list[FaceBox] = []
    for cand in sorted(found, key=lambda f: f.score, reverse=True):
        for i, face in enumerate(kept):
            if _same_face(face.box, cand.box):
                models = face.models + tuple(m for m in cand.models if m not in face.models)
                kept[i] = FaceBox(box=face.box, score=face.score, models=models)
                break
        else:
            kept.append(cand)
    return kept


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _same_face(a: np.ndarray, b: np.ndarray) -> bool:
    inter = _intersection(a, b)
    smaller = min(_area(a), _area(b))
    return box_iou(a, b) > MERGE_IOU or (smaller > 0 and inter / smaller > MERGE_CONTAINED)


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(w, 0.0) * max(h, 0.0))


def _area(a: np.ndarray) -> float:
    return float(max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0))
