"""The add-on's Queue Batch operator against a launched backend: photos x styles become jobs in
the Jobs list, named <photo>__<style>, and each finished head appears in the scene."""

from __future__ import annotations

import shutil
import time

import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

import test_generate_e2e as e2e  # noqa: E402
from test_generate_e2e import PHOTO, _drive  # noqa: E402

launched = e2e.launched  # the fixture: the add-on launching the backend (synthetic pipeline offered)


def test_queue_batch_shows_every_head_in_the_job_list(launched, tmp_path):
    controller = launched
    for name in ("anna.jpg", "ben.jpg"):
        shutil.copy(PHOTO, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a photo")
    result = bpy.ops.portraitsplat.queue_batch(
        directory=str(tmp_path) + "/",
        styles="comic; oil painting",
        pipeline="synthetic",
        options='{"n_gaussians": 300, "steps": 3, "step_seconds": 0.01}',
    )
    assert result == {"FINISHED"}
    rt = controller.runtime()
    names = {"anna__comic", "anna__oil-painting", "ben__comic", "ben__oil-painting"}
    assert "4 heads queued" in rt.status, rt.status
    from blender_addon import splats

    def all_done() -> bool:
        controller.refresh_jobs(bpy.context)
        mine = [j for j in rt.jobs if j.label.split(" (")[0] in names]
        return len(mine) == 4 and all(j.state == "done" for j in mine)

    deadline = time.monotonic() + 120
    while not all_done():
        assert time.monotonic() < deadline, [(j.label, j.state) for j in rt.jobs]
        controller.tick()
        time.sleep(0.05)
    jobs = {j.label.split(" (")[0]: j.job_id for j in rt.jobs}
    _drive(controller, lambda: all(splats.find_object(jobs[n]) is not None for n in names), 60)
    assert all(len(splats.find_object(jobs[n]).data.vertices) == 300 for n in names)


def test_queue_batch_with_no_photos_says_so(launched, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="no photos"):
        bpy.ops.portraitsplat.queue_batch(directory=str(tmp_path / "empty") + "/", pipeline="synthetic")
