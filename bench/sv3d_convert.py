"""SV3D's single file: convert at load time, or convert once into a diffusers folder?

    .venv/bin/python bench/sv3d_convert.py [--dir /tmp/sv3d_bench] [--variant sv3d_u] [--keep]

Writes a FULL-SIZE random-weight SV3D checkpoint in the SGM layout (the key map of
backend.testing.sv3d_sgm: 2212 tensors, 2.34 G parameters) as float16 (~4.7 GB; the released
files are float32, 9.36 GB), streamed tensor by tensor so that writing it needs no more memory
than one tensor. Then, each in a fresh interpreter (so peak RSS is the step's own):

- probe: ``probe_sv3d`` (safetensors header + key/shape plan; no torch);
- load-time conversion: ``backend.models.sv3d.load_sv3d(file, dtype=float16)`` -> modules;
- convert once: load-time conversion + ``save_pretrained`` of the three modules (the cost of
  writing a cache);
- cached: loading that pre-converted diffusers folder with ``from_pretrained``.

Loads run with the file in the page cache ("warm") and after evicting this file's pages with
``posix_fadvise(DONTNEED)`` ("cold"; other files' cache is left alone). Prints one line per
figure; asserts nothing. Deletes what it wrote unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PRELUDE = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
import torch  # noqa
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel  # noqa (diffusers and
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection  # noqa  transformers import lazily)
from backend.models import sv3d
t_import = time.perf_counter() - t0
def status_gb(field):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith(field + ":")) / 1e6
def rss_gb():  # this process's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)
    return status_gb("VmHWM")
def touch(*modules):  # read every page of every weight (safetensors tensors are lazy mmaps)
    t = time.perf_counter()
    s = 0.0
    for m in modules:
        for p in m.parameters():
            s += float(p.detach().reshape(-1)[::1024].float().sum())
    return time.perf_counter() - t
"""

STEPS = {
    "probe": """
import sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from backend.models.sv3d import probe_sv3d
from pathlib import Path
t_import = time.perf_counter() - t0
times = []
for _ in range(5):
    t = time.perf_counter(); probe_sv3d(Path({file!r}), {variant!r}); times.append(time.perf_counter() - t)
import json
with open("/proc/self/status") as fh:
    rss = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1e6
print(json.dumps(dict(import_s=t_import, probe_s=sorted(times)[2], torch_loaded='torch' in sys.modules, rss_gb=rss)))
""",
    "convert": PRELUDE
    + """
t = time.perf_counter()
parts = sv3d.load_sv3d({file!r}, dtype=torch.{dtype})
t_load = time.perf_counter() - t
t_touch = touch(parts.unet, parts.vae, parts.image_encoder)
n = sum(p.numel() for m in (parts.unet, parts.vae, parts.image_encoder) for p in m.parameters())
print(json.dumps(dict(import_s=t_import, load_s=t_load, touch_s=t_touch, rss_gb=rss_gb(), params=n,
                      anon_gb=status_gb("RssAnon"), file_gb=status_gb("RssFile"))))
""",
    "write_cache": PRELUDE
    + """
t = time.perf_counter()
parts = sv3d.load_sv3d({file!r}, dtype=torch.{dtype})
t_load = time.perf_counter() - t
t = time.perf_counter()
for name in ("unet", "vae", "image_encoder"):
    getattr(parts, name).save_pretrained(os.path.join({cache!r}, name))
parts.feature_extractor.save_pretrained(os.path.join({cache!r}, "feature_extractor"))
parts.scheduler.save_pretrained(os.path.join({cache!r}, "scheduler"))
t_save = time.perf_counter() - t
print(json.dumps(dict(import_s=t_import, load_s=t_load, save_s=t_save, rss_gb=rss_gb())))
""",
    "cached": PRELUDE
    + """
t = time.perf_counter()
c = {cache!r}
unet = UNetSpatioTemporalConditionModel.from_pretrained(c, subfolder="unet", torch_dtype=torch.float16)
vae = AutoencoderKL.from_pretrained(c, subfolder="vae", torch_dtype=torch.float16)
enc = CLIPVisionModelWithProjection.from_pretrained(os.path.join(c, "image_encoder"), dtype=torch.float16)
fe = CLIPImageProcessor.from_pretrained(os.path.join(c, "feature_extractor"))
sch = EulerDiscreteScheduler.from_pretrained(c, subfolder="scheduler")
t_load = time.perf_counter() - t
t_touch = touch(unet, vae, enc)
print(json.dumps(dict(import_s=t_import, load_s=t_load, touch_s=t_touch, rss_gb=rss_gb(),
                      anon_gb=status_gb("RssAnon"), file_gb=status_gb("RssFile"))))
""",
}


