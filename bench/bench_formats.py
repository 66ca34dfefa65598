"""Benchmark: splat file formats (size, speed, quantisation error) and mesh export.

    .venv/bin/python bench/bench_formats.py [--ply out/demo/head.ply] [--faces 50000,20000]
                                            [--no-mesh] [--out bench/results/formats.md]

For the head in ``--ply`` (the demo head by default; SH degree 0) and for the same head with
synthetic degree-3 bands (uniform in +-0.1, what a trained head carries), writes each format
with our codecs and reads it back: file size, encode and decode time (best of 5), and the
largest error per field against the PLY. Then extracts meshes at each face budget (time,
faces, watertight, file sizes). Appends a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blender_addon.core import formats  # noqa: E402
from blender_addon.core.splat_arrays import SplatArrays  # noqa: E402
from blender_addon.core.splat_ply import read_ply  # noqa: E402


def best_of(fn, n=5):
    times = []
    out = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def errors(a: SplatArrays, b: SplatArrays) -> dict[str, float]:
    qa, qb = a.quats.astype(np.float64), b.quats.astype(np.float64)
    qa /= np.linalg.norm(qa, axis=1, keepdims=True)
    qb /= np.linalg.norm(qb, axis=1, keepdims=True)
    d = np.abs(np.sum(qa * qb, axis=1))
    out = {
        "pos_mm": 1000 * float(np.abs(a.means - b.means).max()),
        "log_scale": float(np.abs(a.log_scales - b.log_scales).max()),
        "opacity": float(np.abs(a.opacity() - b.opacity()).max()),
        "rgb": float(np.abs(a.rgb() - b.rgb()).max()),
        "rot_deg": float(np.degrees(2 * np.arccos(np.clip(d, 0, 1))).max()),
    }
    if a.shN is not None:
        out["sh"] = float(np.abs(a.shN - b.shN).max()) if b.shN is not None else float("nan")
    return out


def format_rows(s: SplatArrays, label: str) -> list[str]:
    rows = []
    ply_size = len(formats.to_bytes(s, "ply"))
    for fmt in formats.FORMATS:
        enc_s, data = best_of(lambda fmt=fmt: formats.to_bytes(s, fmt))
        dec_s, back = best_of(lambda fmt=fmt, data=data: formats.from_bytes(data, fmt))
        e = errors(s, back)
        sh = "-" if "sh" not in e else ("dropped" if np.isnan(e["sh"]) else f"{e['sh']:.3f}")
        rows.append(
            f"| {label} | {fmt} | {len(data) / 1024:.0f} | {ply_size / len(data):.1f}x | {enc_s * 1000:.0f} | "
            f"{dec_s * 1000:.0f} | {e['pos_mm']:.3f} | {e['log_scale']:.3f} | {e['opacity']:.4f} | "
            f"{e['rgb']:.4f} | {e['rot_deg']:.2f} | {sh} |"
        )
    return rows


def mesh_rows(s: SplatArrays, budgets: list[int]) -> list[str]:
    from backend.export.mesh import MeshOptions, extract_mesh, write_mesh

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for faces in budgets:
            t0 = time.perf_counter()
            r = extract_mesh(s, MeshOptions(faces=faces))
            wall = time.perf_counter() - t0
            sizes = []
            for fmt in ("glb", "obj", "ply"):
                path = Path(tmp) / f"m.{fmt}"
                write_mesh(path, r)
                sizes.append(f"{path.stat().st_size / 1024:.0f}")
            t = r.timings
            rows.append(
                f"| {faces} | {len(r.faces)} | {len(r.vertices)} | {r.watertight} | {wall:.1f} | "
                f"{t['render_s']:.1f} | {t['mesh_s']:.1f} | {t['colour_s']:.1f} | {' / '.join(sizes)} |"
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ply", type=Path, default=REPO / "out/demo/head.ply")
    p.add_argument("--faces", default="50000,20000")
    p.add_argument("--no-mesh", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/formats.md")
    args = p.parse_args()
    s = read_ply(args.ply)
    rng = np.random.default_rng(0)
    sh3 = SplatArrays(
        s.means,
        s.quats,
        s.log_scales,
        s.opacity_logits,
        s.sh0,
        rng.uniform(-0.1, 0.1, (len(s), 15, 3)).astype(np.float32),
    )
    lines = [
        f"\n## {time.strftime('%Y-%m-%d')}: {args.ply.name}, {len(s)} splats ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)\n",
        "| head | format | KiB | vs PLY | encode ms | decode ms | pos mm | log scale | opacity | rgb | rot deg | SH |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += format_rows(s, "SH 0 (as fitted)")
    lines += format_rows(sh3, "SH 3 (synthetic bands)")
    if not args.no_mesh:
        lines += [
            "",
            "| face budget | faces | vertices | watertight | wall s | render s | fuse+MC+decimate s | colour s | GLB / OBJ / PLY KiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += mesh_rows(s, [int(f) for f in args.faces.split(",")])
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
