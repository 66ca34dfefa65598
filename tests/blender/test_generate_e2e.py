"""End to end: the add-on launches the backend (main venv), generates, and streams splats in.

The backend runs in the main venv (torch, models); Blender's side runs here, in the bpy
venv. ``bpy.app.timers`` do not fire without Blender's event loop, so the tests call the
timer callback ``controller.tick`` themselves, exactly as the timer would.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import REPO  # noqa: E402

BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"
PHOTO = REPO / "examples" / "astronaut.jpg"


@pytest.fixture
def launched(addon, tmp_path, monkeypatch):
    """Preferences set to launch the backend from the main venv; disconnects afterwards."""
    if not BACKEND_PYTHON.exists():
        pytest.skip(f"no backend venv at {BACKEND_PYTHON} (run scripts/test.sh once)")
    from blender_addon import controller, prefs

    monkeypatch.setenv("PORTRAITSPLAT_TEST_PIPELINES", "1")  # offers the 'synthetic' test pipeline
    entry = bpy.context.preferences.addons.new()
    entry.module = prefs.ADDON_ID
    p = prefs.get_prefs()
    assert isinstance(p, prefs.PORTRAITSPLAT_AP_preferences)
    p.connection_mode = "LAUNCH"
    p.python_path = str(BACKEND_PYTHON)
    p.backend_dir = str(REPO)
    p.state_dir = str(tmp_path / "backend")
    p.launch_timeout = 180
    bpy.context.scene.portraitsplat.photo = str(PHOTO)
    yield controller
    controller.disconnect(bpy.context)
    bpy.context.preferences.addons.remove(entry)


def _drive(controller, until, timeout: float, on_tick=None):
    """Call the timer callback until ``until()`` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; status: {controller.runtime().status!r}"
        interval = controller.tick()
        assert interval is not None, "the timer stopped while connected"
        if on_tick is not None:
            on_tick()
        time.sleep(0.02)


def _watch_object(job_id, seen):
    from blender_addon import splats

    obj = splats.find_object(job_id)
    if obj is not None:
        seen.add((obj.as_pointer(), obj.data.as_pointer()))


def test_generate_streams_previews_into_one_object(launched):
    controller = launched
    assert bpy.ops.portraitsplat.generate(
        pipeline="synthetic", options='{"n_gaussians": 1500, "steps": 8, "step_seconds": 0.15}'
    ) == {"FINISHED"}
    rt = controller.runtime()
    job_id = rt.active_job
    assert job_id and bpy.app.timers.is_registered(controller.tick)
    seen = set()
    _drive(controller, lambda: not rt.active_job, 120, on_tick=lambda: _watch_object(job_id, seen))
    assert "done" in rt.status, rt.status
    assert rt.previews_received >= 1 and rt.progress == 1.0
    assert len(seen) == 1, "previews and the final result must reuse one object and one mesh"
    from blender_addon import splats

    obj = splats.find_object(job_id)
    assert obj["portraitsplat_state"] == "final" and len(obj.data.vertices) == 1500
    # the job list shows it, and re-importing updates the same object
    assert bpy.ops.portraitsplat.refresh_jobs() == {"FINISHED"}
    assert job_id in [j.job_id for j in rt.jobs]
    assert bpy.ops.portraitsplat.import_job(job_id=job_id) == {"FINISHED"}  # asks; a later tick shows it
    _drive(controller, lambda: not controller.connection().client.fetches_in_flight(), 60)
    assert "done" in rt.status and not rt.status_is_error, rt.status
    assert (
        splats.find_object(job_id) == obj
        and len([o for o in bpy.data.objects if o.get("portraitsplat") == job_id]) == 1
    )
    # deleting the job removes it from the backend and the list; the object in the scene stays
    assert bpy.ops.portraitsplat.delete_job(job_id=job_id) == {"FINISHED"}
    assert job_id not in [j.job_id for j in rt.jobs] and "deleted" in rt.status
    assert splats.find_object(job_id) == obj and len(obj.data.vertices) == 1500
    assert bpy.ops.portraitsplat.import_job(job_id=job_id) == {"FINISHED"}
    _drive(controller, lambda: rt.status_is_error, 60)
    assert "could not be fetched" in rt.status and "no job" in rt.status, rt.status


