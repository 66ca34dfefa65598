"""Stylize (SAS + MVDream, METHOD A) cost per iteration, projected run times, peak VRAM.

    python bench/bench_stylize.py                                     # tiny models, CPU smoke (preset "test")
    python bench/bench_stylize.py --device cuda --full-size           # real sizes, presets paper,fast
    python bench/bench_stylize.py --device cuda --full-size --presets paper --measure-steps 30

Per preset it builds the pipeline's own pieces (``backend.pipelines.stylize``: the template
init with the preset's N, the random view sampler, the SAS term, the MVDream term, the style
set) and times ``--measure-steps`` iterations after ``--warmup`` ones, split as:

- ``render``: the loop's view (forward only);
- ``sas``: the SAS term forward and backward: VAE/TAESD encode, noise, ControlNet + UNet
  with CFG, whitening-colouring, loss, backward through the encoder and the renderer;
- ``mvdream``: the MVDream term forward and backward (it renders its own 4 views);
- ``adam``: the optimiser step.

Then ``projected`` = (sum of the medians) x the preset's steps + the style-set time. The
cloud grows with densification during a real run, so this is a lower bound. ``style set``
is the generation of the preset's style set (20 images x 20 steps at 512 px for ``paper``),
timed on a fresh cache.

``--full-size`` builds every network at its published size with random weights, in memory
(nothing is read from disk; compute does not depend on the weights), fp16 on CUDA:
SD1.5's ``UNet2DConditionModel`` (cross-attention 768) carrying an IP-Adapter-FaceID of the
real shapes (rank-128 LoRA, 512 -> 4 x 768 projection), ``ControlNetModel.from_unet``, the SD
VAE (128/256/512/512), a CLIP ViT-L text encoder (768, 12 layers), TAESD (AutoencoderTiny
defaults), and MVDream's ``FULL_SIZE_CONFIG`` UNet with an SD2.1 text encoder (1024, 23
layers: SD2.1 uses the penultimate of 24). The tokenizer is the tiny in-code one
(``backend.testing``) at every size: only compute matters, and the box needs no downloads.
Without ``--full-size`` the tiny test models are written to a temporary folder and loaded
through the registry, as the pipeline does.

``--count-flops`` runs one iteration per preset under ``torch.utils.flop_counter`` instead of
timing (it needs no GPU: full size runs on a CPU in fp32) and prints TFLOP per iteration by
network, forward and backward, plus the style set's cost (one CFG UNet step x images x steps),
and the total per preset. A stand-in style statistic (mean 0, identity covariance) replaces the
style set there: the map's cost does not depend on its values. The counter sees matmuls and
convolutions only (the rasterizer's own arithmetic is not counted).

Speed knobs (PERFORMANCE.md's levers; each is a separate run, see ``bench/sweep_stylize.sh``):
``--dtype fp16|bf16|fp32`` (default fp16 on CUDA, fp32 on a CPU); ``--channels-last`` (every
convolutional network in NHWC); ``--compile default|max-autotune|reduce-overhead``
(``nn.Module.compile`` in place on the SD UNet, the ControlNet and the MVDream UNet, which run
without gradients; ``reduce-overhead`` adds CUDA graphs). The encoders are left eager: their
backward runs through the renders. "Fewer VAE passes" is ``--option encoder=taesd``. Under
``--compile`` the style set's time includes the compilation (it is the first work the networks
do); the per-iteration figure is measured after the warm-up steps and does not.

``--option KEY=VALUE`` (repeatable) applies a pipeline option to every preset, exactly as a
job's options do (``stylize.settings``), e.g. ``--option encoder=vae --option mvdream=false``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from backend import models
from backend.face import analyse_face
from backend.gaussians.loop import render_model
from backend.gaussians.model import GaussianModel
from backend.image_io import load_image
from backend.pipelines import stylize
from backend.prior import fit_head
from backend.prior.lift import lift_landmarks

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a 3D animated cartoon character portrait, Pixar style"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the networks


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    from backend.testing import save_tiny_clip_tokenizer

    return CLIPTokenizer.from_pretrained(save_tiny_clip_tokenizer(folder / "tokenizer"))


def _clip_text(vocab: int, hidden: int, layers: int, heads: int, act: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    return CLIPTextModel(cfg)


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def _ddim():
    from diffusers import DDIMScheduler

    from backend.testing import SD15_SCHEDULE

    return DDIMScheduler(
        **SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )


def full_size_models(device: torch.device, dtype: torch.dtype, tmp: Path) -> stylize.StylizeModels:
    """Every network at its published size, random weights, in memory (see the module docstring)."""
    from diffusers import AutoencoderTiny, ControlNetModel, UNet2DConditionModel

    from backend.guidance.mvdream import FULL_SIZE_CONFIG, MultiViewUNet
    from backend.testing import tiny_ip_adapter_state_dict

    tok = _tokenizer(tmp)
    vocab = len(tok)
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD1.5 config (diffusers defaults)
        controlnet = ControlNetModel.from_unet(unet)
        vae, taesd = _sd_vae(), AutoencoderTiny()
        text = _clip_text(vocab, 768, 12, 12, "quick_gelu")  # CLIP ViT-L/14 text tower
        mv_unet = MultiViewUNet.from_config(FULL_SIZE_CONFIG)
        mv_text = _clip_text(vocab, 1024, 23, 16, "gelu")  # OpenCLIP ViT-H text tower up to its penultimate layer
        mv_vae = _sd_vae()
    models.apply_ip_adapter_faceid(unet, tiny_ip_adapter_state_dict(unet, rank=128))  # rank 128, 512 -> 4 x 768
    nets = (unet, controlnet, vae, taesd, text, mv_unet, mv_text, mv_vae)
    for net in nets:
        net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    sd = models.SD15(unet, vae, text, tok, _ddim(), Path("(random weights)"))
    parts = models.MVDreamParts(dict(FULL_SIZE_CONFIG), {}, mv_text, tok, mv_vae, _ddim(), Path("(random weights)"))
    n = {
        name: sum(p.numel() for p in net.parameters()) / 1e6
        for name, net in zip(
            ("sd_unet+faceid", "controlnet", "vae", "taesd", "clip_l", "mvdream_unet", "sd21_text", "sd21_vae"), nets
        )
    }
    print("parameters (M): " + ", ".join(f"{k} {v:.0f}" for k, v in n.items()))
    return stylize.StylizeModels(sd, controlnet, taesd, mv_unet, parts, key=f"bench-random-{time.time_ns()}")


def tune(m: stylize.StylizeModels, args) -> list[str]:
    """Apply ``--channels-last`` and ``--compile`` to the networks; returns what was done."""
    done = []
    convs = [m.sd.unet, m.controlnet, m.sd.vae, m.taesd, m.mvdream_unet, getattr(m.mvdream_parts, "vae", None)]
    if args.channels_last:
        for net in convs:
            if net is not None:
                net.to(memory_format=torch.channels_last)
        done.append("channels-last")
    if args.compile:
        for net in (m.sd.unet, m.controlnet, m.mvdream_unet):
            if net is not None:
                net.compile(mode=args.compile)
        done.append(f"compile({args.compile}): SD UNet, ControlNet, MVDream UNet")
    return done


def tiny_models(
    cfg: stylize.StylizePreset, device: torch.device, dtype: torch.dtype, tmp: Path
) -> stylize.StylizeModels:
    """The tiny test models written as `models download` lays them out, loaded like the pipeline does."""
    from backend.testing import save_tiny_model_root

    os.environ[models.ENV_ROOT] = str(save_tiny_model_root(tmp / "models"))
    return stylize.load_models(replace(cfg, identity=True, mvdream=True, encoder="taesd"), device, dtype)


# ------------------------------------------------------------------------------ one preset


def face_of_demo_photo(identity_dim: int = 512) -> stylize.Face:
    """The demo photo's landmarks on its fitted template and a random unit 512-d vector for
    ArcFace. Where MediaPipe is not installed (a bare GPU box), 478 points on the front of the
    default template stand in for the landmarks: the control images cost the same."""
    rng = np.random.default_rng(0)
    identity = rng.normal(size=identity_dim).astype(np.float32)
    identity /= np.linalg.norm(identity)
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        from types import SimpleNamespace

        from backend.prior import build_head, sample_surface

        head = build_head()
        pts, _, _ = sample_surface(head, 4000, rng)
        front = pts[pts[:, 1] < -0.05][:478]
        print("mediapipe is not installed: landmarks are points on the template's face")
        return stylize.Face(front, identity, SimpleNamespace(mesh=lambda: head), 0.0)
    image = load_image(REPO / "examples" / "astronaut.jpg")
    face = analyse_face(image)
    fit = fit_head(face.landmarks2d, (image.shape[1], image.shape[0]), landmarks3d=face.landmarks3d)
    return stylize.Face(lift_landmarks(fit, face.landmarks2d, face.landmarks3d), identity, fit, 0.0)


def preset_settings(name: str, args) -> stylize.StylizePreset:
    """The preset with ``--option``s (and ``--no-mvdream``) applied through the pipeline's own parser."""
    opts = dict(args.option)
    if args.no_mvdream:
        opts["mvdream"] = False
    return stylize.settings(name, opts)[0]


