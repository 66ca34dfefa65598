"""A batch through the service (what the add-on's Queue Batch operator does): one job per
photo x style on a real server over loopback, shown in the job list under the head's name."""

from __future__ import annotations

import pytest
from service_support import PHOTO, png_bytes

from blender_addon.core import protocol as P
from blender_addon.core.batch import BatchError, head_name, plan_heads, submit_batch

OPTIONS = {"steps": 3, "step_seconds": 0.01, "n_gaussians": 200}


def test_plan_heads_names_like_the_batch_command(tmp_path):
    from backend.batch.plan import head_name as backend_head_name

    heads = plan_heads(["/p/anna.jpg", "/q/ben.png", "/p/anna.jpg"], ["Oil painting", " ", "comic"])
    assert [h.name for h in heads] == ["anna__oil-painting", "anna__comic", "ben__oil-painting", "ben__comic"]
    assert [h.name for h in plan_heads(["/p/anna.jpg"])] == ["anna__plain"]
    assert head_name("/x/my photo.JPG", "Van Gogh") == backend_head_name(tmp_path / "my photo.JPG", "Van Gogh")
    with pytest.raises(BatchError, match="Two photos make the head 'anna__plain'"):
        plan_heads(["/p/anna.jpg", "/q/anna.png"])
    with pytest.raises(BatchError):
        plan_heads([])


def test_a_batch_queues_one_job_per_head_and_all_finish(client, tmp_path):
    photos = []
    for i, name in enumerate(["anna.png", "ben.png"]):
        (tmp_path / name).write_bytes(png_bytes(seed=i))
        photos.append(str(tmp_path / name))
    heads = plan_heads(photos, ["comic", "oil"])
    queued = submit_batch(
        client, heads, pipeline="synthetic", preset="default", seed=2, options=OPTIONS, evaluate=False
    )
    assert [h.name for h, _ in queued] == ["anna__comic", "anna__oil", "ben__comic", "ben__oil"]
    ids = [job_id for _, job_id in queued]
    assert len(set(ids)) == 4
    finals = [client.wait(job_id, timeout=60) for job_id in ids]
    assert all(isinstance(f, P.JobDone) for f in finals), finals
    listed = {r["job_id"]: r for r in client.list_jobs(limit=50)}
    for head, job_id in queued:
        rec = listed[job_id]
        assert rec["image_name"] == head.name and rec["state"] == "done" and rec["seed"] == 2
        assert rec["style_prompt"] == head.style and rec["options"]["style"] == head.style


def test_an_unreadable_photo_queues_nothing(client, tmp_path):
    (tmp_path / "ok.png").write_bytes(PHOTO)
    before = len(client.list_jobs(limit=500))
    heads = plan_heads([str(tmp_path / "ok.png"), str(tmp_path / "missing.png")])
    with pytest.raises(BatchError, match="Cannot read the photo"):
        submit_batch(client, heads, pipeline="synthetic", options=OPTIONS)
    assert len(client.list_jobs(limit=500)) == before


def test_a_refused_head_says_what_was_queued_before_it(client, tmp_path):
    (tmp_path / "ok.png").write_bytes(PHOTO)
    (tmp_path / "empty.png").write_bytes(b"")
    heads = plan_heads([str(tmp_path / "ok.png"), str(tmp_path / "empty.png")])
    with pytest.raises(BatchError) as err:
        submit_batch(client, heads, pipeline="synthetic", options=OPTIONS, evaluate=False)
    assert "refused head empty__plain" in err.value.message and "ok__plain (" in err.value.message
    job_id = err.value.message.split("ok__plain (")[1].split(")")[0]
    assert isinstance(client.wait(job_id, timeout=60), P.JobDone)
