"""Place the head template in a photo from its 2D face landmarks.

Conventions (used by everything downstream of the fit):

* **The head stays put; the camera moves.** The world frame IS the head frame (metres,
  +Z up, face toward -Y, origin at the head centre; see ``template.py``). The photo's
  camera is expressed in it, so the fitted camera is the pipeline's ``front`` camera and
  the Gaussians never need re-posing.
* **Camera:** pinhole, OpenCV convention (x right, y down, z forward), no distortion.
  ``world_to_camera`` is a 4x4 that maps head-frame points to camera coordinates.
  Intrinsics come from a vertical field of view (default 30 deg, a portrait lens) with the
  principal point at the image centre. Pixel coordinates are continuous: (0, 0) is the
  top-left corner of the top-left pixel, whose centre is (0.5, 0.5) -- MediaPipe's
  normalised landmarks times (width, height).
* **Head pose** ``head_rotation`` R_head [3, 3]: how the head is turned relative to a
  camera straight in front of it. ``world_to_camera[:3, :3] = FRONT_VIEW @ R_head`` where
  ``FRONT_VIEW`` is the rotation of a camera on the -Y axis looking at the face, upright.
  ``pose_from_euler(yaw, pitch, roll) = Rz(yaw) @ Rx(-pitch) @ Ry(roll)`` (degrees), with
  the signs of ``backend.face.pose``: yaw > 0 the subject turned to their left (the nose
  moves toward the image's right); pitch > 0 looking up (chin raised); roll > 0 the head
  leans toward the subject's left shoulder (the crown moves toward +X).
* **Scale:** one photo cannot tell a big head far away from a small head close by (a
  pinhole image is unchanged when the scene and the camera distance scale together). So
  the overall ``scale`` is an input (default 1.0 = the average adult template) unless the
  camera distance is known, in which case it is solved for. The width and height
  proportions relative to the depth are fitted (with a prior) when ``fit_proportions``.

Method: weighted, robust (soft-L1) least squares on the reprojection of the template's
anchors onto the corresponding MediaPipe landmarks (scipy.optimize.least_squares), started
from OpenCV's SQPnP solution and from a frontal guess; the better end point wins.
Deterministic; a few milliseconds per fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from .template import HeadMesh, HeadShapeParams, build_head

# MediaPipe Face Mesh (468 points, 478 with refine_landmarks) indices of the template's
# anchors. "right"/"left" are the subject's; checked against MediaPipe's canonical model.
MEDIAPIPE_INDEX: dict[str, int] = {
    "nose_tip": 1,
    "chin": 152,
    "forehead": 10,
    "right_eye_outer": 33,
    "right_eye_inner": 133,
    "left_eye_inner": 362,
    "left_eye_outer": 263,
    "mouth_right": 61,
    "mouth_left": 291,
    "right_cheek": 234,
    "left_cheek": 454,
}

# Face-oval sides slide over the cheek as the head turns (they are partly silhouette
# points) and the forehead point depends on the hairline: trust them less.
LANDMARK_WEIGHTS: dict[str, float] = {"right_cheek": 0.5, "left_cheek": 0.5, "forehead": 0.7}

# A camera on the -Y axis looking at the face, upright: rows are the camera's x (right),
# y (down) and z (forward) axes in head coordinates.
FRONT_VIEW = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

DEFAULT_FOV_Y_DEG = 30.0


def intrinsics_from_fov(width: int, height: int, fov_y_deg: float = DEFAULT_FOV_Y_DEG):
    """(fx, fy, cx, cy) for square pixels, principal point at the image centre."""
    fy = 0.5 * height / np.tan(0.5 * np.radians(fov_y_deg))
    return float(fy), float(fy), 0.5 * width, 0.5 * height


def _rx(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_from_euler(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R_head = Rz(yaw) @ Rx(-pitch) @ Ry(roll), angles in degrees (see module docstring)."""
    return _rz(yaw) @ _rx(-pitch) @ _ry(roll)


