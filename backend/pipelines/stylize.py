"""SAS: one photo + a style prompt -> a stylised Gaussian head (METHOD A).

    photo -> face (MediaPipe: 478 landmarks; insightface: the 512-d ArcFace identity)
          -> head template fitted to the landmarks; the landmarks lifted onto it (head frame)
          -> 10k Gaussians on the template (METHOD A.1: opacity 0.2, scale 0.02 head units,
             grey), or the photo pipeline's fitted head (``init="photo"``), or Instax3D's
             reconstruction (the ``instax+stylize`` composition, :func:`run_instax`)
          -> style set: 20 SD1.5 images of the prompt -> latent statistics (A.4, Eq. 13; cached)
          -> the training loop (ARCHITECTURE "The training loop"), per step:
               a random view around the head, rendered            (loop)
               SAS on it: SD1.5 + IP-Adapter-FaceID + landmark ControlNet, x0 mapped onto the
                 style statistics, ½ w(t) ||z - sg(z'_m)||²        (A.4, Eq. 8-14; weight 1.0)
               MVDream SDS on 4 views of its own, 90 deg apart     (A.5, Eq. 15; weight 0.05)
               surface-guided densification every 100 steps        (A.3, Eq. 4-7)
          -> head.ply + a turntable

Presets (:data:`PRESETS`): ``paper`` (every value from METHOD A: 3000 steps, 512 px SAS with
the SD VAE, CFG 50, MVDream at 256 px with CFG 10), ``fast`` = ``default`` (ours: 600 steps,
384 px SAS, TAESD encoding for both terms, 8 style images, densify every 100 from step 100), ``test``
(tiny models on a CPU: 64 px, a dozen steps).

How ``fast`` compares with ``paper``. Per step it encodes ~1.8x fewer latent pixels (384² vs
512²) for SAS, and encodes both terms' renders with TAESD instead of the SD VAE (~9x fewer
encoder FLOPs, forward and backward); it runs 5x fewer steps and a style set of 8 images. The
schedule (t ~ U(0.02, 0.98) for the first third, then U(0.02, 0.5)) and the densification
cadence keep the paper's proportions. Counted at full size (``bench/bench_stylize.py
--count-flops``, bench/results/stylize_flops_cpu.txt): ``paper`` 7.60 TFLOP per iteration
(SAS 4.06, MVDream 3.55; the two VAE encoder passes 4.33 of it), 23,351 TFLOP per run with its
style set; ``fast`` 2.83 TFLOP per iteration, 1,822 TFLOP per run (12.8x less). Expected
quality costs: TAESD smooths fine detail and its latents are close to, not equal to, the SD
VAE's, so the SDS/SAS gradients through it differ; 600 steps leave the style less settled on
the back of the head; SD1.5 at 384 px is below its 512 px training size. No weights were
available to measure the quality gap.

Options (``options`` dict; the server puts the job's style prompt in ``options["style"]``):

- ``style``: the prompt (default :data:`DEFAULT_STYLE`);
- ``init``: ``"template"`` (METHOD A.1) or ``"photo"`` (start from the photo pipeline's head);
- ``identity``: ``True`` (IP-Adapter-FaceID on the ArcFace embedding) or ``False`` (text
  only: no insightface, no adapter);
- ``mvdream``: ``False`` drops the MVDream term (ablation);
- ``encoder``: ``"vae"`` or ``"taesd"``: what encodes the renders for both terms (SAS and
  MVDream: SD2.1 and SD1.5 share one latent space); ``steps``: override the preset's step count;
- any other :class:`StylizePreset` field by name.

Anything else, or a value out of range, raises :class:`InvalidOptionError`; an unknown preset
:class:`UnknownPresetError`. Models are checked first (:func:`needed_models`): a missing one
raises :class:`ModelMissingError` naming ``python -m backend models download`` before any work.
Loaded models stay warm in the worker between jobs (:data:`_MODELS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from .. import models
from ..errors import InvalidOptionError, UnknownPresetError
from ..face import analyse_face
from ..gaussians.cameras import RandomViewSampler
from ..gaussians.loop import LoopConfig, optimise, render_model
from ..gaussians.model import GaussianModel
from ..gaussians.strategies import make_strategy
from ..guidance.diffusion import TimestepSchedule
from ..prior.fit import fit_head
from ..prior.lift import lift_landmarks
from ..prior.sample import INIT_OPACITY, INIT_POINTS, INIT_SCALE, init_gaussians
from . import NullReporter, RunResult

DEFAULT_STYLE = "a 3D animated cartoon character portrait, Pixar style"
SAS_WEIGHT = 1.0  # METHOD A.4: SAS weight 1.0
MVDREAM_WEIGHT = 0.05  # METHOD A.5 (the same value as backend.guidance.mvdream.MVDREAM_WEIGHT)


@dataclass(frozen=True)
class StylizePreset:
    # ---- A.1 representation and initialisation
    init: str = "template"  # "template" (A.1) | "photo" (ours: the photo pipeline's fitted head)
    n_points: int = INIT_POINTS  # A.1: N = 10,000
    init_opacity: float = INIT_OPACITY  # A.1: 0.2
    init_scale: float = INIT_SCALE  # A.1: 0.02 head units
    photo_preset: str = "default"  # init="photo": backend.pipelines.photo.PRESETS
    instax_preset: str = "paper"  # instax+stylize: backend.pipelines.instax.PRESETS
    # ---- A.2 optimiser and schedule
    steps: int = 3000  # A.2: 3000 iterations
    lr_preset: str = "paper"  # A.2: GaussianModel LR_PRESETS["paper"]
    # ---- A.3 surface-guided densification (strategies.PRESETS["sas_paper"]; stop = steps)
    refine_every: int = 100  # A.2: densify every 100 steps
    refine_start_iter: int = 500  # not in the paper: gsplat / 3DGS default
    # ---- views of the loop (ours; threestudio-like ranges around a 0.23 m head)
    render_res: int = 512  # px of the SAS view (A.4: SD1.5 at 512)
    radius_range: tuple[float, float] = (0.65, 0.85)  # metres
    elevation_range_deg: tuple[float, float] = (-10.0, 30.0)
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
    fov_range_deg: tuple[float, float] = (28.0, 34.0)
    # ---- A.4 SAS loss
    identity: bool = True  # IP-Adapter-FaceID on the ArcFace embedding; False = text only
    encoder: str = "vae"  # "vae" (SD VAE) | "taesd" (ours, speed): the render encoder of both terms
    sas_guidance_scale: float = 50.0  # A.4: CFG 50
    sas_resolution: int = 512
    control_scale: float = 1.0  # A.4: ControlNet scale 1.0
    ip_adapter_scale: float = 1.0
    schedule_switch: float = 1 / 3  # A.4: U(0.02, 0.98) for the first 1000 of 3000 steps, then U(0.02, 0.5)
    style_images: int = 20  # A.4: 20 images of the style prompt
    style_steps: int = 20  # A.4: 20 sampling steps
    style_guidance_scale: float = 7.5  # A.4: CFG 7.5
    style_resolution: int = 512
    # ---- A.5 MVDream
    mvdream: bool = True
    mvdream_guidance_scale: float = 10.0  # A.5: CFG 10
    mvdream_resolution: int = 256  # A.5: 256 px
    # ---- output
    preview_every: int = 100
    turntable_frames: int = 48
    turntable_res: int = 512
    turntable_elevation_deg: float = 5.0


PRESETS: dict[str, StylizePreset] = {
    # every value from METHOD A
    "paper": StylizePreset(),
    # ours: ~5x fewer steps, 384 px SAS encoded with TAESD, a smaller style set; see the module docstring
    "fast": StylizePreset(
        steps=600,
        render_res=384,
        sas_resolution=384,
        encoder="taesd",
        refine_start_iter=100,
        style_images=8,
        style_resolution=384,
        preview_every=25,
        turntable_frames=24,
        turntable_res=256,
        instax_preset="fast",
        photo_preset="default",
    ),
    # tests: tiny models on a CPU
    "test": StylizePreset(
        n_points=400,
        steps=12,
        render_res=64,
        sas_resolution=64,
        refine_every=5,
        refine_start_iter=0,
        style_images=2,
        style_steps=2,
        style_resolution=64,
        mvdream_resolution=64,
        preview_every=4,
        turntable_frames=3,
        turntable_res=32,
        photo_preset="preview",
        instax_preset="test",
    ),
}
PRESETS["default"] = PRESETS["fast"]

_CHOICES = {"init": ("template", "photo"), "encoder": ("vae", "taesd")}


def settings(preset: str, options: dict | None) -> tuple[StylizePreset, str]:
    """(the preset with the options applied, the style prompt); typed errors for bad input."""
    if preset not in PRESETS:
        raise UnknownPresetError(
            f"The stylize pipeline has no preset {preset!r}.", hint=f"Choose one of: {', '.join(PRESETS)}."
        )
    options = dict(options or {})
    style = str(options.pop("style", "") or DEFAULT_STYLE).strip()
    known = {f.name: f for f in fields(StylizePreset)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidOptionError(
            f"The stylize pipeline has no option {', '.join(map(repr, unknown))}.",
            hint="Options: style, init, identity, mvdream, encoder, steps (or a preset field).",
        )
    cfg = replace(PRESETS[preset], **options)
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise InvalidOptionError(f"Option {name}={getattr(cfg, name)!r} is not one of {', '.join(allowed)}.")
    for name in ("identity", "mvdream"):
        if not isinstance(getattr(cfg, name), bool):
            raise InvalidOptionError(f"Option {name} must be true or false, not {getattr(cfg, name)!r}.")
    if not isinstance(cfg.steps, int) or isinstance(cfg.steps, bool) or cfg.steps < 1:
        raise InvalidOptionError(f"Option steps must be a positive whole number, not {cfg.steps!r}.")
    return cfg, style


def needed_models(cfg: StylizePreset) -> list[str]:
    """The registry names this configuration loads (text-only needs no adapter or insightface)."""
    names = ["sd15", "controlnet_face"]
    if cfg.identity:
        names += ["ip_adapter_faceid", "buffalo_l"]
    if cfg.encoder == "taesd":
        names.append("taesd")
    if cfg.mvdream:
        names.append("mvdream")
    return names


# ------------------------------------------------------------------------------ models


@dataclass
class StylizeModels:
    """The networks the two terms use (loaded by :func:`load_models`, or built by the bench)."""

    sd: Any  # backend.models.SD15 (IP-Adapter-FaceID loaded into its UNet when identity is on)
    controlnet: Any
    taesd: Any = None
    mvdream_unet: Any = None  # backend.guidance.mvdream.MultiViewUNet
    mvdream_parts: Any = None  # backend.models.MVDreamParts (text encoder, tokenizer, VAE, scheduler)
    key: str = ""  # identifies the weights (style-set cache key)


_MODELS: dict[str, tuple[tuple, Any]] = {}  # slot -> (key, model): warm between jobs, one per slot


def _cached(slot: str, key: tuple, build: Callable[[], Any]) -> Any:
    held = _MODELS.get(slot)
    if held is None or held[0] != key:
        _MODELS.pop(slot, None)  # free the old one before loading its replacement
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _MODELS[slot] = (key, build())
    return _MODELS[slot][1]


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """fp16 on CUDA, fp32 on the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def load_models(cfg: StylizePreset, device: torch.device, dtype: torch.dtype) -> StylizeModels:
    """Load (or reuse) what ``cfg`` needs through backend.models' loaders."""
    dev = str(device)
    sd_path = models.model_path("sd15")

    def sd15():
        sd = models.load_sd15(sd_path, dtype=dtype, device=dev)
        if cfg.identity:
            models.load_ip_adapter_faceid(sd.unet, scale=cfg.ip_adapter_scale)  # in the UNet's device and dtype
        return sd

    sd = _cached("sd15", (str(sd_path), cfg.identity, dev, dtype), sd15)
    cn_path = models.model_path("controlnet_face")
    controlnet = _cached(
        "controlnet", (str(cn_path), dev, dtype), lambda: models.load_controlnet(cn_path, dtype=dtype, device=dev)
    )
    taesd = None
    if cfg.encoder == "taesd":
        tpath = models.model_path("taesd")
        taesd = _cached("taesd", (str(tpath), dev, dtype), lambda: models.load_taesd(tpath, dtype=dtype, device=dev))
    mv_unet = mv_parts = None
    if cfg.mvdream:
        from ..guidance.mvdream import build_multiview_unet

        mpath = models.model_path("mvdream")

        def mvdream():
            parts = models.load_mvdream(mpath, dtype=dtype, device=dev)
            unet = build_multiview_unet(parts, device=device, dtype=dtype)
            parts.unet_state_dict = {}  # the UNet holds the tensors now
            return unet, parts

        mv_unet, mv_parts = _cached("mvdream", (str(mpath), dev, dtype), mvdream)
    key = f"{sd_path}|{dtype}"  # the style set is text-only (adapter off), so identity does not change it
    return StylizeModels(sd, controlnet, taesd, mv_unet, mv_parts, key)


