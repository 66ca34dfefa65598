"""TEST-ONLY pipeline ("synthetic"): random Gaussians, no models, no torch.

It exists so the service (server, worker, client) can be tested end to end in seconds and
made to misbehave on purpose. The worker offers it only when the environment has
``PORTRAITSPLAT_TEST_PIPELINES=1``; it is never a fallback for a real pipeline.

It keeps the pipeline contract (``backend.pipelines``): ``steps`` progress events, a
preview after each step, ``reporter.cancelled()`` checked every 10 ms while it "works".

Options (all optional):
    n_gaussians    number of Gaussians (default 1000)
    steps          number of steps (default 10)
    step_seconds   time each step takes (default 0.02)
    sh_degree      0..3 (default 0)
    fail_at        step at which to misbehave (default: never), as ``fail_mode`` says:
    fail_mode      "error"   raise PortraitSplatError(code=fail_code)
                   "oom"     raise RuntimeError("CUDA out of memory ...") like torch does
                   "cuda_oom" allocate 64 TiB on the GPU: a real torch.cuda.OutOfMemoryError
                   "crash"   kill the worker process (SIGKILL)
                   "hang"    sleep ``hang_seconds`` without looking at the reporter
    fail_code      code for "error" (default "synthetic_failure")
    hang_seconds   default 30
    turntable      number of flat 8x8 turntable frames to return, frame i filled with value i (default 0)
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from blender_addon.core.splat_arrays import SplatArrays, rgb_to_sh0

from . import NullReporter, Reporter, RunResult
from .cache import ModelCache

DEFAULTS = {
    "n_gaussians": 1000,
    "steps": 10,
    "step_seconds": 0.02,
    "sh_degree": 0,
    "fail_at": None,
    "fail_mode": "error",
    "fail_code": "synthetic_failure",
    "hang_seconds": 30.0,
    "turntable": 0,
}


def random_splats(n: int, rng: np.random.Generator, sh_degree: int = 0, rgb: np.ndarray | None = None) -> SplatArrays:
    """A plausible cloud: centres in a 10 cm ball, small scales, unit quaternions."""
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    colour = rng.uniform(0.0, 1.0, (n, 3)) if rgb is None else np.broadcast_to(rgb, (n, 3))
    k = {0: 0, 1: 3, 2: 8, 3: 15}[sh_degree]
    return SplatArrays(
        means=(rng.normal(size=(n, 3)) * 0.05).astype(np.float32),
        quats=quats,
        log_scales=rng.uniform(-6.0, -4.0, (n, 3)).astype(np.float32),
        opacity_logits=rng.normal(size=n).astype(np.float32),
        sh0=rgb_to_sh0(colour),
        shN=rng.normal(scale=0.1, size=(n, k, 3)).astype(np.float32) if k else None,
    )


def run(
    image: np.ndarray,
    *,
    preset: str = "default",
    seed: int = 0,
    options: dict | None = None,
    reporter: Reporter | None = None,
    model_cache: ModelCache | None = None,
) -> RunResult:
    from backend.errors import CancelledError, PortraitSplatError

    opts = {**DEFAULTS, **(options or {})}
    # a stand-in "model" kept in the cache: it counts the jobs that found it warm
    model = (model_cache if model_cache is not None else ModelCache()).get("synthetic", "v1", lambda: {"jobs": 0})
    model["jobs"] += 1
    reporter = reporter or NullReporter()
    rng = np.random.default_rng(seed)
    steps = int(opts["steps"])
    mean_rgb = image.reshape(-1, 3).mean(axis=0) / 255.0
    splats = random_splats(int(opts["n_gaussians"]), rng, int(opts["sh_degree"]), rgb=mean_rgb)
    for step in range(steps):
        if opts["fail_at"] is not None and step == int(opts["fail_at"]):
            mode = opts["fail_mode"]
            if mode == "error":
                raise PortraitSplatError("synthetic failure", code=str(opts["fail_code"]), hint="(test pipeline)")
            if mode == "oom":
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (synthetic)")
            if mode == "cuda_oom":
                import torch

                torch.empty(1 << 46, dtype=torch.uint8, device="cuda")
            if mode == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(float(opts["hang_seconds"]))
        end = time.monotonic() + float(opts["step_seconds"])
        while True:
            if reporter.cancelled():
                raise CancelledError("The job was cancelled.")
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.01))
        splats.means += rng.normal(scale=1e-4, size=splats.means.shape).astype(np.float32)
        reporter.progress("fit", step + 1, steps)
        reporter.preview(splats, step + 1)
    turntable = [np.full((8, 8, 3), i, np.uint8) for i in range(int(opts["turntable"]))]
    return RunResult(
        splats=splats,
        turntable=turntable,
        evaluable=False,  # random splats, not a head: nothing for backend.eval to judge
        metrics={"steps": steps, "mean_red": float(mean_rgb[0]), "model_jobs": model["jobs"]},
    )
