"""``eval RESULT [--photo PHOTO]``: a head's quality figures (see :mod:`backend.eval`, docs/metrics.md).

RESULT is a ``head.ply``, a ``result.npz``, or a folder holding one (``generate --out``, a
server job folder). The photo defaults to a job folder's ``input.*``. Writes metrics.json,
contact_sheet.png, turntable.mp4 and front.png into ``--out`` (default: ``RESULT/eval`` for a
folder, else ``eval/`` beside the file) and prints the headline figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import user_errors

HEADLINE = (
    "identity_worst_30",
    "identity_same_person_45",
    "pck",
    "ghost_faces",
    "saturation",
    "front_psnr_db",
    "front_ssim",
    "arcface_ipa",
    "eval_s",
)


def summary_line(figures: dict[str, Any]) -> str:
    """The headline figures as one JSON line."""
    return json.dumps({k: figures[k] for k in HEADLINE if k in figures})


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="head + photo -> metrics.json, contact sheet, turntable.mp4")
    p.add_argument("result", type=Path, help="head.ply, result.npz, or a folder holding one")
    p.add_argument("--photo", type=Path, default=None, help="the photo the head was made from (default: input.*)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RESULT/eval)")
    p.add_argument("--views", type=int, default=24, help="yaws on the orbit ring (4 pitched views are added)")
    p.add_argument("--size", type=int, default=512, help="render size in pixels")
    p.add_argument("--ply-frame", choices=["ply", "head"], default="ply", help="axes of a PLY RESULT")
    p.add_argument("--renderer", choices=["fast", "reference"], default="fast", help="reference = torch, slow")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_eval)


@user_errors
def run_eval(args: Any) -> int:
    from backend.errors import InvalidOptionError, PortraitSplatError
    from backend.eval import evaluate
    from backend.eval.result_io import job_photo

    if args.views < 1 or args.size < 64:
        raise InvalidOptionError(
            f"--views {args.views} --size {args.size}: the orbit needs at least 1 view of at least 64 px.",
            hint="Leave --views and --size at their defaults (24 views, 512 px).",
        )
    photo = args.photo or job_photo(args.result)
    if photo is None:
        raise PortraitSplatError(
            f"No photo given and none beside {args.result}.",
            code="no_photo",
            hint="Pass --photo PHOTO, the portrait the head was made from.",
        )
    result = Path(args.result)
    out = args.out or (result / "eval" if result.is_dir() else result.parent / "eval")
    log = None if args.quiet else print
    figures = evaluate(
        result, photo, out, args.views, args.size, ply_frame=args.ply_frame, renderer=args.renderer, log=log
    )
    print(summary_line(figures))
    print(f"wrote {out / 'metrics.json'}, contact_sheet.png, turntable.mp4 and front.png")
    return 0
