"""The service under bad input and bad luck: replayed and malformed messages, wrong keys,
slow clients, kill -9 and restarts, insecure binds, CURVE, requests sent while the server
was down, missing models. Every case gets a typed error and the server stays up.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from service_support import (
    FAST,
    LONG,
    PHOTO,
    REPO,
    ServerProc,
    _pythonpath,
    process_alive,
    wait_for,
    wait_ready,
)

from blender_addon.core import protocol as P
from blender_addon.core.client import Client, ServiceError
from blender_addon.core.connection import ConnectionInfo, read_connection_file

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ robustness
def test_a_captured_submit_replayed_on_the_wire_is_refused_and_queues_nothing(server, client):
    """A signed submit_job captured on the wire and sent again gets a typed ``replayed`` error;
    the server queues the job once and stays up."""
    info = read_connection_file(server.conn)
    sender = P.Session(info.key_bytes)
    captured = [bytes(f) for f in sender.serialize(P.SubmitJob(image=PHOTO, pipeline="synthetic", options=FAST))]
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(info.router_url)
    try:
        before = {j["job_id"] for j in client.list_jobs()}
        replies = []
        for _ in range(2):
            raw.send_multipart(captured)
            assert raw.poll(10_000), "no reply"
            replies.append(sender.deserialize(raw.recv_multipart()).message)
        assert isinstance(replies[0], P.JobAccepted), replies[0]
        assert isinstance(replies[1], P.Error) and replies[1].code == "replayed", replies[1]
        new = {j["job_id"] for j in client.list_jobs()} - before
        assert new == {replies[0].job_id}
        assert client.ping() >= 0
    finally:
        raw.close(0)
        ctx.term()


def test_fuzzing_the_router_never_stops_the_server(server, client):
    info = read_connection_file(server.conn)
    good = P.Session(info.key_bytes)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(info.router_url)

    def error_code(frames) -> str:
        raw.send_multipart(frames)
        assert raw.poll(10_000), "no reply"
        reply = good.deserialize(raw.recv_multipart())
        assert isinstance(reply.message, P.Error), reply.message
        return reply.message.code

    def edited(msg, **header):
        frames = [bytes(f) for f in good.serialize(msg)]
        import json

        h = json.loads(frames[2])
        h.update(header)
        frames[2] = json.dumps(h).encode()
        frames[1] = good.sign(frames[2:])
        return frames

    try:
        # targeted cases each get their typed error reply
        assert error_code([b"garbage"]) == "malformed"
        assert error_code([P.DELIM, b"sig"]) == "malformed"
        assert error_code(P.Session(b"wrong key").serialize(P.Ping())) == "bad_signature"
        assert error_code(edited(P.Ping(), msg_type="execute_request")) == "unknown_msg_type"
        assert error_code(edited(P.Ping(), protocol_version="9.0")) == "version_mismatch"
        assert error_code(good.serialize(P.SubmitJob(image=b"x" * (1536 * 1024)))) == "oversize"
        assert (
            error_code(good.serialize(P.Welcome(server_version="x", protocol_version="1.0"))) == "unexpected_msg_type"
        )
        frames = [bytes(f) for f in good.serialize(P.SubmitJob(image=PHOTO))]
        assert error_code(frames[:-1]) == "bad_signature"  # a buffer frame missing
        # ... and a flood of random and truncated messages, some enormous
        rng = np.random.default_rng(7)
        valid = [[bytes(f) for f in good.serialize(m)] for m in (P.Ping(), P.ListJobs(), P.SubmitJob(image=PHOTO))]
        for i in range(300):
            kind = i % 4
            if kind == 0:
                frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 8)))]
            elif kind == 1:
                v = valid[int(rng.integers(len(valid)))]
                frames = v[: int(rng.integers(1, len(v)))]
            elif kind == 2:
                v = list(valid[int(rng.integers(len(valid)))])
                j = int(rng.integers(len(v)))
                v[j] = rng.bytes(len(v[j]))
                frames = v
            else:
                frames = [P.DELIM, b"", rng.bytes(64), b"{}", b"{}"]
            raw.send_multipart(frames)
        raw.send_multipart([P.DELIM, b"x" * (8 * 2**20)])  # over MAXMSGSIZE: libzmq drops the peer
        assert client.ping(timeout=10) < 10
        job = client.submit(PHOTO, "synthetic", options=FAST)
        assert isinstance(client.wait(job, timeout=60), P.JobDone)
    finally:
        raw.close(0)
        ctx.term()


def test_wrong_key_and_wrong_version_fail_the_handshake_clearly(server, monkeypatch):
    info = read_connection_file(server.conn)
    wrong = ConnectionInfo(**{**info.to_dict(), "key": "0" * 64})
    with Client(wrong) as c, pytest.raises(P.ProtocolError) as err:
        c.connect(timeout=10)
    assert err.value.code == "bad_signature"
    monkeypatch.setattr(P.session, "PROTOCOL_VERSION", "2.0")  # what this side writes in its headers
    with Client(server.conn) as c, pytest.raises(P.ProtocolError) as err:
        c.connect(timeout=10)
    assert err.value.code == "version_mismatch" and "2.0" in str(err.value)


def test_slow_client_gets_the_newest_preview_not_a_backlog(server):
    """Previews of 100k Gaussians at up to 50/s while the client stalls for 1.5 s: afterwards
    it receives only a few stale ones, then jumps ahead (plain PUB/SUB would replay every one)."""
    with server.client() as c:
        job = c.submit(PHOTO, "synthetic", options={"steps": 100_000, "step_seconds": 0.02, "n_gaussians": 100_000})
        wait_for(c, job, lambda m: isinstance(m, P.Preview), timeout=60)
        time.sleep(1.5)  # Blender busy: nobody polls
        steps = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for m in c.poll(timeout=0.02, max_messages=1):  # one at a time: no client-side skipping
                if isinstance(m, P.Preview):
                    steps.append(m.step)
        c.cancel(job)
        c.wait(job, timeout=10)
    assert len(steps) >= 3, steps
    gaps = np.diff(steps)
    assert gaps.max() >= 10, steps  # it skipped what happened while it stalled
    stale = int(np.argmax(gaps))  # previews delivered before the jump were queued before the stall
    assert stale <= 6, steps


def test_server_process_never_imports_torch():
    code = "import sys, backend.server, backend.cli, backend.jobs, backend.worker; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ------------------------------------------------------------- crash & restart
def test_kill9_then_restart_keeps_results_and_reports_the_interrupted_job(tmp_path):
    srv = ServerProc(tmp_path).start()
    try:
        with srv.client() as c:
            done_job = c.submit(PHOTO, "synthetic", options=FAST)
            assert isinstance(c.wait(done_job, timeout=60), P.JobDone)
            splats, ply = c.get_result(done_job)
            running_job = c.submit(PHOTO, "synthetic", options=LONG)
            wait_for(c, running_job, lambda m: isinstance(m, P.Progress), timeout=60)
            worker_pid = c.connect().worker_pid
        srv.kill9()
        deadline = time.monotonic() + 10
        while process_alive(worker_pid):  # PR_SET_PDEATHSIG takes the worker down too
            assert time.monotonic() < deadline, "worker outlived the killed server"
            time.sleep(0.05)

        srv.start()
        with srv.client() as c:
            jobs = {j["job_id"]: j for j in c.list_jobs()}
            assert jobs[done_job]["state"] == "done"
            assert jobs[running_job]["state"] == "interrupted"
            assert jobs[running_job]["error"]["code"] == "interrupted"
            splats2, ply2 = c.get_result(done_job)
            assert ply2 == ply
            for key, arr in splats.as_dict().items():
                assert splats2.as_dict()[key].tobytes() == arr.tobytes()
            with pytest.raises(ServiceError) as err:
                c.get_result(running_job)
            assert err.value.code == "no_result" and "interrupted" in err.value.message
            job = c.submit(PHOTO, "synthetic", options=FAST)
            assert isinstance(c.wait(job, timeout=60), P.JobDone)
            c.shutdown()
        srv.proc.wait(20)
        assert srv.proc.returncode == 0
        assert not srv.conn.exists()  # a clean exit removes its connection file
    finally:
        srv.stop()


def test_non_loopback_bind_without_key_is_refused(tmp_path):
    from backend.server_config import InsecureBindError, ServerConfig

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--bind",
            "0.0.0.0",
            "--no-key",
            "--connection-file",
            str(tmp_path / "c.json"),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "insecure_bind" in r.stderr and "0.0.0.0" in r.stderr
    assert not (tmp_path / "c.json").exists()
    for host in ("10.0.0.5", "::", "example.com"):
        with pytest.raises(InsecureBindError):
            ServerConfig(state_dir=tmp_path, bind=host, key="")
    for host in ("127.0.0.1", "::1", "localhost"):
        ServerConfig(state_dir=tmp_path, bind=host, key="")
    ServerConfig(state_dir=tmp_path, bind="0.0.0.0")  # a key (generated) makes it acceptable


def test_curve_encryption_and_its_key_survives_a_restart(tmp_path):
    srv = ServerProc(tmp_path, "--curve", "--reuse-connection-file").start()
    try:
        info = read_connection_file(srv.conn)
        key_file = srv.state / "curve_server.key"
        public, secret = key_file.read_bytes().split()
        assert info.curve_server_key == public.decode() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert secret.decode() not in srv.conn.read_text()  # clients never see the server's secret
        with srv.client() as c:
            job = c.submit(PHOTO, "synthetic", options=FAST)
            assert isinstance(c.wait(job, timeout=60), P.JobDone)
            assert len(c.get_result(job)[0]) == FAST["n_gaussians"]
            srv.kill9()
            srv.start(fresh=False)
            assert read_connection_file(srv.conn).curve_server_key == info.curve_server_key
            c.connect(timeout=30)  # the old connection info still opens the encrypted channel
            assert len(c.get_result(job)[0]) == FAST["n_gaussians"]
        srv.stop()
        key_file.write_bytes(b"garbage")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "backend",
                "serve",
                "--curve",
                "--connection-file",
                str(tmp_path / "c2.json"),
                "--state-dir",
                str(srv.state),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": _pythonpath()},
        )
        assert r.returncode == 2 and "bad_server_config" in r.stderr and "curve_server.key" in r.stderr, r.stderr
    finally:
        srv.stop()


def test_a_timed_out_request_is_not_run_by_a_server_that_starts_later(tmp_path):
    """A submit that timed out while the server was down must not become a job when the
    server comes back on the same ports with the same key (--reuse-connection-file). A raw
    DEALER, which keeps its queue, shows what the Client's reset prevents."""
    srv = ServerProc(tmp_path, "--reuse-connection-file").start()
    with srv.client() as c:
        wait_ready(c)
    info = read_connection_file(srv.conn)
    srv.stop()  # the ports are free now; the clients do not know
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(info.router_url)
    try:
        with Client(info) as c:
            with pytest.raises(ServiceError) as err:
                c.submit(PHOTO, "synthetic", options=FAST, image_name="from-client", timeout=0.5)
            assert err.value.code == "timeout"
            P.Session(info.key_bytes).send(
                raw, P.SubmitJob(image=PHOTO, pipeline="synthetic", options=FAST, image_name="from-raw")
            )
            from blender_addon.core.connection import write_connection_file

            write_connection_file(srv.conn, info)  # what the stopped server left (a crash leaves it)
            srv.start(fresh=False)
            assert read_connection_file(srv.conn).key == info.key
            c.connect(timeout=30)  # the same Client object reconnects: same key, same ports
            assert raw.poll(30_000)  # the raw DEALER's stale submit was delivered and accepted
            names = [j["image_name"] for j in c.list_jobs()]
            assert names.count("from-raw") == 1 and "from-client" not in names
    finally:
        raw.close(0)
        ctx.term()
        srv.stop()


def test_missing_models_are_reported_in_welcome_and_refused_at_submit(tmp_path, monkeypatch):
    """A pipeline whose weights are absent is greyed out with the fix, and a submit for it
    fails at once with the typed error naming `models download` (no job is created)."""
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path / "empty-model-root"))
    for key in [k for k in os.environ if k.startswith("PORTRAITSPLAT_MODEL_")]:
        monkeypatch.delenv(key)
    srv = ServerProc(tmp_path, pipelines="synthetic,instax").start()
    try:
        with srv.client() as c:
            wait_ready(c)
            w = c.connect()
            assert "synthetic" in w.pipelines and "instax" not in w.pipelines
            assert "models download --only sv3d_u" in w.unavailable["instax"]
            assert w.models["sv3d_u"]["present"] is False and "--only sv3d_u" in w.models["sv3d_u"]["fix"]
            assert w.models["sd15"]["licence"].startswith("CreativeML")
            with pytest.raises(ServiceError) as err:
                c.submit(PHOTO, "instax")
            assert err.value.code == "model_missing" and "models download --only sv3d_u" in err.value.hint
            assert c.list_jobs() == []
    finally:
        srv.stop()