# ------------------------------------------------------------------------------- terms


def schedule(cfg: StylizePreset) -> TimestepSchedule:
    """A.4's timestep schedule, the switch at the same fraction of the run as the paper's."""
    return TimestepSchedule(switch_step=max(1, round(cfg.steps * cfg.schedule_switch)))


def style_statistics(m: StylizeModels, cfg: StylizePreset, prompt: str, *, seed: int, reporter=None):
    """The style set's latent statistics (A.4, Eq. 13), cached beside the models."""
    from ..guidance.style_stats import style_stats

    reporter = reporter or NullReporter()
    cache_dir = models.models_root() / ".cache" / "style_stats"

    def progress(done: int, total: int) -> None:
        reporter.progress("style", done, total, f"style set: {cfg.style_images} images of the prompt")

    return style_stats(
        m.sd,
        prompt,
        seed=seed,
        cache_dir=cache_dir,
        model_key=m.key,
        n=cfg.style_images,
        steps=cfg.style_steps,
        guidance_scale=cfg.style_guidance_scale,
        resolution=cfg.style_resolution,
        progress=progress,
    )


def sas_term(
    m: StylizeModels,
    cfg: StylizePreset,
    prompt: str,
    style,
    *,
    identity: np.ndarray | None,
    landmarks: np.ndarray | None,
    device,
    dtype,
    seed: int,
):
    """The SAS term (A.4, Eq. 8-14) on the loop's view -> ``{"loss_sas": ...}``."""
    from ..guidance.sd_identity import SASSettings, SDIdentityGuidance

    s = SASSettings(
        guidance_scale=cfg.sas_guidance_scale,
        schedule=schedule(cfg),
        control_scale=cfg.control_scale,
        ip_adapter_scale=cfg.ip_adapter_scale,
        resolution=cfg.sas_resolution,
        encoder=cfg.encoder,
    )
    return SDIdentityGuidance(
        m.sd,
        prompt=prompt,
        style=style,
        controlnet=m.controlnet,
        identity=identity,
        landmarks=landmarks,
        taesd=m.taesd,
        settings=s,
        device=device,
        dtype=dtype,
        seed=seed,
    )


