"""``models check|download|link``: the pretrained weights (see :mod:`backend.models`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from backend.models import ENV_ROOT, REGISTRY, check, default_download_names, download, format_check, models_root

from .common import user_errors


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="list, check and download pretrained models")
    sub = p.add_subparsers(dest="models_command", required=True)
    c = sub.add_parser("check", help="table of models: present/missing, size, licence, fix")
    c.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=list(REGISTRY))
    c.add_argument(
        "--no-verify", action="store_true", help="skip reading the weight files' headers (integrity and key layout)"
    )
    c.set_defaults(func=_cli_check)
    ln = sub.add_parser(
        "link",
        help="find models you already have (A1111, ComfyUI) by their key layout and add them to models.toml",
    )
    ln.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        action="extend",
        required=True,
        metavar="DIR",
        help="folders to scan, e.g. ~/ComfyUI/models or stable-diffusion-webui/models",
    )
    ln.add_argument("--dry-run", action="store_true", help="report what would be linked; write nothing")
    ln.add_argument("--replace", action="store_true", help="link over models that already work where they are")
    ln.set_defaults(func=_cli_link)
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


@user_errors
def _cli_link(args: Any) -> int:
    from backend.models.link import link

    result = link([Path(p).expanduser() for p in args.sources], dry_run=args.dry_run, replace=args.replace)
    for name, f in result.linked.items():
        print(f"linked   {name:18s} {f.path}  ({f.what})")
    for name, why in result.kept.items():
        print(f"kept     {name:18s} {why}")
    for f in result.skipped:
        print(f"skipped  {f.path}: {f.reason}")
    for note in result.notes:
        print(f"note: {note}")
    if result.written:
        print(f"\nwrote [paths] of {result.config}; check them with: python -m backend models check")
    elif result.linked:
        print(f"\n(dry run: {result.config} not written)")
    else:
        print("\nnothing to link")
    return 0
