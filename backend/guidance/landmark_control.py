"""The landmark ControlNet's condition image, drawn from the head's 3D landmarks (METHOD A.4).

The MediaPipe-face ControlNet for SD1.5 (CrucibleAI/ControlNetMediaPipeFace) was trained on
images drawn by its ``laion_face_common.py`` from MediaPipe's 478-point face mesh. SAS needs
that drawing for the *current render camera*, so the head-frame landmarks (the photo's,
lifted onto the fitted template: :func:`backend.prior.lift.lift_landmarks`) are projected
into each camera and drawn the same way (shared/WEIGHTS.md "ControlNet, MediaPipe face"):

- black canvas at the render size; x, y normalised to [0, 1] (z unused);
- edges: MediaPipe's FACE_OVAL, LEFT_EYE, LEFT_EYEBROW, RIGHT_EYE, RIGHT_EYEBROW and LIPS
  (the connection sets from the installed mediapipe, in that order), ``cv2.line`` 2 px LINE_8;
  no tessellation, no nose, no dots;
- a point outside [0, 1] (or behind the camera) is dropped together with its edges;
- pupils (iris centres 468 and 473) as filled 4x4 squares;
- colours (final RGB) in :data:`PART_COLOURS` / :data:`PUPIL_COLOURS`; "left" is the subject's.

A view where the face is not visible (:func:`face_visible`) gets an all-zero image and must
get zero control (METHOD A.4: zero control for views with no visible face): the face's
forward direction (the head frame's -Y) makes more than ``facing_threshold_deg`` with the
direction to the camera, or fewer than :data:`MIN_VISIBLE` of the drawn landmarks land in the
image. A black image alone is not zero control (a ControlNet's residuals on a black image are
not zero), so :func:`control_condition` also returns each view's visibility, and the SAS term
scales that view's ControlNet residuals by 0 (``backend.guidance.sd_identity``).

Usage::

    cond = control_images(lm3d, cams)             # [C, 3, H, W] float in [0, 1], ControlNet input
    cond, visible = control_condition(lm3d, cams)  # the same, and [C] bool: scale 0 where False
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from torch import Tensor

from backend.gaussians.cameras import Cameras

#: Final RGB colour of each part's edges (laion_face_common.py, after its channel reversal).
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "FACEMESH_FACE_OVAL": (10, 200, 10),
    "FACEMESH_LEFT_EYE": (10, 200, 180),
    "FACEMESH_LEFT_EYEBROW": (10, 220, 180),
    "FACEMESH_RIGHT_EYE": (180, 200, 10),
    "FACEMESH_RIGHT_EYEBROW": (180, 220, 10),
    "FACEMESH_LIPS": (10, 180, 10),
}
#: Iris centres (subject's right 468, left 473) and their square's colour.
PUPIL_COLOURS: dict[int, tuple[int, int, int]] = {468: (250, 200, 10), 473: (10, 200, 250)}
LINE_THICKNESS = 2
PUPIL_HALF_WIDTH = 2  # the square covers [c - 2, c + 2): 4x4 pixels
#: A face turned further than this from the camera is treated as not visible (ours; MediaPipe
#: itself rarely finds a face beyond a profile view, so the ControlNet never saw one).
FACING_THRESHOLD_DEG = 75.0
#: Fraction of the drawn landmarks that must land inside the image for the face to count.
MIN_VISIBLE = 0.5
N_LANDMARKS = 478
#: The face looks toward -Y in the head frame (ARCHITECTURE "Coordinates"; the fitted template
#: and the lifted landmarks live there).
HEAD_FORWARD = (0.0, -1.0, 0.0)


@functools.cache
def face_edges() -> tuple[tuple[int, int, tuple[int, int, int]], ...]:
    """(i, j, rgb) for every edge the ControlNet's drawing has, in drawing order."""
    from mediapipe.python.solutions import face_mesh_connections as conn

    edges: dict[tuple[int, int], tuple[int, int, int]] = {}
    for name, rgb in PART_COLOURS.items():
        for i, j in sorted(getattr(conn, name)):
            edges[(i, j)] = rgb  # as a dict keyed by edge: a later part overrides (none share edges)
    return tuple((i, j, rgb) for (i, j), rgb in edges.items())


@functools.cache
def _drawn_points() -> np.ndarray:
    return np.unique(np.array([[i, j] for i, j, _ in face_edges()] + [[k, k] for k in PUPIL_COLOURS]))


