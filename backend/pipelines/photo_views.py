"""What the photo fit sees of the photo: square crops of it through the photo's own camera
(the whole head; the face), the photo cut to each, and the pixels that count in each.

    cam, box = head_crop_camera(fit, mesh, 256)             # the head, 12 % margin
    cam, box = crop_camera(fit, landmarks2d, 256, pad=0.2)   # the face
    view = photo_view(model, cam, box, image, person, 256)   # camera, target, mask
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from ..face.regions import PhotoRegions
from ..gaussians.cameras import Cameras, photo_crop_camera
from ..gaussians.model import GaussianModel
from ..gaussians.render import render


def head_crop_camera(fit, mesh, res: int, pad: float = 0.12) -> tuple[Cameras, tuple[int, int, int]]:
    """The photo's camera restricted to a square crop around the projected head, at ``res`` px.

    Returns the camera and the crop box (x0, y0, side) in photo pixels.
    """
    uv, _ = fit.project(mesh.vertices)
    return crop_camera(fit, uv, res, pad)


def crop_camera(fit, points_px: np.ndarray, res: int, pad: float) -> tuple[Cameras, tuple[int, int, int]]:
    """The photo's camera restricted to the square around ``points_px`` [N, 2] (photo pixels),
    its side the points' longer extent times 1 + 2 ``pad``, at ``res`` px; and the crop box."""
    lo, hi = points_px.min(0), points_px.max(0)
    centre = (lo + hi) / 2
    side = int(np.ceil((hi - lo).max() * (1 + 2 * pad)))
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    cam = photo_crop_camera(fit.world_to_camera, fit.fx, fit.fy, fit.cx, fit.cy, x0, y0, side, res)
    return cam, (x0, y0, side)


def crop_resize(image: np.ndarray, box: tuple[int, int, int], res: int) -> np.ndarray:
    """Square crop (edge-padded where it leaves the photo) resized to res x res, float32 [0, 1]."""
    x0, y0, side = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
    crop = src[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    return np.asarray(Image.fromarray(crop).resize((res, res), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


@dataclass
class PhotoView:
    """One view the fit sees: the photo's camera on a crop, the photo cut to it, and the
    pixels that count (the template covers them and the photo shows the person there)."""

    camera: Cameras
    target: torch.Tensor  # [1, R, R, 3]
    mask: torch.Tensor  # [1, R, R, 1] bool


def photo_view(model, cam: Cameras, box, image: np.ndarray, person: np.ndarray | None, res: int) -> PhotoView:
    """The view of the photo through ``cam`` (crop ``box`` of the photo, ``res`` px); with
    ``person`` ([H, W] bool), only its pixels count."""
    target = torch.from_numpy(crop_resize(image, box, res))[None]
    mask = silhouette(model, cam)
    if person is not None:
        rgb = np.repeat(person[..., None].astype(np.uint8) * 255, 3, axis=2)
        mask &= torch.from_numpy(crop_resize(rgb, box, res)[..., :1] > 0.5)[None]
    return PhotoView(cam, target, mask)


def person_core(regions: PhotoRegions, landmarks2d: np.ndarray, margin: float) -> np.ndarray:
    """The person mask less its edge (``margin`` x the face's height wide) outside the face."""
    r = int(round(margin * float(np.ptp(landmarks2d[:, 1]))))
    if r <= 0:
        return regions.person
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(regions.person.astype(np.uint8), disc).astype(bool) | (regions.person & regions.face)


def silhouette(model: GaussianModel, cam: Cameras) -> torch.Tensor:
    """Pixels the template covers: the initial splats rendered fully opaque."""
    with torch.no_grad():
        out = render_model_opaque(model, cam)
    return out > 0.5


def render_model_opaque(model: GaussianModel, cam: Cameras) -> torch.Tensor:
    n = len(model)
    return render(model.means, model.quats, model.scales * 1.5, torch.full((n,), 0.99), model.rgb_dc, cam).alpha
