"""``generate``: photo -> Gaussian head, run here or (``--connect F``) through a running backend.

Both ways write ``head.ply`` and ``metrics.json`` into ``--out``. A local run also writes the
turntable frames and, unless ``--no-eval``, runs the offline evaluation (:mod:`backend.eval`):
its figures go into ``metrics.json`` under ``"eval"``, and ``eval/`` holds the contact sheet,
the turntable video and the front comparison; the turntable frames are then the eval orbit's
full-size renders. Through a server the job runs the same evaluation, in its job folder.
Ctrl-C cancels a remote job on the server.

One parser serves both ways: ``--option KEY=VALUE`` (repeatable) is read by
:func:`.common.parse_options` before the paths part, so a malformed option, or a name the
chosen pipeline does not have (when this install knows the pipeline), fails the same way,
``error [bad_option]``, before a photo is read or a job is submitted. With
``PORTRAITSPLAT_TEST_PIPELINES=1`` the local path also offers the test-only ``synthetic``
pipeline, as the worker does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    TqdmReporter,
    option_names,
    parse_options,
    print_error,
    user_errors,
)
from .convert import parse_formats, write_formats
from .eval import summary_line


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="photo -> Gaussian head (PLY + turntable)")
    p.add_argument("photo", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pipeline", default="photo")
    p.add_argument("--preset", default="default", help="quality preset (pipeline-specific; e.g. preview, default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="", help="style prompt (stylising pipelines)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option overriding the preset, repeatable (VALUE parsed as JSON if it can be); "
        "the same for a local run and --connect",
    )
    p.add_argument(
        "--ply-frame", choices=["ply", "head"], default="ply", help="PLY axes: ply = RDF/OpenCV for 3DGS viewers"
    )
    p.add_argument(
        "--format",
        type=parse_formats,
        default=["ply"],
        metavar="LIST",
        help="comma-separated outputs: ply,spz,glb,splat,mesh (head.<fmt>; mesh -> head_mesh.glb); "
        "head.ply is always written",
    )
    p.add_argument("--connect", type=Path, default=None, help="run through a server: its connection file")
    p.add_argument("--timeout", type=float, default=None, help="with --connect: give up after this many seconds")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (orbit renders and metrics)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=generate)


@user_errors
def generate(args: Any) -> int:
    known = option_names(args.pipeline) if args.option else None  # imports the pipeline's presets: only when needed
    options = parse_options(args.option, pipeline=args.pipeline, known=known)
    if args.style:
        options.setdefault("style", args.style)
    if args.connect is not None:
        return _remote(args, options)
    return _local(args, options)


def _local(args: Any, options: dict[str, Any]) -> int:
    from backend.errors import PipelineUnavailableError
    from backend.image_io import load_image
    from backend.pipelines.outputs import write_outputs
    from backend.worker import load_pipelines

    pipelines, unavailable = load_pipelines([args.pipeline])  # the worker's table: test-only ones when enabled
    if args.pipeline not in pipelines:
        offered, _ = load_pipelines(None)
        raise PipelineUnavailableError(args.pipeline, list(offered), unavailable.get(args.pipeline, "no such pipeline"))
    if not args.no_eval:
        options.setdefault("turntable_frames", 0)  # the eval orbit's 512 px renders are the turntable
    reporter = TqdmReporter(args.quiet)
    t0 = time.perf_counter()
    try:
        image = load_image(args.photo)
        result = pipelines[args.pipeline](image, preset=args.preset, seed=args.seed, options=options, reporter=reporter)
    finally:
        reporter.close()
    paths = write_outputs(args.out, result, ply_frame=args.ply_frame)
    for fmt, path in write_formats(args.out, result.splats, args.format).items():
        print(f"wrote {path} ({fmt})")
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["generate_s"] = round(time.perf_counter() - t0, 2)
    if not args.no_eval and result.evaluable:
        from backend.eval import evaluate_splats

        if not args.quiet:
            print("evaluating: orbit renders and metrics ...", file=sys.stderr)
        metrics["eval"] = evaluate_splats(
            result.splats, image, args.out / "eval", frames_dir=args.out / "turntable", style=options.get("style")
        )
    metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    frames = sorted((args.out / "turntable").glob("frame_*.png"))
    print(
        f"wrote {paths['ply']} ({len(result.splats)} splats) and {len(frames)} turntable frames in {args.out / 'turntable'}"
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval"}))
    if "eval" in metrics:
        print("eval: " + summary_line(metrics["eval"]) + f" (details in {args.out / 'eval'})")
    return 0


def _remote(args: Any, options: dict[str, Any]) -> int:
    from backend.jobs import atomic_write_bytes, atomic_write_json
    from blender_addon.core.client import Client, ServiceError
    from blender_addon.core.protocol import JobFailed, Progress
    from blender_addon.core.splat_ply import to_ply_bytes

    try:
        image = Path(args.photo).read_bytes()
    except OSError as exc:
        print_error("bad_image", f"cannot read {args.photo}: {exc.strerror or exc}", "Check the photo's path.")
        return EXIT_FAILED
    bars = TqdmReporter(args.quiet)

    def on_event(msg: Any) -> None:
        if isinstance(msg, Progress):
            bars.progress(msg.stage, msg.step, msg.total, msg.message)

    with Client(args.connect, name="portraitsplat-cli") as client:
        client.connect(timeout=10.0)
        job_id = client.submit(
            image,
            pipeline=args.pipeline,
            preset=args.preset,
            seed=args.seed,
            style_prompt=args.style or "",
            options=options,
            image_name=Path(args.photo).name,
            preview_hz=0.0,  # the CLI draws no previews: do not pay for them
            evaluate=not args.no_eval,
        )
        if not args.quiet:
            print(f"job {job_id} submitted", file=sys.stderr)
        try:
            final = client.wait(job_id, timeout=args.timeout, on_event=on_event)
        except KeyboardInterrupt:
            bars.close()
            print(f"\ncancelling job {job_id} ...", file=sys.stderr)
            client.cancel(job_id)
            try:
                client.wait(job_id, timeout=5.0)
            except ServiceError:
                pass
            return EXIT_INTERRUPTED
        finally:
            bars.close()
        if isinstance(final, JobFailed):
            print_error(final.code, final.message, final.hint)
            return EXIT_FAILED
        splats, ply = client.get_result(job_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ply_frame == "head":
        ply = to_ply_bytes(splats, frame="head")
    atomic_write_bytes(out / "head.ply", ply)
    for fmt, path in write_formats(out, splats, args.format).items():
        print(f"wrote {path} ({fmt})")
    atomic_write_json(out / "metrics.json", final.metrics | {"job_id": job_id, "elapsed_s": round(final.elapsed_s, 2)})
    print(f"wrote {out / 'head.ply'} ({len(splats)} splats) from job {job_id} in {final.elapsed_s:.1f} s")
    return 0