def draw_landmarks(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """The ControlNet drawing [H, W, 3] uint8 of normalised landmarks ``points`` [478, 2]
    (x right, y down, in [0, 1]; NaN for a point to drop)."""
    img = np.zeros((height, width, 3), np.uint8)
    pts = np.asarray(points, np.float64)
    ok = np.all(np.isfinite(pts), axis=1) & np.all((pts >= 0.0) & (pts <= 1.0), axis=1)
    px = np.zeros((len(pts), 2), np.int64)
    px[ok, 0] = np.minimum(np.floor(pts[ok, 0] * width), width - 1)
    px[ok, 1] = np.minimum(np.floor(pts[ok, 1] * height), height - 1)
    for i, j, rgb in face_edges():
        if ok[i] and ok[j]:
            cv2.line(
                img, (int(px[i, 0]), int(px[i, 1])), (int(px[j, 0]), int(px[j, 1])), rgb, LINE_THICKNESS, cv2.LINE_8
            )
    h = PUPIL_HALF_WIDTH
    for k, rgb in PUPIL_COLOURS.items():
        if ok[k] and pts[k, 0] < 1.0 and pts[k, 1] < 1.0:
            x, y = int(px[k, 0]), int(px[k, 1])
            img[max(y - h, 0) : y + h, max(x - h, 0) : x + h] = rgb
    return img


def project(landmarks: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """Head-frame points [N, 3] -> (normalised image coordinates [C, N, 2], camera depth [C, N]).
    Pixel u maps to u / width, so pixel (i, j) covers [i, i + 1) / width like MediaPipe's."""
    lm = landmarks.to(device=cams.device, dtype=torch.float64)
    view = cams.viewmats.double()
    pc = torch.einsum("cij,nj->cni", view[:, :3, :3], lm) + view[:, None, :3, 3]
    z = pc[..., 2]
    uvw = torch.einsum("cij,cnj->cni", cams.Ks.double(), pc)
    uv = uvw[..., :2] / torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))[..., None]
    scale = torch.tensor([cams.width, cams.height], dtype=torch.float64, device=uv.device)
    return uv / scale, z


def facing_angle_deg(landmarks: Tensor, cams: Cameras, forward=HEAD_FORWARD) -> Tensor:
    """Angle [C] (degrees) between the face's ``forward`` direction and the direction from the
    landmarks' centre to each camera (0 = seen from straight in front, 180 = from behind)."""
    lm = landmarks.to(device=cams.device, dtype=torch.float64)
    fwd = torch.as_tensor(forward, dtype=torch.float64, device=lm.device)
    fwd = fwd / fwd.norm().clamp_min(1e-12)
    to_cam = cams.camera_centers().double() - lm.mean(0)
    to_cam = to_cam / to_cam.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.rad2deg(torch.arccos((to_cam @ fwd).clamp(-1.0, 1.0)))


def _landmarks(landmarks: Tensor | np.ndarray) -> Tensor:
    lm = landmarks if isinstance(landmarks, Tensor) else torch.as_tensor(np.asarray(landmarks))
    if lm.shape != (N_LANDMARKS, 3):
        raise ValueError(f"landmarks must be [{N_LANDMARKS}, 3] MediaPipe face-mesh points, got {tuple(lm.shape)}")
    return lm


def _projected(lm: Tensor, cams: Cameras) -> Tensor:
    """Normalised image coordinates [C, N, 2], NaN for points behind the camera."""
    uv, z = project(lm, cams)
    return torch.where((z > 1e-6)[..., None], uv, torch.full_like(uv, float("nan")))


def _visible(lm: Tensor, uv: Tensor, cams: Cameras, facing_threshold_deg: float, forward) -> Tensor:
    drawn = torch.as_tensor(_drawn_points(), device=uv.device)
    inside = ((uv[:, drawn] >= 0) & (uv[:, drawn] <= 1)).all(-1).double().mean(-1)  # [C]
    return (facing_angle_deg(lm, cams, forward) <= facing_threshold_deg) & (inside >= MIN_VISIBLE)


def face_visible(
    landmarks: Tensor | np.ndarray,
    cams: Cameras,
    *,
    facing_threshold_deg: float = FACING_THRESHOLD_DEG,
    forward=HEAD_FORWARD,
) -> Tensor:
    """[C] bool on ``cams.device``: does each camera see the face (see the module docstring)?"""
    lm = _landmarks(landmarks)
    return _visible(lm, _projected(lm, cams), cams, facing_threshold_deg, forward)


def control_condition(
    landmarks: Tensor | np.ndarray,
    cams: Cameras,
    *,
    facing_threshold_deg: float = FACING_THRESHOLD_DEG,
    forward=HEAD_FORWARD,
) -> tuple[Tensor, Tensor]:
    """(ControlNet condition images [C, 3, H, W] float32 in [0, 1], visible [C] bool), both on
    ``cams.device``, for head-frame landmarks [478, 3]; the image is all zero where the face is
    not visible, and the caller gives that view conditioning scale 0."""
    lm = _landmarks(landmarks)
    uv = _projected(lm, cams)
    visible = _visible(lm, uv, cams, facing_threshold_deg, forward)
    out = np.zeros((len(cams), cams.height, cams.width, 3), np.uint8)
    uv_np = uv.cpu().numpy()
    for c in np.flatnonzero(visible.cpu().numpy()):
        out[c] = draw_landmarks(uv_np[c], cams.width, cams.height)
    return torch.from_numpy(out).to(cams.device).permute(0, 3, 1, 2).float() / 255.0, visible


def control_images(
    landmarks: Tensor | np.ndarray,
    cams: Cameras,
    *,
    facing_threshold_deg: float = FACING_THRESHOLD_DEG,
    forward=HEAD_FORWARD,
) -> Tensor:
    """ControlNet condition images [C, 3, H, W] float32 in [0, 1] (on ``cams.device``) of the
    head-frame landmarks [478, 3] seen by each camera; all zero where the face is not visible
    (see the module docstring; :func:`control_condition` also says which views those are)."""
    return control_condition(landmarks, cams, facing_threshold_deg=facing_threshold_deg, forward=forward)[0]
