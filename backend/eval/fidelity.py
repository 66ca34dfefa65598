"""Front fidelity: the head seen from the photo's own camera, against the photo.

The camera is the photo's, from the same face fit the pipelines use, restricted to a square
crop around the face (:mod:`backend.eval.reference`). PSNR and SSIM (Gaussian 11 x 11 window,
sigma 1.5, as ``backend.gaussians.losses.ssim``) are taken inside MediaPipe's face oval only:
hair, neck and background do not count, and nothing of the photo is pasted into the render.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from blender_addon.core.splat_arrays import SplatArrays

from .orbit import as_model, render_views
from .reference import PhotoReference


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of float images in [0, 1] over the pixels in ``mask`` [H, W]."""
    mse = float(np.mean((a[mask] - b[mask]) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean of the SSIM map over ``mask``."""
    _, smap = structural_similarity(
        a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    return float(smap.mean(-1)[mask].mean())


def render_front(splats: SplatArrays, ref: PhotoReference) -> np.ndarray:
    images, _ = render_views(as_model(splats), ref.front_camera)
    return images[0]


def fidelity_metrics(front: np.ndarray, ref: PhotoReference) -> dict:
    a = front.astype(np.float64) / 255.0
    b = ref.front_target.astype(np.float64) / 255.0
    return {
        "front_psnr_db": round(masked_psnr(a, b, ref.face_mask), 3),
        "front_ssim": round(masked_ssim(a, b, ref.face_mask), 4),
        "front_mask_pixels": int(ref.face_mask.sum()),
    }
