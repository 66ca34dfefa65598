"""The client side of the backend service: used by the Blender add-on, the CLI and tests.

Two sockets, no threads:

- a DEALER for requests and their replies (``hello``, ``submit_job``, ``cancel``, ...). The
  server also sends each job's final ``job_done`` / ``job_failed`` here, to the client that
  submitted it, so the end of a job is never lost to a full PUB queue;
- a SUB for events: ``progress`` and ``preview`` for this client's jobs (topic
  ``session_topic(session_id)``) and the server's ``heartbeat``.

Blender calls :meth:`Client.poll` from a ``bpy.app.timers`` callback with ``timeout=0``:
it drains whatever has arrived and returns at once. Previews are latest-wins: of several
previews for one job waiting in the queue, ``poll`` returns only the newest.

Usage::

    client = Client("~/.portraitsplat/connection.json")
    welcome = client.connect()                 # hello handshake, SUB checked, versions checked
    job_id = client.submit(open("me.jpg", "rb").read(), preset="preview")
    while True:
        for msg in client.poll(timeout=0.1):
            if isinstance(msg, Preview): show(msg.splats)
            if isinstance(msg, (JobDone, JobFailed)): ...
    splats, ply_bytes = client.get_result(job_id)
    client.close()

Nothing that a timer calls needs to wait: ``submit(..., deliver_result=True)`` makes the
final splats arrive on the job's ``JobDone`` (``JobDone.splats``) through :meth:`poll`, and
:meth:`fetch_result` sends a ``get_result`` without waiting: its ``Result`` (or a
:class:`FetchFailed`) comes out of a later :meth:`poll`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import zmq

from .connection import ConnectionInfo, read_connection_file
from .errors import PortraitSplatError
from .protocol import (
    HEARTBEAT_TOPIC,
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
    ProtocolError,
    Result,
    Session,
    Shutdown,
    ShutdownReply,
    SubmitJob,
    Welcome,
    session_topic,
)
from .splat_arrays import SplatArrays

log = logging.getLogger(__name__)

CLIENT_NAME = "portraitsplat-client"
TERMINAL = (JobDone, JobFailed)
M = TypeVar("M", bound=Message)


class ServiceError(PortraitSplatError):
    """The server refused a request; ``code``, ``message`` and ``hint`` come from its reply."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message, code=code, hint=hint)


