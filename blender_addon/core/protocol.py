"""The wire protocol between the Blender add-on (or the CLI) and the backend service.

Both processes import this module, so it uses numpy, pyzmq and the standard library only:
no ``bpy``, no ``torch``. It follows Jupyter's kernel messaging: one envelope, typed
messages, binary buffers beside the JSON, every message signed.

A message on the wire is one ZeroMQ multipart message::

    [identity ...]            ROUTER routing ids, or the PUB topic; may be empty
    b"<IDS|MSG>"              delimiter
    signature                 hex HMAC-SHA256 over every frame below (b"" when no key)
    header                    JSON {msg_id, msg_type, protocol_version, session, date}
    parent                    JSON {"msg_id": <id of the request this answers>} or {}
    content                   JSON: the dataclass fields, plus "buffers": [descriptor, ...]
    buffer ...                raw bytes, one frame per descriptor, in order

A descriptor names the field a buffer belongs to and says how to read it, for example
``{"field": "splats", "key": "means", "dtype": "float32", "shape": [100000, 3]}``.
Buffers are never pickled: a receiver checks the dtype against a whitelist, checks that
``prod(shape) * itemsize`` equals the frame length, and views the frame with
``np.frombuffer`` (zero-copy; the array is read-only and keeps the frame alive).

Every message type is a dataclass (:class:`Hello`, :class:`SubmitJob`, :class:`Preview`,
...). Fields annotated ``SplatArrays``, ``bytes`` or ``np.ndarray`` travel as buffers; all
other fields go into the content JSON and are type-checked on receipt.

Anything wrong with an incoming message raises :class:`ProtocolError` with a stable
``code`` (see :data:`ERROR_CODES`), never a bare ``KeyError`` or ``json`` error.

Usage::

    session = Session(key=b"secret")
    session.send(dealer, Ping())                          # zero-copy send
    env = session.recv(dealer)                            # Envelope; raises ProtocolError
    if isinstance(env.message, Pong): ...
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import sys
import types
import typing
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import zmq

from .splat_arrays import SplatArrayError, SplatArrays

PROTOCOL_VERSION = "1.1"  # major.minor; peers with a different major refuse each other (1.1: delete_job)
DELIM = b"<IDS|MSG>"
SIGNATURE_SCHEME = "hmac-sha256"
MiB = 2**20

# dtype names allowed in buffer descriptors (always little-endian on the wire)
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16",
        "float32",
        "float64",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "int64",
        "uint64",
        "bool",
    )
}
BYTES_DTYPE = "bytes"  # a ``bytes`` field (encoded image, PLY file); itemsize 1
MAX_NDIM = 8
SPLAT_KEYS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")

ERROR_CODES = (
    "malformed",  # not a multipart envelope (no delimiter, missing frames, too many frames)
    "oversize",  # a frame or the whole message is over the configured limit
    "bad_signature",  # HMAC check failed
    "bad_json",  # header, parent or content is not a JSON object
    "version_mismatch",  # the peer speaks another major protocol version
    "unknown_msg_type",  # msg_type is not one this endpoint knows
    "buffer_mismatch",  # buffer frames do not match their descriptors (count, dtype, size)
    "invalid_content",  # the content does not fit the message's dataclass
)


class ProtocolError(Exception):
    """An incoming (or outgoing) message that breaks the protocol; ``code`` is in ERROR_CODES."""

    def __init__(self, code: str, message: str, msg_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg_id = msg_id  # the offending message's id, once its signed header was read


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every received message. The server keeps them small; a
    client, which receives results, uses :meth:`for_client`."""

    max_frame_bytes: int = 64 * MiB
    max_total_bytes: int = 256 * MiB
    max_json_bytes: int = 1 * MiB
    max_buffers: int = 32
    max_identities: int = 8

    @classmethod
    def for_client(cls) -> Limits:
        return cls(max_frame_bytes=4096 * MiB, max_total_bytes=8192 * MiB, max_json_bytes=64 * MiB, max_buffers=64)

    @classmethod
    def unlimited(cls) -> Limits:
        big = 2**62
        return cls(max_frame_bytes=big, max_total_bytes=big, max_json_bytes=big, max_buffers=4096, max_identities=64)


