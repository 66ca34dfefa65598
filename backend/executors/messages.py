"""The messages between the server and its executor's worker, and how a dead worker's job fails.

They travel in the public protocol's envelope (signed, arrays as buffers, no pickle), with
these internal types (:data:`WORKER_TYPES`) beside the public ``progress``, ``preview`` and
``job_failed``. A Ray executor hands the same :class:`RunJob` to its task and gets the same
replies back, so the server cannot tell the executors apart.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from blender_addon.core.protocol import JobFailed, Message, Preview, Progress, registry
from blender_addon.core.splat_arrays import SplatArrays

KEY_ENV = "PORTRAITSPLAT_WORKER_KEY"  # the channel key reaches the worker in its environment, never argv
EXIT_RESTART = 75  # the worker asks to be replaced (after an out-of-memory error)

OOM_HINT = (
    "Try the 'preview' or 'fast' preset, close other programs that use the GPU, or run on a "
    "GPU with more memory. The backend restarted its worker, so you can try again at once."
)


@dataclass
class RunJob(Message):
    msg_type = "run_job"
    job_id: str
    image_path: str
    pipeline: str
    output_dir: str  # the job's output folder, owned by the job store (turntable/, ...)
    preset: str = "default"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    preview_hz: float = 5.0  # 0 disables previews
    preview_dtype: str = "float32"
    max_image_pixels: int | None = None
    max_image_bytes: int | None = None
    evaluate: bool = True  # run backend.eval on the result (figures into the job's metrics)


@dataclass
class CancelJob(Message):
    msg_type = "cancel_job"
    job_id: str


@dataclass
class StopWorker(Message):
    msg_type = "stop_worker"


@dataclass
class WorkerReady(Message):
    msg_type = "worker_ready"
    pid: int
    pipelines: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    vram_free: int | None = None
    vram_total: int | None = None
    torch_version: str = ""


@dataclass
class WorkerExiting(Message):
    """The worker will exit after its next message (it asks to be replaced): take it no job."""

    msg_type = "worker_exiting"
    reason: str = ""


@dataclass
class WorkerResult(Message):
    msg_type = "worker_result"
    job_id: str
    splats: SplatArrays
    elapsed_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


WORKER_TYPES = registry(
    RunJob, CancelJob, StopWorker, WorkerReady, WorkerExiting, WorkerResult, Progress, Preview, JobFailed
)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def crash_error(code: int) -> dict[str, str]:
    """The job_failed error for a job whose worker died under it."""
    if code == EXIT_RESTART:
        return {"code": "out_of_memory", "message": "The worker ran out of memory.", "hint": OOM_HINT}
    hint = "Try again; if it happens again, check the backend log and report it."
    if code == -getattr(signal, "SIGKILL", 9):
        hint = "The system may have run out of memory and killed the worker. " + OOM_HINT
    return {
        "code": "worker_crashed",
        "message": f"The generation worker stopped unexpectedly ({describe_exit(code)}).",
        "hint": hint,
    }
