"""Instax3D: photo -> SV3D orbit video -> triangle-bound Gaussians (METHOD B).

    photo -> face landmarks + head template placed in the photo (backend.face, backend.prior)
          -> SV3D input: the head cut out (MediaPipe selfie segmentation, shipped in its
             wheel), centred, on white, 576 px (backend.guidance.sv3d.sv3d_input)
          -> GENERATION: 21 orbit frames (backend.guidance.sv3d), shown as a preview
          -> CONSTRUCTION (``construct``):
               the template fitted to 3 frames (reference + its 2 neighbours), shapes averaged
               (backend.prior.multiview)
               4 Gaussians sampled on every triangle, each bound to it (Eq. 6)
               photometric fit to all 21 frames; absolute-gradient densification (Eq. 7-8)
          -> head.ply (via the outputs writer) + a turntable

Cameras. SV3D's orbit is described in an "orbit world": cameras at the frames' azimuths,
elevation 10 deg, looking at the origin, +Z up, the input view at azimuth 0 (the front,
-Y). The template fits give each frame's head pose; from them a similarity
head -> orbit world is solved (rotation averaged over the fitted frames, scale from the
camera distances, translation from the head centres), and the cameras are re-expressed in
the HEAD FRAME, so the Gaussians, the previews and the PLY are all in the head frame (metres,
+Z up, face toward -Y). Which way SV3D turns (the sign of the azimuth) is checked, not
assumed: with ``orbit_direction=0`` (auto) both signs are fitted and the one whose frames
agree on the head's rotation wins.

Previews. The Reporter protocol carries Gaussian clouds only, so the finished orbit is sent
as ONE preview of "picture cards": each frame a flat grid of Gaussians on a ring around the
head, facing out, as its camera saw it (:func:`frames_as_splats`). Progress is reported per
SV3D step ("generate") and per decoded frame ("decode"); the frames themselves come back in
``InstaxResult.orbit_frames``. The Gaussian fit then streams previews as usual.

Warm models. SV3D is loaded through the ``model_cache`` argument (a
:class:`~backend.pipelines.cache.ModelCache`, slot ``"sv3d"``); the worker passes its one
cache so SV3D stays loaded between jobs, a call without one loads it afresh.

Composition hook (``instax+stylize``): :func:`reconstruct_head` returns the fitted
:class:`BoundGaussianModel` and the generation artefacts without rendering a turntable; a
stylize pipeline can start SAS from ``model.to_splats()`` (head frame) instead of the bare
template.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0

from ..face import analyse_face
from ..gaussians.binding import BoundGaussianModel, bind, decimate, make_bound_strategy
from ..gaussians.cameras import Cameras, spherical_cameras
from ..gaussians.loop import LoopConfig, optimise, render_model
from ..gaussians.losses import photometric, psnr
from ..guidance.sv3d import sv3d_input
from ..prior.fit import fit_head
from ..prior.multiview import TemplateFit, fit_template, frame_landmarks
from ..prior.template import build_head
from . import NullReporter, RunResult
from .cache import ModelCache
from .presets import choose_preset
from .turntable import render_turntable

SV3D_FOV_DEG = 33.8  # SV3D's training renders' vertical field of view
ORBIT_RADIUS = 2.0  # nominal camera distance in the orbit world; the fit solves the scale


@dataclass(frozen=True)
class InstaxPreset:
    # ---- generation (METHOD B.1; backend.guidance.sv3d.SV3DSettings)
    sv3d_variant: str = "sv3d_u"  # paper: a zero-camera fine-tune; sv3d_u is the closest public model
    sv3d_steps: int = 50
    sv3d_resolution: int = 576
    frames: int = 21
    elevation_deg: float = 10.0
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    orbit_direction: int = 0  # +1: SV3D's azimuth turns counter-clockwise seen from above; -1: clockwise; 0: auto
    head_fill: float = 0.7  # the head's share of the SV3D input's side
    # ---- construction (METHOD B.2)
    target_faces: int | None = 10_000  # decimate the template first (None: all ~18k triangles)
    per_triangle: int = 4  # B.2: 4 samples per triangle (~40k Gaussians on FLAME's 10k faces)
    steps: int = 20_000  # B.2: 20,000 iterations
    fit_res: int = 576  # px at which frames are fitted
    lr_preset: str = "instax"  # binding.BOUND_LR_PRESETS; position decays to 0.01x (B.2)
    strategy: str = "instax_paper"  # absgrad densification every 1000 steps (B.2, Eq. 7-8)
    grow_grad2d: float = 0.0002  # B.2 threshold; gsplat suggests ~0.0008 with absgrad
    strategy_overrides: dict = field(default_factory=dict)
    init_opacity: float = 0.1
    ssim_weight: float = 0.2  # 3DGS's (1 - l) L1 + l (1 - SSIM)
    preview_every: int = 500
    turntable_frames: int = 48
    turntable_res: int = 512
    turntable_elevation_deg: float = 5.0


PRESETS: dict[str, InstaxPreset] = {
    # the paper's settings (GPU)
    "paper": InstaxPreset(),
    # ours: <= 90 s end to end on an H100, projected from bench/results/instax_h100.txt: SV3D 16.9 s +
    # 5000 steps x 12.6 ms (paper sizes, before densification grows the cloud) ~ 63 s
    "default": InstaxPreset(steps=5000, strategy_overrides={"refine_stop_iter": 4000}, preview_every=250),
    # ours: reconstruction a CPU can do in minutes (the generation still wants a GPU)
    "fast": InstaxPreset(
        sv3d_steps=25,
        target_faces=2500,
        steps=600,
        fit_res=96,
        lr_preset="instax_fast",
        grow_grad2d=0.0008,
        strategy_overrides={"refine_every": 200, "refine_start_iter": 100, "refine_stop_iter": 500},
        init_opacity=0.3,
        preview_every=50,
        turntable_frames=24,
        turntable_res=192,
    ),
    # tests: tiny models, tiny images, a handful of steps
    "test": InstaxPreset(
        sv3d_steps=2,
        sv3d_resolution=64,
        target_faces=300,
        steps=12,
        fit_res=32,
        lr_preset="instax_fast",
        strategy_overrides={"refine_every": 5, "refine_start_iter": 0, "refine_stop_iter": 10},
        init_opacity=0.3,
        preview_every=4,
        turntable_frames=4,
        turntable_res=32,
    ),
}


def _preset(name: str, options: dict | None) -> InstaxPreset:
    return choose_preset("instax", PRESETS, name, options)


@dataclass
class InstaxResult(RunResult):
    orbit_frames: list[np.ndarray] = field(default_factory=list)  # the SV3D frames, HxWx3 uint8


# ---------------------------------------------------------------------- orbit cameras


def orbit_world_cameras(azimuth_deg: np.ndarray, elevation_deg: float, res: int, direction: int = 1) -> Cameras:
    """Cameras of the orbit frames in the orbit world (see the module docstring)."""
    return spherical_cameras(
        direction * np.asarray(azimuth_deg, np.float64), elevation_deg, ORBIT_RADIUS, SV3D_FOV_DEG, res, res
    )


# ----------------------------------------------------------------- template to frames


def fit_to_orbit(landmarks: dict[int, np.ndarray], cameras: Cameras) -> TemplateFit:
    """:func:`backend.prior.multiview.fit_template` on the orbit's cameras."""
    size = (cameras.width, cameras.height)
    return fit_template(landmarks, cameras.viewmats.double().numpy(), cameras.Ks.double().numpy(), size)


