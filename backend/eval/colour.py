"""Saturation over the orbit (SAS Table 1, METHOD A.6: lower means less oversaturation).

The mean HSV saturation, S = (max - min) / max of each pixel's RGB, over the head's own
pixels (alpha > 0.5) in every ring view (pitch 0), on a 0-100 scale. The head's colour is
taken out of the white background first: c = (rgb - (1 - alpha)) / alpha. SAS does not say
how it scales saturation; its figures (50.61 for SAS, 59-70 for the baselines) fit 0-100.
"""

from __future__ import annotations

import numpy as np

from .orbit import BACKGROUND, Orbit

HEAD_ALPHA = 0.5


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] float RGB in [0, 1] -> [...] saturation in [0, 1] (0 where the pixel is black)."""
    hi, lo = rgb.max(-1), rgb.min(-1)
    return np.where(hi > 1e-6, (hi - lo) / np.maximum(hi, 1e-6), 0.0)


def head_colours(images: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """[P, 3] un-composited colours of the head's pixels (alpha > 0.5)."""
    keep = alpha > HEAD_ALPHA
    rgb = images[keep].astype(np.float64) / 255.0
    a = alpha[keep].astype(np.float64)[:, None]
    bg = np.asarray(BACKGROUND, np.float64)
    return np.clip((rgb - (1.0 - a) * bg) / a, 0.0, 1.0)


def saturation_metrics(orbit: Orbit) -> dict:
    ring = orbit.ring()
    colours = head_colours(orbit.images[ring], orbit.alpha[ring])
    value = float(hsv_saturation(colours).mean() * 100.0) if len(colours) else 0.0
    return {"saturation": round(value, 3), "saturation_pixels": int(len(colours))}
