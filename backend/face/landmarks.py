"""The 478-point MediaPipe face mesh for one detected face, plus named index groups.

Landmarks are found on a square crop around the detected face (:func:`mesh_for_box`),
because the mesh graph's own detector is the short-range model: it misses small faces in
a large frame (fed whole, a 900x512 frame holding the 512x512 demo photo gives no face at
all), and in a group photo it may pick a different face. The crop makes the chosen face
fill the frame; the points are then mapped back to the input image.

Index conventions (MediaPipe face mesh topology, with ``refine_landmarks=True``):

- 0..467 are the mesh vertices, 468..472 the subject's right iris (468 is its centre),
  473..477 the subject's left iris (473 is its centre).
- **"left" and "right" are the subject's own**, as in MediaPipe's ``FACEMESH_LEFT_EYE``. In
  an unmirrored frontal photo the subject's left eye is on the image's right.
- The mesh is left/right symmetric; each ``left_*`` entry below has its ``right_*`` mirror.

The indices were checked against MediaPipe's own groups (``FACEMESH_LEFT_EYE``,
``FACEMESH_LIPS``, ``FACEMESH_FACE_OVAL``, ... in ``mediapipe.python.solutions.
face_mesh_connections``) and against the geometry found on the demo photo; the tests
repeat both checks.
"""

from __future__ import annotations

import numpy as np

from backend.face import _mediapipe
from backend.face.crop import square_crop
from backend.face.detect import box_iou

N_LANDMARKS = 478

LANDMARKS: dict[str, int] = {
    "forehead": 10,  # top of the mesh, mid-forehead (below the hairline)
    "nose_bridge": 168,  # between the eyes
    "nose_tip": 1,  # pronasale (vertex 4, just above it, is sometimes nearer the camera)
    "nose_bottom": 2,  # subnasale, where the nose meets the upper lip
    "upper_lip": 0,  # top of the upper lip, on the midline
    "mouth_upper_inner": 13,
    "mouth_lower_inner": 14,
    "lower_lip": 17,  # bottom of the lower lip, on the midline
    "chin": 152,  # bottom of the mesh
    "left_eye_outer": 263,
    "left_eye_inner": 362,
    "left_eye_top": 386,  # upper lid, mid-eye
    "left_eye_bottom": 374,  # lower lid, mid-eye
    "left_iris": 473,  # iris centre
    "right_eye_outer": 33,
    "right_eye_inner": 133,
    "right_eye_top": 159,
    "right_eye_bottom": 145,
    "right_iris": 468,
    "left_brow_outer": 300,
    "left_brow_inner": 336,
    "right_brow_outer": 70,
    "right_brow_inner": 107,
    "mouth_left": 291,  # mouth corner
    "mouth_right": 61,
    "left_cheek": 454,  # widest point of the face oval at eye level (toward the ear)
    "right_cheek": 234,
    "left_jaw": 397,  # jaw angle, on the face oval below the mouth corner
    "right_jaw": 172,
}

# The face-oval contour as a closed loop, starting at the forehead (10), passing the
# subject's left cheek (454), the chin (152) and the right cheek (234). In an unmirrored
# photo (y down) that runs clockwise on screen. Same 36 points as FACEMESH_FACE_OVAL.
FACE_OVAL: list[int] = [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
]
LEFT_IRIS: list[int] = [473, 474, 475, 476, 477]  # centre first, then the ring
RIGHT_IRIS: list[int] = [468, 469, 470, 471, 472]

# The crop handed to the mesh graph: this many times the detector box's longer side, at
# this resolution (the landmark model itself sees 192x192 of it).
MESH_CROP_SCALE = 2.0
MESH_CROP_SIZE = 512
# The mesh's face must overlap the detector box at least this much to be the same face.
MIN_MESH_IOU = 0.2


def mesh_for_box(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The ``[478, 3]`` float32 landmarks of the face in ``box`` (x0, y0, x1, y1), or None
    when the mesh finds no face there.

    Columns: x, y in input-image pixels (x right, y down; pixel (i, j) covers
    [i, i+1) x [j, j+1)), and z, MediaPipe's relative depth in the same pixel scale
    (smaller = nearer the camera; about 0 at the face's centre).
    """
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    side = float(max(box[2] - box[0], box[3] - box[1])) * MESH_CROP_SCALE
    crop, crop_box = square_crop(image, centre, side, MESH_CROP_SIZE)
    result = _mediapipe.run(_mediapipe.FACE_MESH, crop)
    if not result.multi_face_landmarks:
        return None

    px_per_crop = float(crop_box[2] - crop_box[0])  # input pixels per unit of normalised crop
    best, best_iou = None, MIN_MESH_IOU
    for face in result.multi_face_landmarks:
        pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)  # [478, 3]
        if pts.shape[0] != N_LANDMARKS:
            raise RuntimeError(f"MediaPipe returned {pts.shape[0]} landmarks, expected {N_LANDMARKS}")
        pts *= px_per_crop
        pts[:, 0] += crop_box[0]
        pts[:, 1] += crop_box[1]
        lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
        iou = box_iou(np.concatenate([lo, hi]), np.asarray(box, dtype=np.float64))
        if iou > best_iou:
            best, best_iou = pts, iou
    return None if best is None else best.astype(np.float32)
