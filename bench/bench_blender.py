"""Blender-side throughput: splat import, in-place preview updates, turntable frames.

    .venv-blender/bin/python bench/bench_blender.py [--counts 100000,1000000] [--ply 1000000] [--update 100000]
        [--render-splats 20000] [--sizes 64,256] [--samples 16] [--repeats 3]

Run it in the bpy venv (scripts/setup_blender_venv.sh). Scene: a head-sized ellipsoid shell
(0.15 x 0.19 x 0.23 m), std-devs ~6 mm, opacity 0.6-0.99. Prints one line per figure:

- import: ``create_splat_object`` (mesh + every attribute via foreach_set + GN modifier),
  then the first depsgraph evaluation of the display (ellipsoids, or points above the
  point-mode threshold);
- ply import: ``portraitsplat.import_ply`` of an SH degree 3 PLY against Blender's own
  ``wm.ply_import`` of the same file, in this one process, alternating; the ratio is ours
  over native (median of the repeats; the goal is <= 1.0);
- splat view: per-view depth sort (16-bit keys, radix) + SH3 colours + packing of the
  instance rows, and the same on a worker thread as the viewport runs it, with the longest
  the main thread waited meanwhile (ticking every 2 ms); where a GPU backend starts (in background mode too: EGL, e.g. Mesa's
  llvmpipe), the upload of the rows as a texture, sort + upload together, and whole offscreen
  frames (a view that re-sorts, the same view again: draw and read-back only);
- update: ``update_splat_object`` with a same-size cloud (a live preview), and with a
  different size (clear + re-add on the same mesh);
- turntable: one Cycles frame (CPU) of ``render_turntable``, ellipsoids and points.

Figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="portraitsplat-bench-"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from blender_addon import splats, turntable  # noqa: E402
from blender_addon.core.splat_arrays import SplatArrays, logit, rgb_to_sh0  # noqa: E402


def head(n: int, seed: int = 0) -> SplatArrays:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rgb = np.clip(np.array([0.8, 0.56, 0.45]) + 0.08 * rng.normal(size=(n, 3)), 0, 1)
    return SplatArrays(
        means=(d * np.array([0.075, 0.095, 0.115], np.float32)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=(np.log(0.006) + 0.3 * rng.normal(size=(n, 3))).astype(np.float32),
        opacity_logits=logit(rng.uniform(0.6, 0.99, size=n)),
        sh0=rgb_to_sh0(rgb),
    )


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fresh() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def bench_import(n: int, repeats: int) -> None:
    cloud = head(n)
    create, evaluate = [], []
    for _ in range(repeats):
        fresh()
        t0 = time.perf_counter()
        obj = splats.create_splat_object(bpy.context.scene, "bench", cloud)
        t1 = time.perf_counter()
        obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        t2 = time.perf_counter()
        create.append(t1 - t0)
        evaluate.append(t2 - t1)
    mode = "points" if n > splats.POINT_MODE_THRESHOLD else "ellipsoids"
    print(
        f"import   {n:>9,} splats: create {statistics.median(create) * 1e3:8.1f} ms, "
        f"first evaluation ({mode}) {statistics.median(evaluate) * 1e3:8.1f} ms"
    )


def bench_ply_import(n: int, repeats: int) -> None:
    import blender_addon
    from blender_addon.core.splat_ply import write_ply

    rng = np.random.default_rng(1)
    c = head(n)
    cloud = SplatArrays(
        c.means, c.quats, c.log_scales, c.opacity_logits, c.sh0, (0.1 * rng.normal(size=(n, 15, 3))).astype(np.float32)
    )
    path = os.path.join(tempfile.mkdtemp(prefix="portraitsplat-bench-ply-"), "head.ply")
    write_ply(path, cloud)
    native, ours = [], []
    for _ in range(repeats + 1):  # the first round warms the page cache and is dropped
        fresh()
        t0 = time.perf_counter()
        bpy.ops.wm.ply_import(filepath=path)
        native.append(time.perf_counter() - t0)
        fresh()
        blender_addon.register()
        t0 = time.perf_counter()
        bpy.ops.portraitsplat.import_ply(filepath=path)
        ours.append(time.perf_counter() - t0)
        blender_addon.unregister()
    a, b = statistics.median(native[1:]), statistics.median(ours[1:])
    print(
        f"ply import {n:>7,} splats SH3 ({os.path.getsize(path) / 2**20:.0f} MiB): native wm.ply_import "
        f"{a * 1e3:8.1f} ms, portraitsplat.import_ply {b * 1e3:8.1f} ms, ratio {b / a:.2f}x native"
    )
    os.remove(path)


def bench_splat_view(n: int, repeats: int) -> None:
    from blender_addon.core.splat_view import ViewCache, covariances, depth_order

    rng = np.random.default_rng(2)
    c = head(n)
    shN = (0.1 * rng.normal(size=(n, 15, 3))).astype(np.float32)
    t0 = time.perf_counter()
    cov = covariances(c.quats, c.log_scales)
    cov_s = time.perf_counter() - t0
    views = []
    for k in range(repeats + 1):
        a = 0.3 * k  # a camera orbiting the head, 0.3 rad apart: every view re-sorts
        m = np.eye(4)
        eye = np.array([0.6 * np.sin(a), -0.6 * np.cos(a), 0.05])
        f = -eye / np.linalg.norm(eye)
        r = np.cross(f, [0.0, 0.0, 1.0])
        r /= np.linalg.norm(r)
        m[0, :3], m[1, :3], m[2, :3] = r, np.cross(r, f), -f
        m[:3, 3] = -m[:3, :3] @ eye
        views.append(m)
    cache = ViewCache(c.means, c.opacity(), c.sh0, shN, cov, pad_to=1024)  # whole texture rows, as the viewport
    it = iter(views)
    sort = timed(lambda: depth_order(c.means, views[0]), repeats)
    full = timed(lambda: cache.update(next(it)), repeats)
    # the viewport's way: the re-sort on a worker thread; how long does the main thread wait?
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        cache.view = None
        t0 = last = time.perf_counter()
        fut, gap = ex.submit(cache.update, views[0]), 0.0
        while not fut.done():
            time.sleep(0.002)
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
        worker = time.perf_counter() - t0
    print(
        f"splat view {n:>7,} splats SH3: covariances (once) {cov_s * 1e3:7.1f} ms, depth sort {sort * 1e3:7.1f} ms, "
        f"sort + colours + pack per view {full * 1e3:7.1f} ms; on the worker thread {worker * 1e3:7.1f} ms, "
        f"longest main-thread stall (2 ms ticks) {gap * 1e3:5.1f} ms"
    )
    try:
        import gpu

        from blender_addon import splat_view

        splat_view.ensure_gpu()
    except (SystemError, RuntimeError, ImportError) as exc:  # no GPU backend starts here
        print(f"splat view {n:>7,} splats: upload n/a ({str(exc)[:80]})")
        return
    rows = []
    for v in (views[0], views[-1], views[0], views[-1]):
        cache.view = None
        rows.append(cache.update(v))
    k = iter(range(10**9))
    up = timed(lambda: splat_view.upload(rows[next(k) % 4]), repeats)

    def sort_and_upload():
        cache.view = None  # force a re-sort, as a turned view would
        splat_view.upload(cache.update(views[0]))

    both = timed(sort_and_upload, repeats)
    # whole frames through the offscreen path: a re-sorting view, then the same view again (draw only)
    fresh()
    obj = splats.create_splat_object(bpy.context.scene, "bench", c)
    cam = bpy.data.objects.new("bench cam", bpy.data.cameras.new("bench cam"))
    bpy.context.scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -0.6, 0.0), (np.pi / 2, 0.0, 0.0)
    bpy.context.view_layer.update()
    scene, size = bpy.context.scene, 512
    t0 = time.perf_counter()
    splat_view.render_offscreen(scene, cam, size, size, objects=[obj])
    first = time.perf_counter() - t0

    def turned():
        cam.location.x += 0.05
        bpy.context.view_layer.update()
        splat_view.render_offscreen(scene, cam, size, size, objects=[obj])

    resort = timed(turned, 1)  # one frame each: a software rasteriser takes seconds
    same = timed(lambda: splat_view.render_offscreen(scene, cam, size, size, objects=[obj]), 1)
    print(
        f"splat view {n:>7,} splats on {gpu.platform.renderer_get()[:40]}: upload {up * 1e3:7.1f} ms, "
        f"sort + colours + pack + upload {both * 1e3:7.1f} ms; offscreen {size} px frame: first {first * 1e3:7.1f} ms "
        f"(mesh read, covariances), re-sorting view {resort * 1e3:7.1f} ms, same view {same * 1e3:7.1f} ms"
    )


def bench_update(n: int, repeats: int) -> None:
    fresh()
    obj = splats.create_splat_object(bpy.context.scene, "bench", head(n))
    clouds = [head(n, seed=s) for s in range(1, 4)]
    i = iter(range(10**9))
    same = timed(lambda: splats.update_splat_object(obj, clouds[next(i) % 3]), repeats)
    sizes = [head(n + 1000 * (k % 2), seed=k) for k in range(2)]
    j = iter(range(10**9))
    resize = timed(lambda: splats.update_splat_object(obj, sizes[next(j) % 2]), repeats)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = timed(lambda: (splats.update_splat_object(obj, clouds[next(i) % 3]), depsgraph.update()), repeats) - same
    print(
        f"update   {n:>9,} splats: same count {same * 1e3:8.1f} ms, new count {resize * 1e3:8.1f} ms, "
        f"+ display re-evaluation {ev * 1e3:8.1f} ms"
    )


def bench_render(n: int, sizes: list[int], samples: int, repeats: int) -> None:
    out = tempfile.mkdtemp(prefix="portraitsplat-bench-tt-")
    for points in (False, True):
        fresh()
        obj = splats.create_splat_object(bpy.context.scene, "bench", head(n))
        splats.set_display(obj, points=points)
        for size in sizes:
            s = turntable.TurntableSettings(frames=8, resolution=size, samples=samples, output_dir=out, video=False)
            sec = timed(lambda: turntable.render_turntable(bpy.context.scene, obj, s, only_frames=[0]), repeats)
            mode = "points" if points else "ellipsoids"
            print(f"turntable {n:>8,} splats {mode:<10} Cycles CPU {size:>4} px, {samples} spp: {sec:6.2f} s/frame")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="100000,1000000")
    ap.add_argument("--ply", default="1000000", help="splat counts for the PLY import against native")
    ap.add_argument("--view", default="100000,1000000", help="splat counts for the splat view's CPU half")
    ap.add_argument("--update", type=int, default=100_000)
    ap.add_argument("--render-splats", type=int, default=20_000)
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"Blender {bpy.app.version_string}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    for n in (int(c) for c in args.counts.split(",") if c):
        bench_import(n, args.repeats)
    for n in (int(c) for c in args.ply.split(",") if c):
        bench_ply_import(n, args.repeats)
    for n in (int(c) for c in args.view.split(",") if c):
        bench_splat_view(n, args.repeats)
    if args.update:
        bench_update(args.update, args.repeats)
    if args.render_splats:
        bench_render(args.render_splats, [int(s) for s in args.sizes.split(",")], args.samples, args.repeats)


if __name__ == "__main__":
    main()
