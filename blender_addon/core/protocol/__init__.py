"""The wire protocol between the Blender add-on (or the CLI) and the backend service.

Both processes import this package, so it uses numpy, pyzmq and the standard library only:
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

Signed messages are also dated: a receiver refuses a copy of one it has already accepted
(``replayed``) and one dated outside its replay window (``stale``); see :class:`ReplayGuard`.

The package's parts: :mod:`.constants` (versions, limits, :class:`ProtocolError`),
:mod:`.messages` (the dataclasses and topics), :mod:`.buffers` (fields <-> JSON and
frames), :mod:`.session` (envelope, signing, replay protection).

Anything wrong with an incoming message raises :class:`ProtocolError` with a stable
``code`` (see :data:`ERROR_CODES`), never a bare ``KeyError`` or ``json`` error.

Usage::

    session = Session(key=b"secret")
    session.send(dealer, Ping())                          # zero-copy send
    env = session.recv(dealer)                            # Envelope; raises ProtocolError
    if isinstance(env.message, Pong): ...
"""

from .buffers import pack_splats, unpack_splats
from .constants import (
    BYTES_DTYPE,
    DELIM,
    DTYPES,
    ERROR_CODES,
    HINTS,
    MAX_NDIM,
    PROTOCOL_VERSION,
    SIGNATURE_SCHEME,
    SPLAT_KEYS,
    Limits,
    MiB,
    ProtocolError,
)
from .messages import (
    HEARTBEAT_TOPIC,
    MESSAGE_TYPES,
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
    ListJobs,
    Message,
    Ping,
    Pong,
    Preview,
    Progress,
    Result,
    Shutdown,
    ShutdownReply,
    SubmitJob,
    Welcome,
    registry,
    session_topic,
)
from .session import REPLAY_WINDOW_S, Envelope, Header, ReplayGuard, Session, new_id

__all__ = [
    "BYTES_DTYPE",
    "Cancel",
    "CancelReply",
    "DELIM",
    "DTYPES",
    "DeleteJob",
    "DeleteReply",
    "ERROR_CODES",
    "Envelope",
    "Error",
    "GetResult",
    "HEARTBEAT_TOPIC",
    "HINTS",
    "Header",
    "Heartbeat",
    "Hello",
    "JobAccepted",
    "JobDone",
    "JobFailed",
    "JobList",
    "Limits",
    "ListJobs",
    "MAX_NDIM",
    "MESSAGE_TYPES",
    "Message",
    "MiB",
    "PROTOCOL_VERSION",
    "Ping",
    "Pong",
    "Preview",
    "Progress",
    "ProtocolError",
    "REPLAY_WINDOW_S",
    "ReplayGuard",
    "Result",
    "SIGNATURE_SCHEME",
    "SPLAT_KEYS",
    "Session",
    "Shutdown",
    "ShutdownReply",
    "SubmitJob",
    "Welcome",
    "new_id",
    "pack_splats",
    "registry",
    "session_topic",
    "unpack_splats",
]
