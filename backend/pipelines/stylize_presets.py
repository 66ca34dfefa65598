"""The stylize pipeline's presets and options (METHOD A): :class:`StylizePreset`, :data:`PRESETS`,
:func:`settings` (a preset with a job's options applied, typed errors) and :func:`needed_models`.

``paper`` holds every value from METHOD A; ``fast`` (= ``default``) is ours; ``test`` runs tiny
models on a CPU. :mod:`backend.pipelines.stylize` re-exports these names.

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
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InvalidOptionError, UnknownPresetError
from ..prior.sample import INIT_OPACITY, INIT_POINTS, INIT_SCALE

DEFAULT_STYLE = "a 3D animated cartoon character portrait, Pixar style"


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
