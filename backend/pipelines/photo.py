"""The embedded default: one photo -> a Gaussian head, with no downloaded weights (METHOD C).

    photo -> face (MediaPipe, shipped in its wheel) -> head template fitted to the landmarks
          -> 10k Gaussians on the template surface, coloured from the photo where it sees them
          -> photometric fit (L1 + SSIM) from the photo's own camera
             + priors for what the photo cannot see (symmetry, stay near the template surface)
          -> head.ply + a turntable rendered with our renderer

It is Instax3D's construction stage (METHOD B.2) with one real view instead of 21 generated
ones, so it optionally densifies with absolute gradients.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree

from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

from ..face import analyse_face
from ..gaussians.cameras import Cameras
from ..gaussians.loop import LoopConfig, optimise, render_model
from ..gaussians.losses import photometric, psnr, ssim
from ..gaussians.model import GaussianModel
from ..gaussians.raster_cpu import torch_single_threaded
from ..gaussians.render import resolve_backend, use_backend
from ..gaussians.strategies import make_strategy
from ..prior.fit import HeadFit, fit_head
from ..prior.sample import INIT_OPACITY, INIT_SCALE, head_unit, project_colors, sample_surface
from . import NullReporter, RunResult
from .cache import ModelCache
from .presets import choose_preset
from .turntable import render_turntable


@dataclass(frozen=True)
class PhotoPreset:
    n_points: int = 10_000  # METHOD A.1: N = 10,000 on the head surface
    opacity: float = INIT_OPACITY  # METHOD A.1: 0.2
    # Ours: splats the photo cannot see get no photometric gradient, so at 0.2 the back of the
    # head stays see-through and shows the face from behind. Start them opaque instead.
    hidden_opacity: float = 0.9
    scale: float = INIT_SCALE  # METHOD A.1: 0.02 head units
    project_photo_colours: bool = True  # METHOD A.1 allowed improvement; False = paper's grey init
    # Ours, sized to the demo's <= 60 s on 2 CPU cores with the tile rasteriser (issue #16,
    # bench/results/cpu_raster.md): 150 steps at 128 px before it, with the torch reference.
    steps: int = 250
    fit_res: int = 256  # px, square crop around the head
    lr_preset: str = "photo"
    strategy: str | None = None  # None, "default", "absgrad" or "surface"
    strategy_overrides: dict = field(default_factory=dict)
    weights: dict = field(
        default_factory=lambda: {
            "loss_rgb": 1.0,  # (1 - 0.2) L1 + 0.2 (1 - SSIM) inside the template silhouette
            "loss_symmetry": 0.2,  # L1 between each splat's colour and its mirror partner's
            "loss_surface": 1.0,  # squared offset along the template normal, in units of 5 mm
        }
    )
    preview_every: int = 25
    turntable_frames: int = 24
    turntable_res: int = 192
    turntable_elevation_deg: float = 5.0
    # "auto": gsplat on CUDA, the CPU tile rasteriser (numba) on CPU; "torch": the reference
    renderer: str = "auto"


PRESETS: dict[str, PhotoPreset] = {
    "preview": PhotoPreset(
        n_points=3000, steps=30, fit_res=96, preview_every=10, turntable_frames=8, turntable_res=128
    ),
    "default": PhotoPreset(),
    "paper_init": PhotoPreset(project_photo_colours=False, hidden_opacity=INIT_OPACITY),  # METHOD A.1 exactly
    "quality": PhotoPreset(
        n_points=20_000,
        steps=1200,
        fit_res=256,
        strategy="absgrad",
        strategy_overrides={"refine_every": 200, "refine_stop_iter": 1000, "grow_grad2d": 0.0008},
        turntable_frames=48,
        turntable_res=512,
    ),
}

SURFACE_SIGMA_M = 0.005  # the surface prior's length scale


def _preset(name: str, options: dict | None) -> PhotoPreset:
    return choose_preset("photo", PRESETS, name, options)


def head_crop_camera(fit, mesh, res: int, pad: float = 0.12) -> tuple[Cameras, tuple[int, int, int]]:
    """The photo's camera restricted to a square crop around the projected head, at ``res`` px.

    Returns the camera and the crop box (x0, y0, side) in photo pixels.
    """
    uv, _ = fit.project(mesh.vertices)
    lo, hi = uv.min(0), uv.max(0)
    centre = (lo + hi) / 2
    side = int(np.ceil((hi - lo).max() * (1 + 2 * pad)))
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    s = res / side
    K = torch.tensor(
        [[fit.fx * s, 0, (fit.cx - x0) * s], [0, fit.fy * s, (fit.cy - y0) * s], [0, 0, 1]], dtype=torch.float32
    )
    V = torch.as_tensor(fit.world_to_camera, dtype=torch.float32)
    return Cameras(V[None], K[None], res, res), (x0, y0, side)


def crop_resize(image: np.ndarray, box: tuple[int, int, int], res: int) -> np.ndarray:
    """Square crop (edge-padded where it leaves the photo) resized to res x res, float32 [0, 1]."""
    x0, y0, side = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
    crop = src[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    return np.asarray(Image.fromarray(crop).resize((res, res), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def propagate_colours(points: np.ndarray, rgb: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Fill colours the photo cannot see: the mirror point's colour if the photo sees it
    (faces are near-symmetric), else the nearest seen point's colour."""
    out = rgb.copy()
    if not visible.any():
        return out
    tree = cKDTree(points[visible])
    hidden = np.flatnonzero(~visible)
    mirrored = points[hidden] * np.array([-1.0, 1.0, 1.0], np.float32)
    d_m, i_m = tree.query(mirrored)
    _, i_n = tree.query(points[hidden])
    use_mirror = d_m < 0.004
    src = np.where(use_mirror, i_m, i_n)
    out[hidden] = rgb[visible][src]
    return out


