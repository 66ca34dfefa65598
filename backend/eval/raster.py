"""Forward-only renders for evaluation: the CPU tile rasteriser, in float64, without autograd.

There is one CPU rasteriser, :mod:`backend.gaussians.raster_cpu` (``render(...,
backend="numba")``); eval calls it here with no gradients and in float64, so its figures do
not depend on float32 rounding. The rules are the reference renderer's
(``backend.gaussians.render``): EWA projection with the 0.3 px^2 low-pass, pixel boxes of
3.33 sigma tightened to alpha >= 1/255, front to back by camera depth, alpha clamped at 0.99,
a pixel stops before the splat that would take its transmittance to 1e-4 or below; colour is
SH degree 0 as the model's ``rgb_dc``, higher degrees through ``eval_sh``.

``tests/test_eval_raster.py`` checks it against the reference. CPU only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..gaussians.cameras import Cameras
from ..gaussians.model import GaussianModel
from ..gaussians.raster_cpu import torch_single_threaded
from ..gaussians.render import render


def rasterise(model: GaussianModel, cams: Cameras, background=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Render every camera: (rgb [C, H, W, 3] float32 composited on ``background``,
    alpha [C, H, W] float32)."""
    sh = model.sh_degree
    rgbs, alphas = [], []
    with torch.no_grad(), torch_single_threaded():
        colors = (model.sh_coeffs if sh > 0 else model.rgb_dc).double()
        args = (model.means.double(), model.quats.double(), model.scales.double(), model.opacities.double(), colors)
        bg = torch.tensor(background, dtype=torch.float64)
        for c in range(len(cams)):  # one camera at a time: a 28-view orbit's outputs stay small
            out = render(*args, cams[c], sh_degree=sh if sh > 0 else None, background=bg, backend="numba")
            rgbs.append(out.rgb[0].float().numpy())
            alphas.append(out.alpha[0, ..., 0].float().numpy())
    return np.stack(rgbs), np.stack(alphas)
