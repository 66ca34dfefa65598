"""The local executor: one worker subprocess (``python -m backend.worker``), one job at a time.

It starts the worker with a fresh PAIR socket and key per worker generation, hands it one job
at a time, forwards what it reports, and kills and restarts it when it crashes, runs out of
memory or ignores a cancel for longer than the server's grace period. No torch here: this
runs inside the server process.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from blender_addon.core.protocol import Limits, Message, ProtocolError, Session

from .messages import KEY_ENV, WORKER_TYPES, CancelJob, RunJob, StopWorker, WorkerExiting, WorkerReady, describe_exit

log = logging.getLogger(__name__)


class WorkerExecutor:
    """One worker subprocess, one job at a time.

    ``state``: ``stopped`` -> ``starting`` -> ``ready`` <-> ``busy``; ``exiting`` once the
    worker has said it will exit; back to ``stopped`` when the process exits (see
    :meth:`poll_exit`). Jobs go only to a ``ready`` worker.

    Args:
        context: the server's zmq context.
        pipelines: pipeline names to load; None loads every available one.
        python: interpreter for the worker (default: this one).
        env: extra environment variables for the worker.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        pipelines: tuple[str, ...] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.context = context
        self.pipelines = pipelines
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.state = "stopped"
        self.info: WorkerReady | None = None
        self.socket: zmq.Socket[Any] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: Session | None = None
        self.job_id: str | None = None
        self.generation = 0
        self.started_at = 0.0
        self.killed = False  # the last exit was our own kill

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("worker already started")
        self.generation += 1
        key = secrets.token_hex(32)
        self.session = Session(key, types=WORKER_TYPES, limits=Limits.unlimited())
        sock = self.context.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.socket = sock
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, **self.env, KEY_ENV: key}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        cmd = [
            self.python,
            "-m",
            "backend.worker",
            "--endpoint",
            f"tcp://127.0.0.1:{port}",
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.pipelines is not None:
            cmd += ["--pipelines", ",".join(self.pipelines)]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.state, self.info, self.job_id, self.killed = "starting", None, None, False
        self.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", self.generation, self.proc.pid)

    def run(self, job: RunJob) -> None:
        if self.state != "ready":
            raise RuntimeError(f"worker is {self.state}, not ready")
        self._send(job)
        self.state, self.job_id = "busy", job.job_id

    def cancel(self, job_id: str) -> None:
        if self.job_id == job_id and self.socket is not None:
            try:
                self._send(CancelJob(job_id=job_id))
            except zmq.Again:
                log.warning("worker did not take the cancel request; it will be killed at the deadline")

    def job_ended(self) -> None:
        """The server saw the running job's final message: take the next one."""
        if self.state == "busy":
            self.state = "ready"
        self.job_id = None

    def drain(self, max_messages: int = 1000) -> list[Message]:
        """Messages from the worker, without blocking. ``WorkerReady`` updates ``info`` and
        ``state`` and is returned too."""
        out: list[Message] = []
        if self.socket is None or self.session is None:
            return out
        for _ in range(max_messages):
            try:
                env = self.session.recv(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                break
            except ProtocolError as exc:
                log.error("undecodable message from the worker: %s", exc)
                continue
            msg = env.message
            if isinstance(msg, WorkerReady):
                self.info = msg
                self.state = "ready" if self.job_id is None else "busy"
            elif isinstance(msg, WorkerExiting):
                log.info("worker %d is exiting: %s", self.generation, msg.reason)
                self.state = "exiting"
            out.append(msg)
        return out

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def poll_exit(self) -> int | None:
        """If the worker process has exited: clean up and return its exit code."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        log.log(
            logging.INFO if self.killed or code == 0 else logging.ERROR,
            "worker %d (pid %d) exited with %s",
            self.generation,
            self.proc.pid,
            describe_exit(code),
        )
        self._cleanup()
        return code

    def kill(self) -> int | None:
        """Hard stop (SIGKILL); returns the exit code. Safe to call when not running."""
        if self.proc is None:
            return None
        self.killed = True
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self._cleanup()
        return code

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it has not after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.socket is not None:
            try:
                self._send(StopWorker())
                self.proc.wait(timeout=timeout)
            except (zmq.Again, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _send(self, msg: Message) -> None:
        assert self.socket is not None and self.session is not None
        self.session.send(self.socket, msg)

    def _cleanup(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket, self.proc, self.session = None, None, None
        self.state, self.job_id = "stopped", None
