"""Ghost faces: a face seen from behind the head.

A head whose back is see-through, or that was painted with the photo's face on both sides,
shows a face to a camera behind it. Counted: the views with |yaw| >= 120 deg (any pitch) in
which MediaPipe finds a face (its detector, confirmed by its 478-point mesh) or dlib's HOG
detector finds one. A good head scores 0. ``ghost_boxes_mediapipe`` also counts the views
where BlazeFace alone fired (it fires on skin-coloured blobs too): shown, not counted.
"""

from __future__ import annotations

from .faces import ViewFaces
from .orbit import Orbit

GHOST_MIN_YAW = 120.0


def ghost_metrics(orbit: Orbit, views: list[ViewFaces]) -> dict:
    behind = orbit.beyond(GHOST_MIN_YAW)
    mp = [int(i) for i in behind if views[i].landmarks is not None]
    dl = [int(i) for i in behind if views[i].dlib]
    ghosts = [int(i) for i in behind if views[i].found]
    return {
        "ghost_faces": len(ghosts),
        "ghost_views": len(behind),
        "ghost_faces_mediapipe": len(mp),
        "ghost_faces_dlib": len(dl),
        "ghost_boxes_mediapipe": sum(1 for i in behind if views[i].mediapipe),
        "ghost_at": [[float(orbit.yaw[i]), float(orbit.pitch[i])] for i in ghosts],
    }
