"""The server's answers to client requests, one method per request type.

:class:`RequestHandlers` is the half of :class:`backend.server.Server` that turns a
checked request into a reply: hello, ping, submit, cancel, list, result, delete,
shutdown. The loop, the sockets, the executor's events and the timers are the other half
(``backend/server.py``). A handler raises a ``PortraitSplatError`` for anything a user
can fix; the loop turns it into a typed ``error`` reply, and the server stays up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

import backend
from backend import jobs as jobs_mod
from backend import models as models_mod
from backend.errors import PipelineUnavailableError, PortraitSplatError
from backend.executors import Executor
from backend.jobs import CancelToken, JobNotFound, JobQueue, JobRecord, JobStore
from backend.publisher import LatestWinsPublisher
from backend.server_config import PREVIEW_DTYPES, MiB, ServerConfig
from blender_addon.core.protocol import (
    PROTOCOL_VERSION,
    SIGNATURE_SCHEME,
    Cancel,
    CancelReply,
    DeleteJob,
    DeleteReply,
    Envelope,
    Error,
    GetResult,
    Hello,
    JobAccepted,
    JobList,
    ListJobs,
    Message,
    Ping,
    Pong,
    Result,
    Session,
    Shutdown,
    ShutdownReply,
    SubmitJob,
    Welcome,
    session_topic,
)
from blender_addon.core.splat_arrays import SplatArrays

log = logging.getLogger("backend.server")
MAX_WORKER_START_FAILURES = 3  # consecutive crashes before ready: then fail the queue and back off


@dataclass
class Running:
    job_id: str
    cancel: CancelToken | None = None  # set once a cancel was asked for


class RequestHandlers:
    """Request handlers; mixed into :class:`backend.server.Server`, which owns the state."""

    config: ServerConfig
    key: str
    session: Session
    store: JobStore
    queue: JobQueue
    executor: Executor
    router: zmq.Socket[Any] | None
    _submitters: dict[str, list[bytes]]
    _deliver: set[str]
    _running: Running | None
    _stopping: bool
    _worker_failures: int
    events: LatestWinsPublisher

    if TYPE_CHECKING:  # provided by the Server

        def _end_job(self, record: JobRecord, state: str, error: dict[str, str] | None) -> None: ...
        def _dispatch(self) -> None: ...
        def _unavailable(self, pipeline: str) -> PipelineUnavailableError | None: ...
        def _publish_lossy(self, msg: Message, topic: bytes, parent_id: str = "") -> None: ...

    @property
    def _router(self) -> zmq.Socket[Any]:
        if self.router is None:
            raise RuntimeError("the server has not started (or has closed)")
        return self.router

    def _reply(self, env: Envelope, msg: Message) -> None:
        self.session.send(self._router, msg, parent_id=env.header.msg_id, identities=env.identities)

    def _reply_error(self, identities: list[bytes], parent_id: str, code: str, message: str, hint: str = "") -> None:
        self.session.send(
            self._router, Error(code=code, message=message, hint=hint), parent_id=parent_id, identities=identities
        )

    @staticmethod
    def _missing_models(pipelines: Iterable[str]) -> dict[str, str]:
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

    def _on_hello(self, env: Envelope, msg: Hello) -> None:
        welcome = self._welcome()
        self._reply(env, welcome)
        # the subscription check: the client waits for this on its SUB before it trusts it
        self._publish_lossy(welcome, session_topic(env.header.session), parent_id=env.header.msg_id)

    def _on_ping(self, env: Envelope, msg: Ping) -> None:
        self._reply(env, Pong(server_time=time.time()))

    def _on_submit(self, env: Envelope, msg: SubmitJob) -> None:
        cfg = self.config
        if not msg.image:
            raise PortraitSplatError("The photo is empty (0 bytes).", code="bad_image", hint="Choose a photo file.")
        if len(msg.image) > cfg.max_image_bytes:
            raise PortraitSplatError(
                f"The photo is {len(msg.image) / MiB:.1f} MiB; this backend accepts up to {cfg.max_image_bytes / MiB:.0f} MiB.",
                code="bad_image",
                hint="Use a smaller JPEG, or start the backend with a larger --max-image-mb.",
            )
        unavailable = self._unavailable(msg.pipeline)
        if unavailable is not None:
            raise unavailable
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
            evaluate=msg.evaluate,
        )
        request = {f.name: getattr(msg, f.name) for f in fields(msg) if f.name != "image"}
        request |= {"image_bytes": len(msg.image), "received": time.time(), "session": env.header.session}
        self.store.create(record, msg.image, request)
        position = self.queue.push(record.job_id) + (1 if self._running is not None else 0)
        self._submitters[record.job_id] = list(env.identities)
        if msg.deliver_result:
            self._deliver.add(record.job_id)
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

    def _on_cancel(self, env: Envelope, msg: Cancel) -> None:
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

    def _on_list_jobs(self, env: Envelope, msg: ListJobs) -> None:
        self._reply(env, JobList(jobs=[r.to_dict() for r in self.store.list(msg.limit)]))

    def _on_get_result(self, env: Envelope, msg: GetResult) -> None:
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
            if msg.include_ply:
                splats, ply = self.store.read_result(record.job_id)
            else:  # the exact arrays only: the PLY holds the same splats again
                with np.load(self.store.job_dir(record.job_id) / "result.npz", allow_pickle=False) as data:
                    splats, ply = SplatArrays.from_dict({k: data[k] for k in data.files}), b""
        except (OSError, ValueError, KeyError) as exc:
            raise PortraitSplatError(
                f"The result files of job {record.job_id} cannot be read: {exc}",
                code="result_missing",
                hint="Run the job again.",
            ) from exc
        self._reply(env, Result(job_id=record.job_id, splats=splats, ply=ply, metrics=record.metrics))

    def _on_delete_job(self, env: Envelope, msg: DeleteJob) -> None:
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
        self._submitters.pop(record.job_id, None)
        self._deliver.discard(record.job_id)
        self.events.forget(record.job_id)
        log.info("job %s: deleted (%.1f MB freed)", record.job_id, freed / 2**20)
        self._reply(env, DeleteReply(job_id=record.job_id, freed_bytes=freed))

    def _on_shutdown(self, env: Envelope, msg: Shutdown) -> None:
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