def mvdream_term(m: StylizeModels, cfg: StylizePreset, prompt: str, render_fn, *, device, dtype, seed: int):
    """The MVDream SDS term (A.5, Eq. 15) on 4 views of its own -> ``{"loss_mvdream": ...}``."""
    from ..guidance.mvdream import MVDreamGuidance, MVDreamSettings

    p = m.mvdream_parts
    s = MVDreamSettings(
        guidance_scale=cfg.mvdream_guidance_scale, resolution=cfg.mvdream_resolution, schedule=schedule(cfg)
    )
    # SD2.1 shares SD1.5's latent space, so TAESD stands in for MVDream's VAE as for SAS's
    vae = m.taesd if cfg.encoder == "taesd" else p.vae
    return MVDreamGuidance(
        m.mvdream_unet,
        p.text_encoder,
        p.tokenizer,
        vae,
        p.scheduler,
        prompt=prompt,
        render_fn=render_fn,
        settings=s,
        device=device,
        dtype=dtype,
        seed=seed,
    )


def view_sampler(cfg: StylizePreset, seed: int) -> RandomViewSampler:
    return RandomViewSampler(
        cfg.radius_range,
        cfg.elevation_range_deg,
        cfg.azimuth_range_deg,
        cfg.fov_range_deg,
        cfg.render_res,
        cfg.render_res,
        seed=seed,
    )


