"""Command line: ``python -m backend <command>``.

generate PHOTO --pipeline photo --out DIR    run a pipeline here (or --connect F: through a server)
serve / ping / jobs                          the ZeroMQ service (backend.service_cli)
models check | download [--only NAME ...]    pretrained weights (backend.models)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


class TqdmReporter:
    """Reporter that draws one progress bar per stage."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar: tqdm | None = None
        self._stage = None

    def progress(self, stage: str, step: int, total: int, message: str = "") -> None:
        if self.quiet:
            return
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="step", dynamic_ncols=True, file=sys.stderr)
        self._bar.total = total
        self._bar.n = step
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def preview(self, splats, step: int) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="photo -> Gaussian head (PLY + turntable)")
    p.add_argument("photo", type=Path)
    p.add_argument("--pipeline", default="photo")
    p.add_argument("--preset", default="default", help="quality preset (pipeline-specific; e.g. preview, default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="", help="style prompt (stylising pipelines)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--ply-frame", choices=["ply", "head"], default="ply", help="PLY axes: ply = RDF/OpenCV for 3DGS viewers"
    )
    p.add_argument("--connect", type=Path, default=None, help="run through a server: its connection file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    if args.connect is not None:
        from backend import service_cli

        return service_cli.remote_generate(args)
    from backend.errors import PortraitSplatError
    from backend.image_io import load_image
    from backend.pipelines import available
    from backend.pipelines.outputs import write_outputs

    pipelines = available()
    if args.pipeline not in pipelines:
        print(f"error: unknown pipeline {args.pipeline!r}; available: {', '.join(pipelines)}", file=sys.stderr)
        return 2
    reporter = TqdmReporter(args.quiet)
    t0 = time.perf_counter()
    try:
        image = load_image(args.photo)
        result = pipelines[args.pipeline](
            image, preset=args.preset, seed=args.seed, options={"style": args.style}, reporter=reporter
        )
    except PortraitSplatError as exc:
        reporter.close()
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    reporter.close()
    paths = write_outputs(args.out, result, ply_frame=args.ply_frame)
    result.metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    print(
        f"wrote {paths['ply']} ({len(result.splats)} splats) and {len(paths['turntable'])} turntable frames in {args.out / 'turntable'}"
    )
    print(json.dumps(result.metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description="PortraitSplat backend")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    try:
        from backend import service_cli
    except ImportError:
        service_cli = None
    if service_cli is not None and hasattr(service_cli, "add_parsers"):
        service_cli.add_parsers(sub)
    from backend.models import add_models_parser  # models check | download

    add_models_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
