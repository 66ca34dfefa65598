"""What ``serve`` can be told (:class:`ServerConfig`), and the server's CURVE key file.

Defaults are the safe ones: loopback only, a fresh signing key, small frames. Anything a
user got wrong here is a :class:`ServerConfigError` (``bad_server_config``) before a socket
is bound.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from blender_addon.core.protocol import Limits

from .errors import PortraitSplatError

MiB = 2**20
PREVIEW_DTYPES = ("float32", "float16")


class ServerConfigError(PortraitSplatError):
    code = "bad_server_config"


class InsecureBindError(ServerConfigError):
    code = "insecure_bind"
    hint = "Bind 127.0.0.1 (the default), or keep message signing on (do not pass --no-key)."


@dataclass
class ServerConfig:
    """Everything ``serve`` can be told. Defaults are the safe ones."""

    state_dir: Path
    connection_file: Path | None = None  # default: <state_dir>/connection.json
    bind: str = "127.0.0.1"
    router_port: int = 0  # 0: a free port
    pub_port: int = 0
    key: str | None = None  # None: a fresh random key; "": unsigned (loopback only)
    curve: bool = False  # ZeroMQ CURVE encryption on both sockets
    pipelines: tuple[str, ...] | None = None  # None: every available pipeline
    preview_hz: float = 5.0  # the default and the ceiling for a job's preview rate
    preview_dtype: str = "float32"  # default preview precision ("float16" halves the bytes)
    max_frame_bytes: int = 64 * MiB  # largest frame a client may send
    max_image_bytes: int = 50 * MiB
    max_image_pixels: int = 40_000_000
    heartbeat_s: float = 1.0
    cancel_grace_s: float = 0.6  # a running job that has not stopped by then is killed
    pub_hwm: int = 2  # events queued per subscriber before newer ones wait (latest-wins)
    worker_python: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.connection_file = (
            Path(self.connection_file) if self.connection_file else self.state_dir / "connection.json"
        )
        if self.preview_dtype not in PREVIEW_DTYPES:
            raise ServerConfigError(f"preview dtype {self.preview_dtype!r} is not one of {PREVIEW_DTYPES}")
        if self.key == "" and not is_loopback(self.bind):
            raise InsecureBindError(
                f"Refusing to bind {self.bind} without a signing key: anyone on the network could run jobs."
            )
        if self.curve and not zmq.has("curve"):
            raise ServerConfigError(
                "This libzmq has no CURVE support.", hint="Install a pyzmq wheel built with libsodium, or drop --curve."
            )

    @property
    def connection_path(self) -> Path:
        return Path(self.connection_file) if self.connection_file else self.state_dir / "connection.json"

    @property
    def limits(self) -> Limits:
        return Limits(max_frame_bytes=self.max_frame_bytes, max_total_bytes=self.max_frame_bytes + 4 * MiB)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CURVE_KEY_FILE = "curve_server.key"  # in the state directory, mode 0600


def load_or_create_curve_keypair(path: Path) -> tuple[bytes, bytes]:
    """The server's CURVE (public, secret) keys, Z85, kept in ``path`` (mode 0600) so that a
    restarted server keeps its identity and clients holding the old connection file reconnect.
    The secret never goes into the connection file, which clients read."""
    if path.exists():
        try:
            public, secret = path.read_bytes().split()
            if zmq.curve_public(secret) != public:
                raise ValueError("the public key does not match the secret key")
        except (OSError, ValueError, zmq.ZMQError) as exc:
            raise ServerConfigError(
                f"The CURVE key file {path} is unreadable or damaged: {exc}",
                hint="Delete it; the server makes a new key (clients then need the new connection file).",
            ) from exc
        return public, secret
    public, secret = zmq.curve_keypair()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(public + b"\n" + secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return public, secret