def make_densifier(cfg: StylizePreset):
    """strategies.PRESETS["sas_paper"] (A.2-A.3), its cadence scaled to this run's length."""
    return make_strategy(
        "sas_paper",
        refine_every=cfg.refine_every,
        refine_start_iter=cfg.refine_start_iter,
        refine_stop_iter=cfg.steps,
        reset_every=max(cfg.steps, 1),
    )


# -------------------------------------------------------------------------- the face


@dataclass
class Face:
    """What the photo tells the guidance: landmarks on the head (head frame) and the identity."""

    landmarks: np.ndarray  # [478, 3] head frame, metres
    identity: np.ndarray | None  # [512] ArcFace (insightface normed_embedding) or None (text only)
    fit: Any  # backend.prior.HeadFit
    yaw_deg: float


def analyse(image: np.ndarray, cfg: StylizePreset, reporter, face=None, fit=None) -> Face:
    """Landmarks (MediaPipe, shipped) lifted onto the fitted template; ArcFace identity (insightface)."""
    reporter.progress("face", 0, 1, "detecting the face")
    face = face if face is not None else analyse_face(image)
    if fit is None:
        fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    landmarks = lift_landmarks(fit, face.landmarks2d, face.landmarks3d)
    embedding = None
    if cfg.identity:
        from ..face.identity import analyse_identity

        embedding = analyse_identity(image, backend="insightface").embedding
    reporter.progress(
        "face",
        1,
        1,
        f"yaw {face.yaw_pitch_roll[0]:.0f} deg" + (", identity embedded" if cfg.identity else ", text only"),
    )
    return Face(landmarks, embedding, fit, float(face.yaw_pitch_roll[0]))


