"""``summary.csv`` and ``index.html`` for a batch's output folder, rebuilt after every run from
what is on disk (so a resumed batch's summary covers every head, old and new).

summary.csv columns: name, status (done | failed), photo, style, pipeline, preset, seed,
attempts, seconds, host, error_code, error_message, error_hint, n_splats, then every scalar
figure of the heads' evaluation (``metrics.json["eval"]``: front_psnr_db, front_ssim, pck,
ghost_faces, ...), then folder.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from ..jobs import atomic_write_bytes
from .run import BatchReport, HeadStatus

BASE_COLUMNS = [
    "name",
    "status",
    "photo",
    "style",
    "pipeline",
    "preset",
    "seed",
    "attempts",
    "seconds",
    "host",
    "error_code",
    "error_message",
    "error_hint",
    "n_splats",
]
FIGURES = ("contact_sheet.png", "front.png")


def _metrics(out: Path, h: HeadStatus) -> dict[str, Any]:
    if h.state != "done":
        return {}
    try:
        value = json.loads((out / h.spec.name / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def rows(report: BatchReport) -> tuple[list[str], list[dict[str, Any]]]:
    figure_names: list[str] = []
    table = []
    for h in report.heads:
        metrics = _metrics(report.out, h)
        ev = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else {}
        err = h.error or {}
        row: dict[str, Any] = {
            "name": h.spec.name,
            "status": h.state,
            "photo": h.spec.photo,
            "style": h.spec.style,
            "pipeline": h.spec.pipeline,
            "preset": h.spec.preset,
            "seed": h.spec.seed,
            "attempts": h.attempts,
            "seconds": h.seconds,
            "host": h.host,
            "error_code": err.get("code", ""),
            "error_message": err.get("message", ""),
            "error_hint": err.get("hint", ""),
            "n_splats": _int((ev or {}).get("n_splats", metrics.get("n_splats", ""))),
            "folder": h.spec.name if h.state == "done" else "",
        }
        for key, value in (ev or {}).items():
            if _scalar(value) and key not in ("n_splats",):
                if key not in figure_names:
                    figure_names.append(key)
                row[key] = value
        table.append(row)
    return BASE_COLUMNS + figure_names + ["folder"], table


def write_summary(report: BatchReport) -> tuple[Path, Path]:
    columns, table = rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    csv_path = report.out / "summary.csv"
    atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8"))
    html_path = report.out / "index.html"
    atomic_write_bytes(html_path, render_html(report, columns, table).encode("utf-8"))
    return csv_path, html_path


def render_html(report: BatchReport, columns: list[str], table: list[dict[str, Any]]) -> str:
    e = html.escape
    done = [r for r in table if r["status"] == "done"]
    failed = [r for r in table if r["status"] == "failed"]
    figure_cols = [c for c in columns if c not in BASE_COLUMNS and c != "folder"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>PortraitSplat batch</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.head{margin:1em 0;padding:.5em;"
        "border:1px solid #ddd}.head img{max-width:100%}.failed{background:#fee}</style></head><body>",
        f"<h1>PortraitSplat batch: {len(done)} done, {len(failed)} failed of {len(table)}</h1>",
        f"<p>{e(str(report.out))} &middot; <a href='summary.csv'>summary.csv</a></p>",
    ]
    if failed:
        parts.append(
            "<h2 id='failures'>Failures</h2><table><tr><th>head</th><th>photo</th><th>style</th>"
            "<th>code</th><th>message</th><th>hint</th><th>attempts</th></tr>"
        )
        for r in failed:
            parts.append(
                "<tr class='failed'>"
                + "".join(
                    f"<td>{e(str(r[k]))}</td>"
                    for k in ("name", "photo", "style", "error_code", "error_message", "error_hint", "attempts")
                )
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Heads</h2>")
    for r in done:
        name = str(r["name"])
        parts.append(f"<div class='head' id='{e(name)}'><h3><a href='{e(name)}/'>{e(name)}</a></h3>")
        parts.append(
            f"<p>{e(Path(str(r['photo'])).name)} &middot; style {e(str(r['style']) or '(none)')} &middot; "
            f"{e(str(r['pipeline']))}/{e(str(r['preset']))} seed {e(str(r['seed']))} &middot; "
            f"{e(str(r['seconds']))} s on {e(str(r['host']))} &middot; "
            f"<a href='{e(name)}/head.ply'>head.ply</a></p>"
        )
        figures = [c for c in figure_cols if c in r]
        if figures:
            parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in figures) + "</tr><tr>")
            parts.append("".join(f"<td>{e(str(r[c]))}</td>" for c in figures) + "</tr></table>")
        for fig in FIGURES:
            if (report.out / name / "eval" / fig).is_file():
                parts.append(f"<p><img src='{e(name)}/eval/{fig}' alt='{e(fig)}' loading='lazy'></p>")
        if not (report.out / name / "eval").is_dir():
            frames = sorted((report.out / name / "turntable").glob("frame_*.png"))[:8]
            parts.append("".join(f"<img src='{e(name)}/turntable/{f.name}' width='128'>" for f in frames))
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
