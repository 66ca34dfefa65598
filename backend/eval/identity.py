"""Identity across views: dlib's descriptor distance from each render to the photo.

The offline analogue of Instax3D's IPA (METHOD B.3, which uses ArcFace cosine): dlib's 128-D
ResNet descriptor, whose distance is < 0.6 for the same person (dlib's threshold). Reported:

- ``identity_by_yaw``: [yaw, distance] for each ring view (pitch 0) where dlib finds a face;
- ``identity_worst_30``: the largest distance among the views (any pitch) with |yaw| <= 30
  where a face is found, and ``identity_found_30`` of ``identity_views_30`` views had one;
- ``identity_same_person_45``: how many of the ``identity_views_45`` views (any pitch) with
  |yaw| <= 45 show a face at distance < 0.6 (a view without a face is not the same person).
"""

from __future__ import annotations

import numpy as np

from .dlib_face import SAME_PERSON, distance
from .faces import ViewFaces
from .orbit import Orbit


def view_distances(views: list[ViewFaces], photo_descriptor: np.ndarray) -> list[float | None]:
    """Per view: the distance to the photo, or None where dlib found no face."""
    return [None if v.descriptor is None else distance(v.descriptor, photo_descriptor) for v in views]


def identity_metrics(orbit: Orbit, distances: list[float | None]) -> dict:
    out: dict = {
        "identity_by_yaw": [
            [float(orbit.yaw[i]), round(d, 4)] for i in orbit.ring() if (d := distances[i]) is not None
        ],
    }
    near30 = orbit.within(30.0)
    found30 = [d for i in near30 if (d := distances[i]) is not None]
    out["identity_views_30"] = len(near30)
    out["identity_found_30"] = len(found30)
    if found30:
        out["identity_worst_30"] = round(max(found30), 4)
    near45 = orbit.within(45.0)
    out["identity_views_45"] = len(near45)
    out["identity_same_person_45"] = sum(1 for i in near45 if (d := distances[i]) is not None and d < SAME_PERSON)
    return out
