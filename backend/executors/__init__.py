"""Executors run the server's jobs outside the server process (see :mod:`.base`).

- :mod:`.messages`: what the server and a worker say to each other;
- :mod:`.base`: the :class:`Executor` protocol the server programs against;
- :mod:`.local`: :class:`WorkerExecutor`, one ``python -m backend.worker`` subprocess.
"""

from .base import EXECUTOR_STATES, Executor
from .local import WorkerExecutor
from .messages import (
    EXIT_RESTART,
    OOM_HINT,
    WORKER_TYPES,
    CancelJob,
    RunJob,
    StopWorker,
    WorkerExiting,
    WorkerReady,
    WorkerResult,
    crash_error,
    describe_exit,
)

__all__ = [
    "EXECUTOR_STATES",
    "EXIT_RESTART",
    "OOM_HINT",
    "WORKER_TYPES",
    "CancelJob",
    "Executor",
    "RunJob",
    "StopWorker",
    "WorkerExecutor",
    "WorkerExiting",
    "WorkerReady",
    "WorkerResult",
    "crash_error",
    "describe_exit",
]
