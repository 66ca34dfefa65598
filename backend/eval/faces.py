"""Run the face detectors once on every view; the metrics read what they found.

Per view:

- MediaPipe's two BlazeFace detectors (``backend.face.detect_faces``), every view;
- MediaPipe's 478-point mesh on the largest MediaPipe face, every view with a face; a mesh
  whose face oval holds no contrast (luminance s.d. below ``MIN_FACE_CONTRAST``) is dropped:
  the mesh graph also "lands" on a uniform dark back of the head;
- dlib's HOG frontal detector, every view (upsampled when the head is rendered small);
- dlib's 128-D descriptor of the best dlib face, every view where dlib found one.

The photo gets the same descriptor, of the dlib face that overlaps MediaPipe's face most
(or of MediaPipe's box when dlib finds none there).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..face import FACE_OVAL, detect_faces
from ..face.detect import box_iou
from ..face.landmarks import mesh_for_box
from . import dlib_face
from .orbit import FOV_DEG, RADIUS_M, Orbit

FACE_HEIGHT_M = 0.13  # brow to chin, the template's; sizes the dlib upsampling per view
# A face has features. Inside the mesh's face oval the luminance s.d. (0-1) measured 0.13-0.24 on
# real, blurred and ghost faces rendered from our heads, 0.02 on a uniform dark back of the head
# that MediaPipe's mesh graph still accepted (bench/results/photo_head.md).
MIN_FACE_CONTRAST = 0.05


def face_contrast(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Luminance standard deviation (0-1) of ``image`` [H, W, 3] uint8 inside the face oval of
    478 landmarks [478, 2]."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    mask = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[FACE_OVAL]).astype(np.int32)], 1)
    inside = grey[mask.astype(bool)]
    return float(inside.std()) if inside.size else 0.0


@dataclass
class ViewFaces:
    mediapipe: list[np.ndarray]  # boxes [4] x0, y0, x1, y1, largest first
    dlib: list[tuple[np.ndarray, float]]  # (box [4], HOG score), best first
    landmarks: np.ndarray | None  # [478, 2] MediaPipe mesh of the largest MediaPipe face
    descriptor: np.ndarray | None  # [128] dlib descriptor of the best dlib face

    @property
    def found(self) -> bool:
        """A face: MediaPipe's detector found one and its 478-point mesh landed on it (the mesh
        graph checks face presence again), or dlib's HOG detector found one. BlazeFace's
        short-range model alone also fires on skin-coloured blobs seen from behind."""
        return self.landmarks is not None or bool(self.dlib)


def expected_face_px(size: int) -> float:
    """The rendered face's height in pixels for the orbit's framing."""
    return FACE_HEIGHT_M / (2 * RADIUS_M * np.tan(np.radians(FOV_DEG / 2))) * size


def detect_views(orbit: Orbit) -> list[ViewFaces]:
    upsample = dlib_face.upsample_for(expected_face_px(orbit.images.shape[1]))
    views = []
    for image in orbit.images:
        mp = [f.box for f in detect_faces(image)]
        lm = None
        if mp:
            pts = mesh_for_box(image, mp[0])
            lm = None if pts is None or face_contrast(image, pts[:, :2]) < MIN_FACE_CONTRAST else pts[:, :2]
        dl = dlib_face.detect(image, upsample)
        desc = dlib_face.descriptor(image, dl[0][0]) if dl else None
        views.append(ViewFaces(mediapipe=mp, dlib=dl, landmarks=lm, descriptor=desc))
    return views


def photo_descriptor(image: np.ndarray, face_box: np.ndarray) -> np.ndarray:
    """The dlib descriptor of the photo's face (``face_box``: MediaPipe's, x0, y0, x1, y1)."""
    side = float(min(face_box[2] - face_box[0], face_box[3] - face_box[1]))
    found = dlib_face.detect(image, dlib_face.upsample_for(side))
    best = max(found, key=lambda f: box_iou(f[0], face_box), default=None)
    box = best[0] if best is not None and box_iou(best[0], face_box) > 0.2 else face_box
    return dlib_face.descriptor(image, box)
