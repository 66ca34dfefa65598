"""The embedded default: one photo -> a Gaussian head, with no downloaded weights (METHOD C).

    photo -> face (MediaPipe, shipped in its wheel) -> head template fitted to the landmarks
          -> the template reshaped to all 478 landmarks (backend.prior.deform) and given a
             hair volume out to the photo's outline (backend.prior.hair)
          -> the photo split into hair / skin / clothes / background (backend.face.regions)
          -> 10k Gaussians flat on that surface, coloured from the photo where it sees them and
             from the photo's hair / skin / clothes colours elsewhere (backend.prior.colours)
          -> photometric fit (L1 + SSIM) from the photo's own camera, alternating a crop of
             the whole head and a crop of the face (its detail at the resolution it is looked
             at), on the person's pixels less the segmentation's edge outside the face,
             + priors for what the photo cannot see (symmetry, stay near the surface, lie
             flat on it) and against needles (a splat's length and elongation), kept for the
             whole fit (densified splats inherit their parent's anchor); the fit draws only
             the splats it may change, on a random colour each step, so the photo's own layer
             is opaque without the back of the head behind it
          -> head.ply + a turntable rendered with our renderer

It is Instax3D's construction stage (METHOD B.2) with one real view instead of 21 generated
ones, so it optionally densifies with absolute gradients.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

from ..face import analyse_face
from ..face.regions import PhotoRegions, photo_regions
from ..gaussians.cameras import Cameras
from ..gaussians.loop import LoopConfig, optimise, render_model
from ..gaussians.losses import flat_penalty, photometric, psnr, shape_penalty, ssim
from ..gaussians.model import GaussianModel
from ..gaussians.raster_cpu import torch_single_threaded
from ..gaussians.render import resolve_backend, use_backend
from ..gaussians.strategies import make_strategy
from ..prior.colours import fill_colours
from ..prior.deform import deform_to_landmarks, moved
from ..prior.fit import HeadFit, fit_head
from ..prior.hair import hair_shell, hair_weight, point_weight
from ..prior.sample import INIT_OPACITY, INIT_SCALE, head_unit, project_colors, sample_surface, surfel_quats
from ..prior.template import HeadMesh
from . import NullReporter, RunResult
from .cache import ModelCache
from .photo_views import PhotoView, crop_camera, head_crop_camera, person_core, photo_view
from .presets import choose_preset
from .turntable import render_turntable


@dataclass(frozen=True)
class PhotoPreset:
    n_points: int = 10_000  # METHOD A.1: N = 10,000 on the head surface
    opacity: float = INIT_OPACITY  # METHOD A.1: 0.2
    # Ours: splats the photo cannot see are not fitted (they face away from it) or barely (edge
    # on), so at 0.2 the back of the head stays see-through and shows the face from behind.
    # Start them opaque instead. (Until issue #17 a `~True` (-2) in the mask made every splat
    # start at 0.2, so this never took effect.)
    hidden_opacity: float = 0.95
    # Ours: and, where the surface faces away from the photo, larger, so the back of the head is
    # closed (it carries hair colour, not detail)
    hidden_scale: float = 1.6
    # Ours: the face gets this many times the splats per area of the rest of the seen head
    face_density: float = 2.0
    scale: float = INIT_SCALE  # METHOD A.1: 0.02 head units
    # Ours: splats start flat on the surface, their size along its normal this share of the rest
    # (1: METHOD A.1's round ones), and the fit holds them to FLAT_MAX_M along it ("loss_flat"):
    # the photo cannot see how deep a splat facing it is, and left free, splats grew along the
    # normal (median 84% of their longest axis): dots from the front, streaks from 20 deg above
    flat: float = 0.25
    project_photo_colours: bool = True  # METHOD A.1 allowed improvement; False = paper's grey init
    # Ours (issue #17): the template reshaped to all 478 landmarks, a hair volume out to the
    # photo's outline, and unseen points coloured from the photo's hair/skin/clothes colours
    shape_from_landmarks: bool = True
    hair_volume: bool = True
    # Ours: a share of the steps fits the face alone, a crop around the landmarks at fit_res:
    # the hair volume widens the head crop until the face gets ~150 of its 256 px, under the
    # photo's own resolution on a small face (bench/results/photo_head: -1.9 dB inside the face)
    face_steps: float = 0.5  # the share of the steps that see the face crop (0: none)
    face_pad: float = 0.2  # the face crop's margin, as crop_camera's pad
    # Ours: outside the face, the person mask's edge, this fraction of the face's height wide,
    # does not count in the fit: the segmentation runs a few pixels into the background there,
    # and the splats the photo sees edge-on at the head's outline would take its colours
    person_margin: float = 0.015
    # Ours, sized to the demo's <= 60 s on 2 CPU cores with the tile rasteriser (issue #16,
    # bench/results/cpu_raster.md): 150 steps at 128 px before it, with the torch reference;
    # 300 since the face crop (issue #17: 56 s on a quiet machine); 280 since the flat splats
    # (their flatness prior and their footprints cost ~10 %: 300 steps took 60 s, 280 take 50-56 s)
    steps: int = 280
    fit_res: int = 256  # px, square crop around the head
    lr_preset: str = "photo"
    strategy: str | None = None  # None, "default", "absgrad" or "surface"
    strategy_overrides: dict = field(default_factory=dict)
    weights: dict = field(
        default_factory=lambda: {
            "loss_rgb": 1.0,  # (1 - 0.2) L1 + 0.2 (1 - SSIM) inside the template silhouette
            "loss_symmetry": 0.2,  # L1 between each splat's colour and its mirror partner's
            "loss_surface": 1.0,  # squared offset along the template normal, in units of 5 mm
            # Ours: splats longer than SHAPE_MAX_RATIO x their width or SHAPE_MAX_M, in log units:
            # the photo stretches splats along the outline's wisps, and every other view sees
            # them as needles
            "loss_shape": 1.0,
            "loss_flat": 1.0,  # a splat's size along its anchor's normal over FLAT_MAX_M, in log units
        }
    )
    # Ours: the fit draws only the splats it may change (not the back of the head that the front
    # view looks at through the face) and composites them on a random colour each step: the
    # photo's own layer must then be opaque. Fitted in front of the back of the head, the face
    # stayed translucent, and from 20 deg above it showed the dark collar behind it in streaks.
    # On the head crop's steps; the face crop's draw every splat on white (its detail: the demo's
    # front 36.8 dB against 35.5 with the backdrop on every step, 37.4 without; the face's front
    # half then covers it at alpha 0.987 against 0.925 without)
    opaque_layer: bool = True
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
    "paper_init": PhotoPreset(  # METHOD A.1 exactly: grey splats on the (undeformed) template
        project_photo_colours=False,
        hidden_opacity=INIT_OPACITY,
        shape_from_landmarks=False,
        hair_volume=False,
        face_steps=0.0,
        flat=1.0,
        opaque_layer=False,
        weights={**PhotoPreset().weights, "loss_flat": 0.0},
    ),
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
SHAPE_MAX_RATIO = 5.0  # the shape prior's longest / middle axis (a needle; a flat disc is fine)
SHAPE_MAX_M = 0.015  # the shape prior's longest axis (std-dev), 3x a seen splat's initial size
FLAT_MAX_M = 0.002  # the flatness prior's size along the normal (std-dev), 1.7x a seen splat's initial
GRAZING_COS = 0.3  # the photo sees a surface edge-on below this cosine: its pixels there are smeared


def _preset(name: str, options: dict | None) -> PhotoPreset:
    return choose_preset("photo", PRESETS, name, options)


def head_surface(
    fit: HeadFit, face, regions: PhotoRegions | None, cfg: PhotoPreset
) -> tuple[HeadMesh, np.ndarray, float]:
    """The fitted template, reshaped to the landmarks and given hair as ``cfg`` says, its
    per-vertex scalp weight (:func:`backend.prior.hair.hair_weight`), and the head's unit
    (:func:`backend.prior.sample.head_unit`) measured before the hair: the hair volume raises the
    crown, and must not make every splat larger."""
    mesh = fit.mesh()
    if cfg.shape_from_landmarks:
        mesh, _ = deform_to_landmarks(fit, mesh, face.landmarks2d, face.landmarks3d)
    scalp = hair_weight(mesh)
    unit = head_unit(mesh)
    if cfg.hair_volume and regions is not None:
        mesh = moved(mesh, hair_shell(fit, mesh, regions.person, scalp))
    return mesh, scalp, unit


def initial_splats(
    mesh,
    fit,
    image,
    preset: PhotoPreset,
    rng,
    *,
    regions: PhotoRegions | None = None,
    scalp: np.ndarray | None = None,
    unit: float | None = None,
) -> tuple[SplatArrays, np.ndarray, np.ndarray]:
    """Splats on ``mesh``, their normals, and which ones take the photo's colour.

    With ``regions`` (and ``scalp``, the per-vertex hair weight), points the photo does not
    see get the photo's hair / skin / clothes colours (:func:`backend.prior.colours.fill_colours`);
    without, they stay the projection's grey. ``unit``: the head's size that the preset's scale
    is a fraction of (default: ``mesh``'s own, :func:`backend.prior.sample.head_unit`)."""
    density = None
    if regions is not None and preset.project_photo_colours:
        # as many splats per unit of coverage where the photo sees the head as elsewhere (the
        # unseen ones are hidden_scale times larger, so 1 / hidden_scale^2 as dense), and
        # face_density times that on the face, where identity lives
        tri = np.asarray(mesh.vertices, np.float64)[mesh.faces]
        _, seen = project_colors(tri.mean(1), mesh.face_normals(), image, fit, mesh=mesh)
        density = np.where(seen, 1.0, 1.0 / preset.hidden_scale**2)
        density[mesh.face_mask[mesh.faces].any(1)] *= preset.face_density
    pts, normals, _ = sample_surface(mesh, preset.n_points, rng, density=density)
    n = len(pts)
    if preset.project_photo_colours:
        rgb, visible = project_colors(pts, normals, image, fit, mesh=mesh)
        if regions is not None:
            scalp_pts = point_weight(mesh, hair_weight(mesh) if scalp is None else scalp, pts)
            uv, _ = fit.project(pts)
            a = mesh.anchors
            nape = (pts[:, 1] > 0.5 * (a["left_ear"][1] + a["right_ear"][1])) & (pts[:, 2] < a["left_ear"][2])
            grazing = facing_away(pts, normals, fit, cos=-GRAZING_COS)  # n . view > -0.3: edge-on
            rgb, _, visible = fill_colours(
                pts, uv, visible, scalp_pts, image, regions, rng, grazing=grazing & visible, nape=nape
            )
    else:
        rgb, visible = np.full((n, 3), 0.5, np.float32), np.zeros(n, bool)
    # flat on the surface (preset.flat: the normal's share of the size), or the paper's round ones
    quats = surfel_quats(normals) if preset.flat < 1.0 else np.tile(np.float32([1, 0, 0, 0]), (n, 1))
    # the photo's own splats start at the paper's opacity and size; the others opaque and larger
    # (with the paper's grey init, every splat is the paper's)
    own = visible | (not preset.project_photo_colours)
    opacity = np.where(own, preset.opacity, preset.hidden_opacity).astype(np.float32)
    scale = (
        preset.scale
        * (head_unit(mesh) if unit is None else unit)
        * np.where(own | ~facing_away(pts, normals, fit), 1.0, preset.hidden_scale)
    )
    splats = SplatArrays(
        means=pts,
        quats=quats,
        log_scales=np.log(scale[:, None] * np.float32([1.0, 1.0, preset.flat])).astype(np.float32),
        opacity_logits=logit(opacity),
        sh0=rgb_to_sh0(rgb),
    )
    return splats, normals, visible


def facing_away(points: np.ndarray, normals: np.ndarray, fit: HeadFit, cos: float = 0.25) -> np.ndarray:
    """[N] bool: the surface at ``points`` faces away from the photo's camera (the back and the
    far sides of the head, not the grazing edge of what the photo sees)."""
    view = np.asarray(points, np.float64) - fit.camera_position
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", np.asarray(normals, np.float64), view) > cos


@dataclass
class PhotoFit:
    """What :func:`fit_photo_head` produces (the hook for ``stylize`` with ``init="photo"``)."""

    model: GaussianModel  # head frame
    fit: HeadFit  # the template placed in the photo
    mesh: HeadMesh  # the surface the splats started on: the template reshaped, with hair
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
    regions = photo_regions(image, face.landmarks2d, seed=seed) if cfg.project_photo_colours else None
    mesh, scalp, unit = head_surface(fit, face, regions, cfg)
    timings["face_and_template_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.progress("init", 0, 1, "placing Gaussians on the head template")
    splats, normals, visible = initial_splats(mesh, fit, image, cfg, rng, regions=regions, scalp=scalp, unit=unit)
    model = GaussianModel.from_splats(splats, cfg.lr_preset, total_steps=cfg.steps)
    person = None if regions is None else person_core(regions, face.landmarks2d, cfg.person_margin)
    views = [photo_view(model, *head_crop_camera(fit, mesh, cfg.fit_res), image, person, cfg.fit_res)]
    if cfg.face_steps > 0:
        face_cam = crop_camera(fit, face.landmarks2d[:, :2], cfg.fit_res, cfg.face_pad)
        views.append(photo_view(model, *face_cam, image, person, cfg.fit_res))
    reporter.preview(model.to_splats(), 0)
    reporter.progress("init", 1, 1, f"{len(model)} Gaussians, {int(visible.sum())} seen by the photo")
    timings["init_s"] = time.perf_counter() - t

    anchors0 = torch.from_numpy(splats.means.copy())
    normals0 = torch.from_numpy(normals)
    tree0 = cKDTree(splats.means)
    pairing: dict[str, torch.Tensor] = {}
    # (with the paper's grey init nothing is coloured yet, so everything is fitted; splats at the
    # grazing edge of what the photo sees stay free: the fit places the face's outline with them)
    frozen = ~visible & facing_away(splats.means, normals, fit) if cfg.project_photo_colours else np.zeros_like(visible)
    seen0 = torch.from_numpy(~frozen)
    # the shape prior's elongation bound holds the splats off the face (hair, outline, neck): the
    # face's own may be as thin as a wrinkle or an eyelid
    off_face0 = torch.from_numpy(point_weight(mesh, mesh.face_mask.astype(np.float64), splats.means) < 0.5)
    hooks: list = []
    loop_background = (1.0, 1.0, 1.0)

    def pair_up():
        """Each splat's anchor (its initial splat, or a densified splat's nearest initial one)
        and its mirror partner; redone whenever densification changes the count.

        Splats the photo does not see, on surfaces facing away from it, keep their
        initialisation (colour, opacity, size, place):
        the front view looks at the back of the head through the face while the face is still
        translucent, and would paint the face onto it, or shrink it open (a ghost face, seen
        from behind)."""
        means = model.means.detach().numpy()
        pairing["anchor"] = torch.from_numpy(tree0.query(means)[1])
        pairing["mirror"] = torch.from_numpy(cKDTree(means).query(means * np.float32([-1, 1, 1]))[1])
        keep = seen0[pairing["anchor"]].float()
        for p in model.params.values():
            hooks.append(p.register_hook(lambda g: g * keep.view(-1, *([1] * (g.dim() - 1)))))

    def view_at(step: int) -> PhotoView:  # the face crop on a face_steps share of the steps
        on_face = int((step + 1) * cfg.face_steps) > int(step * cfg.face_steps)
        return views[-1] if on_face else views[0]

    def alone(step: int) -> bool:  # the photo's layer alone, on a random backdrop (head crop)
        return cfg.opaque_layer and view_at(step) is views[0]

    def draw(step):  # the splats the fit may change (see pair_up), or all
        if not alone(step):
            return None
        if len(pairing.get("anchor", ())) != len(model):
            pair_up()
        return seen0[pairing["anchor"]].float()

    backdrop = torch.Generator().manual_seed(seed)
    white = torch.tensor(loop_background)

    def photo_term(out, cams, step):
        view = view_at(step)
        rgb = out.rgb
        if alone(step):  # the render again on a random colour: what shows through counts
            rgb = rgb + (1.0 - out.alpha) * (torch.rand(3, generator=backdrop) - white)
        pred = torch.where(view.mask, rgb, view.target)  # only the head's pixels count
        return {"loss_rgb": photometric(pred, view.target)}

    def prior_term(out, cams, step):
        if len(pairing.get("anchor", ())) != len(model):
            pair_up()
        a = pairing["anchor"]
        c = model.params["sh0"][:, 0, :]
        off = ((model.means - anchors0[a]) * normals0[a]).sum(-1) / SURFACE_SIGMA_M
        log_s = model.params["scales"]
        shape = (
            shape_penalty(log_s, math.inf, SHAPE_MAX_M) + shape_penalty(log_s, SHAPE_MAX_RATIO, math.inf) * off_face0[a]
        )
        return {
            "loss_symmetry": (c - c[pairing["mirror"]]).abs().mean(),
            "loss_surface": off.square().mean(),
            "loss_shape": shape.mean(),
            "loss_flat": flat_penalty(model.quats, model.scales, normals0[a], FLAT_MAX_M).mean(),
        }

    strategy = None
    if cfg.strategy:
        strategy = make_strategy(cfg.strategy, **cfg.strategy_overrides)
    t = time.perf_counter()
    loop_cfg = LoopConfig(
        steps=cfg.steps,
        weights=cfg.weights,
        preview_every=cfg.preview_every,
        background=loop_background,
        absgrad=cfg.strategy == "absgrad",
        stage="optimise",
    )
    with _render_threads(cfg.renderer):
        try:
            optimise(
                model,
                loop_cfg,
                lambda step: view_at(step).camera,
                [photo_term, prior_term],
                strategy=strategy,
                reporter=reporter,
                draw=draw,
            )
        finally:
            for hook in hooks:
                hook.remove()
    timings["optimise_s"] = time.perf_counter() - t

    cam, target, mask = views[0].camera, views[0].target, views[0].mask
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
    return PhotoFit(model, fit, mesh, face, cam, metrics)


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
