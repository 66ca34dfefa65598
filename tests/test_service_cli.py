"""The command line against a real server (``python -m backend ping|generate|jobs``), and
the real photo pipeline through the service (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from service_support import (
    PHOTO,
    REPO,
    ServerProc,
    _pythonpath,
)

from blender_addon.core import protocol as P
from blender_addon.core.connection import ConnectionInfo
from blender_addon.core.splat_ply import read_ply

pytestmark = pytest.mark.timeout(120)


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


def test_generate_options_reach_the_pipeline_locally_and_through_the_server(server, tmp_path):
    """One generate parser, two paths: the same --option list reaches the synthetic pipeline run
    here (PORTRAITSPLAT_TEST_PIPELINES=1, as the worker offers it) and as a server job."""
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "PORTRAITSPLAT_TEST_PIPELINES": "1"}
    photo = tmp_path / "me.png"
    photo.write_bytes(PHOTO)
    options = [
        "--option",
        "n_gaussians=77",
        "--option",
        "steps=2",
        "--option",
        "step_seconds=0",
        "--option",
        "sh_degree=1",
    ]
    for name, where in (("local", []), ("remote", ["--connect", str(server.conn)])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "backend", "generate", str(photo), "--out", str(out), "--pipeline", "synthetic"]
        r = subprocess.run(cmd + options + where, cwd=REPO, capture_output=True, text=True, timeout=90, env=env)
        assert r.returncode == 0, (name, r.stderr)
        splats = read_ply(out / "head.ply")
        assert len(splats) == 77 and splats.shN is not None and splats.shN.shape[1] == 3, name  # n_gaussians, sh_degree
        assert json.loads((out / "metrics.json").read_text())["steps"] == 2, name  # steps (an int, from JSON)
    r = subprocess.run(  # a name the pipeline does not have: refused before the job is submitted
        [sys.executable, "-m", "backend", "generate", str(photo), "--out", str(tmp_path / "bad"), "--pipeline"]
        + ["synthetic", "--option", "n_gaussianz=5", "--connect", str(server.conn)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert r.returncode == 1 and "error [bad_option]" in r.stderr and "n_gaussianz" in r.stderr, r.stderr


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
            # the worker evaluated the head: figures in the result, files in the job's output folder
            figures = final.metrics["eval"]
            assert figures["n_splats"] == len(splats) and 0 <= figures["pck"] <= 100, figures
            assert c.job(job)["metrics"]["eval"] == figures
            output = srv.state / "jobs" / job / "output"
            assert (output / "eval" / "contact_sheet.png").stat().st_size > 0
            assert len(list((output / "turntable").glob("frame_*.png"))) == figures["views"] - 4
            assert any(isinstance(e, P.Progress) and e.stage == "eval" for e in events)
            assert len(read_ply(ply)) == len(splats)
            w = c.connect()
            maps = lambda pid: Path(f"/proc/{pid}/maps").read_text()  # noqa: E731
            assert "libtorch" not in maps(w.server_pid)  # the server never loads torch ...
            assert "libtorch" in maps(w.worker_pid)  # ... its worker does, and keeps it warm
    finally:
        srv.stop()
