"""``analyse_face``: detect, count, choose one face, then its landmarks and pose."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.errors import FaceTooSmallError, MultipleFacesError, NoFaceError
from backend.face.detect import detect_faces
from backend.face.landmarks import mesh_for_box
from backend.face.pose import head_pose


@dataclass
class FaceAnalysis:
    """One analysed face. Pixel coordinates: x right, y down, in the input image.

    ``bbox`` is the detector's box (brows to chin, cheek to cheek); it may pass the image
    border when the face is cut off. ``landmarks3d[:, 2]`` is MediaPipe's relative depth in
    the same pixel scale as x and y: smaller is nearer the camera, about 0 at the face's
    centre. ``yaw_pitch_roll`` follows :mod:`backend.face.pose`: yaw > 0 turned to their
    left, pitch > 0 looking up, roll > 0 leaning toward their left shoulder.
    """

    bbox: np.ndarray  # [4] float32 x0, y0, x1, y1
    score: float  # detector confidence, 0..1
    landmarks2d: np.ndarray  # [478, 2] float32 x, y
    landmarks3d: np.ndarray  # [478, 3] float32 x, y, z
    n_faces: int  # faces detected in the whole image, the analysed one included
    image_size: tuple[int, int]  # (width, height) of the input image
    yaw_pitch_roll: tuple[float, float, float]  # degrees


def analyse_face(image: np.ndarray, *, refuse_multiple: bool = False, min_face_px: int = 48) -> FaceAnalysis:
    """Find the face in an ``[H, W, 3]`` uint8 RGB photo and measure it.

    Every face in the image is counted (:func:`backend.face.detect.detect_faces`). The largest
    is analysed unless ``refuse_multiple`` is set and there is more than one.

    Raises:
        NoFaceError: no face was detected, or the mesh could not be placed on the detected face.
        MultipleFacesError: more than one face and ``refuse_multiple=True``.
        FaceTooSmallError: the chosen face's detector box has a side shorter than ``min_face_px``.
        ValueError: ``image`` is not ``[H, W, 3]`` uint8 (a programming error; see
            :func:`backend.image_io.load_image`).
    """
    is_rgb8 = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
    if not (is_rgb8 and image.shape[2] == 3):
        raise ValueError(
            f"analyse_face expects an [H, W, 3] uint8 RGB array, got "
            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        )
    height, width = image.shape[:2]

    faces = detect_faces(image)
    if not faces:
        raise NoFaceError("No face was found in the photo.")
    if refuse_multiple and len(faces) > 1:
        raise MultipleFacesError(f"The photo shows {len(faces)} faces; exactly one is needed.")
    face = faces[0]  # largest
    short_side = min(face.width, face.height)
    if short_side < min_face_px:
        raise FaceTooSmallError(
            f"The face is only about {short_side:.0f} pixels across; at least {min_face_px} are needed."
        )

    pts = mesh_for_box(image, face.box)
    if pts is None:
        raise NoFaceError(
            "A face was detected, but its landmarks could not be found; the face may be "
            "turned too far away, covered or blurred."
        )
    return FaceAnalysis(
        bbox=face.box.astype(np.float32),
        score=face.score,
        landmarks2d=np.ascontiguousarray(pts[:, :2]),
        landmarks3d=pts,
        n_faces=len(faces),
        image_size=(width, height),
        yaw_pitch_roll=head_pose(pts),
    )