def euler_from_pose(r_head: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees with ``pose_from_euler(*euler_from_pose(R)) == R``."""
    r = np.asarray(r_head, dtype=np.float64)
    pitch = -np.arcsin(np.clip(r[2, 1], -1.0, 1.0))
    yaw = np.arctan2(-r[0, 1], r[1, 1])
    roll = np.arctan2(-r[2, 0], r[2, 2])
    return float(np.degrees(yaw)), float(np.degrees(pitch)), float(np.degrees(roll))


def look_at_head(r_head: np.ndarray, distance: float, offset=(0.0, 0.0)) -> np.ndarray:
    """world_to_camera [4, 4] of a camera ``distance`` m from the head centre, head pose R_head.

    ``offset`` shifts the head in the image plane (camera x, y in metres).
    """
    m = np.eye(4)
    m[:3, :3] = FRONT_VIEW @ np.asarray(r_head, dtype=np.float64)
    m[:3, 3] = (offset[0], offset[1], distance)
    return m


def project_points(points: np.ndarray, world_to_camera: np.ndarray, fx, fy, cx, cy):
    """Head-frame points [N, 3] -> (pixels [N, 2], camera depth z [N])."""
    pc = np.asarray(points, dtype=np.float64) @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = pc[:, 2]
    zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
    return np.stack([fx * pc[:, 0] / zs + cx, fy * pc[:, 1] / zs + cy], axis=1), z


@dataclass
class HeadFit:
    """The template placed in the photo.

    params                 fitted head shape (metres); ``build_head(params)`` is the mesh
                           the camera below sees.
    scale                  overall size relative to the template's default (1.0 unless
                           the camera distance was given)
    proportions            (width, height) stretch relative to the depth, 1.0 = average
    head_rotation [3, 3]   R_head: the head's turn relative to a frontal camera
    world_to_camera [4, 4] OpenCV camera (x right, y down, z forward); world = head frame
    fx, fy, cx, cy         pinhole intrinsics in pixels; width, height of the photo
    reprojection_error_px  RMS distance between the projected anchors and the landmarks
    residuals_px [K, 2]    per-anchor projected minus observed, order of ``names``
    names                  the anchors used
    """

    params: HeadShapeParams
    scale: float
    proportions: tuple[float, float]
    head_rotation: np.ndarray
    world_to_camera: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    reprojection_error_px: float
    residuals_px: np.ndarray
    names: tuple[str, ...]

    @property
    def K(self) -> np.ndarray:  # [3, 3]
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def camera_to_world(self) -> np.ndarray:  # [4, 4]
        return np.linalg.inv(self.world_to_camera)

    @property
    def camera_position(self) -> np.ndarray:  # [3] head frame, metres
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -r.T @ t

    @property
    def head_quat(self) -> np.ndarray:  # [4] wxyz of head_rotation
        x, y, z, w = Rotation.from_matrix(self.head_rotation).as_quat()
        q = np.array([w, x, y, z])
        return q if w >= 0 else -q

    @property
    def yaw_pitch_roll(self) -> tuple[float, float, float]:  # degrees
        return euler_from_pose(self.head_rotation)

    @property
    def fov_y_deg(self) -> float:
        return float(np.degrees(2.0 * np.arctan(0.5 * self.height / self.fy)))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame points [N, 3] -> (pixels [N, 2], depth [N] metres along the view axis)."""
        return project_points(points, self.world_to_camera, self.fx, self.fy, self.cx, self.cy)

    def mesh(self) -> HeadMesh:
        return build_head(self.params)


