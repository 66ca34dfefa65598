"""Points on the head surface, the initial Gaussians, and colours from the photo.

pts, nrm, fid = sample_surface(head, 10_000, rng)          # area-uniform samples
splats = init_gaussians(head, rng=rng)                       # METHOD A.1 initial values
rgb, visible = project_colors(pts, nrm, image, fit)          # the photo's colours, where seen
"""

from __future__ import annotations

import numpy as np

from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

from .template import HeadMesh

# METHOD A.1: "opacity 0.2, scale 0.02 (in the head's units), colour 0, rotation (1,0,0,0)".
# Reading of "the head's units": the paper's SMPL head is treated as a unit-sized head, so
# 0.02 is a fraction of the head's size, which we take as its chin-to-crown height
# (0.23 m for the default template): std-dev 0.02 * 0.23 m = 4.6 mm. That matches the
# spacing of 10,000 points on a head (~sqrt(0.165 m^2 / 1e4) = 4 mm), so neighbours
# overlap without smearing; reading it as 0.02 m would make each Gaussian span ~30
# neighbours. "Colour 0" is the SH DC coefficient 0, i.e. grey 0.5.
INIT_OPACITY = 0.2
INIT_SCALE = 0.02
INIT_POINTS = 10_000


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


def head_unit(mesh: HeadMesh) -> float:
    """The head's size in metres that METHOD's 'head units' refer to: chin-to-crown height."""
    if mesh.params is not None:
        return float(mesh.params.height)
    if "crown" in mesh.anchors and "chin" in mesh.anchors:
        return float(mesh.anchors["crown"][2] - mesh.anchors["chin"][2])
    lo, hi = mesh.bounds()
    return float(hi[2] - lo[2])


def sample_surface(mesh: HeadMesh, n: int = INIT_POINTS, rng=None, density: np.ndarray | None = None):
    """Area-uniform random points on the mesh (times ``density`` [F], a relative per-triangle
    density, where given).

    Returns (points [n, 3] float32, normals [n, 3] float32 unit, interpolated from the
    vertex normals, face_ids [n] int64). ``rng``: a numpy Generator or a seed (default 0).
    """
    rng = _rng(rng)
    v = mesh.vertices.astype(np.float64)
    area = mesh.face_areas() if density is None else mesh.face_areas() * density
    fid = rng.choice(len(mesh.faces), size=int(n), p=area / area.sum())
    u = rng.random((int(n), 2))
    flip = u.sum(axis=1) > 1.0
    u[flip] = 1.0 - u[flip]  # fold the square onto the triangle: uniform barycentrics
    bary = np.column_stack([1.0 - u.sum(axis=1), u])  # [n, 3]
    tri = mesh.faces[fid]  # [n, 3]
    pts = np.einsum("nk,nkd->nd", bary, v[tri])
    vn = mesh.vertex_normals().astype(np.float64)
    nrm = np.einsum("nk,nkd->nd", bary, vn[tri])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return pts.astype(np.float32), nrm.astype(np.float32), fid.astype(np.int64)


def surfel_quats(normals: np.ndarray) -> np.ndarray:
    """[N, 4] wxyz unit quaternions turning +z onto each unit normal [N, 3]: a splat with its
    smallest scale on z then lies flat on the surface. The shortest arc where the normal points
    up (z >= 0); where it points down, the shortest arc from -z after half a turn about x (the
    same rotation of z, without the shortest arc's cancellation near -z)."""
    n = np.asarray(normals, np.float64)
    x, y, z = n.T
    up = np.column_stack([1.0 + z, -y, x, np.zeros(len(n))])
    down = np.column_stack([-y, 1.0 - z, np.zeros(len(n)), x])
    q = np.where((z >= 0)[:, None], up, down)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def init_gaussians(
    mesh: HeadMesh,
    n: int = INIT_POINTS,
    opacity: float = INIT_OPACITY,
    scale: float = INIT_SCALE,
    rng=None,
    colors: np.ndarray | None = None,
) -> SplatArrays:
    """METHOD A.1 initial Gaussians on the head surface.

    Isotropic std-dev ``scale * head_unit(mesh)`` metres, identity rotation, opacity
    ``opacity``, SH DC 0 (grey) unless ``colors`` [n, 3] in [0, 1] are given.
    """
    pts, _, _ = sample_surface(mesh, n, rng)
    n = len(pts)
    sh0 = np.zeros((n, 3), np.float32) if colors is None else rgb_to_sh0(np.asarray(colors).reshape(n, 3))
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return SplatArrays(
        means=pts,
        quats=quats,
        log_scales=np.full((n, 3), np.log(scale * head_unit(mesh)), np.float32),
        opacity_logits=np.full(n, logit(opacity), np.float32),
        sh0=sh0.astype(np.float32),
    )


