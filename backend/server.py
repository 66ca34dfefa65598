"""The backend service: sockets <-> protocol <-> job queue. No tensor math, no torch.

One thread, one ``zmq.Poller`` loop over three sockets:

- ROUTER (requests from every client's DEALER; replies go back to the sender, and each
  job's final ``job_done``/``job_failed`` goes to the client that submitted it);
- XPUB (``progress`` and ``preview`` on the submitter's session topic, ``welcome`` as the
  subscription check of the hello handshake, and ``heartbeat`` for everyone);
- the worker's PAIR socket (see ``backend.worker.WorkerExecutor``).

Previews (and progress) are latest-wins, so a slow client gets the newest snapshot, not a
backlog:

- the worker drops a preview when its channel to the server is full;
- the server keeps only the newest preview and the newest progress per job;
- it publishes on an XPUB with ``XPUB_NODROP`` and a tiny send high-water mark
  (``pub_hwm``): a send fails with EAGAIN only when *that job's subscriber* already has
  ``pub_hwm`` messages waiting, and then the event stays pending (replaced by any newer
  one) and is retried every few milliseconds. A plain PUB would instead drop the newest
  message and deliver the stale ones queued before it. The client's SUB keeps a tiny
  receive high-water mark too, so its I/O thread cannot hoard a backlog either;
- previews go out at most ``preview_hz`` times a second per job.

Usage (see ``backend.service_cli`` for the command line)::

    server = Server(ServerConfig(state_dir=Path("state"), connection_file=Path("conn.json")))
    server.start()            # binds, recovers jobs, writes the connection file, starts the worker
    server.serve_forever()    # until a shutdown request or request_stop()
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import zmq

import backend
from backend import jobs as jobs_mod
from backend import models as models_mod
from backend.errors import PortraitSplatError
from backend.jobs import CancelToken, JobNotFound, JobQueue, JobRecord, JobStore
from backend.worker import RunJob, WorkerExecutor, WorkerReady, WorkerResult, crash_error
from blender_addon.core.connection import ConnectionInfo, new_key, read_connection_file, write_connection_file
from blender_addon.core.protocol import (
    HEARTBEAT_TOPIC,
    PROTOCOL_VERSION,
    SIGNATURE_SCHEME,
    Cancel,
    CancelReply,
    DeleteJob,
    DeleteReply,
    Error,
    GetResult,
    Heartbeat,
    Hello,
    JobAccepted,
    JobDone,
    JobFailed,
    JobList,
    Limits,
    ListJobs,
    Message,
    Ping,
    Pong,
    Preview,
    Progress,
    ProtocolError,
    Result,
    Session,
    Shutdown,
    ShutdownReply,
    SubmitJob,
    Welcome,
    session_topic,
)

log = logging.getLogger(__name__)
MiB = 2**20
PREVIEW_DTYPES = ("float32", "float16")
MAX_WORKER_START_FAILURES = 3  # consecutive crashes before ready: then fail the queue and back off


class ServerConfigError(PortraitSplatError):
    code = "bad_server_config"


class InsecureBindError(ServerConfigError):
    code = "insecure_bind"
    hint = "Bind 127.0.0.1 (the default), or keep message signing on (do not pass --no-key)."


@dataclass
class ServerConfig:
    """Everything ``serve`` can be told. Defaults are the safe ones."""

    state_dir: Path
    connection_file: Path | None = None  # default: <state_dir>/connection.json
    bind: str = "127.0.0.1"
    router_port: int = 0  # 0: a free port
    pub_port: int = 0
    key: str | None = None  # None: a fresh random key; "": unsigned (loopback only)
    curve: bool = False  # ZeroMQ CURVE encryption on both sockets
    pipelines: tuple[str, ...] | None = None  # None: every available pipeline
    preview_hz: float = 5.0  # the default and the ceiling for a job's preview rate
    preview_dtype: str = "float32"  # default preview precision ("float16" halves the bytes)
    max_frame_bytes: int = 64 * MiB  # largest frame a client may send
    max_image_bytes: int = 50 * MiB
    max_image_pixels: int = 40_000_000
    heartbeat_s: float = 1.0
    cancel_grace_s: float = 0.6  # a running job that has not stopped by then is killed
    pub_hwm: int = 2  # events queued per subscriber before newer ones wait (latest-wins)
    worker_python: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.connection_file = (
            Path(self.connection_file) if self.connection_file else self.state_dir / "connection.json"
        )
        if self.preview_dtype not in PREVIEW_DTYPES:
            raise ServerConfigError(f"preview dtype {self.preview_dtype!r} is not one of {PREVIEW_DTYPES}")
        if self.key == "" and not is_loopback(self.bind):
            raise InsecureBindError(
                f"Refusing to bind {self.bind} without a signing key: anyone on the network could run jobs."
            )
        if self.curve and not zmq.has("curve"):
            raise ServerConfigError(
                "This libzmq has no CURVE support.", hint="Install a pyzmq wheel built with libsodium, or drop --curve."
            )

    @property
    def limits(self) -> Limits:
        return Limits(max_frame_bytes=self.max_frame_bytes, max_total_bytes=self.max_frame_bytes + 4 * MiB)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CURVE_KEY_FILE = "curve_server.key"  # in the state directory, mode 0600


def load_or_create_curve_keypair(path: Path) -> tuple[bytes, bytes]:
    """The server's CURVE (public, secret) keys, Z85, kept in ``path`` (mode 0600) so that a
    restarted server keeps its identity and clients holding the old connection file reconnect.
    The secret never goes into the connection file, which clients read."""
    if path.exists():
        try:
            public, secret = path.read_bytes().split()
            if zmq.curve_public(secret) != public:
                raise ValueError("the public key does not match the secret key")
        except (OSError, ValueError, zmq.ZMQError) as exc:
            raise ServerConfigError(
                f"The CURVE key file {path} is unreadable or damaged: {exc}",
                hint="Delete it; the server makes a new key (clients then need the new connection file).",
            ) from exc
        return public, secret
    public, secret = zmq.curve_keypair()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(public + b"\n" + secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return public, secret


@dataclass
class _Running:
    job_id: str
    cancel: CancelToken | None = None  # set once a cancel was asked for


class Server:
    def __init__(self, config: ServerConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context(io_threads=1)
        self.key = new_key() if config.key is None else config.key
        self.session = Session(self.key, limits=config.limits)
        self.store = JobStore(config.state_dir)
        self.queue = JobQueue()
        self.executor = WorkerExecutor(
            self.context, pipelines=config.pipelines, python=config.worker_python, env=config.worker_env
        )
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.info: ConnectionInfo | None = None
        self._submitters: dict[str, list[bytes]] = {}  # job_id -> ROUTER identities of its submitter
        self._running: _Running | None = None
        self._pending_previews: dict[str, Preview] = {}  # job_id -> newest not yet published
        self._pending_progress: dict[str, Progress] = {}
        self._last_preview_pub: dict[str, float] = {}
        self._next_heartbeat = 0.0
        self._worker_failures = 0
        self._worker_restart_at = 0.0
        self._stopping = False
        self.stats = {"previews_in": 0, "previews_out": 0, "previews_dropped": 0, "bad_messages": 0}
        self._handlers: dict[type, Callable[[Any, Any], None]] = {
            Hello: self._on_hello,
            Ping: self._on_ping,
            SubmitJob: self._on_submit,
            Cancel: self._on_cancel,
            ListJobs: self._on_list_jobs,
            GetResult: self._on_get_result,
            DeleteJob: self._on_delete_job,
            Shutdown: self._on_shutdown,
        }

    # --------------------------------------------------------------- lifecycle
    def start(self) -> ConnectionInfo:
        cfg = self.config
        self.router = self._socket(zmq.ROUTER)
        # libzmq drops a peer that sends a frame this large before we ever see it; frames
        # between max_frame_bytes and this get a typed "oversize" error reply
        self.router.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_frame_bytes + MiB)
        self.pub = self._socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, cfg.pub_hwm)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)  # EAGAIN instead of a silent drop: see the module doc
        host = "127.0.0.1" if cfg.bind == "localhost" else cfg.bind
        url = f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
        router_port = self._bind(self.router, url, cfg.router_port)
        pub_port = self._bind(self.pub, url, cfg.pub_port)

        interrupted = self.store.recover()
        for record in interrupted:
            log.warning(
                "job %s was %s when the backend stopped: marked interrupted", record.job_id, "running or queued"
            )
        self.info = ConnectionInfo(
            ip=cfg.bind,
            router_port=router_port,
            pub_port=pub_port,
            key=self.key,
            server_version=backend.__version__,
            pid=os.getpid(),
            curve_server_key=self._curve_public.decode("ascii") if cfg.curve else None,
        )
        self.executor.start()
        write_connection_file(cfg.connection_file, self.info)
        log.info(
            "listening on %s (requests) and %s (events); connection file %s",
            self.info.router_url,
            self.info.pub_url,
            cfg.connection_file,
        )
        return self.info

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.config.curve:
            if not hasattr(self, "_curve_secret"):
                self._curve_public, self._curve_secret = load_or_create_curve_keypair(
                    Path(self.config.state_dir) / CURVE_KEY_FILE
                )
            sock.curve_secretkey = self._curve_secret
            sock.curve_publickey = self._curve_public
            sock.curve_server = True
        return sock

    @staticmethod
    def _bind(sock: zmq.Socket, url: str, port: int) -> int:
        if ":" in url[6:]:
            sock.setsockopt(zmq.IPV6, 1)
        if port:
            sock.bind(f"{url}:{port}")
            return port
        return sock.bind_to_random_port(url)

    def request_stop(self) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        assert self.router is not None, "call start() first"
        try:
            while not self._stopping:
                self._step()
        finally:
            self.close()

    def _step(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        if self.executor.socket is not None:
            poller.register(self.executor.socket, zmq.POLLIN)
        ready = dict(poller.poll(self._timeout_ms()))
        if self.router in ready:
            self._drain_router()
        if self.pub in ready:
            self._drain_subscriptions()
        if self.executor.socket is not None and self.executor.socket in ready:
            self._drain_worker()
        self._tick()

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = [self._next_heartbeat, now + 0.1]  # 0.1 s: notice a dead worker promptly
        if self._pending_progress:
            due.append(now + 0.005)  # a subscriber was full: retry soon
        for job_id in self._pending_previews:
            due.append(max(now + 0.005, self._last_preview_pub.get(job_id, 0.0) + 1.0 / self._preview_hz(job_id)))
        if self._running is not None and self._running.cancel is not None:
            due.append(self._running.cancel.deadline)
        return max(0, int((min(due) - now) * 1000) + 1)

    def close(self) -> None:
        """Stop the worker; mark unfinished jobs interrupted; close sockets; remove the
        connection file (if it is still ours)."""
        self.executor.stop()
        for record in self.store.records.values():
            if not record.terminal:
                self.store.finish(record, jobs_mod.INTERRUPTED, error=dict(jobs_mod.INTERRUPTED_ERROR))
        for sock in (self.router, self.pub):
            if sock is not None:
                sock.close(linger=0)
        self.router = self.pub = None
        try:
            if self.info is not None and read_connection_file(self.config.connection_file).pid == os.getpid():
                self.config.connection_file.unlink()
        except (OSError, ValueError):
            pass
        self.context.term()

    # ---------------------------------------------------------------- requests
    def _drain_router(self, max_messages: int = 100) -> None:
        for _ in range(max_messages):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                env = self.session.deserialize(frames)
            except ProtocolError as exc:
                self.stats["bad_messages"] += 1
                log.warning("bad message from a client: %s", exc)
                self._reply_error([frames[0].bytes], exc.msg_id, exc.code, exc.message, _protocol_hint(exc.code))
                continue
            handler = self._handlers.get(type(env.message))
            if handler is None:
                self._reply_error(
                    env.identities,
                    env.header.msg_id,
                    "unexpected_msg_type",
                    f"the server does not accept {env.header.msg_type!r} messages",
                )
                continue
            try:
                handler(env, env.message)
            except PortraitSplatError as exc:
                self._reply_error(env.identities, env.header.msg_id, exc.code, exc.message, exc.hint)
            except Exception as exc:
                log.exception("error handling %s", env.header.msg_type)
                self._reply_error(
                    env.identities,
                    env.header.msg_id,
                    "internal_error",
                    f"{type(exc).__name__}: {exc}",
                    "This is a bug in the backend; its log has the traceback.",
                )

    def _reply(self, env, msg: Message) -> None:
        self.session.send(self.router, msg, parent_id=env.header.msg_id, identities=env.identities)

    def _reply_error(self, identities: list[bytes], parent_id: str, code: str, message: str, hint: str = "") -> None:
        self.session.send(
            self.router, Error(code=code, message=message, hint=hint), parent_id=parent_id, identities=identities
        )

    @staticmethod
    def _missing_models(pipelines) -> dict[str, str]:
        """pipeline -> why it cannot run for want of weights (checked now: file existence
        only, so models downloaded while the server runs count at once)."""
        gaps = {}
        for name in pipelines:
            try:
                models_mod.ensure_models(name)
            except PortraitSplatError as exc:
                gaps[name] = f"{exc.message} {exc.hint}".strip()
        return gaps

    def _welcome(self) -> Welcome:
        cfg, w = self.config, self.executor.info
        state = self.executor.state
        if state in ("stopped", "exiting"):
            state = "error" if self._worker_failures >= MAX_WORKER_START_FAILURES else "restarting"
        gaps = self._missing_models(w.pipelines) if w else {}
        return Welcome(
            server_version=backend.__version__,
            protocol_version=PROTOCOL_VERSION,
            pipelines=[p for p in w.pipelines if p not in gaps] if w else [],
            unavailable=(dict(w.unavailable) | gaps) if w else {},
            models=dict(w.models) if w else {},
            device=w.device if w else "unknown",
            vram_free=w.vram_free if w else None,
            vram_total=w.vram_total if w else None,
            worker_state=state,
            worker_error=""
            if self._worker_failures < MAX_WORKER_START_FAILURES
            else "the worker keeps crashing at start; see the backend log",
            capabilities={
                "signature_scheme": SIGNATURE_SCHEME,
                "signed": bool(self.key),
                "curve": cfg.curve,
                "max_frame_bytes": cfg.max_frame_bytes,
                "max_image_bytes": cfg.max_image_bytes,
                "max_image_pixels": cfg.max_image_pixels,
                "preview_hz": cfg.preview_hz,
                "preview_dtypes": list(PREVIEW_DTYPES),
                "preview_dtype": cfg.preview_dtype,
                "heartbeat_s": cfg.heartbeat_s,
                "cancel_grace_s": cfg.cancel_grace_s,
            },
            server_pid=os.getpid(),
            worker_pid=self.executor.pid,
        )

    def _on_hello(self, env, msg: Hello) -> None:
        welcome = self._welcome()
        self._reply(env, welcome)
        # the subscription check: the client waits for this on its SUB before it trusts it
        self._publish_lossy(welcome, session_topic(env.header.session), parent_id=env.header.msg_id)

    def _on_ping(self, env, msg: Ping) -> None:
        self._reply(env, Pong(server_time=time.time()))

    def _on_submit(self, env, msg: SubmitJob) -> None:
        cfg = self.config
        if not msg.image:
            raise PortraitSplatError("The photo is empty (0 bytes).", code="bad_image", hint="Choose a photo file.")
        if len(msg.image) > cfg.max_image_bytes:
            raise PortraitSplatError(
                f"The photo is {len(msg.image) / MiB:.1f} MiB; this backend accepts up to {cfg.max_image_bytes / MiB:.0f} MiB.",
                code="bad_image",
                hint="Use a smaller JPEG, or start the backend with a larger --max-image-mb.",
            )
        info = self.executor.info
        if info is not None and msg.pipeline not in info.pipelines:
            why = info.unavailable.get(msg.pipeline)
            raise PortraitSplatError(
                f"The pipeline {msg.pipeline!r} is not available" + (f": {why}" if why else "."),
                code="unknown_pipeline",
                hint=f"Available: {', '.join(info.pipelines) or 'none'}.",
            )
        models_mod.ensure_models(msg.pipeline)  # missing weights: one clear error now, not mid-job
        dtype = msg.preview_dtype or cfg.preview_dtype
        if dtype not in PREVIEW_DTYPES:
            raise PortraitSplatError(f"preview_dtype {dtype!r} is not one of {PREVIEW_DTYPES}.", code="bad_request")
        hz = cfg.preview_hz if msg.preview_hz is None else max(0.0, min(float(msg.preview_hz), cfg.preview_hz))
        options = dict(msg.options)
        if msg.style_prompt:
            options.setdefault("style", msg.style_prompt)
        record = JobRecord(
            job_id=jobs_mod.new_job_id(),
            pipeline=msg.pipeline,
            preset=msg.preset,
            seed=msg.seed,
            style_prompt=msg.style_prompt,
            options=options,
            session=env.header.session,
            image_name=msg.image_name[:200],
            preview_hz=hz,
            preview_dtype=dtype,
        )
        request = {f.name: getattr(msg, f.name) for f in fields(msg) if f.name != "image"}
        request |= {"image_bytes": len(msg.image), "received": time.time(), "session": env.header.session}
        self.store.create(record, msg.image, request)
        position = self.queue.push(record.job_id) + (1 if self._running is not None else 0)
        self._submitters[record.job_id] = list(env.identities)
        log.info(
            "job %s queued (%s/%s, %d bytes, position %d)",
            record.job_id,
            record.pipeline,
            record.preset,
            len(msg.image),
            position,
        )
        self._reply(env, JobAccepted(job_id=record.job_id, position=position))
        self._dispatch()

    def _on_cancel(self, env, msg: Cancel) -> None:
        record = self._record(msg.job_id)
        running = self._running
        if record.job_id in self.queue:
            self.queue.remove(record.job_id)
            self._end_job(
                record,
                jobs_mod.CANCELLED,
                {"code": "cancelled", "message": "The job was cancelled before it started.", "hint": ""},
            )
        elif running is not None and running.job_id == record.job_id:
            if running.cancel is None:
                running.cancel = CancelToken(self.config.cancel_grace_s)
                self.executor.cancel(record.job_id)
                log.info("job %s: cancel requested", record.job_id)
            self._reply(env, CancelReply(job_id=record.job_id, state="cancelling"))
            return
        self._reply(env, CancelReply(job_id=record.job_id, state=record.state))

    def _on_list_jobs(self, env, msg: ListJobs) -> None:
        self._reply(env, JobList(jobs=[r.to_dict() for r in self.store.list(msg.limit)]))

    def _on_get_result(self, env, msg: GetResult) -> None:
        record = self._record(msg.job_id)
        if record.state != jobs_mod.DONE:
            err = record.error or {}
            detail = f": {err['message']}" if err.get("message") else ""
            raise PortraitSplatError(
                f"Job {record.job_id} is {record.state}, so it has no result{detail}",
                code="no_result",
                hint=err.get("hint", "") if record.terminal else "Wait for job_done.",
            )
        try:
            splats, ply = self.store.read_result(record.job_id)
        except (OSError, ValueError, KeyError) as exc:
            raise PortraitSplatError(
                f"The result files of job {record.job_id} cannot be read: {exc}",
                code="result_missing",
                hint="Run the job again.",
            ) from exc
        self._reply(env, Result(job_id=record.job_id, splats=splats, ply=ply, metrics=record.metrics))

    def _on_delete_job(self, env, msg: DeleteJob) -> None:
        record = self._record(msg.job_id)
        if not record.terminal:
            raise PortraitSplatError(
                f"Job {record.job_id} is {record.state}; only a job that has ended can be deleted.",
                code="job_active",
                hint="Cancel it first, then delete it.",
            )
        try:
            freed = self.store.delete(record.job_id)
        except OSError as exc:
            raise PortraitSplatError(
                f"The folder of job {record.job_id} could not be removed: {exc}",
                code="delete_failed",
                hint=f"Check the permissions of {self.store.jobs_dir}.",
            ) from exc
        for per_job in (self._submitters, self._pending_previews, self._pending_progress, self._last_preview_pub):
            per_job.pop(record.job_id, None)
        log.info("job %s: deleted (%.1f MB freed)", record.job_id, freed / 2**20)
        self._reply(env, DeleteReply(job_id=record.job_id, freed_bytes=freed))

    def _on_shutdown(self, env, msg: Shutdown) -> None:
        log.info("shutdown requested")
        self._reply(env, ShutdownReply())
        self._stopping = True

    def _record(self, job_id: str) -> JobRecord:
        try:
            return self.store.get(job_id)
        except JobNotFound:
            raise PortraitSplatError(
                f"There is no job {str(job_id)[:64]!r}.", code="not_found", hint="List the jobs to see their ids."
            ) from None

    # ------------------------------------------------------------------ worker
    def _drain_worker(self) -> None:
        for msg in self.executor.drain():
            running = self._running
            if isinstance(msg, WorkerReady):
                log.info("worker ready (pid %d): pipelines %s, device %s", msg.pid, msg.pipelines, msg.device)
                self._worker_failures = 0
                continue
            job_id = getattr(msg, "job_id", None)
            if running is None or job_id != running.job_id:
                log.warning("ignored a %s from the worker for job %s (not running)", msg.msg_type, job_id)
                continue
            record = self.store.get(job_id)
            if isinstance(msg, Progress):
                record.progress = asdict(msg)
                self.store.append_progress(job_id, {"t": time.time(), **record.progress})
                if job_id in self._pending_progress or not self._publish(msg, session_topic(record.session)):
                    self._pending_progress[job_id] = msg  # latest wins; flushed by _tick
            elif isinstance(msg, Preview):
                self.stats["previews_in"] += 1
                if job_id in self._pending_previews:
                    self.stats["previews_dropped"] += 1
                self._pending_previews[job_id] = msg  # latest wins
            elif isinstance(msg, WorkerResult):
                self.store.write_result(job_id, msg.splats)
                self._end_job(
                    record, jobs_mod.DONE, None, n_gaussians=len(msg.splats), metrics=msg.metrics, elapsed=msg.elapsed_s
                )
            elif isinstance(msg, JobFailed):
                state = jobs_mod.CANCELLED if msg.code == "cancelled" else jobs_mod.FAILED
                self._end_job(record, state, {"code": msg.code, "message": msg.message, "hint": msg.hint})

    def _end_job(
        self,
        record: JobRecord,
        state: str,
        error: dict | None,
        *,
        n_gaussians: int | None = None,
        metrics: dict | None = None,
        elapsed: float = 0.0,
    ) -> None:
        """Persist the final state, tell the submitter, free the worker."""
        self.store.finish(record, state, error=error, n_gaussians=n_gaussians, metrics=metrics)
        if state == jobs_mod.DONE:
            final: Message = JobDone(
                job_id=record.job_id, n_gaussians=n_gaussians or 0, elapsed_s=elapsed, metrics=metrics or {}
            )
            log.info("job %s done: %d Gaussians in %.1f s", record.job_id, n_gaussians or 0, elapsed)
        else:
            final = JobFailed(job_id=record.job_id, **(error or {"code": state, "message": f"job {state}", "hint": ""}))
            log.info("job %s %s: [%s] %s", record.job_id, state, final.code, final.message)
        identities = self._submitters.pop(record.job_id, None)
        if identities:
            self.session.send(self.router, final, identities=identities)
        self._pending_previews.pop(record.job_id, None)
        self._pending_progress.pop(record.job_id, None)
        self._last_preview_pub.pop(record.job_id, None)
        if self._running is not None and self._running.job_id == record.job_id:
            self._running = None
            self.executor.job_ended()

    def _dispatch(self) -> None:
        if self._running is not None or self.executor.state != "ready":
            return
        while (job_id := self.queue.pop()) is not None:
            record = self.store.get(job_id)
            info = self.executor.info
            if info is not None and record.pipeline not in info.pipelines:
                why = info.unavailable.get(record.pipeline, "no such pipeline")
                self._end_job(
                    record,
                    jobs_mod.FAILED,
                    {
                        "code": "unknown_pipeline",
                        "message": f"The pipeline {record.pipeline!r} is not available: {why}",
                        "hint": f"Available: {', '.join(info.pipelines) or 'none'}.",
                    },
                )
                continue
            self.store.start(record)
            self._running = _Running(job_id=job_id)
            self.executor.run(
                RunJob(
                    job_id=job_id,
                    image_path=str(self.store.image_path(record)),
                    pipeline=record.pipeline,
                    preset=record.preset,
                    seed=record.seed,
                    options=record.options,
                    preview_hz=record.preview_hz,
                    preview_dtype=record.preview_dtype,
                    max_image_pixels=self.config.max_image_pixels,
                    max_image_bytes=self.config.max_image_bytes,
                )
            )
            log.info("job %s running", job_id)
            return

    # ------------------------------------------------------------------- timers
    def _tick(self) -> None:
        now = time.monotonic()
        running = self._running
        if running is not None and running.cancel is not None and running.cancel.expired(now):
            log.warning(
                "job %s did not stop within %.1f s of its cancel: killing the worker",
                running.job_id,
                self.config.cancel_grace_s,
            )
            self.executor.kill()
            self._end_job(
                self.store.get(running.job_id),
                jobs_mod.CANCELLED,
                {"code": "cancelled", "message": "The job was cancelled (its worker was stopped).", "hint": ""},
            )
        if self.executor.proc is not None and self.executor.proc.poll() is not None:
            self._drain_worker()  # what it said before it exited (an out-of-memory report, ...)
        code = self.executor.poll_exit()
        if code is not None:
            self._worker_exited(code)
        if self.executor.state == "stopped" and not self._stopping and now >= self._worker_restart_at:
            self.executor.start()
        self._flush_events(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_s
            running = self._running
            hb = Heartbeat(
                server_time=time.time(),
                queue_length=len(self.queue),
                running_job=running.job_id if running else None,
                worker_state=self.executor.state,
            )
            self._publish_lossy(hb, HEARTBEAT_TOPIC)
        self._dispatch()

    def _worker_exited(self, code: int) -> None:
        running = self._running
        if running is not None:
            record = self.store.get(running.job_id)
            if running.cancel is not None:
                self._end_job(
                    record, jobs_mod.CANCELLED, {"code": "cancelled", "message": "The job was cancelled.", "hint": ""}
                )
            else:
                self._end_job(record, jobs_mod.FAILED, crash_error(code))
            self._worker_failures = 0
        elif self.executor.info is None:  # died before it was ready
            self._worker_failures += 1
            if self._worker_failures >= MAX_WORKER_START_FAILURES:
                self._fail_queue(
                    "worker_unavailable",
                    "The generation worker cannot start.",
                    "Check the backend log for the worker's error.",
                )
            self._worker_restart_at = time.monotonic() + min(30.0, 0.5 * 2**self._worker_failures)

    def _fail_queue(self, code: str, message: str, hint: str) -> None:
        while (job_id := self.queue.pop()) is not None:
            self._end_job(self.store.get(job_id), jobs_mod.FAILED, {"code": code, "message": message, "hint": hint})

    def _preview_hz(self, job_id: str) -> float:
        record = self.store.records.get(job_id)
        hz = record.preview_hz if record is not None else self.config.preview_hz
        return hz if hz > 0 else 1e-9

    # ------------------------------------------------------------------ events
    def _publish(self, msg: Message, topic: bytes) -> bool:
        """Send to the subscribers of ``topic``; False when one of them is full (XPUB_NODROP)."""
        try:
            self.session.send(self.pub, msg, identities=[topic], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _publish_lossy(self, msg: Message, topic: bytes, parent_id: str = "") -> None:
        """Heartbeats and the hello check: never wait on a full subscriber (a stalled
        client must not hold up the heartbeats of the others); a lost one is harmless."""
        self.pub.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.session.send(self.pub, msg, identities=[topic], parent_id=parent_id, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # lossy by design: the next heartbeat / hello follows
        finally:
            self.pub.setsockopt(zmq.XPUB_NODROP, 1)

    def _drain_subscriptions(self) -> None:
        """XPUB hands us (un)subscription messages; we only log them."""
        for _ in range(1000):
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] in (b"\x00", b"\x01"):
                log.debug("%s %r", "subscribe" if frame[:1] == b"\x01" else "unsubscribe", frame[1:65])

    def _flush_events(self, now: float) -> None:
        for job_id in list(self._pending_progress):
            record = self.store.records.get(job_id)
            if record is None or record.terminal:
                del self._pending_progress[job_id]
            elif self._publish(self._pending_progress[job_id], session_topic(record.session)):
                del self._pending_progress[job_id]
        for job_id in list(self._pending_previews):
            if now < self._last_preview_pub.get(job_id, 0.0) + 1.0 / self._preview_hz(job_id):
                continue
            record = self.store.records.get(job_id)
            if record is None or record.terminal:
                del self._pending_previews[job_id]
            elif self._publish(self._pending_previews[job_id], session_topic(record.session)):
                del self._pending_previews[job_id]
                self._last_preview_pub[job_id] = now
                self.stats["previews_out"] += 1


def _protocol_hint(code: str) -> str:
    return {
        "bad_signature": "Re-read the connection file: the server writes a new key each time it starts.",
        "version_mismatch": "Install the Blender add-on and the backend from the same release.",
        "oversize": "Send a smaller photo, or start the backend with a larger --max-frame-mb.",
    }.get(code, "The message did not follow the PortraitSplat protocol.")