def initial_splats(mesh, fit, image, preset: PhotoPreset, rng) -> tuple[SplatArrays, np.ndarray, np.ndarray]:
    pts, normals, _ = sample_surface(mesh, preset.n_points, rng)
    n = len(pts)
    if preset.project_photo_colours:
        rgb, visible = project_colors(pts, normals, image, fit, mesh=mesh)
        rgb = propagate_colours(pts, rgb, visible)
    else:
        rgb, visible = np.full((n, 3), 0.5, np.float32), np.zeros(n, bool)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    opacity = np.where(visible | ~preset.project_photo_colours, preset.opacity, preset.hidden_opacity).astype(
        np.float32
    )
    splats = SplatArrays(
        means=pts,
        quats=quats,
        log_scales=np.full((n, 3), np.log(preset.scale * head_unit(mesh)), np.float32),
        opacity_logits=logit(opacity),
        sh0=rgb_to_sh0(rgb),
    )
    return splats, normals, visible


@dataclass
class PhotoFit:
    """What :func:`fit_photo_head` produces (the hook for ``stylize`` with ``init="photo"``)."""

    model: GaussianModel  # head frame
    fit: HeadFit  # the template placed in the photo
    face: object  # backend.face.FaceAnalysis of the photo
    camera: Cameras  # the photo's camera on the head crop, fit_res px
    metrics: dict[str, float]


def fit_photo_head(image: np.ndarray, cfg: PhotoPreset, *, seed: int = 0, reporter=None) -> PhotoFit:
    """Photo -> face -> fitted template -> Gaussians fitted to the photo (no turntable)."""
    with use_backend(cfg.renderer):
        return _fit_photo_head(image, cfg, seed, reporter)


def _render_threads(renderer: str):
    """With the CPU tile rasteriser, torch runs on one thread: its OpenMP workers would spin
    against the rasteriser's (backend.gaussians.raster_cpu); the fit's time is the renderer's."""
    return torch_single_threaded() if resolve_backend(renderer, "cpu") == "numba" else nullcontext()