def _top_level(counts: dict) -> dict[str, float]:
    """FlopCounterMode's per-module counts -> TFLOP per top-level network (forward + backward)."""
    out: dict[str, float] = {}
    for module, ops in counts.items():
        if module == "Global" or "." in module:
            continue
        out[module] = out.get(module, 0.0) + sum(ops.values()) / 1e12
    return out


def count_preset(name: str, m: stylize.StylizeModels, face: stylize.Face, args, device, dtype) -> None:
    """TFLOP of one iteration of ``name`` by term and network, and of its style set."""
    from torch.utils.flop_counter import FlopCounterMode

    from backend.guidance.style_stats import StyleStats, text_only

    cfg = preset_settings(name, args)
    style = StyleStats(
        torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64), cfg.style_images, PROMPT, "flops"
    )
    model = GaussianModel.from_splats(
        stylize.template_splats(face.fit, cfg, 0), cfg.lr_preset, total_steps=cfg.steps, device=device
    )
    bg = torch.ones(3, device=device)
    sas = stylize.sas_term(
        m, cfg, PROMPT, style, identity=face.identity, landmarks=face.landmarks, device=device, dtype=dtype, seed=0
    )
    terms = [("sas", lambda out, cams: stylize.SAS_WEIGHT * sas(out, cams, 0)["loss_sas"])]
    if cfg.mvdream:
        mv = stylize.mvdream_term(
            m, cfg, PROMPT, lambda c: render_model(model, c, background=bg), device=device, dtype=dtype, seed=0
        )
        terms.append(("mvdream", lambda out, cams: stylize.MVDREAM_WEIGHT * mv(out, cams, 0)["loss_mvdream"]))
    cams = stylize.view_sampler(cfg, 0).sample(0).to(device)
    per_term: dict[str, float] = {}
    for term, fn in terms:
        t = time.perf_counter()
        with FlopCounterMode(display=False) as fc:
            out = render_model(model, cams, background=bg)
            fn(out, cams).backward()
        per_term[term] = fc.get_total_flops() / 1e12
        nets = "  ".join(
            f"{k} {v:.3f}" for k, v in sorted(_top_level(fc.get_flop_counts()).items(), key=lambda kv: -kv[1])
        )
        print(f"[{name}] {term:8s} {per_term[term]:7.3f} TFLOP  ({nets})  [{time.perf_counter() - t:.0f} s here]")
    # the style set: images x steps CFG denoising steps of the plain SD1.5 UNet at the style resolution
    unet, r = m.sd.unet, cfg.style_resolution // 8
    text = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.no_grad(), text_only(unet, 1) as zero_embeds, FlopCounterMode(display=False) as fc:
        extra = {"added_cond_kwargs": {"image_embeds": zero_embeds}} if zero_embeds is not None else {}
        unet(torch.zeros(2, 4, r, r, device=device, dtype=dtype), 500, encoder_hidden_states=text, **extra)
    step_tf = fc.get_total_flops() / 1e12
    style_tf = step_tf * cfg.style_images * cfg.style_steps
    it = sum(per_term.values())
    print(
        f"[{name}] per iteration {it:.3f} TFLOP (SAS {cfg.sas_resolution}px/{cfg.encoder}, MVDream "
        f"{f'{cfg.mvdream_resolution}px' if cfg.mvdream else 'off'});  style set {cfg.style_images} x "
        f"{cfg.style_steps} x {step_tf:.3f} = {style_tf:.0f} TFLOP;  run {cfg.steps} steps: "
        f"{it * cfg.steps + style_tf:,.0f} TFLOP"
    )


