"""Deleting ended jobs: the ``delete_job`` message, the job store, and ``python -m backend jobs``.

Real server process and sockets on loopback, as in ``test_service.py`` (whose helpers this
module reuses).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from service_support import FAST, LONG, PHOTO, REPO, ServerProc, _pythonpath, wait_for

from backend.jobs import DONE, JobRecord, JobStore
from blender_addon.core import protocol as P
from blender_addon.core.client import ServiceError


def _folder_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_store_deletes_only_ended_jobs_and_counts_the_bytes(tmp_path):
    store = JobStore(tmp_path)
    running = store.create(JobRecord(job_id=""), PHOTO, {"pipeline": "synthetic"})
    store.start(running)
    with pytest.raises(ValueError, match="running"):
        store.delete(running.job_id)
    assert store.job_dir(running.job_id).is_dir()
    ended = store.create(JobRecord(job_id=""), PHOTO, {"pipeline": "synthetic"})
    store.finish(ended, DONE, n_gaussians=0)
    size = _folder_bytes(store.job_dir(ended.job_id))
    assert size > len(PHOTO)
    assert store.delete(ended.job_id) == size
    assert not store.job_dir(ended.job_id).exists()
    assert [r.job_id for r in store.list()] == [running.job_id]
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == [running.job_id]  # no leftover temp folder


def test_delete_job_through_the_server_and_after_a_restart(tmp_path):
    srv = ServerProc(tmp_path).start()
    try:
        with srv.client() as c:
            keep = c.submit(PHOTO, "synthetic", options=FAST)
            gone = c.submit(PHOTO, "synthetic", options=FAST)
            for job in (keep, gone):
                assert isinstance(c.wait(job, timeout=60), P.JobDone)
            folder = srv.state / "jobs" / gone
            size = _folder_bytes(folder)
            assert c.delete_job(gone) == size > 0
            assert not folder.exists() and (srv.state / "jobs" / keep).is_dir()
            assert gone not in {j["job_id"] for j in c.list_jobs()}
            for call in (c.get_result, c.delete_job, c.cancel):
                with pytest.raises(ServiceError) as err:
                    call(gone)
                assert err.value.code == "not_found"

            running = c.submit(PHOTO, "synthetic", options=LONG)
            wait_for(c, running, lambda m: isinstance(m, P.Progress), timeout=60)
            with pytest.raises(ServiceError) as err:
                c.delete_job(running)
            assert err.value.code == "job_active" and "Cancel it first" in err.value.hint
            assert c.job(running)["state"] == "running"  # refused, untouched
            c.cancel(running)
            assert isinstance(c.wait(running, timeout=10), P.JobFailed)
            assert c.delete_job(running) > 0  # a cancelled job can go
        srv.kill9()
        # a deletion cut short by a crash: the folder was renamed, its files not yet removed
        half = srv.state / "jobs" / ".tmp-deleted-20260101-000000-deadbeef"
        half.mkdir()
        (half / "result.ply").write_bytes(b"x" * 1000)
        srv.start()
        with srv.client() as c:
            assert [j["job_id"] for j in c.list_jobs()] == [keep]
            assert len(c.get_result(keep)[0]) == FAST["n_gaussians"]
        assert not half.exists()
    finally:
        srv.stop()


def test_cli_lists_and_deletes_jobs(tmp_path):
    srv = ServerProc(tmp_path).start()
    env = {**os.environ, "PYTHONPATH": _pythonpath()}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "backend", "jobs", "--connection-file", str(srv.conn), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    try:
        with srv.client() as c:
            jobs = [c.submit(PHOTO, "synthetic", options=FAST, image_name=f"p{i}.png") for i in range(3)]
            for job in jobs:
                assert isinstance(c.wait(job, timeout=60), P.JobDone)
        r = cli()
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 4 and all(job in r.stdout for job in jobs)
        assert "done" in lines[1] and "synthetic" in lines[1] and "p2.png" in lines[1]  # newest first

        r = cli("--delete", jobs[0], "no-such-job")
        assert r.returncode == 1
        assert f"deleted {jobs[0]}" in r.stdout and "error [not_found]" in r.stderr and "1 job(s) deleted" in r.stdout
        assert not (srv.state / "jobs" / jobs[0]).exists()

        r = cli("--older-than", "1")  # nothing ended a day ago
        assert r.returncode == 0 and "0 job(s) deleted" in r.stdout
        r = cli("--older-than", "0")
        assert r.returncode == 0 and "2 job(s) deleted" in r.stdout, r.stdout + r.stderr
        assert not any(p.name[0].isdigit() for p in (srv.state / "jobs").iterdir())
        r = cli("--json")
        assert r.returncode == 0 and r.stdout.strip() == "[]"
    finally:
        srv.stop()
