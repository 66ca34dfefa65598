"""Real spherical harmonics of view-dependent colour: the basis, and its rotation.

A splat's colour seen along unit direction d (camera -> splat) is

    rgb(d) = 0.5 + C0 * sh0 + sum_{l=1..3} Y_l(d) . c_l

with the real SH basis and sign convention of the INRIA 3DGS code. :func:`sh_basis_terms` is
the one definition of that basis: it uses arithmetic only, so the torch renderer
(``backend.gaussians.render.eval_sh``) and the numpy rotation below both call it.

When a cloud is rotated by R, each band must turn with it so that the rotated cloud looks the
same from the rotated camera: c'_l = D_l(R) c_l with Y_l(d) . c'_l = Y_l(R^T d) . c_l for
every d. Each band transforms on its own (bands never mix); the DC term is unchanged.

D_l(R) is found by least squares from the basis at 64 well-spread directions: the basis of
band l spans exactly the functions of that band, so the fit is exact to rounding (the
residual is checked). It needs no Wigner recursions and is cheap: one (2l+1)^2 matrix per
band per rotation, then one matrix product (all bands, all splats) per cloud.

No bpy and no torch: numpy only, so the add-on (export with a baked transform) and the PLY
frame conversion both use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

DEGREE_OF_K = {0: 0, 3: 1, 8: 2, 15: 3}  # coefficients beyond DC per colour channel -> SH degree


def sh_basis_terms(x: Any, y: Any, z: Any, degree: int) -> list[Any]:
    """Bands 1..degree of the basis at unit directions given by their components (numpy
    arrays or torch tensors alike): a list of (degree+1)^2 - 1 arrays, in 3DGS order."""
    terms = []
    if degree >= 1:
        terms += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        terms += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
    if degree >= 3:
        terms += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return terms


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Bands 1..degree at unit directions [M, 3] -> [M, (degree+1)^2 - 1] (numpy, float64)."""
    d = np.asarray(dirs, dtype=np.float64)
    terms = sh_basis_terms(d[:, 0], d[:, 1], d[:, 2], degree)
    return np.stack(terms, axis=1) if terms else np.zeros((len(d), 0))


def _fibonacci_sphere(m: int = 64) -> np.ndarray:
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / m
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_DIRS = _fibonacci_sphere()


def band_matrices(rotation: np.ndarray, degree: int) -> list[np.ndarray]:
    """[D_1, ..., D_degree] for a 3x3 rotation matrix (proper: det +1)."""
    rot = np.asarray(rotation, dtype=np.float64)
    if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
        raise ValueError("SH coefficients can only be turned by a proper rotation matrix (orthonormal, det +1)")
    u, _, vt = np.linalg.svd(rot)  # the nearest exact rotation: Blender's matrices are float32
    rot = u @ vt
    before = sh_basis(_DIRS, degree)  # Y(d)
    after = sh_basis(_DIRS @ rot, degree)  # Y(R^T d), rows are (R^T d)^T = d^T R
    mats = []
    for ell in range(1, degree + 1):
        sl = slice(ell * ell - 1, (ell + 1) * (ell + 1) - 1)
        # Y_l(R^T d) = Y_l(d) D_l (row vectors), so Y_l(R^T d) . c = Y_l(d) . (D_l c)
        d_l, *_ = np.linalg.lstsq(before[:, sl], after[:, sl], rcond=None)
        if np.max(np.abs(before[:, sl] @ d_l - after[:, sl])) > 1e-9:
            raise ArithmeticError(f"SH band {ell} did not close under the rotation; the basis is inconsistent")
        mats.append(d_l)
    return mats


def rotate_sh(shN: np.ndarray | None, rotation: np.ndarray) -> np.ndarray | None:
    """Higher SH bands [N, K, 3] (K = 3, 8 or 15) turned by ``rotation``; None stays None.

    The band matrices form one block-diagonal K x K matrix D that serves every splat:
    out[n, :, c] = D @ shN[n, :, c], i.e. a single [N*3, K] x [K, K] matrix product
    (float32 data is turned in float32, float64 in float64).
    """
    if shN is None or shN.shape[1] == 0:
        return shN
    k = shN.shape[1]
    if k not in DEGREE_OF_K:
        raise ValueError(f"shN has {k} coefficients per channel, expected 3, 8 or 15")
    block = np.zeros((k, k))
    for ell, d_l in enumerate(band_matrices(rotation, DEGREE_OF_K[k]), start=1):
        sl = slice(ell * ell - 1, (ell + 1) * (ell + 1) - 1)
        block[sl, sl] = d_l
    work = np.result_type(shN.dtype, np.float32)
    # [N, K, 3] -> [N, 3, K] rows, times D^T, back to [N, K, 3]
    rows = np.ascontiguousarray(np.swapaxes(shN, 1, 2), dtype=work).reshape(-1, k)
    out = (rows @ block.T.astype(work)).reshape(shN.shape[0], 3, k)
    return np.ascontiguousarray(np.swapaxes(out, 1, 2), dtype=shN.dtype)
