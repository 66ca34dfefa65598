"""The backend's reference render of a splat PLY from one pinhole camera (run in the main venv).

    .venv/bin/python tests/blender/reference_render.py splats.ply camera.npz out.npy

``camera.npz`` holds ``viewmat`` (4x4 world -> camera, OpenCV), ``K`` (3x3), ``width`` and
``height``. The PLY is read as the backend reads it (``frame="ply"``: RDF axes to the head
frame, SH rotated); the render is the torch reference (``backend="torch"``), over black.
``out.npy`` is RGBA [H, W, 4] float32, top row first, colour premultiplied (over black).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(ply: str, camera: str, out: str) -> None:
    import numpy as np
    import torch

    from backend.gaussians.cameras import Cameras
    from backend.gaussians.ply import read_ply
    from backend.gaussians.render import render

    s = read_ply(ply)
    cam = np.load(camera)
    cams = Cameras(
        viewmats=torch.tensor(cam["viewmat"], dtype=torch.float32)[None],
        Ks=torch.tensor(cam["K"], dtype=torch.float32)[None],
        width=int(cam["width"]),
        height=int(cam["height"]),
    )
    coeffs = s.sh0[:, None, :] if s.shN is None else np.concatenate([s.sh0[:, None, :], s.shN], axis=1)
    degree = {1: 0, 4: 1, 9: 2, 16: 3}[coeffs.shape[1]]
    with torch.no_grad():
        o = render(
            torch.from_numpy(s.means),
            torch.from_numpy(s.quats),
            torch.from_numpy(s.log_scales).exp(),
            torch.sigmoid(torch.from_numpy(s.opacity_logits)),
            torch.from_numpy(np.ascontiguousarray(coeffs)),
            cams,
            sh_degree=degree,
            background=torch.zeros(3),
            backend="torch",
        )
    rgba = torch.cat([o.rgb[0], o.alpha[0]], dim=-1).numpy().astype(np.float32)
    np.save(out, rgba)


if __name__ == "__main__":
    main(*sys.argv[1:4])
