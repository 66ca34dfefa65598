"""The one command line: ``python -m backend <command>``.

    generate PHOTO --out DIR [--connect F]    photo -> head, here or through a server (:mod:`.generate`)
    serve | ping | jobs                        the ZeroMQ service (:mod:`.service`)
    models check | download                    pretrained weights (:mod:`.models`)
    eval RESULT --photo PHOTO                  a head's quality figures (:mod:`.eval`)
    batch INPUT --out DIR [--ray [ADDRESS]]    many photos x styles, resumable (:mod:`.batch`)
    convert IN OUT [--mesh]                    splat file -> ply/spz/glb/splat, or a mesh (:mod:`.convert`)

Every command reports a failure the same way: ``error [code]: message`` and ``hint: ...`` on
stderr, exit code 1 (2 for a usage problem). Heavy imports (torch, the pipelines) happen
inside the commands that need them, so ``serve`` stays torch-free.
"""

from __future__ import annotations

import argparse

from . import batch, generate, models, service
from . import convert as convert_cmd
from . import eval as eval_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="PortraitSplat backend")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    service.add_parsers(sub)
    models.add_parser(sub)
    eval_cmd.add_parser(sub)
    batch.add_parser(sub)
    convert_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
