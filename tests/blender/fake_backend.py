"""A backend stand-in on real ZeroMQ loopback sockets that answers only what a test says.

It owns a ROUTER and a PUB (as ``backend.server`` does) in one thread: it answers ``hello``
by itself (``welcome`` on the ROUTER and on the client's PUB topic, the subscription check)
and hands every other request to the test, which replies when it chooses, or never. So a test
can hold a reply back and watch the client keep going. bpy-free: the service tests use it too.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import zmq

from blender_addon.core.connection import ConnectionInfo
from blender_addon.core.protocol import Envelope, Hello, Limits, Message, Session, Welcome, session_topic

KEY = "fake-backend-key"


class FakeBackend:
    def __init__(self, pipelines: tuple[str, ...] = ("synthetic",)) -> None:
        self.pipelines = list(pipelines)
        self.context: zmq.Context[Any] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.pub = self.context.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
        router_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.info = ConnectionInfo(ip="127.0.0.1", router_port=router_port, pub_port=pub_port, key=KEY)
        self.session = Session(KEY.encode(), limits=Limits.for_client())
        self.requests: queue.Queue[Envelope] = queue.Queue()  # everything but hello, in order
        self.client_identities: list[bytes] = []  # of the last hello
        self.raw: list[list[bytes]] = []  # the frames of every request, as they came off the wire
        self._outbox: queue.Queue[tuple[list[bytes], Message, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-backend", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ test side
    def next_request(self, timeout: float = 5.0) -> Envelope:
        return self.requests.get(timeout=timeout)

    def reply(self, env: Envelope, msg: Message) -> None:
        self._outbox.put((list(env.identities), msg, env.header.msg_id))

    def send_to_client(self, msg: Message) -> None:
        """An unsolicited message to the last client that said hello (``job_done``, ...)."""
        self._outbox.put((list(self.client_identities), msg, ""))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.router.close(0)
        self.pub.close(0)
        self.context.term()

    # ------------------------------------------------------------------ its thread
    def _run(self) -> None:
        while not self._stop.is_set():
            if self.router.poll(10):
                frames = self.router.recv_multipart()
                self.raw.append(frames)
                env = self.session.deserialize(frames)
                if isinstance(env.message, Hello):
                    self.client_identities = list(env.identities)
                    welcome = Welcome(server_version="fake", protocol_version="1.3", pipelines=self.pipelines)
                    self.session.send(self.router, welcome, parent_id=env.header.msg_id, identities=env.identities)
                    topic = session_topic(env.header.session)
                    self.session.send(self.pub, welcome, parent_id=env.header.msg_id, identities=[topic])
                else:
                    self.requests.put(env)
            while not self._outbox.empty():
                identities, msg, parent = self._outbox.get()
                self.session.send(self.router, msg, parent_id=parent, identities=identities)
