"""The batch command's planning, output, resume, retry and summary logic (fast: a fake runner
stands in for the pipelines). The real runs, local and on Ray, are in test_batch_run.py and
test_batch_ray.py (marked slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from backend.batch import BatchInputError, HeadSpec, plan_input
from backend.batch.head import HeadOutcome, failed
from backend.batch.output import read_done
from backend.batch.plan import head_name, slug
from backend.batch.run import run_batch
from backend.batch.summary import write_summary
from backend.cli.common import parse_options


def _photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"photo " + n.encode())
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_folder_plan_is_photos_times_styles(tmp_path):
    src = _photos(tmp_path / "in", ["b.jpg", "a.png"])
    specs = plan_input(src, styles=["Oil painting, Rembrandt", "comic"], preset="preview", seed=3)
    assert [s.name for s in specs] == [
        "a__oil-painting-rembrandt",
        "a__comic",
        "b__oil-painting-rembrandt",
        "b__comic",
    ]
    assert specs[0].options == {"style": "Oil painting, Rembrandt"} and specs[0].preset == "preview"
    assert specs[0].seed == 3 and specs[0].photo == str((src / "a.png").resolve())
    assert [s.name for s in plan_input(src)] == ["a__plain", "b__plain"]  # no style: one head per photo


def test_slug_and_names():
    assert slug("") == "plain"
    assert slug("Van Gogh!!") == "van-gogh"
    assert slug("日本").startswith("style-") and slug("日本") != slug("中国")
    assert head_name(Path("/x/my photo.JPG"), "") == "my-photo__plain"


def test_empty_folder_is_a_typed_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(BatchInputError) as err:
        plan_input(tmp_path / "in")
    assert err.value.code == "bad_batch" and "no photos" in err.value.message


def _csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_plan_reads_every_column(tmp_path):
    _photos(tmp_path, ["a.jpg", "b.jpg"])
    path = _csv(
        tmp_path / "cast.csv",
        [
            {
                "photo": "a.jpg",
                "style": "comic",
                "pipeline": "photo",
                "preset": "preview",
                "seed": "7",
                "options": '{"steps": 5}',
                "name": "",
            },
            {
                "photo": "b.jpg",
                "style": "",
                "pipeline": "",
                "preset": "",
                "seed": "",
                "options": "steps=4; fit_res=64",
                "name": "bee",
            },
        ],
        ["photo", "style", "pipeline", "preset", "seed", "options", "name"],
    )
    specs = plan_input(
        path,
        pipeline="photo",
        preset="default",
        seed=1,
        options={"n_points": 500},
        parse_pairs=lambda pairs, pipe: parse_options(pairs, pipeline=pipe),
    )
    a, b = specs
    assert (a.name, a.preset, a.seed, a.options) == (
        "a__comic",
        "preview",
        7,
        {"n_points": 500, "steps": 5, "style": "comic"},
    )
    assert (b.name, b.preset, b.seed, b.options) == ("bee", "default", 1, {"n_points": 500, "steps": 4, "fit_res": 64})
    assert b.photo == str((tmp_path / "b.jpg").resolve())


def test_csv_bad_rows_are_all_reported_with_row_numbers(tmp_path):
    _photos(tmp_path, ["a.jpg"])
    path = _csv(
        tmp_path / "bad.csv",
        [
            {"photo": "a.jpg", "seed": "x", "options": ""},
            {"photo": "missing.jpg", "seed": "", "options": ""},
            {"photo": "a.jpg", "seed": "", "options": "{not json"},
            {"photo": "a.jpg", "seed": "", "options": '{"stepz": 3}'},
            {"photo": "", "seed": "", "options": ""},  # an empty row is skipped, not an error
        ],
        ["photo", "seed", "options"],
    )
    with pytest.raises(BatchInputError) as err:
        plan_input(path, known_options=lambda pipe: {"steps", "style"})
    msg = err.value.message
    assert "4 bad row(s)" in msg
    assert "row 2: seed 'x' is not an integer" in msg
    assert "row 3: no photo at" in msg and "missing.jpg" in msg
    assert "row 4: options is not a JSON object" in msg
    assert "row 5: the photo pipeline has no option 'stepz'" in msg


def test_csv_header_problems(tmp_path):
    _photos(tmp_path, ["a.jpg"])
    with pytest.raises(BatchInputError, match="no 'photo' column"):
        plan_input(_csv(tmp_path / "x.csv", [{"image": "a.jpg"}], ["image"]))
    with pytest.raises(BatchInputError, match="does not know: colour"):
        plan_input(_csv(tmp_path / "y.csv", [{"photo": "a.jpg", "colour": "red"}], ["photo", "colour"]))


def test_two_rows_with_one_folder_are_refused(tmp_path):
    _photos(tmp_path, ["a.jpg"])
    path = _csv(
        tmp_path / "dup.csv",
        [{"photo": "a.jpg", "preset": "preview"}, {"photo": "a.jpg", "preset": "default"}],
        ["photo", "preset"],
    )
    with pytest.raises(BatchInputError) as err:
        plan_input(path)
    assert "row 3 and row 2 both make 'a__plain'" in err.value.message and "name" in err.value.hint


# ------------------------------------------------------------------ the driver, with a fake runner
class FakeRunner:
    """Plays scripted outcomes: ``script[name]`` is a list of error codes (or "ok") per attempt."""

    def __init__(self, script: dict[str, list[str]], slots: int = 2):
        self.script = {k: list(v) for k, v in script.items()}
        self.slots = slots
        self.where = "fake"
        self.started: list[str] = []
        self.pending: list[tuple[int, HeadSpec]] = []
        self.n = 0

    def submit(self, spec: HeadSpec, photo: bytes) -> Any:
        self.n += 1
        self.started.append(spec.name)
        self.pending.append((self.n, spec))
        return self.n

    def wait(self, timeout: float) -> list[tuple[Any, HeadOutcome]]:
        handle, spec = self.pending.pop(0)
        code = self.script.get(spec.name, ["ok"]).pop(0) if self.script.get(spec.name) else "ok"
        if code == "ok":
            files = {
                "head.ply": b"ply " + spec.name.encode(),
                "metrics.json": json.dumps(
                    {"n_splats": 10, "eval": {"n_splats": 10, "front_psnr_db": 20.5, "pck": 0.75}}
                ).encode(),
                "eval/contact_sheet.png": b"png",
            }
            return [(handle, HeadOutcome(spec.name, True, files=files, seconds=1.5, host="h1"))]
        return [(handle, failed(spec.name, code, f"{code} happened", "do this"))]

    def close(self) -> None:
        pass


def _specs(tmp_path: Path, n: int = 3) -> list[HeadSpec]:
    src = _photos(tmp_path / "in", [f"p{i}.jpg" for i in range(n)])
    return plan_input(src, styles=["comic"])


def test_run_commits_heads_and_resumes_without_work(tmp_path):
    specs = _specs(tmp_path)
    out = tmp_path / "out"
    report = run_batch(specs, out, FakeRunner({}), quiet=True)
    assert [h.state for h in report.heads] == ["done"] * 3 and report.attempts == 3
    for s in specs:
        assert (out / s.name / "head.ply").read_bytes() == b"ply " + s.name.encode()
        assert read_done(out, s.name)["fingerprint"] == s.fingerprint()
    assert not list((out / ".batch" / "tmp").iterdir())  # nothing half-written left
    again = FakeRunner({})
    report2 = run_batch(specs, out, again, quiet=True)
    assert again.started == [] and report2.ran == 0 and len(report2.done) == 3


def test_changed_recipe_remakes_only_that_head(tmp_path):
    specs = _specs(tmp_path)
    out = tmp_path / "out"
    run_batch(specs, out, FakeRunner({}), quiet=True)
    changed = [specs[0], specs[1], HeadSpec(**(specs[2].to_dict() | {"seed": 9}))]
    runner = FakeRunner({})
    run_batch(changed, out, runner, quiet=True)
    assert runner.started == [specs[2].name]
    assert read_done(out, specs[2].name)["spec"]["seed"] == 9


def test_retryable_failures_retry_and_typed_ones_do_not(tmp_path):
    specs = _specs(tmp_path)
    a, b, c = (s.name for s in specs)
    runner = FakeRunner({a: ["worker_crashed", "ok"], b: ["no_face"], c: ["worker_lost"] * 5})
    out = tmp_path / "out"
    report = run_batch(specs, out, runner, max_attempts=3, quiet=True)
    by = {h.spec.name: h for h in report.heads}
    assert (by[a].state, by[a].attempts) == ("done", 2)
    assert (by[b].state, by[b].attempts, by[b].error["code"]) == ("failed", 1, "no_face")
    assert (by[c].state, by[c].attempts, by[c].error["code"]) == ("failed", 3, "worker_lost")
    assert sorted(runner.started) == sorted([a, a, b, c, c, c])
    assert json.loads((out / ".batch" / "failed" / f"{b}.json").read_text())["error"]["hint"] == "do this"
    assert not (out / b).exists()
    # a rerun: the typed failure is not tried again, the one that ran out of attempts is
    rerun = FakeRunner({})
    report2 = run_batch(specs, out, rerun, quiet=True)
    assert rerun.started == [c]
    assert {h.spec.name: h.state for h in report2.heads} == {a: "done", b: "failed", c: "done"}
    assert not (out / ".batch" / "failed" / f"{c}.json").exists()
    # --retry-failed tries the typed failure too
    third = FakeRunner({})
    run_batch(specs, out, third, retry_failed=True, quiet=True)
    assert third.started == [b]


def test_summary_csv_and_html(tmp_path):
    specs = _specs(tmp_path)
    out = tmp_path / "out"
    report = run_batch(specs, out, FakeRunner({specs[1].name: ["no_face"]}), quiet=True)
    csv_path, html_path = write_summary(report)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[0]["front_psnr_db"] == "20.5" and rows[0]["pck"] == "0.75" and rows[0]["n_splats"] == "10"
    assert rows[1]["error_code"] == "no_face" and rows[1]["error_hint"] == "do this" and rows[1]["folder"] == ""
    page = html_path.read_text()
    assert "2 done, 1 failed of 3" in page
    assert f"src='{specs[0].name}/eval/contact_sheet.png'" in page
    assert "no_face happened" in page and "id='failures'" in page


def test_cli_dry_run_and_bad_input(tmp_path, capsys):
    from backend.cli import main

    src = _photos(tmp_path / "in", ["a.jpg", "b.jpg"])
    assert main(["batch", str(src), "--out", str(tmp_path / "out"), "--style", "x", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["run", "run"] and "a__x" in lines[0]
    assert main(["batch", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 1
    assert "error [bad_batch]" in capsys.readouterr().err
    assert main(["batch", str(src), "--out", str(tmp_path / "o"), "--option", "stepz=3"]) == 1
    assert "error [bad_option]" in capsys.readouterr().err


def test_two_drivers_on_one_out_are_refused(tmp_path):
    from backend.batch.output import BatchBusyError, lock

    specs = _specs(tmp_path, 1)
    out = tmp_path / "out"
    with lock(out):
        with pytest.raises(BatchBusyError) as err:
            run_batch(specs, out, FakeRunner({}), quiet=True)
        assert err.value.code == "batch_busy"
    assert len(run_batch(specs, out, FakeRunner({}), quiet=True).done) == 1  # released


def test_local_batch_with_missing_weights_fails_before_any_head(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path / "no_models"))
    src = _photos(tmp_path / "in", ["a.jpg"])
    out = tmp_path / "out"
    assert main(["batch", str(src), "--out", str(out), "--pipeline", "stylize", "--style", "comic", "--quiet"]) == 1
    assert "error [model_missing]" in capsys.readouterr().err
    assert not out.exists()  # nothing started, nothing written


def test_ray_flag_without_ray_installed_is_a_typed_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    from backend.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    src = _photos(tmp_path / "in", ["a.jpg"])
    assert main(["batch", str(src), "--out", str(tmp_path / "out"), "--ray", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error [ray_missing]" in err and ".[ray]" in err


def test_local_cpu_lanes_split_the_cores():
    import os

    from backend.batch.head import EvalSettings
    from backend.batch.run_local import LocalRunner

    one = LocalRunner(EvalSettings(), lanes=[None])
    two = LocalRunner(EvalSettings(), lanes=[None, None])
    gpus = LocalRunner(EvalSettings(), lanes=["0", "1"])
    assert one.slots == 1 and one.lanes[0].threads is None  # one process: all the cores
    assert two.slots == 2 and [lane.threads for lane in two.lanes] == [max(1, (os.cpu_count() or 1) // 2)] * 2
    assert [lane.device for lane in gpus.lanes] == ["0", "1"] and "GPU 0, 1" in gpus.where
