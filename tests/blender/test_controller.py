"""The controller's timer never waits on the backend: the final splats come on the stream
(``job_done.splats``) or, from an older backend, by a fetch a later tick picks up (issue 18.3).

A :class:`FakeBackend` on real ZeroMQ loopback sockets holds the ``get_result`` reply back;
the timer callback keeps returning, and the result lands once the reply is let through.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

from conftest import synthetic_head  # noqa: E402
from fake_backend import FakeBackend  # noqa: E402

from blender_addon.core import protocol as P  # noqa: E402


@pytest.fixture
def connected(addon):
    from blender_addon import controller, prefs

    fake = FakeBackend()
    entry = bpy.context.preferences.addons.new()
    entry.module = prefs.ADDON_ID
    p = prefs.get_prefs()
    p.connection_mode, p.host = "ADDRESS", "127.0.0.1"
    p.request_port, p.pub_port, p.key = fake.info.router_port, fake.info.pub_port, fake.info.key
    controller.connect(bpy.context, timeout=10)
    yield controller, fake
    controller.disconnect(bpy.context, stop_backend=False)
    bpy.context.preferences.addons.remove(entry)
    fake.close()


def _attr(mesh, name, width):
    a = mesh.attributes[name]
    out = np.empty(len(mesh.vertices) * width, np.float32)
    a.data.foreach_get("vector" if a.data_type == "FLOAT_VECTOR" else "value", out)
    return out.reshape(-1, width)


def _start_job(controller, job_id):
    rt = controller.runtime()
    rt.active_job, rt.stage = job_id, "fit"
    controller.connection().job_scene[job_id] = bpy.context.scene.name
    return rt


def _tick_until(controller, cond, ticks=400):
    import time

    for _ in range(ticks):
        assert controller.tick() is not None  # the timer stays registered
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"condition not reached; status {controller.runtime().status!r}")


def test_job_done_with_splats_shows_them_without_a_request(connected):
    controller, fake = connected
    from blender_addon import splats

    rt = _start_job(controller, "job-a")
    cloud = synthetic_head(400, seed=2, sh_rest=3)
    fake.send_to_client(P.JobDone(job_id="job-a", n_gaussians=400, splats=cloud))
    _tick_until(controller, lambda: not rt.active_job)
    obj = splats.find_object("job-a")
    assert obj is not None and obj[splats.STATE_TAG] == "final" and rt.stage == "done"
    np.testing.assert_array_equal(_attr(obj.data, "position", 3), cloud.means)
    np.testing.assert_array_equal(_attr(obj.data, "f_rest_2", 3), cloud.shN[:, 2, :])
    assert fake.requests.empty()  # nothing was asked: the splats came once, on the stream


def test_timer_keeps_returning_while_the_result_is_withheld(connected):
    controller, fake = connected
    from blender_addon import splats

    rt = _start_job(controller, "job-b")
    fake.send_to_client(P.JobDone(job_id="job-b", n_gaussians=300))  # a 1.2 backend: no splats
    _tick_until(controller, lambda: not fake.requests.empty())
    env = fake.next_request()
    assert isinstance(env.message, P.GetResult) and env.message.include_ply is False
    for _ in range(20):  # the backend holds the reply back: every tick returns, busy, nothing shown
        assert controller.tick() == controller.TICK_BUSY
    assert splats.find_object("job-b") is None and rt.active_job == "job-b" and rt.stage == "fetching"

    cloud = synthetic_head(300, seed=3)
    fake.reply(env, P.Result(job_id="job-b", splats=cloud, ply=b""))
    _tick_until(controller, lambda: not rt.active_job)
    obj = splats.find_object("job-b")
    assert obj[splats.STATE_TAG] == "final" and rt.stage == "done" and "300 splats" in rt.status
    np.testing.assert_array_equal(_attr(obj.data, "position", 3), cloud.means)
    assert controller.tick() == controller.TICK_IDLE  # nothing left in flight


def test_import_job_operator_fetches_without_waiting(connected):
    controller, fake = connected
    from blender_addon import splats

    assert bpy.ops.portraitsplat.import_job(job_id="job-c") == {"FINISHED"}  # returned: no reply yet
    env = fake.next_request()
    assert isinstance(env.message, P.GetResult) and splats.find_object("job-c") is None
    fake.reply(env, P.Error(code="not_found", message="no job job-c", hint="Refresh the list."))
    _tick_until(controller, lambda: controller.runtime().status_is_error)
    assert "could not be fetched" in controller.runtime().status and controller.runtime().hint == "Refresh the list."
