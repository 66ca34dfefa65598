"""Rough head pose (yaw, pitch, roll in degrees) from the 3D face-mesh landmarks.

Frames. The landmarks' x, y, z (pixels, x right, y down, z away from the camera) form a
right-handed camera frame, the same axes as OpenCV's. The head frame built here has

- ``x``: toward the subject's left (from the right eye/cheek to the left eye/cheek),
- ``y``: down the face (from mid-forehead, vertex 10, to the top of the upper lip, vertex 0;
  both lie on the front of the face at about the same depth, so a level face reads pitch 0),
- ``z = x × y``: into the head, away from the face. The face looks along ``-z``.

A frontal, upright, level face gives the identity. The rotation ``R`` (columns = head axes in
camera coordinates) is split as ``R = Ry(-yaw) · Rx(-pitch) · Rz(roll)`` about the camera
axes. Sign conventions:

- ``yaw > 0``: the subject has turned to **their left** (their nose moves toward the
  image's right in an unmirrored photo);
- ``pitch > 0``: the subject looks **up** (chin raised);
- ``roll > 0``: the head leans toward the subject's **left shoulder** (clockwise on screen in
  an unmirrored photo, where y points down).

This is a rough estimate: MediaPipe's z is a learnt relative depth, not a measurement, and
the head frame comes from a few landmarks rather than a fitted template.
"""

from __future__ import annotations

import math

import numpy as np

from backend.face.landmarks import LANDMARKS

_LEFT = (LANDMARKS["left_eye_outer"], LANDMARKS["left_cheek"])
_RIGHT = (LANDMARKS["right_eye_outer"], LANDMARKS["right_cheek"])
_TOP = LANDMARKS["forehead"]
_BOTTOM = LANDMARKS["upper_lip"]


def head_rotation(landmarks3d: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation whose columns are the head's x (subject's left), y (down the face)
    and z (into the head) axes in camera coordinates; see the module docstring."""
    pts = np.asarray(landmarks3d, dtype=np.float64)  # [478, 3]
    x_axis = pts[list(_LEFT)].sum(axis=0) - pts[list(_RIGHT)].sum(axis=0)
    down = pts[_BOTTOM] - pts[_TOP]
    x_axis /= np.linalg.norm(x_axis)
    y_axis = down - down.dot(x_axis) * x_axis
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    return np.stack([x_axis, y_axis, z_axis], axis=1)


def rotation_to_yaw_pitch_roll(rot: np.ndarray) -> tuple[float, float, float]:
    """Degrees (yaw, pitch, roll) of ``rot = Ry(-yaw) · Rx(-pitch) · Rz(roll)``."""
    yaw = math.atan2(-rot[0, 2], rot[2, 2])
    pitch = math.asin(float(np.clip(rot[1, 2], -1.0, 1.0)))
    roll = math.atan2(rot[1, 0], rot[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def yaw_pitch_roll_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of :func:`rotation_to_yaw_pitch_roll` (degrees in, ``[3, 3]`` out)."""
    y, p, r = (math.radians(v) for v in (-yaw, -pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def head_pose(landmarks3d: np.ndarray) -> tuple[float, float, float]:
    """Rough (yaw, pitch, roll) in degrees from ``[478, 3]`` landmarks; conventions above."""
    return rotation_to_yaw_pitch_roll(head_rotation(landmarks3d))