def bench_preset(name: str, m: stylize.StylizeModels, face: stylize.Face, args, device, dtype) -> None:
    cfg = preset_settings(name, args)
    # style set: a fresh cache (PORTRAITSPLAT_MODELS points at a temporary folder)
    _sync(device)
    t = time.perf_counter()
    style = stylize.style_statistics(replace(m, key=f"{m.key}-{name}"), cfg, PROMPT, seed=0)
    _sync(device)
    style_s = time.perf_counter() - t

    model = GaussianModel.from_splats(
        stylize.template_splats(face.fit, cfg, 0), cfg.lr_preset, total_steps=cfg.steps, device=device
    )
    bg = torch.ones(3, device=device)
    sas = stylize.sas_term(
        m, cfg, PROMPT, style, identity=face.identity, landmarks=face.landmarks, device=device, dtype=dtype, seed=0
    )
    mv = None
    if cfg.mvdream:
        mv = stylize.mvdream_term(
            m, cfg, PROMPT, lambda c: render_model(model, c, background=bg), device=device, dtype=dtype, seed=0
        )
    sampler = stylize.view_sampler(cfg, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {"render": [], "sas": [], "mvdream": [], "adam": []}
    losses: dict[str, float] = {}
    for step in range(args.warmup + args.measure_steps):
        marks = [time.perf_counter()]

        def mark():
            _sync(device)
            marks.append(time.perf_counter())

        cams = sampler.sample(step).to(device)
        out = render_model(model, cams, background=bg)
        mark()
        loss = stylize.SAS_WEIGHT * sas(out, cams, step)["loss_sas"]
        loss.backward()
        losses["loss_sas"] = float(loss.detach())
        mark()
        if mv is not None:
            loss = stylize.MVDREAM_WEIGHT * mv(out, cams, step)["loss_mvdream"]
            loss.backward()
            losses["loss_mvdream"] = float(loss.detach())
        mark()
        model.step(step)
        mark()
        if step >= args.warmup:
            for key, a, b in zip(times, marks[:-1], marks[1:]):
                times[key].append(b - a)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = sum(med.values())
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "-"
    split = "  ".join(f"{k} {v * 1e3:7.1f} ms" for k, v in med.items())
    print(
        f"[{name}] N={len(model)} SAS {cfg.sas_resolution}px/{cfg.encoder}, MVDream "
        f"{f'{cfg.mvdream_resolution}px' if cfg.mvdream else 'off'}: {per_step:.3f} s/it  ({split})"
    )
    print(
        f"[{name}] style set ({cfg.style_images} images x {cfg.style_steps} steps @ {cfg.style_resolution}px): "
        f"{style_s:.1f} s;  projected {cfg.steps} steps + style set: {per_step * cfg.steps + style_s:.0f} s "
        f"({(per_step * cfg.steps + style_s) / 60:.1f} min);  peak VRAM {peak};  last losses "
        + ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
    )


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value); the value is read as JSON where it parses (true, 600), else kept as text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--full-size", action="store_true", help="published network sizes, random weights, in memory")
    ap.add_argument("--presets", default=None, help="comma-separated (default: paper,fast full size; test tiny)")
    ap.add_argument("--measure-steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-mvdream", action="store_true", help="time without the MVDream term")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=VALUE",
        help="a pipeline option for every preset (repeatable), e.g. encoder=vae",
    )
    ap.add_argument("--count-flops", action="store_true", help="count TFLOP per iteration instead of timing")
    ap.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="network dtype (default fp16 on CUDA, else fp32)"
    )
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for the convolutional networks")
    ap.add_argument(
        "--compile",
        choices=("default", "max-autotune", "reduce-overhead"),
        default=None,
        help="torch.compile the no-grad networks (reduce-overhead = CUDA graphs)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "-"
    print(
        f"device={device} dtype={dtype} torch={torch.__version__} gpu={gpu} "
        f"models={'full size, random weights' if args.full_size else 'tiny'}"
    )
    presets = (args.presets or ("paper,fast" if args.full_size else "test")).split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ[models.ENV_ROOT] = str(tmp / "models")  # the style-set cache goes here, fresh
        t = time.perf_counter()
        m = (
            full_size_models(device, dtype, tmp)
            if args.full_size
            else tiny_models(stylize.PRESETS[presets[0]], device, dtype, tmp)
        )
        _sync(device)
        print(f"models built/loaded in {time.perf_counter() - t:.1f} s; knobs: {', '.join(tune(m, args)) or 'none'}")
        face = face_of_demo_photo()
        for name in presets:
            (count_preset if args.count_flops else bench_preset)(name, m, face, args, device, dtype)


if __name__ == "__main__":
    main()
