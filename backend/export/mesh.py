"""A watertight, vertex-coloured triangle mesh from a splat head: GLB, OBJ or PLY.

1. **Orbit renders.** ``views`` cameras on rings around the head (plus the poles) render
   colour, coverage (alpha) and expected depth with our renderer (``backend.gaussians.render``:
   gsplat on CUDA, the numba tile rasteriser on CPU).
2. **TSDF fusion.** Every voxel of a grid around the splats is projected into every view.
   A view where the voxel falls outside the silhouette (alpha < 0.5, holes inside it filled)
   sees empty space there (+trunc); where alpha >= 0.5 the signed distance along the ray,
   depth - z, is clamped to +-trunc; a see-through pixel inside the silhouette says nothing.
   Views that see the voxel more than ``trunc`` behind the surface say nothing about it; a
   voxel that no view sees in front of a surface is inside (-trunc). The field is the mean
   of what the views say. The grid has an empty border, so the zero level closes.
3. **Marching cubes** (scikit-image, Lewiner) on that field; the largest connected piece is
   kept and holes, if any, filled (trimesh).
   The field is blurred by about a voxel first: splat hair leaves thin tunnels (a genus in
   the hundreds) that marching cubes follows and decimation then pinches open.
4. **Decimation** to the face budget (quadric, ``fast-simplification`` through trimesh). A
   result that is not closed is refused and the surface is remade from a smoother field.
5. **Vertex colours**: each vertex takes the rendered colour of the views that see it
   (depth test), weighted by how squarely they see it; vertices no view sees take the DC
   colour of the nearest splats.

Axes in the files: GLB and OBJ in glTF's (+Y up, the face toward +Z, metres; Blender's
glTF and OBJ importers turn them back to +Z up), PLY in the head frame (+Z up, the face
toward -Y: Blender's PLY importer reads it as is).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from blender_addon.core.formats._common import HEAD_TO_GLTF
from blender_addon.core.splat_arrays import SplatArrays

from ..gaussians.cameras import Cameras, spherical_cameras
from ..gaussians.render import render

MESH_SUFFIXES = {".glb": "glb", ".obj": "obj", ".ply": "ply"}
DEFAULT_FACES = 50_000


@dataclass
class MeshOptions:
    faces: int = DEFAULT_FACES  # face budget after decimation
    resolution: int = 128  # voxels along the longest side of the grid
    image_size: int = 256  # render size of each view (pixels)
    views: int = 30  # orbit views (rings at -30, 0, +30, +60 degrees, plus top and bottom)
    depth_sharpen: float = 8.0  # the depth pass's opacity 1 - (1 - o)^k (see _render_views)
    smooth_voxels: float = 1.0  # Gaussian blur of the field (voxels): closes hair-strand tunnels
    radius_m: float = 0.75
    fov_deg: float = 30.0
    trunc_voxels: float = 3.0  # TSDF truncation in voxels
    min_opacity: float = 0.05  # splats below this opacity do not set the grid's bounds


@dataclass
class MeshResult:
    vertices: np.ndarray  # [V, 3] float64, head frame (metres)
    faces: np.ndarray  # [F, 3] int64
    colors: np.ndarray  # [V, 4] uint8 RGBA
    watertight: bool
    timings: dict[str, float] = field(default_factory=dict)

    def trimesh(self):  # -> trimesh.Trimesh (head frame)
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=self.colors, process=False)


def orbit(opts: MeshOptions, target: np.ndarray) -> Cameras:
    rings = [(-30.0, 0.25), (0.0, 0.3), (30.0, 0.25), (60.0, 0.2)]
    az, el = [], []
    n_ring = opts.views - 2
    counts = [max(3, round(n_ring * w)) for _, w in rings]
    for (elev, _), n in zip(rings, counts):
        start = 0.0 if elev in (0.0, 60.0) else 180.0 / n
        az += [start + 360.0 * i / n for i in range(n)]
        el += [elev] * n
    az += [0.0, 0.0]
    el += [89.0, -89.0]
    return spherical_cameras(az, el, opts.radius_m, opts.fov_deg, opts.image_size, opts.image_size, target=target)


def _render_views(
    splats: SplatArrays, cams: Cameras, depth_sharpen: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb [C, H, W, 3] on black, alpha [C, H, W], depth [C, H, W]) as float32 numpy.

    The renderer's depth is the alpha-weighted mean depth along each ray: in a cloud whose
    front surface is made of many half-transparent splats it lies well inside the head. The
    depth pass therefore renders every splat nearly opaque (opacity 1 - (1 - o)^k), so each
    ray's depth is that of the first splats it meets: the surface."""
    s = splats.astype(np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in s.as_dict().items() if k != "shN"}
    means, quats, scales = t["means"], t["quats"], torch.exp(t["log_scales"])
    opacity = torch.sigmoid(t["opacity_logits"])
    sharp = 1.0 - (1.0 - opacity) ** depth_sharpen
    colors = torch.from_numpy(s.rgb()).to(device)
    black = torch.zeros(3, device=device)
    rgbs, alphas, depths = [], [], []
    with torch.no_grad():
        for c in range(len(cams)):
            cam = cams[c].to(device)
            out = render(means, quats, scales, opacity, colors, cam, background=black)
            rgbs.append(out.rgb[0].float().cpu().numpy())
            alphas.append(out.alpha[0, ..., 0].float().cpu().numpy())
            out = render(means, quats, scales, sharp, colors, cam, background=black)
            depths.append(out.depth[0, ..., 0].float().cpu().numpy())
    return np.stack(rgbs), np.stack(alphas), np.stack(depths)


