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

Presets (:data:`PRESETS`, in :mod:`backend.pipelines.stylize_presets` with how they compare):
``paper`` (every value from METHOD A: 3000 steps, 512 px SAS with the SD VAE, CFG 50, MVDream at
256 px with CFG 10), ``fast`` = ``default`` (ours: 600 steps, 384 px SAS, TAESD encoding for both
terms, 8 style images, densify every 100 from step 100), ``test`` (tiny models on a CPU: 64 px, a
dozen steps).

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
Loaded models stay warm between jobs in the ``model_cache`` the worker passes in (a
:class:`~backend.pipelines.cache.ModelCache`: slots ``sd15``, ``controlnet``, ``taesd``,
``mvdream``, and instax's ``sv3d`` for ``instax+stylize``); without one, a call loads afresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import models
from ..face import analyse_face
from ..gaussians.cameras import RandomViewSampler
from ..gaussians.loop import LoopConfig, optimise, render_model
from ..gaussians.model import GaussianModel
from ..gaussians.strategies import make_strategy
from ..guidance.diffusion import TimestepSchedule
from ..prior.fit import fit_head
from ..prior.lift import lift_landmarks
from ..prior.sample import init_gaussians
from . import NullReporter, RunResult
from .cache import ModelCache
from .stylize_presets import DEFAULT_STYLE as DEFAULT_STYLE  # re-exported: stylize.PRESETS etc. keep working
from .stylize_presets import PRESETS as PRESETS
from .stylize_presets import StylizePreset, needed_models, settings
from .turntable import render_turntable

SAS_WEIGHT = 1.0  # METHOD A.4: SAS weight 1.0
MVDREAM_WEIGHT = 0.05  # METHOD A.5 (the same value as backend.guidance.mvdream.MVDREAM_WEIGHT)


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


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """fp16 on CUDA, fp32 on the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def load_models(
    cfg: StylizePreset, device: torch.device, dtype: torch.dtype, model_cache: ModelCache | None = None
) -> StylizeModels:
    """Load what ``cfg`` needs through backend.models' loaders, or reuse what ``model_cache``
    holds (one slot per network; None: a fresh cache, everything loads)."""
    cache = model_cache if model_cache is not None else ModelCache()
    dev = str(device)
    sd_path = models.model_path("sd15")

    def sd15():
        sd = models.load_sd15(sd_path, dtype=dtype, device=dev)
        if cfg.identity:
            models.load_ip_adapter_faceid(sd.unet, scale=cfg.ip_adapter_scale)  # in the UNet's device and dtype
        return sd

    sd = cache.get("sd15", (str(sd_path), cfg.identity, dev, dtype), sd15)
    cn_path = models.model_path("controlnet_face")
    controlnet = cache.get(
        "controlnet", (str(cn_path), dev, dtype), lambda: models.load_controlnet(cn_path, dtype=dtype, device=dev)
    )
    taesd = None
    if cfg.encoder == "taesd":
        tpath = models.model_path("taesd")
        taesd = cache.get("taesd", (str(tpath), dev, dtype), lambda: models.load_taesd(tpath, dtype=dtype, device=dev))
    mv_unet = mv_parts = None
    if cfg.mvdream:
        from ..guidance.mvdream import build_multiview_unet

        mpath = models.model_path("mvdream")

        def mvdream():
            parts = models.load_mvdream(mpath, dtype=dtype, device=dev)
            unet = build_multiview_unet(parts, device=device, dtype=dtype)
            parts.unet_state_dict = {}  # the UNet holds the tensors now
            return unet, parts

        mv_unet, mv_parts = cache.get("mvdream", (str(mpath), dev, dtype), mvdream)
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
    """strategies.PRESETS["sas_paper"] (A.2-A.3), its cadence scaled to this run's length.
    Its scale thresholds are in head units: run it with :func:`loop_config`'s ``scene_scale``."""
    return make_strategy(
        "sas_paper",
        refine_every=cfg.refine_every,
        refine_start_iter=cfg.refine_start_iter,
        refine_stop_iter=cfg.steps,
        reset_every=max(cfg.steps, 1),
    )


def head_scale(fit) -> float:
    """Metres per head unit: the fitted template's chin-to-crown height (METHOD A.1's reading
    of the paper's "head units"; ``backend.prior.sample.head_unit`` of ``fit.mesh()``). The
    initial scale 0.02 and the clone/split threshold 0.01 (A.3) are both in these units."""
    return float(fit.params.height)


def loop_config(cfg: StylizePreset, fit) -> LoopConfig:
    """The training loop's settings: A.4/A.5 weights, and the densifier's scene scale set to
    the head's height so its thresholds (A.3) read in the same units as the init (A.1)."""
    return LoopConfig(
        steps=cfg.steps,
        weights={"loss_sas": SAS_WEIGHT, "loss_mvdream": MVDREAM_WEIGHT},
        preview_every=cfg.preview_every,
        background=(1.0, 1.0, 1.0),
        stage="stylize",
        scene_scale=head_scale(fit),
    )


# -------------------------------------------------------------------------- the face


@dataclass
class Face:
    """What the photo tells the guidance: landmarks on the head (head frame) and the identity."""

    landmarks: np.ndarray  # [478, 3] head frame, metres
    identity: np.ndarray | None  # [512] ArcFace (insightface normed_embedding) or None (text only)
    fit: Any  # backend.prior.HeadFit
    yaw_deg: float


def analyse(image: np.ndarray, cfg: StylizePreset, reporter, face=None, fit=None, mesh=None) -> Face:
    """Landmarks (MediaPipe, shipped) lifted onto the fitted template (or ``mesh``, the surface the
    head was built on); ArcFace identity (insightface)."""
    reporter.progress("face", 0, 1, "detecting the face")
    face = face if face is not None else analyse_face(image)
    if fit is None:
        fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    landmarks = lift_landmarks(fit, face.landmarks2d, face.landmarks3d, mesh=mesh)
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
    loop = loop_config(cfg, face.fit)
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


def _run(
    image: np.ndarray,
    pipeline: str,
    preset: str,
    seed: int,
    options: dict | None,
    reporter,
    model_cache: ModelCache | None,
) -> RunResult:
    cfg, prompt = settings(preset, options)
    reporter = reporter or NullReporter()
    model_cache = model_cache if model_cache is not None else ModelCache()
    needed = needed_models(cfg) + (["sv3d_u"] if pipeline == "instax+stylize" else [])
    models.ensure_models(pipeline, names=needed)  # one clear error naming `models download`, before any work
    torch.manual_seed(seed)
    device, dtype = device_and_dtype()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    reporter.progress("models", 0, 1, "loading " + ", ".join(needed))
    m = load_models(cfg, device, dtype, model_cache)
    reporter.progress("models", 1, 1, "")
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    extra: dict[str, float] = {}
    if pipeline == "instax+stylize":
        from . import instax

        rec = instax.reconstruct_head(
            image, instax.PRESETS[cfg.instax_preset], seed=seed, reporter=reporter, model_cache=model_cache
        )
        splats = rec.model.to_splats()
        extra = {f"instax_{k}": v for k, v in rec.metrics.items()}
        face = analyse(image, cfg, reporter)
    elif cfg.init == "photo":
        from . import photo

        head = photo.fit_photo_head(image, photo.PRESETS[cfg.photo_preset], seed=seed, reporter=reporter)
        splats = head.model.to_splats()
        extra = {f"photo_{k}": v for k, v in head.metrics.items()}
        face = analyse(image, cfg, reporter, face=head.face, fit=head.fit, mesh=head.mesh)
    else:
        face = analyse(image, cfg, reporter)
        reporter.progress("init", 0, 1, "placing Gaussians on the head template")
        splats = template_splats(face.fit, cfg, seed)
        reporter.progress("init", 1, 1, f"{len(splats)} Gaussians")
    model = GaussianModel.from_splats(splats, cfg.lr_preset, total_steps=cfg.steps, device=device)
    timings["init_s"] = time.perf_counter() - t

    metrics = stylize(model, face, m, cfg, prompt, seed=seed, reporter=reporter, device=device, dtype=dtype)
    t = time.perf_counter()
    frames = render_turntable(
        model, cfg.turntable_frames, cfg.turntable_res, elevation_deg=cfg.turntable_elevation_deg, reporter=reporter
    )
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
    image: np.ndarray,
    *,
    preset: str = "default",
    seed: int = 0,
    options: dict | None = None,
    reporter=None,
    model_cache: ModelCache | None = None,
) -> RunResult:
    """Photo (HxWx3 uint8) + ``options["style"]`` -> stylised Gaussian head. See the module docstring."""
    return _run(image, "stylize", preset, seed, options, reporter, model_cache)


def run_instax(
    image: np.ndarray,
    *,
    preset: str = "default",
    seed: int = 0,
    options: dict | None = None,
    reporter=None,
    model_cache: ModelCache | None = None,
) -> RunResult:
    """``instax+stylize``: Instax3D's reconstruction (backend.pipelines.instax.reconstruct_head)
    as the start, then the same SAS (+ MVDream) loop. ``options["init"]`` is ignored."""
    return _run(image, "instax+stylize", preset, seed, options, reporter, model_cache)
