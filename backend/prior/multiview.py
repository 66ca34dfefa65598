"""The head template fitted to several views of one head (Instax3D's orbit frames, METHOD B.2).

    lms = frame_landmarks(frames, [ref, ref - 1, ref + 1], ref)       # MediaPipe, per frame
    fit = fit_template(lms, viewmats, Ks, (width, height))            # one shape, cameras in the head frame

The views' cameras are given as plain arrays in some "orbit world" (OpenCV world -> camera
``viewmats`` [C, 4, 4] and intrinsics ``Ks`` [C, 3, 3], one image size); the fit re-expresses
them in the HEAD FRAME (metres, +Z up, face toward -Y), so whatever is built on the fitted
template sees the frames from the right places. Camera objects stay with the caller
(``backend.gaussians.cameras`` sits to the right of this layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import FaceError
from ..face import analyse_face
from .fit import fit_head
from .template import HeadShapeParams


@dataclass
class TemplateFit:
    """The head template fitted to a few frames and the frames' cameras in the head frame."""

    params: HeadShapeParams  # averaged over the fitted frames (METHOD B.2)
    viewmats: np.ndarray  # [C, 4, 4] float64: every frame's camera (world -> camera), head frame
    fitted: list[int]  # frame indices whose landmarks entered the fit
    rotation_spread_deg: float  # how far the per-frame head rotations disagree (0 = perfectly)
    scale: float  # orbit-world units per metre


def frame_landmarks(
    frames, indices, reference_index: int, reference_landmarks: np.ndarray | None = None
) -> dict[int, np.ndarray]:
    """MediaPipe landmarks [478, 2] of the chosen frames; frames with no usable face are left out
    (the reference must have one: its landmarks may be given, e.g. from the photo)."""
    out = {}
    for i in indices:
        if i == reference_index and reference_landmarks is not None:
            out[i] = np.asarray(reference_landmarks, np.float64)[:, :2]
            continue
        try:
            out[i] = analyse_face(np.ascontiguousarray(frames[i])).landmarks2d.astype(np.float64)
        except FaceError:
            if i == reference_index:
                raise
    return out


def fit_template(
    landmarks: dict[int, np.ndarray], viewmats: np.ndarray, Ks: np.ndarray, size: tuple[int, int]
) -> TemplateFit:
    """Fit the template to each frame's landmarks, average, and move the cameras into the head frame.

    ``viewmats`` [C, 4, 4] and ``Ks`` [C, 3, 3] are every frame's camera in the orbit world,
    ``size`` (width, height) their image size; ``landmarks`` maps frame index -> [478, 2] pixels.

    Per fitted frame k: ``fit_head`` gives head -> camera_k (W_k, metres) and a shape. With the
    orbit camera V_k (orbit world -> camera_k): rotation head -> world ``R = mean_k V_k^T W_k``;
    scale ``s = mean_k |c_k| / |t_Wk|`` (the orbit looks at the head); head centre in the world
    ``t = mean_k V_k^-1 (s t_Wk)``. Each camera in the head frame is then rotation V R and
    translation (V t + t_V) / s (a pinhole image is unchanged when the scene scales by s).
    """
    if not landmarks:
        raise ValueError("no frame has landmarks to fit the template to")
    V = np.asarray(viewmats, np.float64)  # [C, 4, 4]
    K = np.asarray(Ks, np.float64)
    fov = math.degrees(2.0 * math.atan(0.5 * size[1] / K[0, 1, 1]))
    fits = {k: fit_head(lm, size, fov_y_deg=fov) for k, lm in landmarks.items()}
    keys = sorted(fits)
    rots = Rotation.from_matrix(np.stack([V[k, :3, :3].T @ fits[k].world_to_camera[:3, :3] for k in keys]))
    mean_rot = rots.mean()
    spread = float(np.degrees((rots * mean_rot.inv()).magnitude().max()))
    R = mean_rot.as_matrix()
    centres = np.stack([-V[k, :3, :3].T @ V[k, :3, 3] for k in keys])  # camera centres, world
    t_w = np.stack([fits[k].world_to_camera[:3, 3] for k in keys])  # head origin in camera k, metres
    s = float(np.mean(np.linalg.norm(centres, axis=1) / np.linalg.norm(t_w, axis=1)))
    head_world = np.mean([V[k, :3, :3].T @ (s * t_w[i] - V[k, :3, 3]) for i, k in enumerate(keys)], axis=0)
    new = np.zeros_like(V)
    new[:, :3, :3] = V[:, :3, :3] @ R
    new[:, :3, 3] = (np.einsum("cij,j->ci", V[:, :3, :3], head_world) + V[:, :3, 3]) / s
    new[:, 3, 3] = 1.0
    shape = {f.name: float(np.mean([getattr(fits[k].params, f.name) for k in keys])) for f in fields(HeadShapeParams)}
    return TemplateFit(HeadShapeParams(**shape), new, keys, spread, s)