def _model_points(anchors: np.ndarray, x: np.ndarray, fixed_scale: float, distance: float | None, fit_props: bool):
    """Camera-space anchors [K, 3] for the parameter vector x."""
    rotvec, a, b, s3 = x[:3], x[3], x[4], x[5]
    if distance is None:
        scale, tz = fixed_scale, np.exp(s3)
    else:
        scale, tz = np.exp(s3), distance / np.sqrt(1.0 + a * a + b * b)
    sx, sz = (np.exp(x[6]), np.exp(x[7])) if fit_props else (1.0, 1.0)
    r = FRONT_VIEW @ Rotation.from_rotvec(rotvec).as_matrix()
    pts = anchors * (scale * np.array([sx, 1.0, sz]))
    return pts @ r.T + tz * np.array([a, b, 1.0])


def fit_head(
    landmarks2d: np.ndarray,
    image_size: tuple[int, int],
    *,
    fov_y_deg: float = DEFAULT_FOV_Y_DEG,
    landmarks3d: np.ndarray | None = None,
    base: HeadShapeParams | None = None,
    scale: float = 1.0,
    camera_distance: float | None = None,
    fit_proportions: bool = True,
    proportion_sigma: float = 0.08,
    depth_weight: float = 0.3,
) -> HeadFit:
    """Fit the template to MediaPipe landmarks of one face.

    Args:
        landmarks2d: [478, 2] (or [468, 2]) pixel coordinates, MediaPipe Face Mesh order.
        image_size: (width, height) of the photo in pixels.
        fov_y_deg: vertical field of view of the assumed pinhole camera (30 = portrait lens).
        landmarks3d: optional [478, 3]; columns 0-1 as ``landmarks2d``, column 2 the
            relative depth in pixels, smaller = nearer (MediaPipe's z times the image
            width). Only depth differences are used, as a weak extra cue on the pose.
        base: the head shape whose anchors are matched (default: average adult).
        scale: overall head size relative to ``base`` when the distance is unknown.
        camera_distance: metres from the camera centre to the head centre, if known; then
            ``scale`` is solved for instead.
        fit_proportions: also fit the width and height stretch (prior sd ``proportion_sigma``
            in log units).
        depth_weight: weight of the landmarks3d depth residuals relative to the 2D ones.

    Returns a ``HeadFit``; its ``world_to_camera`` maps head-frame points into the camera.
    """
    width, height = int(image_size[0]), int(image_size[1])
    lm = np.asarray(landmarks2d, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] < 2 or lm.shape[0] <= max(MEDIAPIPE_INDEX.values()):
        raise ValueError(f"landmarks2d must be [478, 2] MediaPipe Face Mesh points, got shape {lm.shape}")
    names = tuple(MEDIAPIPE_INDEX)
    obs = lm[[MEDIAPIPE_INDEX[n] for n in names], :2]
    if not np.all(np.isfinite(obs)):
        raise ValueError("landmarks2d holds NaN or Inf at the anchor landmarks")
    fx, fy, cx, cy = intrinsics_from_fov(width, height, fov_y_deg)
    base = base if base is not None else HeadShapeParams()
    anchors = build_head(base).anchor_array(names)  # [K, 3]
    w = np.array([LANDMARK_WEIGHTS.get(n, 1.0) for n in names])

    # Residuals are in units of ~1% of the face's size in the photo, so the robust loss
    # and the prior weigh the same for a small and a large face.
    face_px = max(float(np.linalg.norm(obs.max(axis=0) - obs.min(axis=0))), 1.0)
    unit = 0.01 * face_px

    depth_obs = None
    if landmarks3d is not None:
        l3 = np.asarray(landmarks3d, dtype=np.float64)
        if l3.ndim == 2 and l3.shape[1] >= 3 and l3.shape[0] > max(MEDIAPIPE_INDEX.values()):
            depth_obs = l3[[MEDIAPIPE_INDEX[n] for n in names], 2]
            depth_obs = depth_obs - depth_obs.mean()

    def residuals(x):
        pc = _model_points(anchors, x, scale, camera_distance, fit_proportions)
        z = np.maximum(pc[:, 2], 1e-6)
        uv = np.stack([fx * pc[:, 0] / z + cx, fy * pc[:, 1] / z + cy], axis=1)
        parts = [((uv - obs) * w[:, None]).ravel() / unit]
        if depth_obs is not None:
            d = fx * (pc[:, 2] - pc[:, 2].mean()) / pc[:, 2].mean()
            parts.append(depth_weight * w * (d - depth_obs) / unit)
        if fit_proportions:
            parts.append(x[6:8] / proportion_sigma)
        return np.concatenate(parts)

    starts = _initial_guesses(anchors, obs, fx, fy, cx, cy, scale, camera_distance, face_px)
    best = None
    for x0 in starts:
        if fit_proportions:
            x0 = np.concatenate([x0, [0.0, 0.0]])
        sol = least_squares(residuals, x0, loss="soft_l1", f_scale=3.0, method="trf", x_scale="jac", max_nfev=200)
        if best is None or sol.cost < best.cost:
            best = sol
    x = best.x

    r_head = Rotation.from_rotvec(x[:3]).as_matrix()
    a, b = x[3], x[4]
    if camera_distance is None:
        s, tz = scale, float(np.exp(x[5]))
    else:
        s, tz = float(np.exp(x[5])), camera_distance / np.sqrt(1.0 + a * a + b * b)
    sx, sz = (float(np.exp(x[6])), float(np.exp(x[7]))) if fit_proportions else (1.0, 1.0)
    w2c = look_at_head(r_head, tz, (tz * a, tz * b))
    pc = _model_points(anchors, x, scale, camera_distance, fit_proportions)
    uv = np.stack([fx * pc[:, 0] / pc[:, 2] + cx, fy * pc[:, 1] / pc[:, 2] + cy], axis=1)
    res = uv - obs
    return HeadFit(
        params=base.scaled(s * sx, s, s * sz),
        scale=float(s),
        proportions=(sx, sz),
        head_rotation=r_head,
        world_to_camera=w2c,
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        width=width,
        height=height,
        reprojection_error_px=float(np.sqrt(np.mean(np.sum(res**2, axis=1)))),
        residuals_px=res,
        names=names,
    )


