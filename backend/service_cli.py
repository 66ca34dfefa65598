"""Command-line front of the service: ``serve``, ``ping``, ``jobs`` and ``generate --connect``.

``backend/cli.py`` mounts these with :func:`add_parsers` and calls :func:`remote_generate`
for ``generate --connect F``. This module runs on its own too::

    python -m backend.service_cli serve --connection-file conn.json --state-dir state
    python -m backend.service_cli ping --connection-file conn.json
    python -m backend.service_cli jobs --connection-file conn.json [--delete ID ...] [--older-than DAYS]
    python -m backend.service_cli generate me.jpg --connect conn.json --out out/ --preset preview
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

MiB = 2**20
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "portraitsplat"


# ------------------------------------------------------------------------ parsers
def add_parsers(subparsers) -> None:
    """Add ``serve``, ``ping`` and ``jobs`` (``generate`` belongs to backend/cli.py)."""
    add_serve_parser(subparsers)
    add_ping_parser(subparsers)
    add_jobs_parser(subparsers)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run the backend service (ZeroMQ) for Blender and the CLI")
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


def add_ping_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ping", help="check that a backend answers; print its versions and capabilities")
    p.add_argument("--connection-file", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", action="store_true", help="print the welcome message as JSON")
    p.set_defaults(func=ping)
    return p


def add_jobs_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("jobs", help="list a backend's jobs; delete ended ones and their folders")
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


def add_remote_generate_parser(subparsers) -> argparse.ArgumentParser:
    """A ``generate`` that only runs through a server (for ``python -m backend.service_cli``)."""
    p = subparsers.add_parser("generate", help="photo -> Gaussian head, through a running backend")
    p.add_argument("photo", type=Path)
    p.add_argument("--connect", type=Path, required=True, help="the server's connection file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pipeline", default="photo")
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="")
    p.add_argument("--ply-frame", choices=["ply", "head"], default="ply")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option (VALUE parsed as JSON if it can be)",
    )
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=remote_generate)
    return p


# ------------------------------------------------------------------------ serve
def serve(args) -> int:
    from backend.errors import PortraitSplatError
    from backend.server import Server, ServerConfig

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
            _print_error("bad_connection_file", str(exc), "Delete it, or drop --reuse-connection-file.")
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
        _print_error(exc.code, exc.message, exc.hint)
        return EXIT_USAGE
    except OSError as exc:  # zmq.ZMQError is an OSError: port in use, bad address
        _print_error(
            "bind_failed", f"cannot listen on {args.bind}: {exc}", "Choose other ports or another --bind address."
        )
        return EXIT_FAILED

    def stop(signum, frame):
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"PortraitSplat backend {info.server_version} (protocol {info.protocol_version}) listening on "
        f"{info.router_url} + {info.pub_url}; connection file: {config.connection_file}",
        flush=True,
    )
    server.serve_forever()
    return 0


# ------------------------------------------------------------------- client side
def _client_command(fn):
    """Run a command that talks to a server; the client's typed errors become a message on
    stderr and an exit code (2: no usable connection file, 1: the server refused or failed)."""

    @functools.wraps(fn)
    def run(args) -> int:
        from blender_addon.core.client import ServiceError
        from blender_addon.core.connection import ConnectionFileError
        from blender_addon.core.protocol import ProtocolError

        try:
            return fn(args)
        except ConnectionFileError as exc:
            _print_error("no_connection_file", str(exc))
            return EXIT_USAGE
        except ServiceError as exc:
            _print_error(exc.code, exc.message, exc.hint)
            return EXIT_FAILED
        except ProtocolError as exc:
            _print_error(exc.code, exc.message)
            return EXIT_FAILED

    return run


# ------------------------------------------------------------------------- ping
@_client_command
def ping(args) -> int:
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
        vram = f", VRAM {welcome.vram_free / 2**30:.1f} of {welcome.vram_total / 2**30:.1f} GiB free"
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
@_client_command
def jobs(args) -> int:
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
                _print_error(exc.code, f"{job_id}: {exc.message}", exc.hint)
        print(f"{len(doomed) - failed} job(s) deleted, {freed / MiB:.1f} MiB freed")
        return EXIT_FAILED if failed else 0


def _print_jobs(records: list[dict], *, as_json: bool) -> None:
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


# --------------------------------------------------------------------- generate
@_client_command
def remote_generate(args) -> int:
    """``generate PHOTO --connect F --out DIR``: run the job on the server, draw progress,
    save DIR/head.ply (and DIR/metrics.json). Ctrl-C cancels the job on the server."""
    from tqdm import tqdm

    from backend.jobs import atomic_write_bytes, atomic_write_json
    from blender_addon.core.client import Client, ServiceError
    from blender_addon.core.protocol import JobFailed, Progress
    from blender_addon.core.splat_ply import to_ply_bytes

    quiet = getattr(args, "quiet", False)
    try:
        image = Path(args.photo).read_bytes()
    except OSError as exc:
        _print_error("bad_image", f"cannot read {args.photo}: {exc.strerror or exc}", "Check the photo's path.")
        return EXIT_FAILED
    options = _parse_options(getattr(args, "option", []) or [])
    if options is None:
        return EXIT_USAGE
    bars: dict[str, tqdm] = {}

    def on_event(msg) -> None:
        if quiet or not isinstance(msg, Progress):
            return
        bar = bars.get(msg.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[msg.stage] = tqdm(
                total=msg.total, desc=msg.stage, unit="step", dynamic_ncols=True, file=sys.stderr
            )
        bar.total = msg.total
        bar.n = msg.step
        if msg.message:
            bar.set_postfix_str(msg.message, refresh=False)
        bar.refresh()

    with Client(args.connect, name="portraitsplat-cli") as client:
        client.connect(timeout=10.0)
        job_id = client.submit(
            image,
            pipeline=args.pipeline,
            preset=args.preset,
            seed=args.seed,
            style_prompt=getattr(args, "style", "") or "",
            options=options,
            image_name=Path(args.photo).name,
            preview_hz=0.0,  # the CLI draws no previews: do not pay for them
        )
        if not quiet:
            print(f"job {job_id} submitted", file=sys.stderr)
        try:
            final = client.wait(job_id, timeout=getattr(args, "timeout", None), on_event=on_event)
        except KeyboardInterrupt:
            for bar in bars.values():
                bar.close()
            print(f"\ncancelling job {job_id} ...", file=sys.stderr)
            client.cancel(job_id)
            try:
                client.wait(job_id, timeout=5.0)
            except ServiceError:
                pass
            return EXIT_INTERRUPTED
        finally:
            for bar in bars.values():
                bar.close()
        if isinstance(final, JobFailed):
            _print_error(final.code, final.message, final.hint)
            return EXIT_FAILED
        splats, ply = client.get_result(job_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "ply_frame", "ply") == "head":
        ply = to_ply_bytes(splats, frame="head")
    atomic_write_bytes(out / "head.ply", ply)
    atomic_write_json(out / "metrics.json", final.metrics | {"job_id": job_id, "elapsed_s": round(final.elapsed_s, 2)})
    print(f"wrote {out / 'head.ply'} ({len(splats)} splats) from job {job_id} in {final.elapsed_s:.1f} s")
    return 0


def _parse_options(pairs: list[str]) -> dict | None:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _print_error("bad_option", f"--option {pair!r} is not KEY=VALUE")
            return None
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _print_error(code: str, message: str, hint: str = "") -> None:
    print(f"error [{code}]: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.service_cli", description="PortraitSplat service commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_ping_parser(sub)
    add_jobs_parser(sub)
    add_remote_generate_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