def _fit_photo_head(image: np.ndarray, cfg: PhotoPreset, seed: int, reporter) -> PhotoFit:
    reporter = reporter or NullReporter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    reporter.progress("face", 0, 1, "detecting the face")
    face = analyse_face(image)
    reporter.progress("face", 1, 1, f"{face.n_faces} face(s), yaw {face.yaw_pitch_roll[0]:.0f} deg")
    fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    mesh = fit.mesh()
    timings["face_and_template_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.progress("init", 0, 1, "placing Gaussians on the head template")
    splats, normals, visible = initial_splats(mesh, fit, image, cfg, rng)
    cam, box = head_crop_camera(fit, mesh, cfg.fit_res)
    target = torch.from_numpy(crop_resize(image, box, cfg.fit_res))[None]  # [1, R, R, 3]
    model = GaussianModel.from_splats(splats, cfg.lr_preset, total_steps=cfg.steps)
    mask = _silhouette(model, cam)  # [1, R, R, 1] where the template covers the crop
    reporter.preview(model.to_splats(), 0)
    reporter.progress("init", 1, 1, f"{len(model)} Gaussians, {int(visible.sum())} seen by the photo")
    timings["init_s"] = time.perf_counter() - t

    anchors = torch.from_numpy(splats.means.copy())
    anchor_normals = torch.from_numpy(normals)
    mirror_idx = torch.from_numpy(cKDTree(splats.means).query(splats.means * np.float32([-1, 1, 1]))[1])

    def photo_term(out, cams, step):
        pred = torch.where(mask, out.rgb, target)  # only the head's pixels count
        return {"loss_rgb": photometric(pred, target)}

    def prior_term(out, cams, step):
        losses = {}
        n0 = len(anchors)
        if len(model) == n0:  # the priors pair splats with their initial ones; densified splats go free
            c = model.params["sh0"][:, 0, :]
            losses["loss_symmetry"] = (c - c[mirror_idx]).abs().mean()
            off = ((model.means - anchors) * anchor_normals).sum(-1) / SURFACE_SIGMA_M
            losses["loss_surface"] = off.square().mean()
        return losses

    strategy = None
    if cfg.strategy:
        strategy = make_strategy(cfg.strategy, **cfg.strategy_overrides)
    t = time.perf_counter()
    loop_cfg = LoopConfig(
        steps=cfg.steps,
        weights=cfg.weights,
        preview_every=cfg.preview_every,
        background=(1.0, 1.0, 1.0),
        absgrad=cfg.strategy == "absgrad",
        stage="optimise",
    )
    with _render_threads(cfg.renderer):
        optimise(model, loop_cfg, lambda step: cam, [photo_term, prior_term], strategy=strategy, reporter=reporter)
    timings["optimise_s"] = time.perf_counter() - t

    with torch.no_grad():
        front = render_model(model, cam, background=torch.ones(3)).rgb
        pred = torch.where(mask, front, target)
        # the fit on its own training view, outside the silhouette copied from the photo: a
        # training loss, not a quality figure (eval's front_psnr_db is that: face mask only)
        metrics = {
            "fit_psnr_db": psnr(pred, target),
            "fit_ssim": float(ssim(pred, target)),
            "n_splats": float(len(model)),
            "photo_visible_fraction": float(visible.mean()),
            "template_reprojection_px": float(fit.reprojection_error_px),
        }
    metrics.update({k: round(v, 3) for k, v in timings.items()})
    return PhotoFit(model, fit, face, cam, metrics)


def run(
    image: np.ndarray,
    *,
    preset: str = "default",
    seed: int = 0,
    options: dict | None = None,
    reporter=None,
    model_cache: ModelCache | None = None,
) -> RunResult:
    """Photo (HxWx3 uint8) -> Gaussian head. See the module docstring.

    ``model_cache`` is accepted like every pipeline's; this one loads no models (MediaPipe's
    graphs ship in its wheel and stay warm in ``backend.face``)."""
    cfg = _preset(preset, options)
    reporter = reporter or NullReporter()
    head = fit_photo_head(image, cfg, seed=seed, reporter=reporter)
    t = time.perf_counter()
    with use_backend(cfg.renderer), _render_threads(cfg.renderer):
        frames = render_turntable(
            head.model,
            cfg.turntable_frames,
            cfg.turntable_res,
            elevation_deg=cfg.turntable_elevation_deg,
            reporter=reporter,
        )
    head.metrics["turntable_s"] = round(time.perf_counter() - t, 3)
    result = head.model.to_splats()
    result.check_finite()
    return RunResult(splats=result, turntable=frames, metrics=head.metrics)


def _silhouette(model: GaussianModel, cam: Cameras) -> torch.Tensor:
    """Pixels the template covers: the initial splats rendered fully opaque."""
    with torch.no_grad():
        out = render_model_opaque(model, cam)
    return out > 0.5


def render_model_opaque(model: GaussianModel, cam: Cameras) -> torch.Tensor:
    from ..gaussians.render import render

    n = len(model)
    return render(model.means, model.quats, model.scales * 1.5, torch.full((n,), 0.99), model.rgb_dc, cam).alpha