def _initial_guesses(anchors, obs, fx, fy, cx, cy, scale, distance, face_px) -> list[np.ndarray]:
    """Start points [rotvec(3), a, b, log(tz) or log(scale)]: SQPnP, then a frontal guess."""
    starts = []
    # Frontal guess: the head's anchor spread matches the landmarks' spread.
    size3d = float(np.linalg.norm(anchors.max(axis=0)[[0, 2]] - anchors.min(axis=0)[[0, 2]])) * scale
    tz = fx * size3d / face_px
    centre = obs.mean(axis=0)
    a, b = (centre[0] - cx) / fx, (centre[1] - cy) / fy
    frontal = np.array([0.0, 0.0, 0.0, a, b, np.log(tz) if distance is None else np.log(scale * distance / tz)])
    try:
        import cv2

        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        ok, rvec, tvec = cv2.solvePnP(
            (anchors * scale).astype(np.float64), obs.astype(np.float64), k, None, flags=cv2.SOLVEPNP_SQPNP
        )
        if ok:
            r_wc, _ = cv2.Rodrigues(rvec)
            t = tvec.ravel()
            facing = (r_wc @ np.array([0.0, -1.0, 0.0]))[2] < 0  # face points toward the camera
            if t[2] > 0 and facing:
                r_head = FRONT_VIEW.T @ r_wc
                last = np.log(t[2]) if distance is None else np.log(scale * distance / np.linalg.norm(t))
                starts.append(
                    np.concatenate([Rotation.from_matrix(r_head).as_rotvec(), [t[0] / t[2], t[1] / t[2], last]])
                )
    except ImportError:  # OpenCV is optional here: the frontal start alone converges for |yaw| < ~45 deg
        pass
    starts.append(frontal)
    return starts