# ---------------------------------------------------------------------------- messages
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


@dataclass
class Result(Message):
    msg_type: ClassVar[str] = "result"
    job_id: str
    splats: SplatArrays  # head frame, float32, exactly as the pipeline returned them
    ply: bytes  # the job's result.ply file (RDF/OpenCV frame, what 3DGS viewers expect)
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


# -------------------------------------------------------------------- field schemas
@dataclass(frozen=True)
class _FieldSpec:
    name: str
    hint: Any
    kind: str  # "json" | "splats" | "bytes" | "array"
    optional: bool
    required: bool  # no default


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        module = sys.modules.get(cls.__module__)
        hints = typing.get_type_hints(cls, globalns={**globals(), **(vars(module) if module else {})})
        out = []
        for f in fields(cls):
            hint = hints[f.name]
            args = _union_args(hint)
            optional = type(None) in args
            core = [a for a in args if a is not type(None)]
            kind = "json"
            if core == [SplatArrays]:
                kind = "splats"
            elif core == [bytes]:
                kind = "bytes"
            elif core == [np.ndarray]:
                kind = "array"
            required = f.default is MISSING and f.default_factory is MISSING
            out.append(_FieldSpec(f.name, hint, kind, optional, required))
        specs = _SPECS[cls] = tuple(out)
    return specs


