"""``batch`` for real: the `photo` pipeline (tiny options) on a local Ray with 2 CPUs, and the
local runner's worker processes. Slow (Ray start, the pipelines' imports in each worker):
marked ``slow``; CI runs them with the slow set."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.batch import plan_input
from backend.batch.head import PIDDIR_ENV, EvalSettings
from backend.batch.output import read_done
from backend.batch.run import run_batch
from backend.batch.summary import write_summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ray = pytest.importorskip("ray")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {"steps": 5, "fit_res": 64, "n_points": 500, "turntable_frames": 2, "turntable_res": 64}
NO_EVAL = EvalSettings(evaluate=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three portraits (the astronaut, Grace Hopper from matplotlib's samples, the astronaut
    mirrored) and, in a folder beside them, a gradient with no face."""
    import matplotlib.cbook as cbook
    from PIL import Image

    root = tmp_path_factory.mktemp("batch_photos")
    faces = root / "faces"
    faces.mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", faces / "astronaut.jpg")
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        Image.open(fh).convert("RGB").save(faces / "hopper.jpg")
    Image.open(EXAMPLES / "astronaut.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(faces / "mirror.jpg")
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    Image.fromarray(np.stack([ramp] * 3, -1)).save(root / "gradient.png")
    return root


@pytest.fixture(scope="module")
def piddir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pids")


@pytest.fixture(scope="module")
def local_ray(piddir):
    """A local Ray on 2 CPUs; its workers inherit this environment (the pid folder, synthetic)."""
    saved = {k: os.environ.get(k) for k in (PIDDIR_ENV, "PORTRAITSPLAT_TEST_PIPELINES")}
    os.environ[PIDDIR_ENV] = str(piddir)
    os.environ["PORTRAITSPLAT_TEST_PIPELINES"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _ray_runner(settings=NO_EVAL):
    from backend.batch.run_ray import RayRunner

    return RayRunner(settings, gpus_per_head=0)


def _mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".batch" not in p.parts
    }


def test_ray_three_photos_two_styles_then_a_rerun_does_nothing(local_ray, photos, tmp_path):
    specs = plan_input(photos / "faces", styles=["oil painting", "comic"], options=TINY)
    out = tmp_path / "out"
    runner = _ray_runner()
    try:
        report = run_batch(specs, out, runner, quiet=True)
    finally:
        runner.close()
    assert len(report.heads) == 6 and [h.state for h in report.heads] == ["done"] * 6, [h.error for h in report.heads]
    assert report.attempts == 6
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(f"{p}__{s}" for p in ("astronaut", "hopper", "mirror") for s in ("oil-painting", "comic"))
    for s in specs:
        head = out / s.name
        assert (head / "head.ply").stat().st_size > 500 * 50  # 500 splats, ~60 floats each
        assert len(list((head / "turntable").glob("frame_*.png"))) == 2
        assert read_done(out, s.name)["spec"]["options"]["style"] == s.style
    before = _mtimes(out)
    runner = _ray_runner()
    try:
        again = run_batch(specs, out, runner, quiet=True)
    finally:
        runner.close()
    assert again.ran == 0 and again.attempts == 0 and len(again.done) == 6
    assert _mtimes(out) == before  # not one file rewritten


def test_ray_no_face_is_recorded_failed_while_others_finish(local_ray, photos, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copy(photos / "faces" / "astronaut.jpg", src / "astronaut.jpg")
    shutil.copy(photos / "gradient.png", src / "gradient.png")
    specs = plan_input(src, options=TINY)
    out = tmp_path / "out"
    runner = _ray_runner(EvalSettings(evaluate=True, views=4, size=128))  # a small evaluation: figures + sheet
    try:
        report = run_batch(specs, out, runner, quiet=True)
    finally:
        runner.close()
    by = {h.spec.name: h for h in report.heads}
    assert by["astronaut__plain"].state == "done"
    bad = by["gradient__plain"]
    assert bad.state == "failed" and bad.attempts == 1  # a typed failure is not retried
    assert bad.error["code"] == "no_face" and "face" in bad.error["hint"]
    assert not (out / "gradient__plain").exists()
    assert (out / "astronaut__plain" / "eval" / "contact_sheet.png").is_file()
    csv_path, html_path = write_summary(report)
    rows = {r["name"]: r for r in csv.DictReader(csv_path.open())}
    assert rows["gradient__plain"]["error_code"] == "no_face" and rows["gradient__plain"]["status"] == "failed"
    assert float(rows["astronaut__plain"]["front_psnr_db"]) > 5.0
    page = html_path.read_text()
    assert "astronaut__plain/eval/contact_sheet.png" in page and "No face was found" in page


def _kill_first_start(piddir: Path, name: str, killed: list[int], stop: threading.Event) -> None:
    """Kill the worker process that starts ``name``, once, mid-task."""
    while not stop.is_set():
        for marker in piddir.glob(f"{name}.*.started"):
            pid = int(marker.read_text())
            marker.unlink()
            time.sleep(0.5)  # well inside the head's ~4 s
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def _slow_csv(photos: Path, tmp_path: Path) -> Path:
    """Two tiny photo heads and one synthetic head that takes ~4 s (the one to kill)."""
    path = tmp_path / "heads.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["photo", "style", "pipeline", "options", "name"])
        w.writerow([photos / "faces" / "astronaut.jpg", "", "photo", "steps=5; fit_res=64; n_points=500", "a"])
        w.writerow([photos / "faces" / "hopper.jpg", "", "photo", "steps=5; fit_res=64; n_points=500", "b"])
        w.writerow([photos / "faces" / "mirror.jpg", "", "synthetic", '{"steps": 20, "step_seconds": 0.2}', "victim"])
    return path


def _run_with_a_kill(specs, out, runner, piddir) -> tuple[object, list[int]]:
    killed: list[int] = []
    stop = threading.Event()
    for old in piddir.glob("victim.*"):
        old.unlink()
    killer = threading.Thread(target=_kill_first_start, args=(piddir, "victim", killed, stop), daemon=True)
    killer.start()
    try:
        report = run_batch(specs, out, runner, max_attempts=3, quiet=True)
    finally:
        stop.set()
        runner.close()
        killer.join(5)
    return report, killed


def test_ray_worker_killed_mid_task_is_retried_and_nothing_is_lost(local_ray, photos, piddir, tmp_path):
    from backend.cli.common import parse_options

    specs = plan_input(_slow_csv(photos, tmp_path), parse_pairs=lambda p, pipe: parse_options(p, pipeline=pipe))
    out = tmp_path / "out"
    report, killed = _run_with_a_kill(specs, out, _ray_runner(), piddir)
    assert len(killed) == 1
    by = {h.spec.name: h for h in report.heads}
    assert [by[n].state for n in ("a", "b", "victim")] == ["done"] * 3, [h.error for h in report.heads]
    assert by["victim"].attempts == 2 and read_done(out, "victim")["attempts"] == 2
    assert by["a"].attempts == 1 and by["b"].attempts == 1
    for n in ("a", "b", "victim"):
        assert (out / n / "head.ply").is_file() and (out / n / "done.json").is_file()


def test_local_worker_killed_mid_task_is_retried(photos, piddir, tmp_path, monkeypatch):
    """The same without Ray: the local runner's worker process dies, the head runs again."""
    from backend.batch.run_local import LocalRunner
    from backend.cli.common import parse_options

    monkeypatch.setenv(PIDDIR_ENV, str(piddir))
    monkeypatch.setenv("PORTRAITSPLAT_TEST_PIPELINES", "1")
    specs = plan_input(_slow_csv(photos, tmp_path), parse_pairs=lambda p, pipe: parse_options(p, pipeline=pipe))
    out = tmp_path / "out"
    report, killed = _run_with_a_kill(specs, out, LocalRunner(NO_EVAL, lanes=[None]), piddir)
    assert len(killed) == 1
    by = {h.spec.name: h for h in report.heads}
    assert [by[n].state for n in ("a", "b", "victim")] == ["done"] * 3, [h.error for h in report.heads]
    assert by["victim"].attempts == 2 and by["a"].attempts == 1


def test_cli_local_batch_writes_summary_exits_1_on_a_failure_and_resumes(photos, tmp_path, capsys):
    """``python -m backend batch`` end to end on the local runner: a no-face photo fails typed,
    the exit code says so, summary.csv and index.html list every head, a rerun runs nothing."""
    from backend.cli import main

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(photos / "faces" / "hopper.jpg", src / "hopper.jpg")
    shutil.copy(photos / "gradient.png", src / "gradient.png")
    out = tmp_path / "out"
    argv = ["batch", str(src), "--out", str(out), "--no-eval", "--quiet"]
    argv += [a for k, v in TINY.items() for a in ("--option", f"{k}={v}")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 done, 1 failed of 2 heads (2 run now, 2 attempts" in captured.out
    assert "failed gradient__plain: [no_face]" in captured.err
    rows = {r["name"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["hopper__plain"]["status"] == "done" and rows["hopper__plain"]["n_splats"] == "500"
    assert rows["gradient__plain"]["error_code"] == "no_face"
    assert "gradient__plain" in (out / "index.html").read_text()
    assert main(argv) == 1
    assert "(0 run now, 0 attempts" in capsys.readouterr().out


def test_cli_ray_batch(local_ray, photos, tmp_path, capsys):
    from backend.cli import main

    out = tmp_path / "out"
    argv = ["batch", str(photos / "faces" / "astronaut.jpg"), "--out", str(out), "--ray", "--no-eval", "--quiet"]
    argv += ["--style", "a", "--style", "b", "--gpus-per-head", "0"]
    argv += [a for k, v in TINY.items() for a in ("--option", f"{k}={v}")]
    assert main(argv) == 0
    assert "2 done, 0 failed of 2 heads" in capsys.readouterr().out
    assert (out / "astronaut__a" / "head.ply").is_file() and (out / "astronaut__b" / "head.ply").is_file()
    assert ray.is_initialized()  # a Ray it did not start is left running


def test_cli_ray_env_reaches_the_tasks(local_ray, photos, tmp_path, capsys):
    """--ray-env KEY=VALUE is the tasks' environment (how a cluster's nodes find the models store)."""
    from backend.cli import main

    seen = tmp_path / "seen"
    seen.mkdir()
    out = tmp_path / "out"
    argv = ["batch", str(photos / "faces" / "hopper.jpg"), "--out", str(out), "--ray", "--quiet"]
    argv += ["--pipeline", "synthetic", "--option", "steps=2", "--ray-env", f"{PIDDIR_ENV}={seen}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [p.name.split(".")[0] for p in seen.glob("*.started")] == ["hopper__plain"]
