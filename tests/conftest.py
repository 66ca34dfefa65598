"""Shared pytest fixtures. Keep each fixture small; put test-specific helpers in the test file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def astronaut_image() -> np.ndarray:
    """The demo portrait ``examples/astronaut.jpg`` as ``[512, 512, 3]`` uint8 RGB (read-only)."""
    from backend.image_io import load_image

    img = load_image(EXAMPLES / "astronaut.jpg")
    img.setflags(write=False)
    return img


# --- no network in tests --------------------------------------------------------------------

import ipaddress  # noqa: E402
import socket  # noqa: E402

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0].strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name would need a DNS lookup: not local
    return ip.is_loopback or ip.is_unspecified


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test if it opens a connection (or resolves a name) beyond this machine.

    Loopback stays open (ZeroMQ tests bind 127.0.0.1; libzmq's own sockets are C and not
    patched anyway) and so do Unix sockets. Attempts are blocked with an error *and*
    reported at teardown, so a library that swallows the error still fails the test.
    """
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _guard(sock, address):
        if (
            sock.family in (socket.AF_INET, socket.AF_INET6)
            and isinstance(address, tuple)
            and not _is_local(address[0])
        ):
            attempts.append(repr(address))
            raise RuntimeError(f"network access in a test: connect to {address!r} (tests must stay offline)")

    def connect(self, address):
        _guard(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _guard(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(f"getaddrinfo({host!r})")
            raise RuntimeError(f"network access in a test: name lookup of {host!r} (tests must stay offline)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to reach the network: {', '.join(attempts)}")


# --- tiny models on disk (backend.testing), built once per session --------------------------


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    """A model root in the layout ``models download`` leaves (sd15, ip_adapter_faceid,
    controlnet_face, mvdream, taesd, insightface/models/buffalo_l), tiny random weights."""
    from backend.testing import save_tiny_model_root

    return save_tiny_model_root(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_sv3d_path(tmp_path_factory) -> Path:
    """A tiny SV3D (sv3d_u shape) folder in the diffusers layout, for ``models.load_sv3d``."""
    from backend.testing import save_tiny_sv3d

    return save_tiny_sv3d(tmp_path_factory.mktemp("tiny_sv3d") / "sv3d")


# ------------------------------------------------------------ the service under test
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One synthetic-pipeline server per test module (see service_support.ServerProc)."""
    from service_support import ServerProc, wait_ready

    srv = ServerProc(
        tmp_path_factory.mktemp("service"),
        "--cancel-grace",
        "3",  # long enough that a reporting job stops on its own even on a busy machine
        "--max-frame-mb",
        "1",
        "--max-image-mb",
        "0.5",
        "--max-image-pixels",
        "4000000",
        "--preview-hz",
        "50",
    ).start()
    with srv.client() as c:
        wait_ready(c)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c
