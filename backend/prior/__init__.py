"""Licence-free head template, its fit to a photo's landmarks, and surface sampling.

head = build_head()                                  # template.py
fit = fit_head(landmarks2d, (width, height))         # fit.py: head at the origin, camera moves
splats = init_gaussians(fit.mesh(), rng=0)           # sample.py: METHOD A.1 initial values
rgb, seen = project_colors(pts, normals, image, fit) # sample.py: photo colours where visible
"""

from .fit import (
    FRONT_VIEW,
    MEDIAPIPE_INDEX,
    HeadFit,
    euler_from_pose,
    fit_head,
    intrinsics_from_fov,
    look_at_head,
    pose_from_euler,
    project_points,
)
from .sample import head_unit, init_gaussians, project_colors, sample_surface
from .template import ANCHOR_NAMES, HeadMesh, HeadShapeParams, build_head, vertex_normals

__all__ = [
    "ANCHOR_NAMES",
    "FRONT_VIEW",
    "MEDIAPIPE_INDEX",
    "HeadFit",
    "HeadMesh",
    "HeadShapeParams",
    "build_head",
    "euler_from_pose",
    "fit_head",
    "head_unit",
    "init_gaussians",
    "intrinsics_from_fov",
    "look_at_head",
    "pose_from_euler",
    "project_colors",
    "project_points",
    "sample_surface",
    "vertex_normals",
]
