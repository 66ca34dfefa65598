"""MVDream SDS term cost at full size (METHOD A.5), random weights, no downloads.

    python bench/bench_mvdream.py [--device cuda] [--dtypes float16,bfloat16] [--gaussians 10000] [--repeats 5]

Builds the real-size multi-view UNet (``FULL_SIZE_CONFIG``, ~868 M parameters) and an
SD2.1-shaped VAE (AutoencoderKL 128/256/512/512) with random weights; the text encoder is a
one-layer stand-in (run once per prompt, not per step). Prints per dtype:

- the UNet forward for one CFG batch (2 x 4 views, 32x32 latents);
- one whole term step at 256 px: render 4 views, encode, UNet, SDS loss, backward into the
  Gaussians (``--gaussians`` splats on a head-sized shell);
- peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backend.gaussians.loop import render_model
from backend.gaussians.model import GaussianModel
from backend.guidance.mvdream import FULL_SIZE_CONFIG, MultiViewUNet, MVDreamGuidance, MVDreamSettings
from backend.testing import _tiny_text_encoder, save_tiny_clip_tokenizer, tiny_vocab_size
from blender_addon.core.splat_arrays import SplatArrays


def sd21_vae(device, dtype):
    from diffusers import AutoencoderKL

    blocks = (128, 256, 512, 512)
    return (
        AutoencoderKL(
            block_out_channels=blocks,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=256,
            scaling_factor=0.18215,
        )
        .to(device, dtype)
        .eval()
        .requires_grad_(False)
    )


def head_shell(n: int, device) -> GaussianModel:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(n, 3))
    d = d / np.linalg.norm(d, axis=1, keepdims=True) * np.array([0.08, 0.1, 0.115])
    return GaussianModel.from_splats(
        SplatArrays(
            means=d.astype(np.float32),
            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
            log_scales=np.full((n, 3), np.log(0.006), np.float32),
            opacity_logits=np.zeros(n, np.float32),
            sh0=rng.normal(size=(n, 3)).astype(np.float32),
        ),
        device=device,
    )


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--gaussians", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "-"
    print(f"device={device} torch={torch.__version__} gpu={gpu}")
    tok_dir = save_tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = _tiny_text_encoder(tiny_vocab_size(tok_dir), FULL_SIZE_CONFIG["context_dim"], 0).to(device)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        with torch.device(device):
            unet = MultiViewUNet.from_config(FULL_SIZE_CONFIG)
        unet = unet.to(dtype).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in unet.parameters())
        vae = sd21_vae(device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        x = torch.randn(8, 4, 32, 32, device=device, dtype=dtype)
        t = torch.full((8,), 500, device=device)
        ctx = torch.randn(8, 77, FULL_SIZE_CONFIG["context_dim"], device=device, dtype=dtype)
        cam = torch.randn(8, 16, device=device, dtype=dtype)

        def forward():
            with torch.no_grad():
                return unet(x, t, ctx, cam, num_frames=4)

        assert torch.isfinite(forward()).all()
        unet_ms = timed(forward, args.repeats, device)
        model = head_shell(args.gaussians, device)
        term = MVDreamGuidance(
            unet,
            text_encoder,
            tokenizer,
            vae,
            _scheduler(),
            prompt="a marble bust",
            render_fn=lambda c: render_model(model, c, background=torch.ones(3, device=device)),
            settings=MVDreamSettings(),
            device=device,
            dtype=dtype,
        )
        step = [0]

        def term_step():
            loss = term(None, None, step[0])["loss_mvdream"]
            loss.backward()
            step[0] += 1
            return loss

        loss = term_step()
        assert torch.isfinite(loss) and model.params["means"].grad.abs().max() > 0
        step_ms = timed(term_step, args.repeats, device)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "-"
        print(
            f"{name:9s} UNet {n_params / 1e6:.0f} M params: CFG forward 2x4 views @32x32 latents {unet_ms:7.1f} ms; "
            f"term step (render 4x256px, {args.gaussians} splats, encode, UNet, backward) {step_ms:7.1f} ms; "
            f"peak {peak}"
        )
        unet = vae = term = model = None  # free them before the next dtype


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


if __name__ == "__main__":
    main()