def _as_float_image(image: np.ndarray) -> np.ndarray:  # [H, W, 3] float32 in [0, 1]
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"image must be [H, W, 3] (or 4 with alpha), got shape {img.shape}")
    img = img[:, :, :3]
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample [H, W, C] at continuous pixel coordinates uv [N, 2] (pixel centres at +0.5)."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0.0, w - 1.0)
    y = np.clip(uv[:, 1] - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def depth_buffer(mesh: HeadMesh, fit, samples: int = 300_000, rng=0):
    """The mesh's nearest depth per cell of a coarse grid over the image, by point splatting.

    Returns (buffer [rows, cols] metres, inf where empty; cell size in pixels). The cell is
    ~1.5x the projected spacing of the samples, so the splats leave no holes.
    """
    pts, _, _ = sample_surface(mesh, samples, rng)
    uv, z = fit.project(pts)
    front = z > 1e-6
    z_ref = float(np.median(z[front])) if front.any() else 1.0
    spacing_px = np.sqrt(mesh.face_areas().sum() / samples) * fit.fx / z_ref
    cell = max(1.0, 1.5 * spacing_px)
    cols, rows = int(np.ceil(fit.width / cell)), int(np.ceil(fit.height / cell))
    buf = np.full(rows * cols, np.inf)
    ci, ri = np.floor(uv[:, 0] / cell).astype(np.int64), np.floor(uv[:, 1] / cell).astype(np.int64)
    ok = front & (ci >= 0) & (ci < cols) & (ri >= 0) & (ri < rows)
    np.minimum.at(buf, ri[ok] * cols + ci[ok], z[ok])
    return buf.reshape(rows, cols), cell


def project_colors(
    points: np.ndarray,
    normals: np.ndarray,
    image: np.ndarray,
    fit,
    mesh: HeadMesh | None = None,
    depth_tol: float = 0.004,
):
    """The photo's colour at each head-frame point, and whether the photo sees it.

    A point is visible when it projects inside the image in front of the camera, its normal
    faces the camera (normal . (point - camera) < 0) and it is not hidden behind the head
    (its depth is within ``depth_tol`` metres plus one cell's slope of the head's nearest
    depth in its cell of ``depth_buffer``; ``mesh`` defaults to ``fit.mesh()``).

    Returns (rgb [N, 3] float32 in [0, 1], bilinear, 0.5 grey where not visible;
    visible [N] bool).
    """
    img = _as_float_image(image)
    if img.shape[0] != fit.height or img.shape[1] != fit.width:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]} but the fit is for {fit.width}x{fit.height}")
    pts = np.asarray(points, dtype=np.float64)
    nrm = np.asarray(normals, dtype=np.float64)
    uv, z = fit.project(pts)
    inside = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < fit.width) & (uv[:, 1] >= 0) & (uv[:, 1] < fit.height)
    facing = np.einsum("ij,ij->i", nrm, pts - fit.camera_position) < 0.0
    buf, cell = depth_buffer(fit.mesh() if mesh is None else mesh, fit)
    ci = np.clip(np.floor(uv[:, 0] / cell).astype(np.int64), 0, buf.shape[1] - 1)
    ri = np.clip(np.floor(uv[:, 1] / cell).astype(np.int64), 0, buf.shape[0] - 1)
    cell_m = cell * np.maximum(z, 1e-6) / fit.fx  # a cell's width at the point's depth
    unoccluded = z <= buf[ri, ci] + depth_tol + 2.0 * cell_m
    visible = inside & facing & unoccluded
    rgb = np.full((len(pts), 3), 0.5, np.float32)
    if visible.any():
        rgb[visible] = bilinear(img, uv[visible]).astype(np.float32)
    return rgb, visible
