"""PCK: do the faces in the renders sit where the head's own landmarks say they should?

Instax3D (METHOD B.3, Table 1: PCK 95.4) detects keypoints on each render and counts the
percentage within a threshold of the ground-truth keypoints projected from the 3D head. Ours:

- detected: MediaPipe's 478-point mesh on each render with |yaw| <= 60 deg (any pitch);
- ground truth: the head's 478 landmarks in 3D (the photo's landmarks lifted onto the fitted
  template, :mod:`backend.eval.reference`) projected by the render's own camera;
- threshold: :data:`PCK_ALPHA` x the inter-ocular distance (outer eye corners, MediaPipe 33
  and 263) measured in 3D and scaled to pixels at the face's depth, f * IOD / z. Unlike the
  projected distance it does not shrink as the head turns;
- a view where MediaPipe finds no face scores 0 (the face is not where it should be);
- ``pck`` is the mean over the views; ``pck5`` is the same on five MTCNN-like keypoints
  (iris centres, nose tip, mouth corners), the kind Instax3D detects.
"""

from __future__ import annotations

import numpy as np

from ..face import LANDMARKS
from .faces import ViewFaces
from .orbit import Orbit

PCK_MAX_YAW = 60.0
PCK_ALPHA = 0.1  # of the inter-ocular distance (outer corners): about 9 mm on an adult
EYE_OUTER = (33, 263)  # the subject's right and left outer eye corners
FIVE = (LANDMARKS["right_iris"], LANDMARKS["left_iris"], LANDMARKS["nose_tip"], 61, 291)


def project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-frame points [N, 3] -> (pixels [N, 2], camera depth [N])."""
    pc = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    uv = pc[:, :2] / np.maximum(z, 1e-9)[:, None] * K[[0, 1], [0, 1]] + K[:2, 2]
    return uv, z


def view_pck(detected: np.ndarray, truth: np.ndarray, tolerance_px: float, index=None) -> float:
    """Percentage of detected keypoints within ``tolerance_px`` of the truth."""
    sel = slice(None) if index is None else list(index)
    err = np.linalg.norm(detected[sel] - truth[sel], axis=-1)
    return float((err <= tolerance_px).mean() * 100.0)


def pck_metrics(orbit: Orbit, views: list[ViewFaces], landmarks3d: np.ndarray) -> dict:
    iod_m = float(np.linalg.norm(landmarks3d[EYE_OUTER[0]] - landmarks3d[EYE_OUTER[1]]))
    rows, all_pck, five_pck = [], [], []
    for i in orbit.within(PCK_MAX_YAW):
        V = orbit.cameras.viewmats[i].numpy().astype(np.float64)
        K = orbit.cameras.Ks[i].numpy().astype(np.float64)
        truth, z = project(landmarks3d.astype(np.float64), V, K)
        tolerance = PCK_ALPHA * K[0, 0] * iod_m / float(np.median(z))
        det = views[i].landmarks
        p = view_pck(det, truth, tolerance) if det is not None else 0.0
        p5 = view_pck(det, truth, tolerance, FIVE) if det is not None else 0.0
        all_pck.append(p)
        five_pck.append(p5)
        rows.append([float(orbit.yaw[i]), float(orbit.pitch[i]), round(p, 2)])
    return {
        "pck": round(float(np.mean(all_pck)), 2) if all_pck else 0.0,
        "pck5": round(float(np.mean(five_pck)), 2) if five_pck else 0.0,
        "pck_views": len(rows),
        "pck_faces_found": sum(1 for i in orbit.within(PCK_MAX_YAW) if views[i].landmarks is not None),
        "pck_by_view": rows,
        "pck_threshold": f"{PCK_ALPHA:g} x inter-ocular distance (outer eye corners)",
    }