def _union_args(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _conforms(value: Any, hint: Any) -> bool:
    """Does a decoded JSON value fit a (simple) type hint?"""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        if not isinstance(value, list):
            return False
        args = typing.get_args(hint)
        return not args or all(_conforms(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    raise TypeError(f"protocol fields cannot use the type {hint!r}")


# ------------------------------------------------------------------ array buffers
def pack_splats(
    splats: SplatArrays, dtype: str | np.dtype | None = None, field_name: str = "splats"
) -> tuple[list[dict], list[memoryview]]:
    """SplatArrays -> (descriptors, buffers), one buffer per array, zero-copy where the
    arrays are already contiguous little-endian (``dtype="float16"`` converts, for previews)."""
    if dtype is not None:
        splats = splats.astype(dtype)
    descriptors, buffers = [], []
    for key, arr in splats.as_dict().items():
        desc, buf = _pack_array(arr)
        desc.update(field=field_name, key=key)
        descriptors.append(desc)
        buffers.append(buf)
    return descriptors, buffers


def unpack_splats(descriptors: Sequence[dict], buffers: Sequence[Any]) -> SplatArrays:
    """The inverse of :func:`pack_splats` (arrays are read-only views of ``buffers``)."""
    arrays = {}
    for desc, buf in zip(descriptors, buffers, strict=True):
        arrays[desc["key"]] = _unpack_array(desc, buf)
    return SplatArrays.from_dict(arrays)


def _pack_array(arr: np.ndarray) -> tuple[dict, memoryview]:
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in DTYPES:
        raise ProtocolError("invalid_content", f"dtype {arr.dtype} cannot be sent (allowed: {', '.join(DTYPES)})")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])  # no copy when already C-contiguous LE
    return {"dtype": name, "shape": list(arr.shape)}, memoryview(arr.reshape(-1).view(np.uint8))


def _unpack_array(desc: dict, buf: Any) -> np.ndarray:
    dtype = DTYPES[desc["dtype"]]
    shape = tuple(desc["shape"])
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _buffer_view(frame: Any) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


# ------------------------------------------------------------------------ envelope
@dataclass(frozen=True)
class Header:
    msg_id: str
    msg_type: str
    protocol_version: str
    session: str
    date: str

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Envelope:
    """A received message with its routing information."""

    identities: list[bytes]
    header: Header
    parent_id: str
    message: Message


def new_id() -> str:
    return uuid.uuid4().hex


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(frame: Any, what: str, limit: int) -> dict:
    view = _buffer_view(frame)
    if view.nbytes > limit:
        raise ProtocolError("oversize", f"{what} JSON is {view.nbytes} bytes; the limit is {limit}")
    try:
        value = json.loads(bytes(view), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad_json", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _dump_json(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError("invalid_content", f"content cannot be sent as JSON: {exc}") from None


class Session:
    """Signs, serialises and checks messages for one endpoint.

    Args:
        key: HMAC key (bytes). Empty: messages are neither signed nor checked (loopback only).
        session_id: this endpoint's id, sent in every header; a fresh uuid by default.
        limits: :class:`Limits` enforced on received messages.
        types: msg_type -> dataclass accepted on receipt (default: the public protocol).
    """

    def __init__(
        self,
        key: bytes = b"",
        *,
        session_id: str | None = None,
        limits: Limits | None = None,
        types: dict[str, type[Message]] | None = None,
    ):
        if isinstance(key, str):
            key = key.encode("utf-8")
        self.key = bytes(key)
        self.session_id = session_id or new_id()
        self.limits = limits or Limits()
        self.types = MESSAGE_TYPES if types is None else types

    # ----------------------------------------------------------------- signing
    def sign(self, frames: Iterable[Any]) -> bytes:
        if not self.key:
            return b""
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for frame in frames:
            mac.update(_buffer_view(frame))
        return mac.hexdigest().encode("ascii")

    # ------------------------------------------------------------- serialising
    def serialize(
        self,
        msg: Message,
        *,
        parent_id: str = "",
        identities: Sequence[bytes] = (),
        msg_id: str | None = None,
        buffer_dtype: str | None = None,
    ) -> list[Any]:
        """Frames for ``msg``. Buffers are memoryviews of the caller's arrays: do not mutate
        them until the send has completed. ``buffer_dtype`` converts SplatArrays buffers
        (e.g. "float16" for previews)."""
        if type(msg).msg_type not in self.types:
            raise ProtocolError("unknown_msg_type", f"{type(msg).__name__} is not a message this session sends")
        content: dict[str, Any] = {}
        descriptors: list[dict] = []
        buffers: list[Any] = []
        for spec in _specs(type(msg)):
            value = getattr(msg, spec.name)
            if spec.kind == "json":
                content[spec.name] = value
            elif value is None:
                if not spec.optional:
                    raise ProtocolError("invalid_content", f"{msg.msg_type}.{spec.name} must not be None")
            elif spec.kind == "splats":
                descs, bufs = pack_splats(value, buffer_dtype, spec.name)
                descriptors += descs
                buffers += bufs
            elif spec.kind == "bytes":
                view = memoryview(value).cast("B") if not isinstance(value, bytes) else value
                descriptors.append({"field": spec.name, "dtype": BYTES_DTYPE, "shape": [len(view)]})
                buffers.append(view)
            else:  # array
                desc, buf = _pack_array(value)
                desc["field"] = spec.name
                descriptors.append(desc)
                buffers.append(buf)
        content["buffers"] = descriptors
        header = Header(
            msg_id=msg_id or new_id(),
            msg_type=msg.msg_type,
            protocol_version=PROTOCOL_VERSION,
            session=self.session_id,
            date=datetime.now(UTC).isoformat(),
        )
        signed = [
            _dump_json(header.to_dict()),
            _dump_json({"msg_id": parent_id} if parent_id else {}),
            _dump_json(content),
            *buffers,
        ]
        return [*identities, DELIM, self.sign(signed), *signed]

    def send(
        self,
        socket: zmq.Socket,
        msg: Message,
        *,
        parent_id: str = "",
        identities: Sequence[bytes] = (),
        flags: int = 0,
        buffer_dtype: str | None = None,
    ) -> str:
        """Send zero-copy; returns the msg_id (match replies on ``Envelope.parent_id``)."""
        msg_id = new_id()
        frames = self.serialize(
            msg, parent_id=parent_id, identities=identities, msg_id=msg_id, buffer_dtype=buffer_dtype
        )
        socket.send_multipart(frames, flags=flags, copy=False)
        return msg_id

    # ----------------------------------------------------------- deserialising
    def recv(self, socket: zmq.Socket, flags: int = 0) -> Envelope:
        """Receive zero-copy and decode; raises :class:`ProtocolError` (and ``zmq.Again``
        with ``flags=zmq.NOBLOCK`` when nothing is waiting)."""
        return self.deserialize(socket.recv_multipart(flags=flags, copy=False))

    def split_identities(self, frames: Sequence[Any]) -> tuple[list[bytes], int]:
        """(identities, index of the delimiter); raises ProtocolError('malformed')."""
        limit = min(len(frames), self.limits.max_identities + 1)
        for i in range(limit):
            view = _buffer_view(frames[i])
            if view.nbytes == len(DELIM) and view.tobytes() == DELIM:
                return [_buffer_view(f).tobytes() for f in frames[:i]], i
        raise ProtocolError("malformed", f"no {DELIM!r} delimiter in the first {limit} frames")

    def deserialize(self, frames: Sequence[Any]) -> Envelope:
        lim = self.limits
        identities, d = self.split_identities(frames)
        rest = frames[d + 1 :]
        if len(rest) < 4:
            raise ProtocolError(
                "malformed",
                f"expected signature, header, parent and content after the delimiter; got {len(rest)} frames",
            )
        if len(rest) - 4 > lim.max_buffers:
            raise ProtocolError("oversize", f"{len(rest) - 4} buffer frames; the limit is {lim.max_buffers}")
        total = 0
        for f in rest:
            n = _buffer_view(f).nbytes
            if n > lim.max_frame_bytes:
                raise ProtocolError("oversize", f"a {n}-byte frame is over the {lim.max_frame_bytes}-byte limit")
            total += n
        if total > lim.max_total_bytes:
            raise ProtocolError("oversize", f"the message is {total} bytes; the limit is {lim.max_total_bytes}")

        signature, signed = rest[0], rest[1:]
        if self.key:
            expected = self.sign(signed)
            if not hmac.compare_digest(_buffer_view(signature).tobytes(), expected):
                raise ProtocolError(
                    "bad_signature", "the message signature does not match (wrong key in the connection file?)"
                )

        h = _load_json(signed[0], "header", lim.max_json_bytes)
        try:
            header = Header(**{f.name: h[f.name] for f in fields(Header)})
        except KeyError as exc:
            raise ProtocolError("malformed", f"header lacks {exc.args[0]!r}") from None
        bad = [f.name for f in fields(Header) if not isinstance(getattr(header, f.name), str)]
        if bad:
            raise ProtocolError("malformed", f"header fields must be strings: {', '.join(bad)}")
        try:
            parent_id, message = self._decode_after_header(header, signed)
        except ProtocolError as exc:
            exc.msg_id = header.msg_id  # lets the receiver address its error reply
            raise
        return Envelope(identities=identities, header=header, parent_id=parent_id, message=message)

    def _decode_after_header(self, header: Header, signed: Sequence[Any]) -> tuple[str, Message]:
        lim = self.limits
        if _major(header.protocol_version) != _major(PROTOCOL_VERSION):
            raise ProtocolError(
                "version_mismatch",
                f"the peer speaks protocol {header.protocol_version}, this side speaks {PROTOCOL_VERSION}; "
                "update the Blender add-on and the backend to the same release",
            )
        cls = self.types.get(header.msg_type)
        if cls is None:
            raise ProtocolError("unknown_msg_type", f"unknown msg_type {header.msg_type[:64]!r}")
        parent = _load_json(signed[1], "parent", lim.max_json_bytes)
        parent_id = parent.get("msg_id", "")
        if not isinstance(parent_id, str):
            raise ProtocolError("malformed", "parent msg_id must be a string")
        content = _load_json(signed[2], "content", lim.max_json_bytes)
        return parent_id, self._build(cls, content, signed[3:])

    def _build(self, cls: type[Message], content: dict, buffers: Sequence[Any]) -> Message:
        descriptors = content.get("buffers", [])
        if not isinstance(descriptors, list) or len(descriptors) != len(buffers):
            n = len(descriptors) if isinstance(descriptors, list) else "no"
            raise ProtocolError("buffer_mismatch", f"{n} buffer descriptors for {len(buffers)} buffer frames")
        specs = {s.name: s for s in _specs(cls)}
        grouped: dict[str, list[tuple[dict, Any]]] = {}
        for desc, buf in zip(descriptors, buffers):
            name = _check_descriptor(desc, buf, specs)
            grouped.setdefault(name, []).append((desc, buf))

        kwargs: dict[str, Any] = {}
        for spec in specs.values():
            if spec.kind == "json":
                if spec.name not in content:
                    if spec.required:
                        raise ProtocolError("invalid_content", f"{cls.msg_type} lacks the field {spec.name!r}")
                    continue
                value = content[spec.name]
                if not _conforms(value, spec.hint):
                    raise ProtocolError(
                        "invalid_content", f"{cls.msg_type}.{spec.name} has the wrong type ({type(value).__name__})"
                    )
                kwargs[spec.name] = value
                continue
            parts = grouped.get(spec.name)
            if not parts:
                if spec.optional:
                    kwargs[spec.name] = None
                    continue
                raise ProtocolError("buffer_mismatch", f"{cls.msg_type} lacks the buffer {spec.name!r}")
            if spec.kind == "splats":
                keys = [d.get("key") for d, _ in parts]
                if any(k not in SPLAT_KEYS for k in keys) or len(set(keys)) != len(keys):
                    raise ProtocolError("buffer_mismatch", f"bad or repeated splat array keys {keys}")
                try:
                    kwargs[spec.name] = unpack_splats([d for d, _ in parts], [_buffer_view(b) for _, b in parts])
                except SplatArrayError as exc:
                    raise ProtocolError("invalid_content", f"{spec.name}: {exc}") from None
            elif len(parts) != 1:
                raise ProtocolError("buffer_mismatch", f"{len(parts)} buffers for the field {spec.name!r}")
            elif spec.kind == "bytes":
                kwargs[spec.name] = _buffer_view(parts[0][1]).tobytes()
            else:
                kwargs[spec.name] = _unpack_array(parts[0][0], _buffer_view(parts[0][1]))
        return cls(**kwargs)


def _check_descriptor(desc: Any, buf: Any, specs: dict[str, _FieldSpec]) -> str:
    """Validate one buffer descriptor against its frame; returns the field name."""
    if not isinstance(desc, dict):
        raise ProtocolError("buffer_mismatch", "a buffer descriptor is not a JSON object")
    name = desc.get("field")
    spec = specs.get(name) if isinstance(name, str) else None
    if spec is None or spec.kind == "json":
        raise ProtocolError("buffer_mismatch", f"buffer for unknown field {str(name)[:64]!r}")
    dtype, shape = desc.get("dtype"), desc.get("shape")
    if spec.kind == "bytes":
        if dtype != BYTES_DTYPE:
            raise ProtocolError("buffer_mismatch", f"field {name!r} must have dtype {BYTES_DTYPE!r}")
        itemsize = 1
    elif dtype not in DTYPES:
        raise ProtocolError(
            "buffer_mismatch", f"dtype {str(dtype)[:32]!r} is not allowed (allowed: {', '.join(DTYPES)})"
        )
    else:
        itemsize = DTYPES[dtype].itemsize
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or (spec.kind == "bytes" and len(shape) != 1)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError("buffer_mismatch", f"bad shape {str(shape)[:64]} for field {name!r}")
    expected = math.prod(shape) * itemsize
    got = _buffer_view(buf).nbytes
    if expected != got:
        raise ProtocolError(
            "buffer_mismatch", f"field {name!r}: shape {shape} x {dtype} is {expected} bytes, the frame has {got}"
        )
    return name
