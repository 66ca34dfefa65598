"""Instax3D timings: reconstruction step time per preset, SV3D generation, peak memory.

    python bench/bench_instax.py                                   # CPU: reconstruction, fast preset
    python bench/bench_instax.py --presets fast,default,paper --measure-steps 50
    python bench/bench_instax.py --device cuda --full-size         # + SV3D at 576 px, 50 steps
    python bench/bench_instax.py --device cuda --full-size --e2e   # + the whole pipeline on the demo photo

Reconstruction: a known head (the template, decimated as the preset says, 4 Gaussians per
triangle) is rendered from SV3D's 21-view orbit at the preset's ``fit_res``, then
``backend.pipelines.instax.reconstruct`` fits it for ``--measure-steps`` steps (or all of
the preset's steps with ``--full-run``). Printed: Gaussians, ms per step, the projected time
of the preset's full run, peak VRAM. Densification grows the cloud during a full run, so
the projection is a lower bound.

SV3D (``--full-size``): the diffusers blocks at SV3D's published sizes (SVD-shaped
spatio-temporal UNet, 320/640/1280/1280 channels, 1024-d context, 256-d vector for sv3d_u;
the temporal-decoder VAE; a ViT-H/14 CLIP vision tower), random weights, fp16 on CUDA;
compute does not depend on the weights. Without ``--full-size`` the tiny test model is used.
``--e2e`` runs ``instax.run`` on examples/astronaut.jpg with that generator (random frames:
the template is fitted to the reference view only) and prints the stage timings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from backend.gaussians.binding import bind, decimate
from backend.gaussians.cameras import orbit_cameras
from backend.gaussians.loop import render_model
from backend.pipelines import ModelCache, instax

REPO = Path(__file__).resolve().parent.parent


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> str:
    if torch.device(device).type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def synthetic_frames(cfg, device):
    """21 orbit renders of a template-bound head at cfg.fit_res (uint8) and their cameras."""
    from backend.prior.template import build_head

    head = build_head()
    v, f = (
        (head.vertices, head.faces) if not cfg.target_faces else decimate(head.vertices, head.faces, cfg.target_faces)
    )
    gt = bind(v, f, rng=0, opacity=0.9, device=device)
    with torch.no_grad():
        p = gt.means
        gt.params["sh0"][:, 0, 0] = torch.sin(40 * p[:, 2]) * 1.5
        gt.params["sh0"][:, 0, 1] = torch.cos(30 * p[:, 0]) * 1.5
    cams = orbit_cameras(
        21,
        radius=0.65,
        elevation_deg=10,
        fov_deg=33.8,
        width=cfg.fit_res,
        height=cfg.fit_res,
        start_azimuth_deg=360 / 21,
    ).to(device)
    with torch.no_grad():
        rgb = torch.cat([render_model(gt, cams[i], background=torch.ones(3, device=device)).rgb for i in range(21)])
    return (rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8), cams.to("cpu"), head


def bench_reconstruction(name: str, args) -> None:
    cfg = instax.PRESETS[name]
    frames, cams, head = synthetic_frames(cfg, args.device)
    steps = cfg.steps if args.full_run else min(args.measure_steps, cfg.steps)
    run_cfg = replace(cfg, steps=steps, preview_every=0)
    # one short warm-up (allocator, kernels), then the timed run
    instax.reconstruct(frames, cams, head.vertices, head.faces, replace(run_cfg, steps=2), device=args.device)
    _sync(args.device)
    _peak_reset(args.device)
    t0 = time.perf_counter()
    model, metrics = instax.reconstruct(frames, cams, head.vertices, head.faces, run_cfg, device=args.device)
    _sync(args.device)
    wall = time.perf_counter() - t0
    per_step = wall / steps
    print(
        f"reconstruct {name:>8s}: {int(metrics['n_triangles']):>6d} triangles, {len(model):>6d} splats at the end, "
        f"{cfg.fit_res}px, {steps} steps in {wall:7.1f} s = {per_step * 1e3:8.1f} ms/step; "
        f"full {cfg.steps} steps ~ {per_step * cfg.steps:7.1f} s; fit PSNR {metrics['fit_psnr_db']:.1f} dB; "
        f"peak {_peak_gib(args.device)}",
        flush=True,
    )


def full_size_sv3d(device, dtype):
    """SV3D-sized diffusers blocks with random weights (see the module docstring)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(
            in_channels=8,
            out_channels=4,
            cross_attention_dim=1024,
            num_frames=21,
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=256,
        )
        vae = AutoencoderKLTemporalDecoder(  # SVD's VAE (the class defaults are a 1-block toy)
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=768,
            scaling_factor=0.18215,
        )
        enc = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                projection_dim=1024,
                hidden_act="gelu",
            )
        )
    for m in (unet, vae, enc):  # .to(device) too: a few parameters ignore the device context
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    n = sum(p.numel() for p in unet.parameters()) / 1e9
    print(f"full-size SV3D blocks: UNet {n:.2f} B parameters, {dtype}", flush=True)
    return SimpleNamespace(
        unet=unet, vae=vae, image_encoder=enc, feature_extractor=CLIPImageProcessor(), scheduler=None
    )


