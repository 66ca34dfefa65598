"""``python -m backend models check|download`` (wired in backend/cli.py)."""

from __future__ import annotations

import os
import sys

from backend.errors import PortraitSplatError

from .fetch import default_download_names, download
from .registry import ENV_ROOT, REGISTRY
from .store import check, format_check, models_root

# --- CLI -----------------------------------------------------------------------------------


def add_models_parser(subparsers) -> None:
    """``python -m backend models check|download`` (wired in backend/cli.py)."""
    p = subparsers.add_parser("models", help="list, check and download pretrained models")
    sub = p.add_subparsers(dest="models_command", required=True)
    c = sub.add_parser("check", help="table of models: present/missing, size, licence, fix")
    c.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=list(REGISTRY))
    c.add_argument("--no-verify", action="store_true", help="skip the header check of weight files")
    c.set_defaults(func=_cli_check)
    d = sub.add_parser("download", help="fetch models (default: every model a pipeline needs)")
    d.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        choices=list(REGISTRY),
        help=f"models to fetch: {', '.join(REGISTRY)}",
    )
    d.add_argument("--all", action="store_true", help="include the optional models")
    d.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN or saved login)")
    d.add_argument("--force", action="store_true", help="fetch again even if present")
    d.set_defaults(func=_cli_download)


def _cli_check(args) -> int:
    statuses = check(args.only, verify=not args.no_verify)
    print(f"model root: {models_root()}  (set {ENV_ROOT} to move it)")
    print(format_check(statuses))
    needed = {n for s in REGISTRY.values() if not s.optional for n in [s.name]}
    bad = [s.name for s in statuses if not s.present and s.name in needed]
    if bad:
        print(
            f"\nmissing for some pipelines: {', '.join(bad)}. Fetch them all with: "
            f"python -m backend models download --only {' '.join(bad)}"
        )
    return 0


def _cli_download(args) -> int:
    names = args.only or ([*REGISTRY] if args.all else default_download_names())
    try:
        results = download(names, token=args.token or os.environ.get("HF_TOKEN"), force=args.force)
    except PortraitSplatError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    failed = 0
    for r in results:
        if r.ok:
            print(f"{r.name:18s} {'already present' if r.skipped else 'downloaded'}: {r.path}")
        else:
            failed += 1
            print(f"{r.name:18s} FAILED [{r.error.code}]: {r.error.message}", file=sys.stderr)
            if r.error.hint:
                print(f"{'':18s} hint: {r.error.hint}", file=sys.stderr)
    return 1 if failed else 0
