"""``models check|download``: the pretrained weights (see :mod:`backend.models`)."""

from __future__ import annotations

import os
import sys
from typing import Any

from backend.models import ENV_ROOT, REGISTRY, check, default_download_names, download, format_check, models_root

from .common import user_errors


def add_parser(subparsers: Any) -> None:
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
    optional = ", ".join(f"{s.name} ({'/'.join(s.used_by)})" for s in REGISTRY.values() if s.optional)
    d.add_argument("--all", action="store_true", help=f"include the optional models: {optional}")
    d.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN or saved login)")
    d.add_argument("--force", action="store_true", help="fetch again even if present")
    d.set_defaults(func=_cli_download)


@user_errors
def _cli_check(args: Any) -> int:
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


@user_errors
def _cli_download(args: Any) -> int:
    names = args.only or default_download_names(include_optional=args.all)
    results = download(names, token=args.token or os.environ.get("HF_TOKEN"), force=args.force)
    failed = 0
    for r in results:
        if r.ok or r.error is None:
            print(f"{r.name:18s} {'already present' if r.skipped else 'downloaded'}: {r.path}")
        else:
            failed += 1
            print(f"{r.name:18s} FAILED [{r.error.code}]: {r.error.message}", file=sys.stderr)
            if r.error.hint:
                print(f"{'':18s} hint: {r.error.hint}", file=sys.stderr)
    return 1 if failed else 0
