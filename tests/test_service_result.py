"""The final splats reach the client the way previews do: on the stream, once, never by a
request anyone waits on (issue 18.3).

- against the real server: ``submit(deliver_result=True)`` puts the exact result on the
  job's ``job_done``; without it ``job_done`` stays as protocol 1.2 had it; ``get_result``
  without the PLY ships the splats once;
- against :class:`FakeBackend` (real ZeroMQ loopback, replies held back at will):
  ``fetch_result`` returns at once, ``poll`` keeps returning while the reply is withheld, and
  the ``result`` arrives on a later poll; bytes on the wire checked frame by frame.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "blender"))  # fake_backend.py is bpy-free

from fake_backend import FakeBackend
from service_support import PHOTO

from blender_addon.core import protocol as P
from blender_addon.core.client import Client, FetchFailed
from blender_addon.core.splat_arrays import SplatArrays

OPTIONS = {"steps": 3, "step_seconds": 0.01, "n_gaussians": 400, "sh_degree": 2}


def _cloud(n: int = 257, seed: int = 0) -> SplatArrays:
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    return SplatArrays(f(n, 3), f(n, 4), f(n, 3), f(n), f(n, 3), f(n, 8, 3))


def _poll_until(client: Client, timeout: float = 10.0) -> list[P.Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = client.poll(timeout=0.05)
        if msgs:
            return msgs
    raise AssertionError("nothing arrived")


def _npz(server, job: str) -> dict[str, np.ndarray]:
    with np.load(server.state / "jobs" / job / "result.npz") as data:
        return {k: data[k] for k in data.files}


def test_protocol_version_is_1_3():
    assert P.PROTOCOL_VERSION == "1.3"
    assert P.SubmitJob(image=b"x").deliver_result is False  # a 1.2 client's submit means the same
    assert P.GetResult(job_id="j").include_ply is True


# ---------------------------------------------------------------- the real server
def test_job_done_carries_the_exact_result_once(client, server):
    job = client.submit(PHOTO, "synthetic", seed=3, options=OPTIONS, deliver_result=True)
    final = client.wait(job, timeout=60)
    assert isinstance(final, P.JobDone) and final.splats is not None and len(final.splats) == 400
    for key, arr in _npz(server, job).items():  # what the server kept on disk, bit for bit
        assert final.splats.as_dict()[key].tobytes() == arr.tobytes(), key
    assert client.poll(timeout=0.3) == []  # once: no second copy follows


def test_without_deliver_result_job_done_is_as_before(client, server):
    job = client.submit(PHOTO, "synthetic", seed=4, options=OPTIONS)
    final = client.wait(job, timeout=60)
    assert isinstance(final, P.JobDone) and final.splats is None and final.n_gaussians == 400
    # the non-blocking fetch, without the PLY: the splats travel once
    client.fetch_result(job)
    (result,) = _poll_until(client)
    assert isinstance(result, P.Result) and result.ply == b"" and result.job_id == job
    for key, arr in _npz(server, job).items():
        assert result.splats.as_dict()[key].tobytes() == arr.tobytes(), key
    assert len(client.get_result(job)[1]) > 0  # asked for, the PLY still comes


def test_fetch_of_an_unknown_job_fails_typed(client):
    client.fetch_result("no-such-job")
    (failed,) = _poll_until(client)
    assert isinstance(failed, FetchFailed) and failed.job_id == "no-such-job" and failed.code == "not_found"
    assert client.fetches_in_flight() == []


# ---------------------------------------------------------------- a backend that holds back
@pytest.fixture
def fake():
    backend = FakeBackend()
    yield backend
    backend.close()


def test_fetch_never_waits_for_a_withheld_reply(fake):
    with Client(fake.info) as c:
        c.connect(timeout=10)
        msg_id = c.fetch_result("job-1")  # returns at once: nothing was answered yet
        env = fake.next_request()
        assert isinstance(env.message, P.GetResult) and env.header.msg_id == msg_id
        # on the wire: one signed get_result, the job id and include_ply=false in the JSON, no buffers
        frames = fake.raw[-1]
        d = frames.index(P.DELIM)
        header, content = json.loads(frames[d + 2]), json.loads(frames[d + 4])
        assert len(frames) == d + 5 and header["msg_type"] == "get_result" and header["protocol_version"] == "1.3"
        assert content == {"job_id": "job-1", "include_ply": False, "buffers": []}
        for _ in range(5):  # the reply is withheld: every poll comes back, empty
            assert c.poll(timeout=0) == []
        assert c.fetches_in_flight() == ["job-1"]

        cloud = _cloud()
        fake.reply(env, P.Result(job_id="job-1", splats=cloud, ply=b""))
        (result,) = _poll_until(c)
        assert isinstance(result, P.Result) and c.fetches_in_flight() == []
        for key, arr in cloud.as_dict().items():
            assert result.splats.as_dict()[key].tobytes() == arr.tobytes(), key


def test_a_blocking_request_keeps_the_answer_to_a_fetch(fake):
    with Client(fake.info) as c:
        c.connect(timeout=10)
        c.fetch_result("job-2")
        fetch = fake.next_request()
        fake.reply(fetch, P.Result(job_id="job-2", splats=_cloud(10), ply=b""))

        def answer_ping():
            env = fake.next_request()
            fake.reply(env, P.Pong(server_time=0.0))

        t = threading.Thread(target=answer_ping)
        t.start()
        c.ping(timeout=10)  # sees the fetch's answer first: it must keep it, not drop it
        t.join()
        (result,) = c.poll(timeout=0)
        assert isinstance(result, P.Result) and len(result.splats) == 10


def test_job_done_with_splats_on_the_wire(fake):
    with Client(fake.info) as c:
        c.connect(timeout=10)
        cloud = _cloud(33)
        fake.send_to_client(P.JobDone(job_id="job-3", n_gaussians=33, splats=cloud))
        (done,) = _poll_until(c)
        assert isinstance(done, P.JobDone) and done.splats is not None
        for key, arr in cloud.as_dict().items():
            assert done.splats.as_dict()[key].tobytes() == arr.tobytes(), key
    # a job_done without splats (what a 1.2 server sends) serialises with no buffers at all
    frames = P.Session(b"k").serialize(P.JobDone(job_id="j", n_gaussians=1))
    assert json.loads(frames[frames.index(P.DELIM) + 4])["buffers"] == []