class ServiceTimeout(ServiceError, TimeoutError):
    """No reply in time: the server is not running, is unreachable, or is overloaded."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__("timeout", message, hint)


@dataclass
class FetchFailed(Message):
    """A :meth:`Client.fetch_result` the server refused (client-side event, never on the wire)."""

    msg_type: ClassVar[str] = "fetch_failed"
    job_id: str
    code: str
    message: str
    hint: str = ""


class Client:
    """A connection to one backend server.

    Args:
        connection: a connection file path, or a :class:`ConnectionInfo`.
        limits: receive limits (generous by default: results can be large).
        context: a ``zmq.Context`` to share; a private one by default.
        name: sent in ``hello`` (shows up in the server log).
        event_hwm: events the SUB socket may hold before back-pressure (keep it small).
    """

    def __init__(
        self,
        connection: str | os.PathLike[str] | ConnectionInfo,
        *,
        limits: Limits | None = None,
        context: zmq.Context[Any] | None = None,
        name: str = CLIENT_NAME,
        event_hwm: int = 2,
    ):
        self.info = (
            connection
            if isinstance(connection, ConnectionInfo)
            else read_connection_file(Path(connection).expanduser())
        )
        self.name = name
        self.session = Session(self.info.key_bytes, limits=limits or Limits.for_client())
        self._own_context = context is None
        self.context = context or zmq.Context(io_threads=1)
        self.dealer = self._socket(zmq.DEALER)
        self.sub = self._socket(zmq.SUB)
        # a tiny receive queue: while Blender is busy, back-pressure reaches the server,
        # which then holds only the newest preview instead of our I/O thread hoarding a backlog
        self.sub.setsockopt(zmq.RCVHWM, event_hwm)
        self.sub.setsockopt(zmq.SUBSCRIBE, session_topic(self.session.session_id))
        self.sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self.dealer.connect(self.info.router_url)
        self.sub.connect(self.info.pub_url)
        self._events: deque[Message] = deque()  # arrived while waiting for a reply
        self._finished: set[str] = set()  # job ids whose terminal event was delivered
        self._fetches: dict[str, str] = {}  # msg_id of a get_result in flight -> job id
        self.welcome: Welcome | None = None
        self.last_heartbeat: Heartbeat | None = None
        self.last_heartbeat_at: float | None = None  # time.monotonic()
        self.dropped_messages = 0  # undecodable messages received (logged)
        self.stats = {"previews_received": 0, "previews_skipped": 0}  # skipped: superseded in one poll
        self.closed = False

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.info.curve_server_key:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = self.info.curve_server_key.encode("ascii")
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        return sock

    # --------------------------------------------------------------- lifecycle
    def connect(self, timeout: float = 10.0) -> Welcome:
        """The ``hello`` handshake: waits for the server's ``welcome`` on the DEALER *and*
        on this client's PUB topic, so no event published after this returns can be lost
        to the SUB socket's slow join. Re-sends ``hello`` after 10, 20, 40 ... 200 ms until both arrive.

        Raises ServiceTimeout when the server does not answer, ProtocolError
        ('version_mismatch', 'bad_signature') when it speaks another protocol or uses
        another key, ServiceError for a refusal."""
        deadline = time.monotonic() + timeout
        hello_ids: set[str] = set()
        welcome: Welcome | None = None
        subscribed = False
        interval = 0.01  # re-send hello after 10 ms, 20 ms, ... up to 200 ms
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._reset_dealer()
                state = "its event channel did not answer" if welcome else "no answer"
                raise ServiceTimeout(
                    f"backend at {self.info.router_url}: {state} within {timeout:.0f} s",
                    hint="Is it running? Start it with: python -m backend serve --connection-file <file>",
                )
            hello_ids.add(self.session.send(self.dealer, Hello(client=self.name)))
            resend_at = min(deadline, now + interval)
            interval = min(0.2, interval * 2)
            while not (welcome and subscribed):
                wait = resend_at - time.monotonic()
                if wait <= 0:
                    break
                ready = dict(self._poller().poll(math.ceil(wait * 1000)))
                if self.dealer in ready:
                    env = self.session.recv(self.dealer)  # a ProtocolError here is fatal
                    if env.parent_id in hello_ids:
                        if isinstance(env.message, Error):
                            raise _service_error(env.message)
                        if isinstance(env.message, Welcome):
                            welcome = env.message
                    elif isinstance(env.message, TERMINAL):
                        self._events.append(env.message)  # a job ended meanwhile
                    else:
                        log.debug("ignored a stale %s reply", env.message.msg_type)
                if self.sub in ready:
                    try:
                        env = self.session.recv(self.sub)
                    except ProtocolError as exc:  # the DEALER reply reports real mismatches
                        self.dropped_messages += 1
                        log.warning("dropped an undecodable event from the backend: %s", exc)
                        continue
                    if isinstance(env.message, Welcome) and env.parent_id in hello_ids:
                        subscribed = True
                    else:
                        self._events.append(env.message)
            if welcome and subscribed:
                self.welcome = welcome
                return welcome

    hello = connect

    def _reset_dealer(self) -> None:
        """After a timeout: drop the unanswered request still queued in the DEALER, so a
        server that comes back later does not run a request the caller gave up on."""
        self.dealer.close(linger=0)
        self.dealer = self._socket(zmq.DEALER)
        self.dealer.connect(self.info.router_url)
        for job_id in self._fetches.values():  # their replies would go to the closed socket
            self._events.append(
                FetchFailed(job_id=job_id, code="timeout", message="the connection was reset", hint="Import it again.")
            )
        self._fetches.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.dealer.close(linger=0)
        self.sub.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        return poller

    # ------------------------------------------------------------------ events
    def poll(self, timeout: float = 0.0, max_messages: int = 1000) -> list[Message]:
        """Events that have arrived: ``Progress``, ``Preview``, ``JobDone``, ``JobFailed``.

        ``timeout=0`` never blocks. With ``timeout > 0`` it waits up to that many seconds
        for the first message. Heartbeats update :attr:`last_heartbeat` and are not returned.
        Of several previews for one job only the newest is returned."""
        if not self._events and timeout > 0:
            self._poller().poll(math.ceil(timeout * 1000))
        out: list[Message] = list(self._events)
        self._events.clear()
        for sock in (self.dealer, self.sub):
            for _ in range(max_messages):
                try:
                    env = self.session.recv(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ProtocolError as exc:
                    self.dropped_messages += 1
                    log.warning("dropped an undecodable message from the backend: %s", exc)
                    continue
                if env.parent_id in self._fetches:
                    out.append(self._fetch_answer(env.parent_id, env.message))
                    continue
                out.append(env.message)
        return self._filter(out)

    def _fetch_answer(self, msg_id: str, message: Message) -> Message:
        """The event for the reply to a :meth:`fetch_result`: its ``Result``, or a ``FetchFailed``."""
        job_id = self._fetches.pop(msg_id)
        if isinstance(message, Error):
            return FetchFailed(job_id=job_id, code=message.code, message=message.message, hint=message.hint)
        return message

    def _filter(self, messages: list[Message]) -> list[Message]:
        newest_preview: dict[str, int] = {}
        for i, msg in enumerate(messages):
            if isinstance(msg, Preview):
                newest_preview[msg.job_id] = i
                self.stats["previews_received"] += 1
        out: list[Message] = []
        for i, msg in enumerate(messages):
            if isinstance(msg, Heartbeat):
                self.last_heartbeat, self.last_heartbeat_at = msg, time.monotonic()
            elif isinstance(msg, Welcome):
                continue  # a late answer to a repeated hello
            elif isinstance(msg, Preview) and (newest_preview[msg.job_id] != i or msg.job_id in self._finished):
                self.stats["previews_skipped"] += 1  # stale: a newer preview (or the job's end) is here
                continue
            elif isinstance(msg, TERMINAL):
                if msg.job_id in self._finished:
                    continue
                self._finished.add(msg.job_id)
                out.append(msg)
            else:
                out.append(msg)
        return out

    def seconds_since_heartbeat(self) -> float | None:
        return None if self.last_heartbeat_at is None else time.monotonic() - self.last_heartbeat_at

    # ---------------------------------------------------------------- requests
    def _request(self, msg: Message, reply_type: type[M], timeout: float) -> M:
        msg_id = self.session.send(self.dealer, msg)
        deadline = time.monotonic() + timeout
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0 or not self.dealer.poll(math.ceil(wait * 1000)):
                self._reset_dealer()
                raise ServiceTimeout(
                    f"no reply to {msg.msg_type} from the backend at {self.info.router_url} within {timeout:g} s",
                    hint="Check that the backend is running: python -m backend ping --connection-file <file>",
                )
            try:
                env = self.session.recv(self.dealer, zmq.NOBLOCK)
            except zmq.Again:
                continue
            if env.parent_id != msg_id and not (env.parent_id == "" and isinstance(env.message, Error)):
                # (an Error without a parent answers a request the server could not decode:
                # ours, since this client has one request in flight at a time)
                if env.parent_id in self._fetches:  # a fetch_result answered while we waited
                    self._events.append(self._fetch_answer(env.parent_id, env.message))
                elif isinstance(env.message, TERMINAL):
                    self._events.append(env.message)  # a job ended while we waited
                else:
                    log.debug("ignored a stale %s reply", env.message.msg_type)
                continue
            if isinstance(env.message, Error):
                raise _service_error(env.message)
            if not isinstance(env.message, reply_type):
                raise ProtocolError(
                    "invalid_content",
                    f"expected {reply_type.msg_type} in reply to {msg.msg_type}, got {env.message.msg_type}",
                )
            return env.message

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time in seconds."""
        t0 = time.perf_counter()
        self._request(Ping(), Pong, timeout)
        return time.perf_counter() - t0

    def submit(
        self,
        image: bytes,
        pipeline: str = "photo",
        preset: str = "default",
        seed: int = 0,
        style_prompt: str = "",
        options: dict[str, Any] | None = None,
        *,
        image_name: str = "",
        preview_hz: float | None = None,
        preview_dtype: str | None = None,
        evaluate: bool = True,
        deliver_result: bool = False,
        timeout: float = 30.0,
    ) -> str:
        """Queue a job; returns its id. Events follow on :meth:`poll`. With ``deliver_result``
        the final splats come on the ``JobDone`` (a server older than protocol 1.3 sends
        none: then :meth:`fetch_result`)."""
        msg = SubmitJob(
            image=bytes(image),
            pipeline=pipeline,
            preset=preset,
            seed=int(seed),
            style_prompt=style_prompt,
            options=dict(options or {}),
            image_name=image_name,
            preview_hz=preview_hz,
            preview_dtype=preview_dtype,
            evaluate=bool(evaluate),
            deliver_result=bool(deliver_result),
        )
        reply = self._request(msg, JobAccepted, timeout)
        return reply.job_id

    def cancel(self, job_id: str, timeout: float = 5.0) -> str:
        """Ask the server to stop a job; returns its state (``cancelled`` for a queued job,
        ``cancelling`` for a running one: a ``job_failed`` with code ``cancelled`` follows)."""
        return self._request(Cancel(job_id=job_id), CancelReply, timeout).state

    def list_jobs(self, limit: int = 100, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Job records, newest first (keys as in ``backend.jobs.JobRecord``)."""
        return self._request(ListJobs(limit=limit), JobList, timeout).jobs

    def job(self, job_id: str, timeout: float = 10.0) -> dict[str, Any] | None:
        for record in self.list_jobs(limit=10_000, timeout=timeout):
            if record.get("job_id") == job_id:
                return record
        return None

    def get_result(self, job_id: str, timeout: float = 60.0) -> tuple[SplatArrays, bytes]:
        """(Gaussians in the head frame, result.ply bytes) of a finished job."""
        reply = self._request(GetResult(job_id=job_id), Result, timeout)
        return reply.splats, reply.ply

    def fetch_result(self, job_id: str, *, include_ply: bool = False) -> str:
        """Ask for a finished job's result without waiting; returns the request's msg_id. The
        ``Result`` (or a :class:`FetchFailed`) comes out of a later :meth:`poll`."""
        msg_id = self.session.send(self.dealer, GetResult(job_id=job_id, include_ply=include_ply))
        self._fetches[msg_id] = job_id
        return msg_id

    def fetches_in_flight(self) -> list[str]:
        """Job ids whose :meth:`fetch_result` has not been answered yet."""
        return list(self._fetches.values())

    def delete_job(self, job_id: str, timeout: float = 10.0) -> int:
        """Remove an ended job and its folder on the server; returns the bytes freed.
        A queued or running job raises :class:`ServiceError` ``job_active``."""
        return self._request(DeleteJob(job_id=job_id), DeleteReply, timeout).freed_bytes

    def shutdown(self, timeout: float = 10.0) -> None:
        self._request(Shutdown(), ShutdownReply, timeout)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_event: Callable[[Message], None] | None = None,
        check_every: float = 5.0,
    ) -> JobDone | JobFailed:
        """Block until the job ends; ``on_event`` sees each of its progress/preview events.
        Every ``check_every`` s without news it asks ``list_jobs``, so a lost event cannot
        hang it. Events of other jobs are kept for the next :meth:`poll`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_news = time.monotonic()
        others: list[Message] = []
        try:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ServiceTimeout(f"job {job_id} did not finish within {timeout:g} s")
                for msg in self.poll(timeout=0.1):
                    if getattr(msg, "job_id", None) != job_id:
                        others.append(msg)
                        continue
                    last_news = time.monotonic()
                    if isinstance(msg, TERMINAL):
                        return msg
                    if on_event is not None:
                        on_event(msg)
                if time.monotonic() - last_news > check_every:
                    last_news = time.monotonic()
                    terminal = self._terminal_from_record(job_id)
                    if terminal is not None:
                        return terminal
        finally:
            self._events.extendleft(reversed(others))

    def _terminal_from_record(self, job_id: str) -> JobDone | JobFailed | None:
        record = self.job(job_id)
        if record is None:
            raise ServiceError("not_found", f"the backend has no job {job_id}")
        state = record.get("state")
        if state == "done":
            msg: JobDone | JobFailed = JobDone(
                job_id=job_id, n_gaussians=record.get("n_gaussians") or 0, metrics=record.get("metrics") or {}
            )
        elif state in ("failed", "cancelled", "interrupted"):
            err = record.get("error") or {}
            msg = JobFailed(
                job_id=job_id,
                code=err.get("code", state),
                message=err.get("message", f"job {state}"),
                hint=err.get("hint", ""),
            )
        else:
            return None
        self._finished.add(job_id)
        return msg


def _service_error(err: Error) -> ServiceError:
    return ServiceError(err.code, err.message, err.hint)
