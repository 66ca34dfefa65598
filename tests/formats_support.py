"""Random splats for the format tests: values inside what every format can hold."""

from __future__ import annotations

import numpy as np

from blender_addon.core.splat_arrays import SH_C0, SplatArrays


def random_splats(n: int = 400, k: int = 15, seed: int = 0) -> SplatArrays:
    """``n`` splats with ``k`` SH bands: SPZ's log-scale and SH ranges, colours in [0, 1]."""
    r = np.random.default_rng(seed)
    q = r.normal(size=(n, 4)).astype(np.float32)
    return SplatArrays(
        r.uniform(-0.3, 0.3, (n, 3)).astype(np.float32),
        q / np.linalg.norm(q, axis=1, keepdims=True),
        r.uniform(-8.0, -1.0, (n, 3)).astype(np.float32),
        r.uniform(-5.0, 5.0, n).astype(np.float32),
        ((r.uniform(0.02, 0.98, (n, 3)) - 0.5) / SH_C0).astype(np.float32),
        # SPZ clips SH to [-1, 1) in its own (RUB) axes: keep every band's norm below 1 so
        # the turn from the head frame cannot push a coefficient out of range
        r.uniform(-0.35, 0.35, (n, k, 3)).astype(np.float32) if k else None,
    )
