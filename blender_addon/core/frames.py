"""The one place that converts between coordinate frames.

Head frame (backend, wire, Blender): metres, +Z up, the face looks toward -Y, origin at
the head centre. Seen from the front (a viewer at -Y looking toward +Y), +X is to the
viewer's right.

PLY frame (what 3DGS viewers expect, RDF / OpenCV): x right, y down, z forward; the face
looks toward -z, so a viewer at -z looking along +z sees it upright.

    p_ply = M @ p_head,   M = Rx(+90 deg) = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]

M is a proper rotation (det +1), so Gaussian scales are unchanged and orientations
compose: q_ply = q_M * q_head (wxyz Hamilton product). View-dependent colour (SH bands 1..3)
turns with M too (``sh.rotate_sh``); the DC colour does not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .sh import rotate_sh

if TYPE_CHECKING:
    from .splat_arrays import SplatArrays

HEAD_TO_PLY = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float64)
PLY_TO_HEAD = HEAD_TO_PLY.T

_S = np.sqrt(0.5)
_Q_HEAD_TO_PLY = np.array([_S, _S, 0.0, 0.0])  # wxyz of Rx(+90 deg)
_Q_PLY_TO_HEAD = np.array([_S, -_S, 0.0, 0.0])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions, broadcasting over leading dims."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """wxyz quaternions [..., 4] (any norm) to rotation matrices [..., 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] to unit wxyz quaternions [..., 4] with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    # Shepperd's method via the largest diagonal of the 4x4 symmetric K matrix.
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    k = (
        np.stack(
            [
                np.stack(
                    [
                        m00 + m11 + m22,
                        m[..., 2, 1] - m[..., 1, 2],
                        m[..., 0, 2] - m[..., 2, 0],
                        m[..., 1, 0] - m[..., 0, 1],
                    ],
                    -1,
                ),
                np.stack(
                    [
                        m[..., 2, 1] - m[..., 1, 2],
                        m00 - m11 - m22,
                        m[..., 0, 1] + m[..., 1, 0],
                        m[..., 0, 2] + m[..., 2, 0],
                    ],
                    -1,
                ),
                np.stack(
                    [
                        m[..., 0, 2] - m[..., 2, 0],
                        m[..., 0, 1] + m[..., 1, 0],
                        m11 - m00 - m22,
                        m[..., 1, 2] + m[..., 2, 1],
                    ],
                    -1,
                ),
                np.stack(
                    [
                        m[..., 1, 0] - m[..., 0, 1],
                        m[..., 0, 2] + m[..., 2, 0],
                        m[..., 1, 2] + m[..., 2, 1],
                        m22 - m00 - m11,
                    ],
                    -1,
                ),
            ],
            -2,
        )
        / 3.0
    )
    _, vecs = np.linalg.eigh(k)
    q = vecs[..., :, -1]  # eigenvector of the largest eigenvalue
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def head_to_ply(means: np.ndarray, quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N,3] and wxyz rotations [N,4] from the head frame to the PLY (RDF) frame."""
    dt = np.asarray(means).dtype
    return (np.asarray(means, np.float64) @ HEAD_TO_PLY.T).astype(dt), quat_multiply(_Q_HEAD_TO_PLY, quats).astype(dt)


def ply_to_head(means: np.ndarray, quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`head_to_ply`."""
    dt = np.asarray(means).dtype
    return (np.asarray(means, np.float64) @ PLY_TO_HEAD.T).astype(dt), quat_multiply(_Q_PLY_TO_HEAD, quats).astype(dt)


def sh_head_to_ply(shN: np.ndarray | None) -> np.ndarray | None:
    """Higher SH bands [N, K, 3] from the head frame to the PLY frame (None stays None)."""
    return rotate_sh(shN, HEAD_TO_PLY)


def sh_ply_to_head(shN: np.ndarray | None) -> np.ndarray | None:
    """Inverse of :func:`sh_head_to_ply`."""
    return rotate_sh(shN, PLY_TO_HEAD)


def similarity_parts(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """(rotation, uniform scale) of a 4x4 similarity transform.

    Non-uniform scale cannot be represented exactly by a Gaussian's own axes; we take the
    geometric mean of the three axis scales and raise if they differ by more than 1%. A
    mirroring transform raises too.
    """
    lin = np.asarray(matrix, dtype=np.float64)[:3, :3]
    axis_scales = np.linalg.norm(lin, axis=0)
    s = float(np.cbrt(np.prod(axis_scales)))
    if s <= 0 or np.max(np.abs(axis_scales / s - 1.0)) > 0.01:
        raise ValueError(f"transform has non-uniform scale {axis_scales.tolist()}; apply it to the mesh first")
    rot = lin / s
    if np.linalg.det(rot) < 0:
        raise ValueError("transform mirrors the object; a mirrored Gaussian cloud cannot be baked")
    return rot, s


def bake_transform(
    matrix: np.ndarray, means: np.ndarray, quats: np.ndarray, log_scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply a 4x4 similarity transform (rotation, uniform scale, translation) to Gaussians
    (see :func:`similarity_parts` for what is refused)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rot, s = similarity_parts(matrix)
    new_means = np.asarray(means, np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    new_quats = quat_multiply(matrix_to_quat(rot), quats)
    new_log_scales = np.asarray(log_scales, np.float64) + np.log(s)
    dt = np.asarray(means).dtype
    return new_means.astype(dt), new_quats.astype(dt), new_log_scales.astype(dt)


def bake_splats(matrix: np.ndarray, splats: SplatArrays) -> SplatArrays:
    """Bake a similarity transform into a whole ``SplatArrays`` (the add-on's PLY export):
    positions, rotations and scales as :func:`bake_transform`, and the SH bands turned with
    the rotation."""
    means, quats, log_scales = bake_transform(matrix, splats.means, splats.quats, splats.log_scales)
    shN = rotate_sh(splats.shN, similarity_parts(matrix)[0])
    return type(splats)(means, quats, log_scales, splats.opacity_logits, splats.sh0, shN)


def head_to_file(frame: str) -> np.ndarray:
    """4x4 matrix from the head frame to a file's axes: ``"ply"`` (RDF) or ``"head"`` (identity)."""
    if frame not in ("ply", "head"):
        raise ValueError(f"frame must be 'ply' or 'head', got {frame!r}")
    out = np.eye(4)
    if frame == "ply":
        out[:3, :3] = HEAD_TO_PLY
    return out


def snap_matrix(matrix: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``matrix`` with entries within ``tol`` of an integer set to it: Blender keeps transforms
    in float32, so a quarter turn holds cos(pi/2) ~ -4.4e-8 where the axes mean 0."""
    m = np.asarray(matrix, dtype=np.float64)
    r = np.round(m)
    return np.where(np.abs(m - r) <= tol, r, m)


def to_file_axes(matrix: np.ndarray, splats: SplatArrays) -> SplatArrays:
    """Splats in their own (mesh) axes, taken by the 4x4 similarity ``matrix`` into a file's
    axes. A matrix that is the identity once snapped (an imported PLY exported untouched)
    returns ``splats`` itself, so the file round-trips value for value."""
    m = snap_matrix(matrix)
    if np.array_equal(m, np.eye(4)):
        return splats
    return bake_splats(m, splats)