def test_cancel_and_unavailable_pipeline(launched):
    controller = launched
    bpy.ops.portraitsplat.generate(pipeline="synthetic", options='{"steps": 200, "step_seconds": 0.1}')
    rt = controller.runtime()
    _drive(controller, lambda: rt.stage not in ("", "queued"), 120)
    assert bpy.ops.portraitsplat.cancel() == {"FINISHED"}
    _drive(controller, lambda: not rt.active_job, 60)
    assert rt.stage == "cancelled" and not rt.status_is_error
    # the first welcome may predate the worker; the timer refreshes it from the heartbeats
    _drive(controller, lambda: controller.connection().welcome.worker_state in ("ready", "busy"), 30)
    assert "synthetic" in controller.connection().welcome.pipelines
    with pytest.raises(
        RuntimeError, match="'no-such-pipeline' pipeline is unavailable: this backend does not offer it"
    ):
        bpy.ops.portraitsplat.generate(pipeline="no-such-pipeline")


def test_missing_backend_python_says_what_to_do(addon, tmp_path):
    from blender_addon import controller, prefs

    entry = bpy.context.preferences.addons.new()
    entry.module = prefs.ADDON_ID
    try:
        p = prefs.get_prefs()
        p.connection_mode, p.python_path, p.state_dir = "LAUNCH", str(tmp_path / "no" / "python"), str(tmp_path)
        with pytest.raises(RuntimeError, match="Backend Python"):
            bpy.ops.portraitsplat.connect()
        assert controller.runtime().status_is_error and not controller.runtime().connected
        p.connection_mode, p.connection_file = "FILE", str(tmp_path / "missing.json")
        with pytest.raises(RuntimeError, match="python -m backend serve"):
            bpy.ops.portraitsplat.connect()
    finally:
        bpy.context.preferences.addons.remove(entry)


def test_end_to_end_photo_pipeline_preview(launched):
    """The example photo through the real photo pipeline, preset 'preview'."""
    controller = launched
    settings = bpy.context.scene.portraitsplat
    settings.pipeline, settings.preset = "photo", "preview"
    assert bpy.ops.portraitsplat.generate() == {"FINISHED"}
    rt = controller.runtime()
    job_id = rt.active_job
    seen = set()
    _drive(controller, lambda: not rt.active_job, 420, on_tick=lambda: _watch_object(job_id, seen))
    assert "done" in rt.status, f"{rt.status} / {rt.hint}"
    from blender_addon import splats

    obj = splats.find_object(job_id)
    assert rt.previews_received >= 1
    assert len(seen) == 1
    assert obj["portraitsplat_state"] == "final" and len(obj.data.vertices) > 1000
    # real-world size: a head is roughly 0.15-0.35 m tall, centred near the origin
    import numpy as np

    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.attributes["position"].data.foreach_get("vector", co)
    co = co.reshape(-1, 3)
    height = np.percentile(co[:, 2], 99) - np.percentile(co[:, 2], 1)
    assert 0.1 < height < 0.5, height


def test_backend_exit_is_reported(launched):
    controller = launched
    assert bpy.ops.portraitsplat.connect() == {"FINISHED"}
    proc = controller.connection().process
    proc.popen.kill()  # the backend this test launched
    proc.popen.wait(timeout=10)
    assert controller.tick() is not None
    rt = controller.runtime()
    assert not rt.connected and rt.status_is_error and "backend exited" in rt.status and "backend.log" in rt.hint
    assert controller.tick() is None, "the timer stops once disconnected"
