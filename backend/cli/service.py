"""``serve``, ``ping`` and ``jobs``: the ZeroMQ service and the commands that talk to it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from .common import EXIT_FAILED, EXIT_USAGE, MiB, print_error, user_errors


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "portraitsplat"


def add_parsers(subparsers: Any) -> None:
    add_serve_parser(subparsers)
    add_ping_parser(subparsers)
    add_jobs_parser(subparsers)


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the backend service (ZeroMQ) for Blender and the CLI"
    )
    p.add_argument(
        "--connection-file",
        type=Path,
        default=None,
        help="where to write the connection file (default: STATE_DIR/connection.json)",
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help=f"job folders live here (default: {default_state_dir()})"
    )
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--router-port", type=int, default=0, help="request port (default: a free one)")
    p.add_argument("--pub-port", type=int, default=0, help="event port (default: a free one)")
    p.add_argument("--no-key", action="store_true", help="do not sign messages (refused unless bound to loopback)")
    p.add_argument(
        "--reuse-connection-file",
        action="store_true",
        help="keep the key and ports of an existing connection file, so clients holding it reconnect after a restart",
    )
    p.add_argument("--curve", action="store_true", help="encrypt traffic with ZeroMQ CURVE")
    p.add_argument("--pipelines", default=None, help="comma-separated pipelines to load (default: all available)")
    p.add_argument("--preview-hz", type=float, default=5.0, help="most previews per second per job (0: none)")
    p.add_argument(
        "--preview-dtype", choices=["float32", "float16"], default="float32", help="default preview precision"
    )
    p.add_argument("--max-frame-mb", type=float, default=64.0, help="largest message frame a client may send")
    p.add_argument("--max-image-mb", type=float, default=50.0, help="largest photo accepted")
    p.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="largest photo in pixels (decompression-bomb guard)"
    )
    p.add_argument(
        "--cancel-grace", type=float, default=0.6, help="seconds a job may take to stop before its worker is killed"
    )
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=serve)
    return p


def add_ping_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ping", help="check that a backend answers; print its versions and capabilities"
    )
    p.add_argument("--connection-file", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", action="store_true", help="print the welcome message as JSON")
    p.set_defaults(func=ping)
    return p


def add_jobs_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="list a backend's jobs; delete ended ones and their folders"
    )
    p.add_argument("--connection-file", type=Path, required=True)
    p.add_argument("--delete", nargs="+", default=[], metavar="JOB_ID", help="delete these ended jobs")
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="delete every ended job that finished more than DAYS days ago",
    )
    p.add_argument("--json", action="store_true", help="print the job records as JSON")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=jobs)
    return p


def serve(args: Any) -> int:
    from backend.errors import PortraitSplatError
    from backend.server import Server
    from backend.server_config import ServerConfig

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="[server] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state_dir = args.state_dir or default_state_dir()
    key, router_port, pub_port = ("" if args.no_key else None), args.router_port, args.pub_port
    connection_file = args.connection_file or state_dir / "connection.json"
    if args.reuse_connection_file and connection_file.exists() and not args.no_key:
        from blender_addon.core.connection import ConnectionFileError, read_connection_file

        try:
            old = read_connection_file(connection_file)
        except ConnectionFileError as exc:
            print_error("bad_connection_file", exc.message, "Delete it, or drop --reuse-connection-file.")
            return EXIT_USAGE
        key, router_port, pub_port = old.key or None, router_port or old.router_port, pub_port or old.pub_port
    try:
        config = ServerConfig(
            state_dir=state_dir,
            connection_file=connection_file,
            bind=args.bind,
            router_port=router_port,
            pub_port=pub_port,
            key=key,
            curve=args.curve,
            pipelines=tuple(n.strip() for n in args.pipelines.split(",") if n.strip()) if args.pipelines else None,
            preview_hz=args.preview_hz,
            preview_dtype=args.preview_dtype,
            max_frame_bytes=int(args.max_frame_mb * MiB),
            max_image_bytes=int(args.max_image_mb * MiB),
            max_image_pixels=args.max_image_pixels,
            cancel_grace_s=args.cancel_grace,
            heartbeat_s=args.heartbeat,
        )
        server = Server(config)
        info = server.start()
    except PortraitSplatError as exc:
        print_error(exc.code, exc.message, exc.hint)
        return EXIT_USAGE
    except OSError as exc:  # zmq.ZMQError is an OSError: port in use, bad address
        print_error(
            "bind_failed", f"cannot listen on {args.bind}: {exc}", "Choose other ports or another --bind address."
        )
        return EXIT_FAILED

    def stop(signum: int, frame: object) -> None:
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"PortraitSplat backend {info.server_version} (protocol {info.protocol_version}) listening on "
        f"{info.router_url} + {info.pub_url}; connection file: {config.connection_path}",
        flush=True,
    )
    server.serve_forever()
    return 0


# ------------------------------------------------------------------------- ping
@user_errors
def ping(args: Any) -> int:
    from blender_addon.core.client import Client

    with Client(args.connection_file, name="portraitsplat-ping") as client:
        t0 = time.perf_counter()
        welcome = client.connect(timeout=args.timeout)
        rtt = client.ping(timeout=args.timeout)
        hello_s = time.perf_counter() - t0
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(welcome) | {"rtt_ms": rtt * 1000}, indent=1))
        return 0
    vram = ""
    if welcome.vram_total:
        vram = f", VRAM {(welcome.vram_free or 0) / 2**30:.1f} of {welcome.vram_total / 2**30:.1f} GiB free"
    print(
        f"backend {welcome.server_version} (protocol {welcome.protocol_version}) pid {welcome.server_pid}: answered in {rtt * 1000:.2f} ms (handshake {hello_s * 1000:.0f} ms)"
    )
    print(f"worker: {welcome.worker_state} (pid {welcome.worker_pid}), device {welcome.device}{vram}")
    print(f"pipelines: {', '.join(welcome.pipelines) or 'none yet'}")
    for name, why in welcome.unavailable.items():
        print(f"  unavailable: {name}: {why}")
    if welcome.models:
        print(f"models: {json.dumps(welcome.models)}")
    caps = welcome.capabilities
    print("capabilities: " + ", ".join(f"{k}={v}" for k, v in caps.items()))
    return 0


# ------------------------------------------------------------------------- jobs
@user_errors
def jobs(args: Any) -> int:
    """List the jobs (newest first), or delete the named ones / those ended before a cutoff."""
    from blender_addon.core.client import Client, ServiceError

    deleting = bool(args.delete) or args.older_than is not None
    with Client(args.connection_file, name="portraitsplat-jobs") as client:
        client.connect(timeout=args.timeout)
        records = client.list_jobs(limit=100_000, timeout=args.timeout)
        if not deleting:
            _print_jobs(records, as_json=args.json)
            return 0
        doomed = list(args.delete)
        if args.older_than is not None:
            cutoff = time.time() - args.older_than * 86400.0
            doomed += [
                r["job_id"]
                for r in records
                if r.get("finished") and r["finished"] < cutoff and r["job_id"] not in doomed
            ]
        failed, freed = 0, 0
        for job_id in doomed:
            try:
                freed += client.delete_job(job_id, timeout=args.timeout)
                print(f"deleted {job_id}")
            except ServiceError as exc:  # one job refused (running, unknown): report it and go on
                failed += 1
                print_error(exc.code, f"{job_id}: {exc.message}", exc.hint)
        print(f"{len(doomed) - failed} job(s) deleted, {freed / MiB:.1f} MiB freed")
        return EXIT_FAILED if failed else 0


def _print_jobs(records: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(records, indent=1))
        return
    print(f"{'job':26s} {'state':12s} {'pipeline':15s} {'preset':8s} {'splats':>8s}  created (UTC)        photo")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.get("created") or 0))
        n = r.get("n_gaussians")
        print(
            f"{r.get('job_id', ''):26s} {r.get('state', ''):12s} {r.get('pipeline', ''):15s} {r.get('preset', ''):8s} "
            f"{'' if n is None else f'{n:,}':>8s}  {created}  {r.get('image_name', '')}"
        )
