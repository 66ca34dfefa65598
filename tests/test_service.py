"""The backend service end to end: a real server subprocess, its worker subprocess, real
loopback sockets, the Client the add-on uses. Jobs run the test-only ``synthetic``
pipeline (seconds, no models). Here: jobs, their events and results, cancel, typed job
failures. Robustness and restarts are in test_service_robustness.py, the command line in
test_service_cli.py; the harness is service_support.py.
"""

from __future__ import annotations

import io
import stat
import time

import numpy as np
import pytest
from PIL import Image
from service_support import (
    FAST,
    LONG,
    PHOTO,
    png_bytes,
    process_alive,
    wait_for,
)

from blender_addon.core import protocol as P
from blender_addon.core.client import ServiceError
from blender_addon.core.connection import read_connection_file
from blender_addon.core.splat_ply import read_ply

pytestmark = pytest.mark.timeout(120)


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


def test_the_worker_keeps_its_models_warm_between_jobs(client):
    """One model cache lives in the worker process: the second job finds the first job's
    (stand-in) model already built, in the same worker."""
    worker = client.connect().worker_pid
    counts = []
    for _ in range(2):
        job = client.submit(PHOTO, "synthetic", options=FAST)
        final = client.wait(job, timeout=60)
        assert isinstance(final, P.JobDone), final
        counts.append(final.metrics["model_jobs"])
    assert counts[1] == counts[0] + 1 and client.connect().worker_pid == worker


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
