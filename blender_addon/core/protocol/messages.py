"""The messages of the PortraitSplat protocol: one dataclass per ``msg_type``, and the PUB topics.

Fields annotated ``SplatArrays``, ``bytes`` or ``np.ndarray`` travel as buffer frames; all
other fields go into the content JSON and are type-checked on receipt (see :mod:`.wire`).
bpy-free and torch-free: the add-on, the CLI and the backend all import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np  # noqa: F401 - message fields may be annotated np.ndarray (resolved by name)

from ..splat_arrays import SplatArrays


class Message:
    """Base of every message dataclass. ``msg_type`` names it on the wire."""

    msg_type: ClassVar[str] = ""


@dataclass
class Hello(Message):
    """client -> server: first message; the server answers :class:`Welcome` (on the DEALER and,
    as the subscription check, on the client's PUB topic)."""

    msg_type: ClassVar[str] = "hello"
    client: str = ""  # e.g. "portraitsplat-blender/0.1.0"


@dataclass
class Welcome(Message):
    msg_type: ClassVar[str] = "welcome"
    server_version: str
    protocol_version: str
    pipelines: list[str] = field(default_factory=list)  # runnable now
    unavailable: dict[str, str] = field(default_factory=dict)  # pipeline -> why not
    models: dict[str, Any] = field(default_factory=dict)  # model id -> {present, size, ...}
    device: str = "unknown"  # "cuda:0 (NVIDIA H100)", "cpu"
    vram_free: int | None = None  # bytes
    vram_total: int | None = None
    worker_state: str = "starting"  # starting | ready | busy | restarting | error
    worker_error: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)  # limits, preview rates, curve
    server_pid: int = 0
    worker_pid: int | None = None


@dataclass
class Ping(Message):
    msg_type: ClassVar[str] = "ping"


@dataclass
class Pong(Message):
    msg_type: ClassVar[str] = "pong"
    server_time: float = 0.0


@dataclass
class SubmitJob(Message):
    msg_type: ClassVar[str] = "submit_job"
    image: bytes  # the encoded photo (JPEG, PNG, ...), one buffer frame
    pipeline: str = "photo"
    preset: str = "default"
    seed: int = 0
    style_prompt: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    image_name: str = ""
    preview_hz: float | None = None  # None: the server's default; capped by the server
    preview_dtype: str | None = None  # "float16" | "float32"; None: the server's default
    evaluate: bool = True  # run the offline eval on the result: its figures come back in job_done.metrics["eval"]
    # 1.3: the final splats ride on this job's job_done (sent to the submitter, once); a 1.2
    # server ignores the field and the client fetches them with get_result instead
    deliver_result: bool = False


@dataclass
class JobAccepted(Message):
    msg_type: ClassVar[str] = "job_accepted"
    job_id: str
    position: int = 0  # jobs ahead of this one (0: runs next or now)


@dataclass
class Progress(Message):
    msg_type: ClassVar[str] = "progress"
    job_id: str
    stage: str
    step: int
    total: int
    eta_s: float | None = None  # for the current stage
    elapsed_s: float = 0.0  # since the job started
    message: str = ""


@dataclass
class Preview(Message):
    """A snapshot of the Gaussians while a job optimises. Latest-wins: a receiver may drop
    any preview once a newer one for the same job has arrived."""

    msg_type: ClassVar[str] = "preview"
    job_id: str
    step: int
    splats: SplatArrays


@dataclass
class JobDone(Message):
    msg_type: ClassVar[str] = "job_done"
    job_id: str
    n_gaussians: int = 0
    elapsed_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    # 1.3: the final Gaussians (head frame, float32), only when the submit asked deliver_result
    splats: SplatArrays | None = None


@dataclass
class JobFailed(Message):
    """A job ended without a result. ``code`` is stable (``bad_image``, ``no_face``,
    ``out_of_memory``, ``cancelled``, ``interrupted``, ``worker_crashed``, ...)."""

    msg_type: ClassVar[str] = "job_failed"
    job_id: str
    code: str
    message: str
    hint: str = ""


@dataclass
class Cancel(Message):
    msg_type: ClassVar[str] = "cancel"
    job_id: str


@dataclass
class CancelReply(Message):
    msg_type: ClassVar[str] = "cancel_reply"
    job_id: str
    state: str  # the job's state after the request: cancelled | cancelling | done | ...


@dataclass
class ListJobs(Message):
    msg_type: ClassVar[str] = "list_jobs"
    limit: int = 100  # newest first


@dataclass
class JobList(Message):
    msg_type: ClassVar[str] = "job_list"
    jobs: list[dict[str, Any]] = field(default_factory=list)  # see backend.jobs.JobRecord


@dataclass
class GetResult(Message):
    msg_type: ClassVar[str] = "get_result"
    job_id: str
    include_ply: bool = True  # 1.3: False -> Result.ply is empty (the splats travel once)


@dataclass
class Result(Message):
    msg_type: ClassVar[str] = "result"
    job_id: str
    splats: SplatArrays  # head frame, float32, exactly as the pipeline returned them
    ply: bytes  # the job's result.ply file (RDF/OpenCV frame, what 3DGS viewers expect); b"" if not asked
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeleteJob(Message):
    """Remove a job that has ended (done, failed, cancelled, interrupted) and its folder, for good.
    A queued or running job is refused (``job_active``): cancel it first."""

    msg_type: ClassVar[str] = "delete_job"
    job_id: str


@dataclass
class DeleteReply(Message):
    msg_type: ClassVar[str] = "delete_reply"
    job_id: str
    freed_bytes: int = 0  # the size of the removed job folder


@dataclass
class Heartbeat(Message):
    """server -> every client, on the PUB topic ``HEARTBEAT_TOPIC`` once per interval."""

    msg_type: ClassVar[str] = "heartbeat"
    server_time: float = 0.0
    queue_length: int = 0
    running_job: str | None = None
    worker_state: str = ""


@dataclass
class Shutdown(Message):
    msg_type: ClassVar[str] = "shutdown"


@dataclass
class ShutdownReply(Message):
    msg_type: ClassVar[str] = "shutdown_reply"


@dataclass
class Error(Message):
    """The reply to a request the server could not serve (bad message, unknown job, ...)."""

    msg_type: ClassVar[str] = "error"
    code: str
    message: str
    hint: str = ""


def registry(*classes: type[Message]) -> dict[str, type[Message]]:
    """msg_type -> dataclass, refusing duplicates."""
    out: dict[str, type[Message]] = {}
    for cls in classes:
        if not cls.msg_type or cls.msg_type in out:
            raise ValueError(f"duplicate or empty msg_type on {cls.__name__}")
        out[cls.msg_type] = cls
    return out


MESSAGE_TYPES = registry(
    Hello,
    Welcome,
    Ping,
    Pong,
    SubmitJob,
    JobAccepted,
    Progress,
    Preview,
    JobDone,
    JobFailed,
    Cancel,
    CancelReply,
    ListJobs,
    JobList,
    GetResult,
    Result,
    DeleteJob,
    DeleteReply,
    Heartbeat,
    Shutdown,
    ShutdownReply,
    Error,
)

# PUB topics. Job events go to the submitting session's topic; the "|" ends the session id
# so that one id can never be a prefix of another's topic.
HEARTBEAT_TOPIC = b"hb|"


def session_topic(session_id: str) -> bytes:
    return b"s." + session_id.encode("utf-8") + b"|"
