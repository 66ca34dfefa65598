"""``batch``: many photos x many styles -> one head folder each, here or on Ray.

    python -m backend batch INPUT --out DIR [--pipeline P] [--preset S] [--style TEXT ...]
                                  [--option KEY=VALUE ...] [--ray [ADDRESS]] [--gpus-per-head N]

INPUT is a folder of photos (each photo x each ``--style``), one photo, or a CSV with a row
per head (columns: :mod:`backend.batch.plan`). Each head goes to ``DIR/<photo>__<style>/`` with
the files ``generate`` writes (its eval figures included unless ``--no-eval``), atomically; a
rerun skips finished heads and heads that failed for a reason a retry cannot fix
(``--retry-failed`` tries those again). ``DIR/summary.csv`` and ``DIR/index.html`` sum it up.

Exit code 0 when every head is done, 1 when any failed (the rest are still written).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, option_names, parse_options, user_errors


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("batch", help="many photos x styles -> heads, here or on a Ray cluster (resumable)")
    p.add_argument(
        "input", type=Path, help="a folder of photos, a photo, or a CSV (photo,style,pipeline,preset,seed,options,name)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pipeline", default="photo", help="default pipeline (a CSV row may name another)")
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--style", action="append", default=[], metavar="TEXT", help="style prompt, repeatable: each photo x each style"
    )
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="pipeline option for every head, repeatable"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run each head as a Ray task: on the cluster at ADDRESS (or 'auto'), or on a local Ray without one",
    )
    p.add_argument(
        "--gpus-per-head",
        type=float,
        default=None,
        help="with --ray: GPUs per head (default 1 if the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-head",
        type=float,
        default=1.0,
        help="with --ray: CPUs each head's task asks for (its torch threads)",
    )
    p.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --ray: environment of every head's task, repeatable (e.g. PORTRAITSPLAT_MODELS=/mnt/models)",
    )
    p.add_argument(
        "--ray-cpus", type=int, default=None, help="with --ray and no ADDRESS: CPUs of the local Ray (default: all)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="locally: worker processes (default: one per GPU, one on CPU)"
    )
    p.add_argument(
        "--max-attempts", type=int, default=3, help="attempts per head for retryable failures (crashes, lost workers)"
    )
    p.add_argument("--retry-failed", action="store_true", help="also rerun heads an earlier run recorded as failed")
    p.add_argument("--no-eval", action="store_true", help="skip each head's evaluation (orbit renders and metrics)")
    p.add_argument("--eval-views", type=int, default=None, help=argparse_suppress())
    p.add_argument("--eval-size", type=int, default=None, help=argparse_suppress())
    p.add_argument("--ply-frame", choices=["ply", "head"], default="ply")
    p.add_argument("--dry-run", action="store_true", help="list the heads and what a run would do, run nothing")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=batch)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS  # test and bench knobs: a smaller evaluation


def _known(pipeline: str) -> frozenset[str] | None:
    try:
        return option_names(pipeline)
    except ImportError:
        return None


@user_errors
def batch(args: Any) -> int:
    from backend.batch import plan_input
    from backend.batch.head import EvalSettings
    from backend.batch.run import initial_status, run_batch
    from backend.batch.summary import write_summary
    from backend.errors import InvalidOptionError

    if args.max_attempts < 1:
        raise InvalidOptionError("--max-attempts must be at least 1.", hint="Use --max-attempts 1 for no retries.")
    options = parse_options(args.option, pipeline=args.pipeline, known=_known(args.pipeline) if args.option else None)
    specs = plan_input(
        args.input,
        styles=args.style,
        pipeline=args.pipeline,
        preset=args.preset,
        seed=args.seed,
        options=options,
        parse_pairs=lambda pairs, pipe: parse_options(pairs, pipeline=pipe),
        known_options=_known,
    )
    if args.dry_run:
        for h in initial_status(args.out, specs, args.retry_failed):
            what = "skip (done)" if h.state == "done" else "skip (failed before)" if h.state == "failed" else "run"
            print(f"{what:22} {h.spec.name}  [{h.spec.pipeline}/{h.spec.preset} seed {h.spec.seed}] {h.spec.photo}")
        return EXIT_OK
    settings = EvalSettings(evaluate=not args.no_eval, views=args.eval_views, size=args.eval_size)
    runner: Any
    if args.ray is not None:
        from backend.batch.run_ray import RayRunner

        _require_ray()

        runner = RayRunner(
            settings,
            address=args.ray or None,
            gpus_per_head=args.gpus_per_head,
            cpus_per_head=args.cpus_per_head,
            env=_env_pairs(args.ray_env),
            num_cpus=args.ray_cpus,
            ply_frame=args.ply_frame,
        )
    else:
        from backend.batch.run_local import LocalRunner, default_lanes
        from backend.models import ensure_models

        for pipeline in sorted({s.pipeline for s in specs}):  # here the driver's store is the workers'
            ensure_models(pipeline)

        lanes = default_lanes()
        if args.workers:
            lanes = (lanes * args.workers)[: args.workers] if lanes != [None] else [None] * args.workers
        runner = LocalRunner(settings, lanes=lanes, ply_frame=args.ply_frame)
    try:
        report = run_batch(
            specs, args.out, runner, max_attempts=args.max_attempts, retry_failed=args.retry_failed, quiet=args.quiet
        )
    except KeyboardInterrupt:
        print("\nbatch interrupted: finished heads are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        runner.close()
    csv_path, html_path = write_summary(report)
    print(
        f"{len(report.done)} done, {len(report.failed)} failed of {len(report.heads)} heads "
        f"({report.ran} run now, {report.attempts} attempts, {report.wall_s:.1f} s); "
        f"summary: {csv_path}, {html_path}"
    )
    for h in report.failed:
        err = h.error or {}
        print(f"  failed {h.spec.name}: [{err.get('code')}] {err.get('message')}", file=sys.stderr)
    return EXIT_FAILED if report.failed else EXIT_OK


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    from backend.errors import InvalidOptionError

    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(
                f"--ray-env {pair!r} is not KEY=VALUE.", hint="e.g. --ray-env PORTRAITSPLAT_MODELS=/mnt/models"
            )
        env[key.strip()] = value
    return env


def _require_ray() -> None:
    import importlib.util

    from backend.errors import PortraitSplatError

    if importlib.util.find_spec("ray") is None:
        raise PortraitSplatError(
            "--ray needs Ray, which this environment does not have.",
            code="ray_missing",
            hint="pip install -e '.[ray]' here and on every node of the cluster (or run without --ray).",
        )