def write_full_size(path: Path, variant: str, dtype: str = "F16") -> tuple[float, int]:
    """Stream an SGM-layout file: header from the key map, then one tensor at a time."""
    import numpy as np

    from backend.testing.sv3d_sgm import SV3D_P, SV3D_U, sgm_shapes

    shapes = sgm_shapes(SV3D_U if variant == "sv3d_u" else SV3D_P)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for k, s in shapes.items():
        n = int(np.prod(s, dtype=np.int64)) * (2 if dtype == "F16" else 4)
        header[k] = {"dtype": dtype, "shape": list(s), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for k, s in shapes.items():
            n = int(np.prod(s, dtype=np.int64))
            for a in range(0, n, 1 << 26):  # 64M values at a time
                m = min(1 << 26, n - a)
                x = rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)
                if k.endswith(".weight") and len(s) == 1:
                    x += 1.0
                fh.write((x.astype(np.float16) if dtype == "F16" else x).tobytes())
    return time.perf_counter() - t, path.stat().st_size


def evict(path: Path) -> None:
    """Drop this file's (or folder's files') pages from the page cache."""
    for p in [path] if path.is_file() else [q for q in path.rglob("*") if q.is_file()]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(step: str, **kw) -> dict:
    code = STEPS[step].format(repo=str(REPO), **kw)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/sv3d_bench"))
    ap.add_argument("--variant", default="sv3d_u", choices=["sv3d_u", "sv3d_p"])
    ap.add_argument("--keep", action="store_true", help="keep the files it wrote")
    ap.add_argument("--reuse", action="store_true", help="reuse a full-size file --keep left there")
    ap.add_argument("--file-dtype", default="F16", choices=["F16", "F32"], help="F32: as released (9.36 GB)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    file = args.dir / args.file_dtype / f"{args.variant}.safetensors"
    file.parent.mkdir(exist_ok=True)
    cache = args.dir / "converted"
    try:
        if not (args.reuse and file.is_file()):
            secs, size = write_full_size(file, args.variant, args.file_dtype)
            print(f"write: full-size {args.variant} SGM file, {args.file_dtype}, {size / 1e9:.2f} GB in {secs:.1f} s")
        r = run("probe", file=str(file), variant=args.variant)
        print(
            f"probe: {r['probe_s'] * 1e3:.0f} ms (header + key/shape plan), import {r['import_s']:.2f} s, "
            f"torch imported: {r['torch_loaded']}, peak RSS {r['rss_gb']:.2f} GB"
        )
        loads = [("float16", "fp16 (cast on the CPU)")]
        if args.file_dtype == "F32":
            loads.append(("float32", "fp32 (the file's dtype: the host side of a CUDA load, cast on the GPU)"))
        for dtype, what in loads:
            for state in ("warm", "cold"):
                if state == "cold":
                    evict(file)
                r = run("convert", file=str(file), dtype=dtype)
                print(
                    f"load-time conversion to {what}, {state}: {r['load_s']:.1f} s, + {r['touch_s']:.1f} s to read "
                    f"every weight (import {r['import_s']:.1f} s); peak RSS {r['rss_gb']:.2f} GB, after: anon "
                    f"{r['anon_gb']:.2f} + file-backed {r['file_gb']:.2f} GB; {r['params'] / 1e9:.3f} G params"
                )
        shutil.rmtree(cache, ignore_errors=True)
        r = run("write_cache", file=str(file), cache=str(cache), dtype="float16")
        size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        print(
            f"convert once (write a diffusers cache): load {r['load_s']:.1f} s + save {r['save_s']:.1f} s, "
            f"{size / 1e9:.2f} GB on disk, peak RSS {r['rss_gb']:.2f} GB"
        )
        for state in ("warm", "cold"):
            if state == "cold":
                evict(cache)
            r = run("cached", cache=str(cache))
            print(
                f"load the pre-converted fp16 folder, {state}: {r['load_s']:.1f} s, + {r['touch_s']:.1f} s to read "
                f"every weight (import {r['import_s']:.1f} s); peak RSS {r['rss_gb']:.2f} GB, after: anon "
                f"{r['anon_gb']:.2f} + file-backed {r['file_gb']:.2f} GB"
            )
    finally:
        if not args.keep:
            file.unlink(missing_ok=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
