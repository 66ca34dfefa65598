"""Renderer throughput: forward+backward time per frame at 10k/50k/100k Gaussians, 256/512 px.

    python bench/bench_render.py [--device cpu|cuda] [--backend torch|gsplat] [--sizes 256,512] [--counts 10000,50000,100000]

Scene: a head-sized ellipsoid shell (0.16 x 0.2 x 0.23 m) filling ~70% of the frame,
splat std-devs 4-10 mm, opacity ~0.5 (the photo pipeline's regime). Prints one line per
configuration with the median of ``--repeats`` timed runs and the (pixel, splat) pair count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from backend.gaussians.cameras import orbit_cameras
from backend.gaussians.render import render


def scene(n: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * torch.tensor([0.08, 0.1, 0.115])
    return dict(
        means=d.to(device).requires_grad_(),
        quats=torch.randn(n, 4, generator=g).to(device).requires_grad_(),
        log_scales=(torch.rand(n, 3, generator=g) * 0.006 + 0.004).log().to(device).requires_grad_(),
        logit_opacities=torch.zeros(n, device=device).requires_grad_(),
        colors=torch.rand(n, 3, generator=g).to(device).requires_grad_(),
    )


def run_once(s, cams, backend):
    out = render(
        s["means"],
        s["quats"],
        s["log_scales"].exp(),
        s["logit_opacities"].sigmoid(),
        s["colors"],
        cams,
        backend=backend,
    )
    out.rgb.sum().backward()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--counts", default="10000,50000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"device={args.device} backend={args.backend} threads={torch.get_num_threads()} torch={torch.__version__}")
    for n in map(int, args.counts.split(",")):
        s = scene(n, args.device)
        for size in map(int, args.sizes.split(",")):
            cams = orbit_cameras(1, radius=0.75, elevation_deg=0, fov_deg=30, width=size, height=size).to(args.device)
            run_once(s, cams, args.backend)  # warm-up
            times = []
            for _ in range(args.repeats):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = run_once(s, cams, args.backend)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            r = out.info["radii"][0].float()
            # an upper bound on the work: every splat's full (2r+1)^2 box, off-screen parts included
            pairs = int(((2 * r[:, 0] + 1) * (2 * r[:, 1] + 1)).sum())
            med = statistics.median(times)
            print(
                f"N={n:>7d} {size:>4d}px  fwd+bwd {med * 1e3:9.1f} ms  ({1 / med:7.1f} it/s)  box pairs <= {pairs / 1e6:7.2f} M  coverage {out.alpha.mean():.2f}"
            )


if __name__ == "__main__":
    main()