def tiny_sv3d(device):
    from backend.models import load_sv3d
    from backend.testing import save_tiny_sv3d

    folder = save_tiny_sv3d(Path(tempfile.mkdtemp()) / "sv3d_u")
    return load_sv3d(folder, device=str(device))


def bench_generation(parts, args, resolution: int, steps: int) -> None:
    from backend.guidance.sv3d import SV3DSettings, generate_orbit

    img = np.full((resolution, resolution, 3), 255, np.uint8)
    img[resolution // 4 : 3 * resolution // 4, resolution // 3 : 2 * resolution // 3] = 120
    settings = SV3DSettings(resolution=resolution, steps=steps)
    generate_orbit(parts, img, replace(settings, steps=1))  # warm-up
    _sync(args.device)
    _peak_reset(args.device)
    t0 = time.perf_counter()
    generate_orbit(parts, img, settings)
    _sync(args.device)
    wall = time.perf_counter() - t0
    print(
        f"SV3D generate: 21 frames at {resolution}px, {steps} Euler steps (CFG batch 2) in {wall:.1f} s "
        f"({wall / steps * 1e3:.0f} ms/step incl. decode share); peak {_peak_gib(args.device)}",
        flush=True,
    )


def bench_e2e(parts, args, preset: str) -> None:
    from backend.image_io import load_image

    cache = ModelCache()  # holds the bench's generator where instax.run looks for SV3D
    cache.get(instax.SV3D_SLOT, instax.generator_key("sv3d_u", torch.device(args.device)), lambda: parts)
    image = load_image(REPO / "examples" / "astronaut.jpg")
    _peak_reset(args.device)
    t0 = time.perf_counter()
    result = instax.run(
        image,
        preset=preset,
        options={"sv3d_resolution": args.resolution, "sv3d_steps": args.sv3d_steps},
        model_cache=cache,
    )
    _sync(args.device)
    wall = time.perf_counter() - t0
    m = result.metrics
    keys = ("load_s", "face_s", "generate_s", "template_s", "construct_s", "turntable_s")
    print(
        f"end to end ({preset}): {wall:.1f} s; "
        + ", ".join(f"{k} {m.get(k, 0):.1f}" for k in keys)
        + f"; {len(result.splats)} splats; peak {_peak_gib(args.device)}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", default="fast", help="comma-separated instax presets to time the reconstruction of")
    ap.add_argument("--measure-steps", type=int, default=30, help="steps timed per preset (default 30)")
    ap.add_argument("--full-run", action="store_true", help="time every step of each preset")
    ap.add_argument("--full-size", action="store_true", help="SV3D at its real size (random weights)")
    ap.add_argument("--resolution", type=int, default=576, help="SV3D resolution")
    ap.add_argument("--sv3d-steps", type=int, default=50)
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--e2e", action="store_true", help="also run instax.run on the demo photo")
    ap.add_argument("--e2e-preset", default="default")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
        + (f" gpu={torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""),
        flush=True,
    )
    for name in filter(None, args.presets.split(",")):
        bench_reconstruction(name, args)
    if args.no_generate and not args.e2e:
        return
    if args.full_size:
        dtype = torch.float16 if torch.device(args.device).type == "cuda" else torch.float32
        parts = full_size_sv3d(args.device, dtype)
        resolution = args.resolution
    else:
        parts = tiny_sv3d(args.device)
        resolution = 64
        args.resolution = resolution
    if not args.no_generate:
        bench_generation(parts, args, resolution, args.sv3d_steps)
    if args.e2e:
        bench_e2e(parts, args, args.e2e_preset)


if __name__ == "__main__":
    main()
