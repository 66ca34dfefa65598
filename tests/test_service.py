"""The backend service end to end: a real server subprocess, its worker subprocess, real
loopback sockets, the Client the add-on uses. Jobs run the test-only ``synthetic``
pipeline (seconds, no models) unless a test says otherwise; one slow test runs the real
photo pipeline with preset "preview".

Every server is started in its own process group and the whole group is killed at
teardown, so no server or worker outlives its test.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from blender_addon.core import protocol as P
from blender_addon.core.client import Client, ServiceError
from blender_addon.core.connection import ConnectionInfo, read_connection_file
from blender_addon.core.splat_ply import read_ply

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

FAST = {"steps": 4, "step_seconds": 0.01, "n_gaussians": 300}
LONG = {"steps": 100_000, "step_seconds": 0.02, "n_gaussians": 300}


def png_bytes(size=(96, 80), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


PHOTO = png_bytes()


class ServerProc:
    """``python -m backend serve`` in its own process group."""

    def __init__(self, root: Path, *extra: str, pipelines: str = "synthetic"):
        self.root = root
        self.conn = root / "conn.json"
        self.state = root / "state"
        self.log = root / "server.log"
        self.extra = list(extra)
        self.pipelines = pipelines
        self.proc: subprocess.Popen | None = None
        self.pgids: list[int] = []

    def start(self, timeout: float = 60.0, fresh: bool = True) -> ServerProc:
        if fresh:
            self.conn.unlink(missing_ok=True)
        mtime = self.conn.stat().st_mtime_ns if self.conn.exists() else None
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--connection-file",
            str(self.conn),
            "--state-dir",
            str(self.state),
            "--pipelines",
            self.pipelines,
            "--heartbeat",
            "0.2",
            *self.extra,
        ]
        env = {**os.environ, "PORTRAITSPLAT_TEST_PIPELINES": "1", "PYTHONPATH": _pythonpath()}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pgids.append(self.proc.pid)
        deadline = time.monotonic() + timeout
        while not self.conn.exists() or self.conn.stat().st_mtime_ns == mtime:  # written atomically once bound
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    def client(self, **kwargs) -> Client:
        client = Client(self.conn, **kwargs)
        client.connect(timeout=30)
        return client

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pgid in self.pgids:  # the server and any worker it started
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None:
            self.proc.wait(10)


def wait_ready(client: Client, timeout: float = 60.0) -> None:
    """Until a heartbeat says the worker is up (the server accepts jobs before that too)."""
    deadline = time.monotonic() + timeout
    while client.last_heartbeat is None or client.last_heartbeat.worker_state not in ("ready", "busy"):
        assert time.monotonic() < deadline, "worker did not become ready"
        client._events.extend(client.poll(timeout=0.2))


def wait_for(client: Client, job_id: str, predicate, timeout: float = 30.0) -> list[P.Message]:
    """Poll until an event of ``job_id`` satisfies ``predicate``; returns the events seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"timed out; saw {[type(m).__name__ for m in seen]}"
        for msg in client.poll(timeout=0.1):
            if getattr(msg, "job_id", None) == job_id:
                seen.append(msg)
                if predicate(msg):
                    return seen


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pythonpath() -> str:
    """The repo first, then whatever the caller's environment already had (e.g. carried wheels)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
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


# ---------------------------------------------------------------------- basics
def test_connection_file_is_private_and_complete(server):
    assert stat.S_IMODE(server.conn.stat().st_mode) == 0o600
    info = read_connection_file(server.conn)
    assert info.ip == "127.0.0.1" and len(info.key) == 64 and info.protocol_version == P.PROTOCOL_VERSION


def test_welcome_reports_versions_and_capabilities(client):
    w = client.welcome
    assert w.protocol_version == P.PROTOCOL_VERSION and w.server_version
    assert w.pipelines == ["synthetic"] and w.device == "cpu"
    assert w.capabilities["max_frame_bytes"] == 2**20 and w.capabilities["preview_dtypes"] == ["float32", "float16"]
    assert w.worker_pid and w.worker_pid != w.server_pid


def test_job_streams_events_and_its_result_is_exact(client, server):
    from backend.image_io import load_image
    from backend.pipelines import synthetic

    options = {"steps": 5, "step_seconds": 0.06, "n_gaussians": 500, "sh_degree": 1, "turntable": 3}
    job = client.submit(PHOTO, "synthetic", seed=11, options=options, image_name="me.png")
    events: list[P.Message] = []
    final = client.wait(job, timeout=60, on_event=events.append)
    assert isinstance(final, P.JobDone), final
    assert final.n_gaussians == 500 and final.metrics["steps"] == 5
    progress = [e for e in events if isinstance(e, P.Progress)]
    assert progress and progress[-1].step == 5 and progress[-1].total == 5 and progress[-1].stage == "fit"
    previews = [e for e in events if isinstance(e, P.Preview)]
    assert previews and all(len(p.splats) == 500 and p.splats.means.dtype == np.float32 for p in previews)

    # the result is exactly what the pipeline computes for this photo and seed
    splats, ply = client.get_result(job)
    expected = synthetic.run(load_image(PHOTO), seed=11, options=options).splats
    for key, arr in expected.as_dict().items():
        assert splats.as_dict()[key].tobytes() == arr.tobytes(), key
    np.testing.assert_allclose(read_ply(ply).means, expected.means, atol=1e-6)

    folder = server.state / "jobs" / job
    assert (folder / "input.png").read_bytes() == PHOTO
    assert (folder / "result.ply").read_bytes() == ply
    assert '"seed": 11' in (folder / "request.json").read_text()
    assert len((folder / "progress.jsonl").read_text().splitlines()) >= len(progress)
    assert not (folder / "turntable").exists()  # nothing beside the photo: all in output/
    frames = sorted((folder / "output" / "turntable").glob("*.png"))
    assert [f.name for f in frames] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert np.asarray(Image.open(frames[2])).max() == 2  # the pipeline's frame, not a placeholder
    record = client.job(job)
    assert record["state"] == "done" and record["n_gaussians"] == 500 and record["image_name"] == "me.png"


def test_float16_previews_on_request(client):
    job = client.submit(PHOTO, "synthetic", options=FAST, preview_dtype="float16")
    seen = wait_for(client, job, lambda m: isinstance(m, P.Preview))
    assert seen[-1].splats.means.dtype == np.float16
    assert isinstance(client.wait(job, timeout=30), P.JobDone)


def test_two_clients_at_once_each_get_only_their_own_events(server):
    with server.client() as a, server.client() as b:
        opts = {"steps": 6, "step_seconds": 0.03, "n_gaussians": 200}
        jobs = {a: a.submit(PHOTO, "synthetic", options=opts), b: b.submit(PHOTO, "synthetic", seed=1, options=opts)}
        events = {a: [], b: []}
        done = set()
        deadline = time.monotonic() + 60
        while len(done) < 2:
            assert time.monotonic() < deadline
            for c in (a, b):
                for msg in c.poll(timeout=0.05):
                    events[c].append(msg)
                    if isinstance(msg, (P.JobDone, P.JobFailed)):
                        assert isinstance(msg, P.JobDone), msg
                        done.add(c)
        for c in (a, b):
            assert {m.job_id for m in events[c]} == {jobs[c]}
            kinds = {type(m) for m in events[c]}
            assert {P.Progress, P.Preview, P.JobDone} <= kinds
        assert a.get_result(jobs[a])[0].means.tobytes() != b.get_result(jobs[b])[0].means.tobytes()


# ---------------------------------------------------------------------- cancel
def test_cancel_running_job_stops_it_in_the_worker(client):
    """A pipeline that reports progress stops on its own when cancelled: the same worker
    process lives on (one that ignored the cancel would be killed after the grace)."""
    worker = client.connect().worker_pid
    job = client.submit(PHOTO, "synthetic", options=LONG)
    wait_for(client, job, lambda m: isinstance(m, P.Progress))
    assert client.cancel(job) == "cancelling"
    final = client.wait(job, timeout=30)
    assert isinstance(final, P.JobFailed) and final.code == "cancelled", final
    assert final.message == "The job was cancelled.", final.message  # the worker's, not the kill's
    assert client.connect().worker_pid == worker and process_alive(worker)
    assert client.job(job)["state"] == "cancelled"
    assert client.poll(timeout=0.3) == []  # nothing of it after its end


def test_cancel_hung_job_kills_the_worker_after_the_grace_and_recovers(client):
    before = client.connect().worker_pid
    job = client.submit(PHOTO, "synthetic", options={**LONG, "fail_at": 1, "fail_mode": "hang", "hang_seconds": 60})
    wait_for(client, job, lambda m: isinstance(m, P.Progress))
    client.cancel(job)
    final = client.wait(job, timeout=30)  # the hang lasts 60 s: only the kill can end it sooner
    assert isinstance(final, P.JobFailed) and final.code == "cancelled", final
    assert "worker was stopped" in final.message, final.message
    assert not process_alive(before)
    # a fresh worker takes the next job
    job2 = client.submit(PHOTO, "synthetic", options=FAST)
    assert isinstance(client.wait(job2, timeout=60), P.JobDone)
    assert client.connect().worker_pid != before


def test_cancel_queued_job(client):
    first = client.submit(PHOTO, "synthetic", options=LONG)
    second = client.submit(PHOTO, "synthetic", options=FAST)
    assert client.cancel(second) == "cancelled"
    final = wait_for(client, second, lambda m: isinstance(m, P.JobFailed))[-1]
    assert final.code == "cancelled"
    client.cancel(first)
    assert client.wait(first, timeout=10).code == "cancelled"
    assert client.job(second)["state"] == "cancelled"


# ----------------------------------------------------------- typed job failures
@pytest.mark.parametrize(
    "photo,needle",
    [
        (b"this is not an image at all" * 10, "not an image"),
        (png_bytes()[:200], "corrupt"),  # truncated PNG
        (png_bytes((20, 20)), "20x20"),
        (None, "megapixels"),  # decompression bomb, made below
    ],
    ids=["not-an-image", "truncated", "too-small", "bomb"],
)
def test_bad_images_fail_typed_and_the_server_stays_up(client, photo, needle):
    if photo is None:
        buf = io.BytesIO()
        Image.new("L", (3000, 3000)).save(buf, format="PNG")  # 9 MP of zeros, ~10 kB: over the 4 MP limit
        photo = buf.getvalue()
        assert len(photo) < 100_000
    job = client.submit(photo, "synthetic", options=FAST)
    final = client.wait(job, timeout=30)
    assert isinstance(final, P.JobFailed) and final.code == "bad_image", final
    assert needle in final.message.lower() and final.hint
    assert client.ping() < 5


def test_oversize_and_empty_photos_are_refused_at_submit(client):
    for photo in (b"", b"\xff\xd8\xff" + b"\0" * 600_000):
        with pytest.raises(ServiceError) as err:
            client.submit(photo, "synthetic")
        assert err.value.code == "bad_image" and err.value.hint is not None


def test_pipeline_errors_keep_their_code(client):
    job = client.submit(PHOTO, "synthetic", options={**FAST, "fail_at": 1, "fail_code": "no_face"})
    final = client.wait(job, timeout=30)
    assert (final.code, final.hint) == ("no_face", "(test pipeline)")
    with pytest.raises(ServiceError) as err:
        client.get_result(job)
    assert err.value.code == "no_result"


@pytest.mark.parametrize("mode,code", [("oom", "out_of_memory"), ("crash", "worker_crashed")])
def test_worker_oom_or_crash_is_typed_and_the_worker_restarts(client, mode, code):
    before = client.connect().worker_pid
    job = client.submit(PHOTO, "synthetic", options={**FAST, "fail_at": 1, "fail_mode": mode})
    final = client.wait(job, timeout=30)
    assert isinstance(final, P.JobFailed) and final.code == code, final
    assert final.hint
    if mode == "oom":
        assert "preset" in final.hint
    job2 = client.submit(PHOTO, "synthetic", options=FAST)
    assert isinstance(client.wait(job2, timeout=60), P.JobDone)
    assert client.connect().worker_pid != before


def test_unknown_pipeline_and_unknown_jobs(client):
    with pytest.raises(ServiceError) as err:
        client.submit(PHOTO, "no_such_pipeline")
    assert err.value.code == "unknown_pipeline" and "synthetic" in err.value.hint
    for bad_id in ("20990101-000000-deadbeef", "../../etc/passwd", ""):
        with pytest.raises(ServiceError) as err:
            client.get_result(bad_id)
        assert err.value.code == "not_found"
        with pytest.raises(ServiceError):
            client.cancel(bad_id)


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


# ------------------------------------------------------------------------- CLI
def test_cli_ping_and_generate(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    r = subprocess.run(
        [sys.executable, "-m", "backend", "ping", "--connection-file", str(server.conn)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert f"protocol {P.PROTOCOL_VERSION}" in r.stdout and "synthetic" in r.stdout and "max_frame_bytes" in r.stdout

    photo = tmp_path / "me.png"
    photo.write_bytes(PHOTO)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "generate",
            str(photo),
            "--connect",
            str(server.conn),
            "--out",
            str(tmp_path / "out"),
            "--pipeline",
            "synthetic",
            "--option",
            "steps=3",
            "--option",
            "n_gaussians=123",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert len(read_ply(tmp_path / "out" / "head.ply")) == 123

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "generate",
            str(photo),
            "--connect",
            str(server.conn),
            "--out",
            str(tmp_path / "out2"),
            "--pipeline",
            "synthetic",
            "--option",
            "fail_at=0",
            "--option",
            "fail_code=no_face",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1 and "error [no_face]" in r.stderr


def test_cli_ping_without_a_server_fails_with_a_timeout_error(tmp_path):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")  # a port nobody answers on after close
    s.close(0)
    ctx.term()
    from blender_addon.core.connection import write_connection_file

    write_connection_file(tmp_path / "c.json", ConnectionInfo(ip="127.0.0.1", router_port=port, pub_port=port, key="k"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "ping",
            "--connection-file",
            str(tmp_path / "c.json"),
            "--timeout",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "error [timeout]" in r.stderr


# ----------------------------------------------------------- the real pipeline
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_photo_pipeline_through_the_service(tmp_path):
    if not (REPO / "backend" / "pipelines" / "photo.py").exists():
        pytest.skip("backend/pipelines/photo.py is not in the tree yet")
    srv = ServerProc(tmp_path, pipelines="photo").start()
    try:
        with srv.client() as c:
            job = c.submit((REPO / "examples" / "astronaut.jpg").read_bytes(), "photo", preset="preview")
            events = []
            final = c.wait(job, timeout=800, on_event=events.append)
            assert isinstance(final, P.JobDone), final
            assert any(isinstance(e, P.Progress) for e in events)
            splats, ply = c.get_result(job)
            assert len(splats) == final.n_gaussians > 0
            assert len(read_ply(ply)) == len(splats)
            w = c.connect()
            maps = lambda pid: Path(f"/proc/{pid}/maps").read_text()  # noqa: E731
            assert "libtorch" not in maps(w.server_pid)  # the server never loads torch ...
            assert "libtorch" in maps(w.worker_pid)  # ... its worker does, and keeps it warm
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