def head_frame_cameras(fit: TemplateFit, cameras: Cameras) -> Cameras:
    """The orbit's ``cameras`` re-expressed in the head frame by the template ``fit``."""
    return Cameras(
        torch.as_tensor(fit.viewmats, dtype=torch.float32),
        cameras.Ks.clone(),
        cameras.width,
        cameras.height,
        azimuth_deg=cameras.azimuth_deg,
        elevation_deg=cameras.elevation_deg,
    )


# ----------------------------------------------------------------------- reconstruction


def _scaled(cameras: Cameras, res: int) -> Cameras:
    k = res / cameras.width
    Ks = cameras.Ks.clone()
    Ks[:, :2] *= k
    return replace(cameras, Ks=Ks, width=res, height=int(round(cameras.height * k)))


def reconstruct(
    frames: np.ndarray,  # [T, H, W, 3] uint8
    cameras: Cameras,  # [T] head frame
    vertices: np.ndarray,  # [V, 3] the fitted template, head frame
    faces: np.ndarray,  # [F, 3]
    cfg: InstaxPreset,
    *,
    seed: int = 0,
    reporter=None,
    device: str | torch.device = "cpu",
) -> tuple[BoundGaussianModel, dict[str, float]]:
    """Bind Gaussians to the template and fit them to the frames (METHOD B.2).

    Returns the model and metrics (``fit_psnr_db`` over all frames at ``fit_res``).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if cfg.target_faces:
        vertices, faces = decimate(vertices, faces, cfg.target_faces)
    model = bind(
        vertices,
        faces,
        per_triangle=cfg.per_triangle,
        rng=rng,
        opacity=cfg.init_opacity,
        lrs=cfg.lr_preset,
        total_steps=cfg.steps,
        device=device,
    )
    cams = _scaled(cameras, cfg.fit_res).to(device)
    targets = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.fromarray(f).resize((cams.width, cams.height), Image.Resampling.LANCZOS), np.float32)
                / 255.0
            )
            for f in frames
        ]
    ).to(device)  # [T, R, R, 3]
    strategy = make_bound_strategy(cfg.strategy, grow_grad2d=cfg.grow_grad2d, **cfg.strategy_overrides)
    order: list[int] = []
    current = [0]

    def sample_views(step: int) -> Cameras:
        if not order:
            order.extend(rng.permutation(len(frames)).tolist())  # every frame once per epoch
        current[0] = order.pop()
        return cams[current[0]]

    def photo_term(out, _cams, _step):
        return {"loss_rgb": photometric(out.rgb, targets[current[0] : current[0] + 1], cfg.ssim_weight)}

    if reporter is not None:
        reporter.preview(model.to_splats(), 0)
    loop = LoopConfig(
        steps=cfg.steps,
        preview_every=cfg.preview_every,
        background=(1.0, 1.0, 1.0),
        absgrad=strategy.absgrad,
        stage="construct",
    )
    optimise(model, loop, sample_views, [photo_term], strategy=strategy, reporter=reporter)
    with torch.no_grad():
        rgb = torch.cat(
            [render_model(model, cams[i], background=torch.ones(3, device=device)).rgb for i in range(len(frames))]
        )
    return model, {"fit_psnr_db": psnr(rgb, targets), "n_splats": float(len(model)), "n_triangles": float(len(faces))}


def construct(
    frames: np.ndarray,
    cameras: Cameras,
    reference_landmarks: np.ndarray | None = None,
    preset: str | InstaxPreset = "fast",
    *,
    reference_index: int = -1,
    seed: int = 0,
    reporter=None,
    device: str | torch.device = "cpu",
    mirrored_cameras: Cameras | None = None,
) -> tuple[BoundGaussianModel, TemplateFit, dict[str, float]]:
    """The construction stage: template fitted to 3 frames -> bound Gaussians fitted to all.

    ``cameras`` are the frames' cameras in the orbit world; ``reference_index`` the input
    view (SV3D: the last frame); ``reference_landmarks`` [478, 2] its landmarks if known
    (else they are detected). Neighbours without a detectable face are skipped. With
    ``mirrored_cameras`` (the orbit turning the other way) both are fitted and the one on
    which the frames agree better is used.
    """
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    n = len(frames)
    ref = reference_index % n
    reporter.progress("template", 0, 1, "fitting the head template to the reference and its neighbours")
    lms = frame_landmarks(frames, [ref, (ref - 1) % n, (ref + 1) % n], ref, reference_landmarks)
    fit = fit_to_orbit(lms, cameras)
    if mirrored_cameras is not None and len(lms) > 1:
        other = fit_to_orbit(lms, mirrored_cameras)
        if other.rotation_spread_deg < fit.rotation_spread_deg:
            fit, cameras = other, mirrored_cameras
    head = build_head(fit.params)
    reporter.progress(
        "template", 1, 1, f"template fitted to {len(fit.fitted)} frame(s), spread {fit.rotation_spread_deg:.1f} deg"
    )
    t1 = time.perf_counter()
    model, metrics = reconstruct(
        frames,
        head_frame_cameras(fit, cameras),
        head.vertices,
        head.faces,
        cfg,
        seed=seed,
        reporter=reporter,
        device=device,
    )
    metrics.update(
        {
            "template_frames": float(len(fit.fitted)),
            "template_rotation_spread_deg": fit.rotation_spread_deg,
            "template_s": round(t1 - t0, 3),
            "construct_s": round(time.perf_counter() - t1, 3),
        }
    )
    return model, fit, metrics


# -------------------------------------------------------------------------- previews


def frames_as_splats(frames: np.ndarray, cameras: Cameras, card_res: int = 48, ring_radius: float = 0.5) -> SplatArrays:
    """The orbit frames as "picture cards" of flat Gaussians on a ring around the head.

    Card i sits ``ring_radius`` from the origin in the direction of camera i, in the plane of
    its image, facing out, so a viewer behind the camera sees the frame the way the camera
    did. Cards are as wide as 85% of the ring's spacing between neighbours.
    """
    c2w = cameras.camera_to_world().double().numpy()  # [C, 4, 4]; columns: right, down, forward, centre
    n = len(frames)
    width = 0.85 * 2.0 * ring_radius * math.sin(math.pi / max(n, 2))
    px = width / card_res
    g = (np.arange(card_res) + 0.5) / card_res - 0.5  # [-0.5, 0.5)
    gx, gy = np.meshgrid(g, g)
    means, quats, rgbs = [], [], []
    for i in range(n):
        right, down, fwd, centre = c2w[i, :3, 0], c2w[i, :3, 1], c2w[i, :3, 2], c2w[i, :3, 3]
        d = centre / max(np.linalg.norm(centre), 1e-9)
        origin = ring_radius * d
        pts = origin + width * (gx.reshape(-1, 1) * right + gy.reshape(-1, 1) * down)
        img = (
            np.asarray(Image.fromarray(frames[i]).resize((card_res, card_res), Image.Resampling.BILINEAR), np.float32)
            / 255.0
        )
        R = np.column_stack([right, down, fwd])
        x, y, z, w = Rotation.from_matrix(R).as_quat()
        means.append(pts)
        quats.append(np.tile([w, x, y, z], (len(pts), 1)))
        rgbs.append(img.reshape(-1, 3))
    m = np.concatenate(means).astype(np.float32)
    k = len(m)
    return SplatArrays(
        means=m,
        quats=np.concatenate(quats).astype(np.float32),
        log_scales=np.tile(np.log([0.6 * px, 0.6 * px, 0.05 * px]), (k, 1)).astype(np.float32),
        opacity_logits=np.full(k, logit(np.float32(0.98)), np.float32),
        sh0=rgb_to_sh0(np.concatenate(rgbs).astype(np.float32)),
    )


# ------------------------------------------------------------------------------ run

SV3D_SLOT = "sv3d"  # the slot of the model cache that holds the (large) SV3D between jobs


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generator_key(variant: str, device: torch.device) -> tuple:
    """The cache key of SV3D ``variant`` on ``device`` (fp16 on CUDA, fp32 on the CPU)."""
    return (variant, str(device), torch.float16 if device.type == "cuda" else torch.float32)


def load_generator(variant: str, device: torch.device, model_cache: ModelCache | None = None):
    """SV3D's parts, from ``model_cache`` when it holds them for this variant and device."""
    from ..guidance.sv3d import load_sv3d

    key = generator_key(variant, device)
    cache = model_cache if model_cache is not None else ModelCache()
    return cache.get(SV3D_SLOT, key, lambda: load_sv3d(variant, device=device, dtype=key[2]))


