"""The eval set: every pipeline and preset that local weights allow, on public-domain portraits,
each result evaluated with ``backend.eval`` (docs/metrics.md) -> bench/results/quality.md.

    python bench/eval_set.py [--presets preview,default] [--pipelines photo] [--views 24] [--size 512]

Photos (public domain): scikit-image's ``astronaut`` (Eileen Collins, NASA) and matplotlib's
sample ``grace_hopper.jpg`` (US Navy). A pipeline runs only when every model it needs is present
(``backend.models.required_models`` + ``check``); the others are listed as skipped with the
command that fetches them. ``--presets`` defaults to all of each pipeline's presets; each run is
``run(image, preset=..., seed=0, options={}, reporter=None)``.

Writes bench/results/quality.md (one row per photo, pipeline and preset: every headline metric,
the generation time and the evaluation time), quality.json (every figure) and, per run, the
eval files under out/eval_set/<photo>/<pipeline>/<preset>/ (contact sheet, turntable.mp4).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from backend.eval import evaluate_splats
from backend.models import check, required_models
from backend.pipelines import available

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
OUT = REPO / "out" / "eval_set"

COLUMNS = (
    ("photo", "photo"),
    ("pipeline", "pipeline"),
    ("preset", "preset"),
    ("id 0°", "identity_0"),
    ("id worst ±30° (found/views)", "identity_worst_30"),
    ("same person ±45°", "identity_same_person_45"),
    ("PCK", "pck"),
    ("PCK5", "pck5"),
    ("ghost faces", "ghost_faces"),
    ("saturation", "saturation"),
    ("front PSNR dB", "front_psnr_db"),
    ("front SSIM", "front_ssim"),
    ("ArcFace IPA", "arcface_ipa"),
    ("splats", "n_splats"),
    ("generate s", "generate_s"),
    ("eval s", "eval_s"),
)


def photos() -> dict[str, np.ndarray]:
    import skimage.data
    from matplotlib import cbook

    from backend.image_io import load_image

    return {
        "astronaut": np.ascontiguousarray(skimage.data.astronaut()),
        "grace_hopper": load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
    }


def runnable(pipeline: str) -> tuple[bool, str]:
    """(every model present, what is missing)."""
    names = required_models(pipeline)
    if not names:
        return True, ""
    missing = [s.name for s in check(names, verify=False) if not s.present]
    return not missing, ", ".join(missing)


def presets_of(pipeline: str) -> list[str]:
    module = importlib.import_module(f"backend.pipelines.{pipeline.split('+')[-1]}")
    return list(module.PRESETS)


def cell(row: dict, key: str) -> str:
    if key == "identity_worst_30":
        if key not in row:
            return f"— (0/{row.get('identity_views_30', 0)})"
        return f"{row[key]:.3f} ({row['identity_found_30']}/{row['identity_views_30']})"
    if key == "identity_same_person_45":
        return f"{row[key]}/{row['identity_views_45']}"
    if key == "ghost_faces":
        return f"{row[key]}/{row['ghost_views']}"
    value = row.get(key)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_markdown(rows: list[dict], skipped: list[str], args: argparse.Namespace) -> str:
    lines = [
        "# Quality of the local pipelines (bench/eval_set.py)",
        "",
        f"Orbit: {args.views} yaws + 4 pitched views at {args.size} px. Metrics: docs/metrics.md. "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU only.",
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(r, key) for _, key in COLUMNS) + " |" for r in rows]
    lines += ["", "Identity distance per yaw (dlib, < 0.6 = same person; yaws without a face left out):", ""]
    for r in rows:
        per_yaw = ", ".join(f"{yaw:+.0f}: {d:.2f}" for yaw, d in r["identity_by_yaw"])
        lines.append(f"- {r['photo']} / {r['pipeline']} / {r['preset']}: {per_yaw or 'no face found'}")
    notes = sorted({line for r in rows for line in r.get("skipped", [])})
    if skipped or notes:
        lines += ["", "Skipped:", ""] + [f"- {line}" for line in skipped + notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelines", default="", help="comma-separated (default: every available pipeline)")
    ap.add_argument("--presets", default="", help="comma-separated (default: every preset of each pipeline)")
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    pipelines = available()
    wanted = args.pipelines.split(",") if args.pipelines else list(pipelines)
    rows: list[dict] = []
    skipped: list[str] = []
    images = photos()
    for name in wanted:
        ok, missing = runnable(name)
        if not ok:
            skipped.append(f"pipeline {name}: models missing ({missing}); fetch: python -m backend models download")
            print(skipped[-1])
            continue
        presets = args.presets.split(",") if args.presets else presets_of(name)
        left = [p for p in presets_of(name) if p not in presets]
        if left:
            skipped.append(f"pipeline {name}: presets not run here: {', '.join(left)} (choose with --presets)")
        for preset in presets:
            for photo_name, image in images.items():
                t = time.perf_counter()
                result = pipelines[name](image, preset=preset, seed=0, options={}, reporter=None)
                generate_s = time.perf_counter() - t
                out = OUT / photo_name / name / preset
                figures = evaluate_splats(result.splats, image, out, views=args.views, size=args.size)
                by_yaw = dict((yaw, d) for yaw, d in figures["identity_by_yaw"])
                row = {"photo": photo_name, "pipeline": name, "preset": preset, "generate_s": round(generate_s, 1)}
                row |= figures
                if 0.0 in by_yaw:
                    row["identity_0"] = by_yaw[0.0]
                rows.append(row)
                print(" ".join(f"{label}={cell(row, key)}" for label, key in COLUMNS), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(write_markdown(rows, skipped, args))
    (args.out / "quality.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1) + "\n")
    print(f"wrote {args.out / 'quality.md'} and quality.json")


if __name__ == "__main__":
    main()
