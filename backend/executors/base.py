"""The executor interface: what the server needs from whatever runs its jobs.

The server stays light (sockets and job records, no torch) and hands each job to an
executor. Today's executor is :class:`backend.executors.local.WorkerExecutor`, one worker
subprocess per GPU; a Ray executor (one task per job, ``num_gpus=1``) implements the same
protocol, so neither the wire protocol nor the add-on change when a studio scales out.

States: ``stopped`` -> ``starting`` -> ``ready`` <-> ``busy``; ``exiting`` once the
executor has said it will go away; back to ``stopped`` when it has (see :meth:`poll_exit`).
The server hands a job only to a ``ready`` executor and learns everything else from the
messages :meth:`drain` returns (``worker_ready``, ``progress``, ``preview``,
``worker_result``, ``job_failed``; see :mod:`backend.executors.messages`).
"""

from __future__ import annotations

from typing import Any, Protocol

import zmq

from blender_addon.core.protocol import Message

from .messages import RunJob, WorkerReady

EXECUTOR_STATES = ("stopped", "starting", "ready", "busy", "exiting")


class Executor(Protocol):
    state: str
    info: WorkerReady | None  # what the executor said it can run, once ready

    @property
    def pid(self) -> int | None:
        """The process running jobs (for ``welcome``), when there is one."""
        ...

    @property
    def socket(self) -> zmq.Socket[Any] | None:
        """A socket the server's poller may wait on for :meth:`drain`; None: poll on a timer."""
        ...

    def start(self) -> None: ...

    def run(self, job: RunJob) -> None:
        """Start ``job``; only called while ``state == "ready"``."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop (cooperatively); the server kills after its grace."""
        ...

    def job_ended(self) -> None:
        """The server saw the running job's final message: take the next one."""
        ...

    def drain(self, max_messages: int = 1000) -> list[Message]:
        """Messages from the running job and the executor itself, without blocking."""
        ...

    def exited(self) -> bool:
        """Has the executor's process gone (so its last messages should be drained now)?"""
        ...

    def poll_exit(self) -> int | None:
        """If the executor's process has gone: clean up and return its exit code."""
        ...

    def kill(self) -> int | None:
        """Hard stop, now; returns the exit code. Safe to call when not running."""
        ...

    def stop(self, timeout: float = 2.0) -> None:
        """Ask to stop; kill after ``timeout`` seconds."""
        ...
