"""Renderer throughput: forward+backward time per frame at 10k/50k/100k Gaussians, 256/512 px.

    python bench/bench_render.py [--device cpu|cuda] [--backend auto|numba|torch|gsplat]
                                 [--sizes 256,512] [--counts 10000,50000,100000] [--repeats 3]
    python bench/bench_render.py --device cpu --compare     # numba vs the torch reference

Scene: a head-sized ellipsoid shell (0.16 x 0.2 x 0.23 m) filling ~70% of the frame,
splat std-devs 4-10 mm, opacity ~0.5 (the photo pipeline's regime). Prints one line per
configuration with the fastest and the median of ``--repeats`` timed runs (after one
warm-up, which also loads numba's compiled kernels) and the (pixel, splat) box pair count.
Timings on a shared machine are noisy: the minimum is the figure to compare.

``--compare`` times the CPU tile rasteriser ("fast", backend numba) and the torch pair-list
reference on 10k splats at 256 px in float32 (the training dtype), then checks them against
each other on that scene with a loss that weighs every pixel and channel at random:
``max abs diff image`` is the largest |rgb_fast - rgb_ref|, ``grads`` the largest
max|g_fast - g_ref| / max|g_ref| over means, quats, log-scales, logit-opacities, colours and
means2d. The last line (the one issue #16 asks for) gives the float32 diffs; the float64
ones are printed above it (see ``compare``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from backend.gaussians.cameras import orbit_cameras
from backend.gaussians.raster_cpu import torch_single_threaded
from backend.gaussians.render import render, resolve_backend


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


def run_once(s, cams, backend, loss_weights=None):
    for p in s.values():
        p.grad = None
    out = render(
        s["means"],
        s["quats"],
        s["log_scales"].exp(),
        s["logit_opacities"].sigmoid(),
        s["colors"],
        cams,
        backend=backend,
    )
    loss = out.rgb.sum() if loss_weights is None else (out.rgb * loss_weights).sum()
    loss.backward()
    return out


def time_runs(s, cams, backend, repeats, device):
    """Timed runs after one warm-up; the numba backend runs as the pipelines run it, with torch
    on one thread (``raster_cpu.torch_single_threaded``), the reference with all of torch's."""
    context = torch_single_threaded() if backend == "numba" else nullcontext()
    with context:
        return _time_runs(s, cams, backend, repeats, device)


def _time_runs(s, cams, backend, repeats, device):
    run_once(s, cams, backend)  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = run_once(s, cams, backend)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, out


def _diffs(s, cams, dtype):
    """(max |rgb diff|, pixels differing by > 1e-4, {param: relative grad diff}) numba vs torch."""
    p = {k: v.detach().to(dtype).requires_grad_() for k, v in s.items()}
    w = torch.rand(1, cams.height, cams.width, 3, generator=torch.Generator().manual_seed(1)).to(dtype)
    cams = type(cams)(cams.viewmats.to(dtype), cams.Ks.to(dtype), cams.width, cams.height)
    outs, grads = {}, {}
    for backend in ("numba", "torch"):
        out = run_once(p, cams, backend, w)
        outs[backend] = out
        grads[backend] = {k: v.grad.clone() for k, v in p.items()} | {"means2d": out.info["means2d"].grad}
    diff = (outs["numba"].rgb - outs["torch"].rgb).abs()
    rel = {k: ((grads["numba"][k] - g).abs().max() / g.abs().max()).item() for k, g in grads["torch"].items()}
    assert torch.equal(outs["numba"].info["radii"], outs["torch"].info["radii"]), "radii differ"
    return diff.max().item(), int((diff.amax(-1) > 1e-4).sum()), rel


def compare(repeats: int) -> None:
    """Time both CPU backends at 10k@256 in float32, then diff them in float32 and float64.

    The two compute the same function: in float64 they agree to rounding; in float32 the
    reference evaluates alpha in float32 and the rasteriser in float64, so a (pixel, splat)
    pair whose alpha sits within rounding of 1/255 (or a pixel whose transmittance sits at
    1e-4) can in principle fall on the other side of the threshold in one of them; the count
    of pixels differing by more than 1e-4 is printed to show whether that happened.
    """
    n, size = 10_000, 256
    s = scene(n, "cpu")
    cams = orbit_cameras(1, radius=0.75, elevation_deg=0, fov_deg=30, width=size, height=size)
    fast_t, _ = time_runs(s, cams, "numba", max(repeats, 10), "cpu")
    ref_t, _ = time_runs(s, cams, "torch", repeats, "cpu")
    d64, _, rel64 = _diffs(s, cams, torch.float64)
    print(
        "  float64: max abs diff image {:.1e}, grads {}".format(
            d64, ", ".join(f"{k} {v:.1e}" for k, v in rel64.items())
        )
    )
    d32, px32, rel32 = _diffs(s, cams, torch.float32)
    print(
        f"  float32: {px32} of {size * size} pixels differ by > 1e-4; grads, max abs diff / max abs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in rel32.items())
    )
    print("  radii identical (both dtypes)")
    print(
        f"  timings, float32, ms: fast {', '.join(f'{t * 1e3:.0f}' for t in fast_t)}; "
        f"reference {', '.join(f'{t * 1e3:.0f}' for t in ref_t)} (the line below takes the minimum)"
    )
    fast, ref = min(fast_t), min(ref_t)
    print(
        f"cpu fwd+bwd 10k@256: fast {fast * 1e3:.1f} ms, reference {ref * 1e3:.1f} ms, "
        f"speedup {ref / fast:.1f}×, max abs diff image {d32:.1e}, grads {max(rel32.values()):.1e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--counts", default="10000,50000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="numba vs the torch reference at 10k@256 (CPU)")
    args = ap.parse_args()
    backend = resolve_backend(args.backend, args.device)
    print(f"device={args.device} backend={backend} threads={torch.get_num_threads()} torch={torch.__version__}")
    if args.compare:
        compare(args.repeats)
        return
    for n in map(int, args.counts.split(",")):
        s = scene(n, args.device)
        for size in map(int, args.sizes.split(",")):
            cams = orbit_cameras(1, radius=0.75, elevation_deg=0, fov_deg=30, width=size, height=size).to(args.device)
            times, out = time_runs(s, cams, backend, args.repeats, args.device)
            r = out.info["radii"][0].float()
            # an upper bound on the work: every splat's full (2r+1)^2 box, off-screen parts included
            pairs = int(((2 * r[:, 0] + 1) * (2 * r[:, 1] + 1)).sum())
            best, med = min(times), statistics.median(times)
            print(
                f"N={n:>7d} {size:>4d}px  fwd+bwd min {best * 1e3:9.1f} ms  median {med * 1e3:9.1f} ms"
                f"  ({1 / best:7.1f} it/s)  box pairs <= {pairs / 1e6:7.2f} M  coverage {out.alpha.mean():.2f}"
            )


if __name__ == "__main__":
    main()
