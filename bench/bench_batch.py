"""Benchmark: batch throughput (heads per hour) on this machine, locally and on a local Ray.

    .venv/bin/python bench/bench_batch.py [--heads 8] [--preset preview] [--eval] [--ray-workers 2] [--local-workers 2]
                                          [--option KEY=VALUE ...] [--out bench/results/batch.md]

Makes ``--heads`` heads of the `photo` pipeline from public-domain portraits (the astronaut,
Grace Hopper from matplotlib's samples, and mirrored / shifted copies of them, so that every
head is a different photo), then runs the same batch twice into fresh folders:

1. local: ``LocalRunner``, one worker process (this machine has no GPU), and with
   ``--local-workers N`` also N worker processes sharing the cores (``--workers N``);
2. Ray: a local Ray with ``--ray-workers`` CPUs, one task per head (``num_gpus=0``).

Heads per hour = heads / wall time, the wall time including each runner's start (the worker
processes' imports, Ray's start), as a user sees it. Appends a table to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.batch import plan_input  # noqa: E402
from backend.batch.head import EvalSettings  # noqa: E402
from backend.batch.run import run_batch  # noqa: E402
from backend.cli.common import parse_options  # noqa: E402


def make_photos(folder: Path, n: int) -> None:
    import matplotlib.cbook as cbook
    from PIL import Image

    base = [Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")]
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        base.append(Image.open(fh).convert("RGB"))
    for i in range(n):
        img = base[i % 2]
        if (i // 2) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        shift = 8 * (i // 4)
        if shift:
            arr = np.roll(np.asarray(img), shift, axis=1)
            img = Image.fromarray(arr)
        img.save(folder / f"p{i:02d}.jpg", quality=95)


def run(kind: str, specs, out: Path, settings: EvalSettings, workers: int) -> tuple[float, int, int]:
    if kind.startswith("local"):
        from backend.batch.run_local import LocalRunner

        runner = LocalRunner(settings, lanes=[None] * workers)
    else:
        import ray

        from backend.batch.run_ray import RayRunner

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        runner = RayRunner(settings, gpus_per_head=0)
    t0 = time.perf_counter()
    try:
        report = run_batch(specs, out, runner, quiet=False)
    finally:
        runner.close()
        if kind == "ray":
            import ray

            ray.shutdown()
    return time.perf_counter() - t0, len(report.done), len(report.failed)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--eval", action="store_true", help="evaluate each head (default: no evaluation)")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--local-workers", type=int, default=1, help="also run locally with N worker processes (N > 1)")
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--only", choices=["local", "ray"], default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "batch.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        photos = tmp / "photos"
        photos.mkdir()
        make_photos(photos, args.heads)
        specs = plan_input(photos, preset=args.preset, options=parse_options(args.option, pipeline="photo"))
        settings = EvalSettings(evaluate=args.eval)
        rows = []
        load0 = os.getloadavg()[0]
        kinds = [("local", 1), ("ray", args.ray_workers)]
        if args.local_workers > 1:
            kinds.insert(1, ("local", args.local_workers))
        for kind, workers in kinds:
            if args.only and kind != args.only:
                continue
            t_start = time.perf_counter()
            wall, done, failed = run(kind, specs, tmp / f"out_{kind}{workers}", settings, workers)
            wall = time.perf_counter() - t_start  # the runner's start included
            label = (
                f"local, {workers} worker process{'es' if workers > 1 else ''}"
                if kind == "local"
                else f"local Ray, {workers} workers"
            )
            rows.append((label, done, failed, wall, 3600 * done / wall))
            print(f"{label}: {done} done, {failed} failed in {wall:.1f} s -> {3600 * done / wall:.0f} heads/hour")
        load1 = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    opts = " ".join(f"--option {o}" for o in args.option)
    lines = [
        "",
        f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.heads} heads, `photo` preset "
        f"`{args.preset}` {opts}, {'with' if args.eval else 'no'} evaluation",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other work: "
        f"load average {load0:.1f} before, {load1:.1f} after)",
        "",
        "| runner | done | failed | wall s (start included) | heads/hour |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        if not args.out.exists():
            args.out.write_text(
                "# Batch throughput on this machine (bench/bench_batch.py)\n\n"
                "Heads per hour of `python -m backend batch`, locally (one worker process) and on a local\n"
                "Ray (one task per head), the same heads into fresh folders. No GPU here: each head runs on CPU.\n"
            )
        with open(args.out, "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