def _bounds(splats: SplatArrays, opts: MeshOptions) -> tuple[np.ndarray, np.ndarray]:
    keep = splats.opacity() >= opts.min_opacity
    pts = splats.means[keep] if keep.sum() >= 16 else splats.means
    lo, hi = np.percentile(pts, 0.2, axis=0), np.percentile(pts, 99.8, axis=0)
    pad = 0.08 * float(np.max(hi - lo)) + 0.01
    return lo - pad, hi + pad


def _project(cams: Cameras, pts: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel column, row (float) and camera z of world points in camera ``c``."""
    vm = cams.viewmats[c].double().numpy()
    K = cams.Ks[c].double().numpy()
    pc = pts @ vm[:3, :3].T + vm[:3, 3]
    z = pc[:, 2]
    zs = np.where(z > 1e-6, z, 1e-6)
    return K[0, 0] * pc[:, 0] / zs + K[0, 2], K[1, 1] * pc[:, 1] / zs + K[1, 2], z


def silhouettes(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(empty, surface) pixel masks of one view. Surface: alpha >= 0.5. Empty: outside the
    head's silhouette with its holes filled, so a thin, see-through patch inside the head
    (a crack in the render) does not carve a tunnel through it; such a pixel says nothing."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    surface = alpha >= 0.5
    filled = binary_fill_holes(binary_closing(surface, iterations=2) | surface)
    return ~filled, surface


def fuse_tsdf(
    cams: Cameras,
    alpha: np.ndarray,
    depth: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    resolution: int,
    trunc_vox: float,
    leak_views: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(field [X, Y, Z] float32, origin [3], voxel size): negative inside the head.

    Each view, for each voxel, says one of: *free* (outside the silhouette, or more than
    ``trunc`` in front of the surface it sees), *near* (within ``trunc`` of it: the signed
    distance depth - z), or nothing (more than ``trunc`` behind it, or a see-through pixel).
    A voxel that some view sees near a surface takes the mean of those distances; any other
    is outside if more than ``leak_views`` views see it free, inside otherwise. A few rays
    slip through the gaps of a splat cloud and would carve straight tunnels through the head;
    the vote ignores them."""
    n_views = len(cams)
    leak = max(2, n_views // 10) if leak_views is None else leak_views
    voxel = float(np.max(hi - lo)) / resolution
    shape = np.maximum(np.ceil((hi - lo) / voxel).astype(int), 2)
    axes = [(lo[i] + voxel * (np.arange(shape[i]) + 0.5)).astype(np.float32) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    trunc = np.float32(trunc_vox * voxel)
    near_sum = np.zeros(len(pts), np.float32)
    near_n = np.zeros(len(pts), np.int32)
    free_n = np.zeros(len(pts), np.int32)
    H, W = alpha.shape[1:]
    for c in range(n_views):
        empty, surface = silhouettes(alpha[c])
        vm = cams.viewmats[c].numpy().astype(np.float32)
        K = cams.Ks[c].numpy().astype(np.float32)
        pc = pts @ vm[:3, :3].T + vm[:3, 3]
        z = pc[:, 2]
        inv = np.float32(1.0) / np.maximum(z, np.float32(1e-3))
        ui = np.floor(K[0, 0] * pc[:, 0] * inv + K[0, 2]).astype(np.int32)
        vi = np.floor(K[1, 1] * pc[:, 1] * inv + K[1, 2]).astype(np.int32)
        inside = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H) & (z > 1e-3)
        flat = np.where(inside, vi * W + ui, 0)
        is_surface = inside & surface.reshape(-1)[flat]
        dz = np.where(is_surface, depth[c].reshape(-1)[flat] - z, np.float32(0.0))
        near = is_surface & (np.abs(dz) <= trunc)
        free = ~inside | empty.reshape(-1)[flat] | (is_surface & (dz > trunc))
        near_sum += np.where(near, dz, np.float32(0.0))
        near_n += near
        free_n += free
    vote = np.where(free_n > leak, trunc, -trunc)
    field = np.where(near_n > 0, near_sum / np.maximum(near_n, 1), vote).reshape(tuple(shape))
    padded = np.pad(field, 1, constant_values=trunc)  # an empty border: the surface closes
    return padded.astype(np.float32), lo - voxel * 0.5, voxel


def _surface(field_: np.ndarray, origin: np.ndarray, voxel: float):
    import trimesh
    from skimage.measure import marching_cubes

    if field_.min() >= 0 or field_.max() <= 0:
        raise ValueError("the fused field has no surface: the renders saw no head")
    verts, faces, _normals, _ = marching_cubes(field_, level=0.0, spacing=(voxel, voxel, voxel))
    # marching_cubes' triangles wind toward increasing values (outward here, as we want)
    mesh = trimesh.Trimesh(verts + origin - voxel * 0.5, faces[:, ::-1], process=True)
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        mesh = max(parts, key=lambda m: len(m.faces))
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_normals(mesh)
    return mesh


def _decimate(mesh, faces: int):
    """Quadric decimation to ``faces``; the largest piece if it is closed and holds nearly all
    the faces (a collapse can pinch off a sliver), else None."""
    if len(mesh.faces) <= faces:
        return mesh
    small = mesh.simplify_quadric_decimation(face_count=faces, aggression=3)
    small.merge_vertices()
    parts = small.split(only_watertight=False)
    big = max(parts, key=lambda m: len(m.faces)) if len(parts) else small
    if big.is_watertight and len(big.faces) >= 0.97 * len(small.faces):
        return big
    return None


def _colour_vertices(
    mesh, cams: Cameras, rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray, splats: SplatArrays, voxel: float
) -> np.ndarray:
    verts, normals = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    acc = np.zeros((len(verts), 3))
    wsum = np.zeros(len(verts))
    H, W = alpha.shape[1:]
    centres = cams.camera_centers().double().numpy()
    for c in range(len(cams)):
        u, v, z = _project(cams, verts, c)
        ui, vi = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        ok = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H) & (z > 1e-3)
        a = np.zeros(len(verts), np.float32)
        d = np.zeros(len(verts), np.float32)
        a[ok], d[ok] = alpha[c, vi[ok], ui[ok]], depth[c, vi[ok], ui[ok]]
        view = centres[c] - verts
        view /= np.linalg.norm(view, axis=1, keepdims=True)
        facing = np.sum(view * normals, axis=1)
        seen = ok & (a > 0.5) & (np.abs(d - z) < 2.5 * voxel) & (facing > 0.1)
        w = np.where(seen, facing * a, 0.0)
        col = np.zeros((len(verts), 3), np.float32)
        col[seen] = rgb[c, vi[seen], ui[seen]] / np.maximum(a[seen, None], 1e-3)
        acc += w[:, None] * col
        wsum += w
    colours = acc / np.maximum(wsum, 1e-9)[:, None]
    unseen = wsum <= 1e-9
    if unseen.any():
        from scipy.spatial import cKDTree

        keep = splats.opacity() > 0.3
        src = splats.subset(np.flatnonzero(keep)) if keep.sum() >= 8 else splats
        _, idx = cKDTree(src.means).query(verts[unseen], k=min(8, len(src)))
        colours[unseen] = src.rgb()[np.atleast_2d(idx)].mean(axis=1)
    rgba = np.concatenate([np.clip(colours, 0, 1) * 255.0, np.full((len(verts), 1), 255.0)], axis=1)
    return np.round(rgba).astype(np.uint8)


def extract_mesh(splats: SplatArrays, opts: MeshOptions | None = None) -> MeshResult:
    """The head's surface as a watertight mesh with at most ``opts.faces`` faces (head frame)."""
    opts = opts or MeshOptions()
    if len(splats) == 0:
        raise ValueError("no splats to mesh")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lo, hi = _bounds(splats, opts)
    cams = orbit(opts, (lo + hi) / 2.0)
    rgb, alpha, depth = _render_views(splats, cams, opts.depth_sharpen)
    timings["render_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from scipy.ndimage import gaussian_filter

    field_, origin, voxel = fuse_tsdf(cams, alpha, depth, lo, hi, opts.resolution, opts.trunc_voxels)
    mesh = None
    # a decimation that would open the surface (thin tunnels pinch) is retried on a smoother field
    for sigma in (opts.smooth_voxels, opts.smooth_voxels + 0.5, opts.smooth_voxels + 1.0, opts.smooth_voxels + 2.0):
        surface = _surface(gaussian_filter(field_, sigma) if sigma > 0 else field_, origin, voxel)
        mesh = _decimate(surface, opts.faces)
        if mesh is not None:
            break
    if mesh is None:
        raise RuntimeError(f"could not decimate the surface to {opts.faces} faces and keep it closed")
    timings["mesh_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    colors = _colour_vertices(mesh, cams, rgb, alpha, depth, splats, voxel)
    timings["colour_s"] = time.perf_counter() - t0
    return MeshResult(
        np.asarray(mesh.vertices, np.float64),
        np.asarray(mesh.faces, np.int64),
        colors,
        bool(mesh.is_watertight),
        timings,
    )


def mesh_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"a mesh is written as {', '.join(MESH_SUFFIXES)}, not {suffix or '(no suffix)'}")
    return MESH_SUFFIXES[suffix]


def to_file_axes(result: MeshResult, fmt: str):
    """The mesh as a trimesh in the axes of ``fmt`` (see the module docstring)."""
    mesh = result.trimesh()
    if fmt in ("glb", "obj"):
        m = np.eye(4)
        m[:3, :3] = HEAD_TO_GLTF
        mesh.apply_transform(m)
    return mesh


def write_mesh(path: str | Path, result: MeshResult, fmt: str | None = None) -> None:
    """Write ``result`` as GLB, OBJ (with ``v x y z r g b`` vertex colours) or binary PLY, atomically."""
    from blender_addon.core.formats._common import write_atomic

    fmt = fmt or mesh_format(path)
    mesh = to_file_axes(result, fmt)
    if fmt == "glb":
        data = mesh.export(file_type="glb")
    elif fmt == "obj":
        data = mesh.export(file_type="obj", include_color=True, include_normals=True, header="PortraitSplat mesh")
    elif fmt == "ply":
        data = mesh.export(file_type="ply", encoding="binary")
    else:
        raise ValueError(f"unknown mesh format {fmt!r}")
    write_atomic(path, data if isinstance(data, bytes) else data.encode())
