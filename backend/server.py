"""The backend service: sockets <-> protocol <-> job queue. No tensor math, no torch.

One thread, one ``zmq.Poller`` loop over three sockets:

- ROUTER (requests from every client's DEALER; replies go back to the sender, and each
  job's final ``job_done``/``job_failed`` goes to the client that submitted it);
- XPUB (``progress`` and ``preview`` on the submitter's session topic, ``welcome`` as the
  subscription check of the hello handshake, and ``heartbeat`` for everyone);
- the executor's socket (see :mod:`backend.executors`).

Previews (and progress) are latest-wins: see :mod:`backend.publisher`.

Usage (see ``backend.cli.service`` for the command line)::

    server = Server(ServerConfig(state_dir=Path("state"), connection_file=Path("conn.json")))
    server.start()            # binds, recovers jobs, writes the connection file, starts the worker
    server.serve_forever()    # until a shutdown request or request_stop()
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import zmq

import backend
from backend import jobs as jobs_mod
from backend.errors import PipelineUnavailableError, PortraitSplatError
from backend.executors import Executor, RunJob, WorkerExecutor, WorkerReady, WorkerResult, crash_error
from backend.jobs import JobQueue, JobRecord, JobStore
from backend.publisher import LatestWinsPublisher
from backend.server_config import CURVE_KEY_FILE, MiB, ServerConfig, load_or_create_curve_keypair
from backend.server_requests import MAX_WORKER_START_FAILURES, RequestHandlers, Running
from blender_addon.core.connection import ConnectionInfo, new_key, read_connection_file, write_connection_file
from blender_addon.core.protocol import (
    HEARTBEAT_TOPIC,
    Cancel,
    DeleteJob,
    GetResult,
    Heartbeat,
    Hello,
    JobDone,
    JobFailed,
    ListJobs,
    Message,
    Ping,
    Preview,
    Progress,
    ProtocolError,
    Session,
    Shutdown,
    SubmitJob,
    session_topic,
)
from blender_addon.core.splat_arrays import SplatArrays

log = logging.getLogger(__name__)


class Server(RequestHandlers):
    """The service loop. ``executor`` runs the jobs (default: a local worker subprocess);
    anything that implements :class:`backend.executors.Executor` will do."""

    def __init__(self, config: ServerConfig, context: zmq.Context[Any] | None = None, executor: Executor | None = None):
        self.config = config
        self.context = context or zmq.Context(io_threads=1)
        self.key = new_key() if config.key is None else config.key
        self.session = Session(self.key, limits=config.limits)
        self.store = JobStore(config.state_dir)
        self.queue = JobQueue()
        self.executor: Executor = executor or WorkerExecutor(
            self.context, pipelines=config.pipelines, python=config.worker_python, env=config.worker_env
        )
        self.router: zmq.Socket[Any] | None = None
        self.pub: zmq.Socket[Any] | None = None
        self.info: ConnectionInfo | None = None
        self._submitters: dict[str, list[bytes]] = {}  # job_id -> ROUTER identities of its submitter
        self._deliver: set[str] = set()  # job ids whose submitter wants the splats on job_done
        self._running: Running | None = None
        self.events = LatestWinsPublisher(self._publish)
        self._next_heartbeat = 0.0
        self._worker_failures = 0
        self._worker_restart_at = 0.0
        self._stopping = False
        self.bad_messages = 0
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
        write_connection_file(cfg.connection_path, self.info)
        log.info(
            "listening on %s (requests) and %s (events); connection file %s",
            self.info.router_url,
            self.info.pub_url,
            cfg.connection_path,
        )
        return self.info

    def _socket(self, kind: int) -> zmq.Socket[Any]:
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
    def _bind(sock: zmq.Socket[Any], url: str, port: int) -> int:
        if ":" in url[6:]:
            sock.setsockopt(zmq.IPV6, 1)
        if port:
            sock.bind(f"{url}:{port}")
            return port
        return sock.bind_to_random_port(url)

    @property
    def _pub(self) -> zmq.Socket[Any]:
        if self.pub is None:
            raise RuntimeError("the server has not started (or has closed)")
        return self.pub

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
        events_due = self.events.next_due(now)
        if events_due is not None:
            due.append(events_due)
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
            path = self.config.connection_path
            if self.info is not None and read_connection_file(path).pid == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        self.context.term()

    # ---------------------------------------------------------------- requests
    def _drain_router(self, max_messages: int = 100) -> None:
        for _ in range(max_messages):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                env = self.session.deserialize(frames)
            except ProtocolError as exc:
                self.bad_messages += 1
                log.warning("bad message from a client: %s", exc)
                self._reply_error([frames[0].bytes], exc.msg_id, exc.code, exc.message, exc.hint)
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
                self.events.offer(msg, session_topic(record.session))
            elif isinstance(msg, Preview):
                self.events.offer(msg, session_topic(record.session), preview_hz=record.preview_hz)
            elif isinstance(msg, WorkerResult):
                self.store.write_result(job_id, msg.splats)
                self._end_job(
                    record,
                    jobs_mod.DONE,
                    None,
                    n_gaussians=len(msg.splats),
                    metrics=msg.metrics,
                    elapsed=msg.elapsed_s,
                    splats=msg.splats,
                )
            elif isinstance(msg, JobFailed):
                state = jobs_mod.CANCELLED if msg.code == "cancelled" else jobs_mod.FAILED
                self._end_job(record, state, {"code": msg.code, "message": msg.message, "hint": msg.hint})

    def _end_job(
        self,
        record: JobRecord,
        state: str,
        error: dict[str, Any] | None,
        *,
        n_gaussians: int | None = None,
        metrics: dict[str, Any] | None = None,
        elapsed: float = 0.0,
        splats: SplatArrays | None = None,
    ) -> None:
        """Persist the final state, tell the submitter, free the worker. A submitter that
        asked ``deliver_result`` gets the final ``splats`` on its ``job_done`` (in memory:
        nothing is read back from the job folder)."""
        self.store.finish(record, state, error=error, n_gaussians=n_gaussians, metrics=metrics)
        deliver = record.job_id in self._deliver
        self._deliver.discard(record.job_id)
        if state == jobs_mod.DONE:
            final: Message = JobDone(
                job_id=record.job_id,
                n_gaussians=n_gaussians or 0,
                elapsed_s=elapsed,
                metrics=metrics or {},
                splats=splats.astype(np.float32) if deliver and splats is not None else None,
            )
            log.info("job %s done: %d Gaussians in %.1f s", record.job_id, n_gaussians or 0, elapsed)
        else:
            final = JobFailed(job_id=record.job_id, **(error or {"code": state, "message": f"job {state}", "hint": ""}))
            log.info("job %s %s: [%s] %s", record.job_id, state, final.code, final.message)
        identities = self._submitters.pop(record.job_id, None)
        if identities:
            self.session.send(self._router, final, identities=identities)
        self.events.forget(record.job_id)
        if self._running is not None and self._running.job_id == record.job_id:
            self._running = None
            self.executor.job_ended()

    def _unavailable(self, pipeline: str) -> PipelineUnavailableError | None:
        """The error for a pipeline the executor said it cannot run (None: it can, or it has
        not said yet)."""
        info = self.executor.info
        if info is None or pipeline in info.pipelines:
            return None
        return PipelineUnavailableError(pipeline, info.pipelines, info.unavailable.get(pipeline, "no such pipeline"))

    def _dispatch(self) -> None:
        if self._running is not None or self.executor.state != "ready":
            return
        while (job_id := self.queue.pop()) is not None:
            record = self.store.get(job_id)
            unavailable = self._unavailable(record.pipeline)
            if unavailable is not None:
                self._end_job(record, jobs_mod.FAILED, unavailable.to_dict())
                continue
            output_dir = self.store.start(record)
            self._running = Running(job_id=job_id)
            self.executor.run(
                RunJob(
                    job_id=job_id,
                    image_path=str(self.store.image_path(record)),
                    output_dir=str(output_dir),
                    pipeline=record.pipeline,
                    preset=record.preset,
                    seed=record.seed,
                    options=record.options,
                    preview_hz=record.preview_hz,
                    preview_dtype=record.preview_dtype,
                    evaluate=record.evaluate,
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
        if self.executor.exited():
            self._drain_worker()  # what it said before it exited (an out-of-memory report, ...)
        code = self.executor.poll_exit()
        if code is not None:
            self._worker_exited(code)
        if self.executor.state == "stopped" and not self._stopping and now >= self._worker_restart_at:
            self.executor.start()
        self.events.flush(now)
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

    # ------------------------------------------------------------------ events
    def _publish(self, msg: Message, topic: bytes) -> bool:
        """Send to the subscribers of ``topic``; False when one of them is full (XPUB_NODROP)."""
        try:
            self.session.send(self._pub, msg, identities=[topic], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _publish_lossy(self, msg: Message, topic: bytes, parent_id: str = "") -> None:
        """Heartbeats and the hello check: never wait on a full subscriber (a stalled
        client must not hold up the heartbeats of the others); a lost one is harmless."""
        self._pub.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.session.send(self._pub, msg, identities=[topic], parent_id=parent_id, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # lossy by design: the next heartbeat / hello follows
        finally:
            self._pub.setsockopt(zmq.XPUB_NODROP, 1)

    def _drain_subscriptions(self) -> None:
        """XPUB hands us (un)subscription messages; we only log them."""
        for _ in range(1000):
            try:
                frame = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] in (b"\x00", b"\x01"):
                log.debug("%s %r", "subscribe" if frame[:1] == b"\x01" else "unsubscribe", frame[1:65])
