"""What the photo says the head should look like: its face, its camera, its 3D landmarks.

The photo is analysed exactly as the pipelines analyse it (MediaPipe, then the head template
fitted to the landmarks), so nothing here depends on how the head was made:

- ``fit``: the photo's camera in the head frame (``backend.prior.fit_head``);
- ``landmarks3d``: the photo's 478 landmarks lifted onto the fitted template reshaped to
  them (``backend.prior.deform``: MediaPipe's own relative depth gives the face's relief;
  ``backend.prior.lift``), the head's own 3D landmarks that PCK projects into each view;
- ``front_camera`` / ``front_target`` / ``face_mask``: the photo's camera restricted to a
  square crop around the face, the photo cut to that crop, and the face (MediaPipe's face
  oval) inside it, where front fidelity is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..face import FACE_OVAL, FaceAnalysis, analyse_face, square_crop
from ..gaussians.cameras import Cameras, photo_crop_camera
from ..prior.deform import deform_to_landmarks
from ..prior.fit import HeadFit, fit_head
from ..prior.lift import lift_landmarks

FRONT_MARGIN = 0.15  # the face crop's side is the landmark box's longer side times 1 + 2 * margin


@dataclass
class PhotoReference:
    image: np.ndarray  # [H, W, 3] uint8, the photo
    face: FaceAnalysis
    fit: HeadFit
    landmarks3d: np.ndarray  # [478, 3] float32, head frame, metres
    front_camera: Cameras  # one camera, front_size x front_size
    front_target: np.ndarray  # [R, R, 3] uint8, the photo in the front camera's crop
    face_mask: np.ndarray  # [R, R] bool, inside the face oval


def analyse_photo(image: np.ndarray, front_size: int = 256) -> PhotoReference:
    """Analyse the photo (raises ``NoFaceError`` / ``FaceTooSmallError`` on a bad photo)."""
    face = analyse_face(image)
    fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    mesh, _ = deform_to_landmarks(fit, fit.mesh(), face.landmarks2d, face.landmarks3d)
    lm3d = lift_landmarks(fit, face.landmarks2d, face.landmarks3d, mesh=mesh)
    camera, target, box = face_crop(image, fit, face.landmarks2d, front_size)
    mask = face_oval_mask(face.landmarks2d, box, front_size)
    return PhotoReference(image, face, fit, lm3d, camera, target, mask)


def face_crop(
    image: np.ndarray, fit: HeadFit, landmarks2d: np.ndarray, size: int
) -> tuple[Cameras, np.ndarray, np.ndarray]:
    """The photo's camera on a square crop around the face: (camera, crop [R, R, 3] uint8,
    crop box [4] x0, y0, x1, y1 in photo pixels)."""
    lo, hi = landmarks2d.min(0), landmarks2d.max(0)
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
    side = float((hi - lo).max()) * (1 + 2 * FRONT_MARGIN)
    crop, box = square_crop(image, centre, side, size)
    side_px = float(box[2] - box[0])
    cam = photo_crop_camera(
        fit.world_to_camera, fit.fx, fit.fy, fit.cx, fit.cy, float(box[0]), float(box[1]), side_px, size
    )
    return cam, crop, box


def face_oval_mask(landmarks2d: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """[size, size] bool: the pixels (centres) inside MediaPipe's face oval, in crop pixels."""
    s = size / float(box[2] - box[0])
    oval = (landmarks2d[FACE_OVAL] - box[:2].astype(np.float64)) * s - 0.5  # pixel centres at integers
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(oval * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)