@dataclass
class Reconstruction:
    """What :func:`reconstruct_head` produces (the hook for compositions such as instax+stylize)."""

    model: BoundGaussianModel  # head frame
    orbit_frames: np.ndarray  # [T, H, W, 3] uint8
    template: TemplateFit
    metrics: dict[str, float]


def reconstruct_head(
    image: np.ndarray, cfg: InstaxPreset, *, seed: int = 0, reporter=None, model_cache: ModelCache | None = None
) -> Reconstruction:
    """Photo -> SV3D orbit -> fitted bound Gaussians (everything but the turntable).

    ``model_cache`` keeps SV3D warm between calls (see :mod:`backend.pipelines.cache`)."""
    from ..guidance.sv3d import SV3DSettings, generate_orbit

    reporter = reporter or NullReporter()
    device = _device()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    reporter.progress("models", 0, 1, f"loading {cfg.sv3d_variant}")
    parts = load_generator(cfg.sv3d_variant, device, model_cache)  # ModelMissingError names the download command
    reporter.progress("models", 1, 1, "")
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.progress("face", 0, 1, "detecting the face")
    face = analyse_face(image)
    photo_fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    inp, (x0, y0, side) = sv3d_input(image, photo_fit, cfg.sv3d_resolution, cfg.head_fill)
    ref_landmarks = (face.landmarks2d.astype(np.float64) - [x0, y0]) * (cfg.sv3d_resolution / side)
    reporter.progress("face", 1, 1, f"yaw {face.yaw_pitch_roll[0]:.0f} deg")
    timings["face_s"] = time.perf_counter() - t

    t = time.perf_counter()
    settings = SV3DSettings(
        variant=cfg.sv3d_variant,
        frames=cfg.frames,
        resolution=cfg.sv3d_resolution,
        steps=cfg.sv3d_steps,
        min_cfg=cfg.min_cfg,
        max_cfg=cfg.max_cfg,
        elevation_deg=cfg.elevation_deg,
    )
    video = generate_orbit(parts, inp, settings, seed=seed, reporter=reporter)
    timings["generate_s"] = time.perf_counter() - t
    direction = cfg.orbit_direction or 1
    cams = orbit_world_cameras(video.azimuth_deg, video.elevation_deg, cfg.sv3d_resolution, direction)
    reporter.preview(frames_as_splats(video.frames, cams), 0)  # the orbit, before the 3D fit
    mirrored = (
        orbit_world_cameras(video.azimuth_deg, video.elevation_deg, cfg.sv3d_resolution, -1)
        if cfg.orbit_direction == 0
        else None
    )

    model, fit, metrics = construct(
        video.frames,
        cams,
        ref_landmarks,
        cfg,
        reference_index=-1,
        seed=seed,
        reporter=reporter,
        device=device,
        mirrored_cameras=mirrored,
    )
    metrics.update({k: round(v, 3) for k, v in timings.items()})
    return Reconstruction(model, video.frames, fit, metrics)


def run(
    image: np.ndarray,
    *,
    preset: str = "default",
    seed: int = 0,
    options: dict | None = None,
    reporter=None,
    model_cache: ModelCache | None = None,
) -> InstaxResult:
    """Photo (HxWx3 uint8) -> Gaussian head via SV3D + bound-Gaussian construction (METHOD B).

    ``model_cache``: the worker's :class:`~backend.pipelines.cache.ModelCache` (None: a fresh one)."""
    cfg = _preset(preset, options)
    reporter = reporter or NullReporter()
    rec = reconstruct_head(image, cfg, seed=seed, reporter=reporter, model_cache=model_cache)
    t = time.perf_counter()
    turntable = render_turntable(
        rec.model,
        cfg.turntable_frames,
        cfg.turntable_res,
        elevation_deg=cfg.turntable_elevation_deg,
        device=rec.model.means.device,
        reporter=reporter,
    )
    rec.metrics["turntable_s"] = round(time.perf_counter() - t, 3)
    splats = rec.model.to_splats()
    splats.check_finite()
    return InstaxResult(splats=splats, turntable=turntable, metrics=rec.metrics, orbit_frames=list(rec.orbit_frames))