def template_splats(fit, cfg: StylizePreset, seed: int):
    """METHOD A.1: N points on the fitted template, opacity 0.2, scale 0.02 head units, grey."""
    return init_gaussians(
        fit.mesh(), n=cfg.n_points, opacity=cfg.init_opacity, scale=cfg.init_scale, rng=np.random.default_rng(seed)
    )


# ------------------------------------------------------------------------------- run


def stylize(
    model: GaussianModel,
    face: Face,
    m: StylizeModels,
    cfg: StylizePreset,
    prompt: str,
    *,
    seed: int,
    reporter,
    device,
    dtype,
) -> dict[str, float]:
    """The style set, then the SAS (+ MVDream) loop on ``model`` in place; returns metrics."""
    t = time.perf_counter()
    style = style_statistics(m, cfg, prompt, seed=seed, reporter=reporter)
    style_s = time.perf_counter() - t
    bg = torch.ones(3, device=device)
    terms = [
        sas_term(
            m,
            cfg,
            prompt,
            style,
            identity=face.identity,
            landmarks=face.landmarks,
            device=device,
            dtype=dtype,
            seed=seed,
        )
    ]
    if cfg.mvdream:
        terms.append(
            mvdream_term(
                m,
                cfg,
                prompt,
                lambda cams: render_model(model, cams, background=bg),
                device=device,
                dtype=dtype,
                seed=seed,
            )
        )
    sampler = view_sampler(cfg, seed)
    loop = LoopConfig(
        steps=cfg.steps,
        weights={"loss_sas": SAS_WEIGHT, "loss_mvdream": MVDREAM_WEIGHT},
        preview_every=cfg.preview_every,
        background=(1.0, 1.0, 1.0),
        stage="stylize",
    )
    sums: dict[str, float] = {}

    def on_step(step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v

    reporter.preview(model.to_splats(), 0)
    t = time.perf_counter()
    last = optimise(
        model,
        loop,
        lambda step: sampler.sample(step).to(device),
        terms,
        strategy=make_densifier(cfg),
        reporter=reporter,
        on_step=on_step,
    )
    optimise_s = time.perf_counter() - t
    metrics = {k: float(v) for k, v in last.items()}
    metrics.update({f"mean_{k}": v / cfg.steps for k, v in sums.items()})
    metrics.update(
        {
            "style_s": round(style_s, 3),
            "optimise_s": round(optimise_s, 3),
            "s_per_step": round(optimise_s / cfg.steps, 4),
            "steps": cfg.steps,
        }
    )
    return metrics


def render_turntable(model: GaussianModel, cfg: StylizePreset, reporter) -> list[np.ndarray]:
    from ..gaussians.cameras import orbit_cameras

    device = model.means.device
    cams = orbit_cameras(
        cfg.turntable_frames,
        radius=0.75,
        elevation_deg=cfg.turntable_elevation_deg,
        fov_deg=30,
        width=cfg.turntable_res,
        height=cfg.turntable_res,
    ).to(device)
    frames = []
    with torch.no_grad():
        for i in range(len(cams)):
            rgb = render_model(model, cams[i], background=torch.ones(3, device=device)).rgb[0]
            frames.append((rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
            reporter.progress("turntable", i + 1, len(cams), "")
    return frames


def _run(image: np.ndarray, pipeline: str, preset: str, seed: int, options: dict | None, reporter) -> RunResult:
    cfg, prompt = settings(preset, options)
    reporter = reporter or NullReporter()
    needed = needed_models(cfg) + (["sv3d_u"] if pipeline == "instax+stylize" else [])
    models.ensure_models(pipeline, names=needed)  # one clear error naming `models download`, before any work
    torch.manual_seed(seed)
    device, dtype = device_and_dtype()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    reporter.progress("models", 0, 1, "loading " + ", ".join(needed))
    m = load_models(cfg, device, dtype)
    reporter.progress("models", 1, 1, "")
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    extra: dict[str, float] = {}
    if pipeline == "instax+stylize":
        from . import instax

        rec = instax.reconstruct_head(image, instax.PRESETS[cfg.instax_preset], seed=seed, reporter=reporter)
        splats = rec.model.to_splats()
        extra = {f"instax_{k}": v for k, v in rec.metrics.items()}
        face = analyse(image, cfg, reporter)
    elif cfg.init == "photo":
        from . import photo

        head = photo.fit_photo_head(image, photo.PRESETS[cfg.photo_preset], seed=seed, reporter=reporter)
        splats = head.model.to_splats()
        extra = {f"photo_{k}": v for k, v in head.metrics.items()}
        face = analyse(image, cfg, reporter, face=head.face, fit=head.fit)
    else:
        face = analyse(image, cfg, reporter)
        reporter.progress("init", 0, 1, "placing Gaussians on the head template")
        splats = template_splats(face.fit, cfg, seed)
        reporter.progress("init", 1, 1, f"{len(splats)} Gaussians")
    model = GaussianModel.from_splats(splats, cfg.lr_preset, total_steps=cfg.steps, device=device)
    timings["init_s"] = time.perf_counter() - t

    metrics = stylize(model, face, m, cfg, prompt, seed=seed, reporter=reporter, device=device, dtype=dtype)
    t = time.perf_counter()
    frames = render_turntable(model, cfg, reporter)
    timings["turntable_s"] = time.perf_counter() - t
    metrics.update(extra)
    metrics.update({k: round(v, 3) for k, v in timings.items()})
    metrics.update(
        {
            "n_splats": float(len(model)),
            "n_init": float(len(splats)),
            "style": prompt,
            "identity": cfg.identity,
            "mvdream": cfg.mvdream,
            "encoder": cfg.encoder,
            "template_reprojection_px": float(face.fit.reprojection_error_px),
        }
    )
    result = model.to_splats()
    result.check_finite()
    return RunResult(splats=result, turntable=frames, metrics=metrics)


def run(
    image: np.ndarray, *, preset: str = "default", seed: int = 0, options: dict | None = None, reporter=None
) -> RunResult:
    """Photo (HxWx3 uint8) + ``options["style"]`` -> stylised Gaussian head. See the module docstring."""
    return _run(image, "stylize", preset, seed, options, reporter)


def run_instax(
    image: np.ndarray, *, preset: str = "default", seed: int = 0, options: dict | None = None, reporter=None
) -> RunResult:
    """``instax+stylize``: Instax3D's reconstruction (backend.pipelines.instax.reconstruct_head)
    as the start, then the same SAS (+ MVDream) loop. ``options["init"]`` is ignored."""
    return _run(image, "instax+stylize", preset, seed, options, reporter)
