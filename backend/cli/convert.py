"""``convert IN OUT``: a splat file to another splat format, or to a mesh.

    python -m backend convert head.ply head.spz            # Niantic SPZ (RUB axes), ~5x smaller
    python -m backend convert head.spz head.glb            # glTF KHR_gaussian_splatting (Y-up)
    python -m backend convert head.glb head.splat          # antimatter15 .splat (PLY axes, no SH)
    python -m backend convert head.ply head.obj --faces 20000      # a watertight coloured mesh
    python -m backend convert head.ply head_mesh.glb --mesh        # the mesh as GLB (or .ply)

IN is ``.ply``, ``.spz``, ``.splat`` or ``.glb`` (splats); OUT's suffix picks the format. A
mesh is written for ``.obj``, and for ``.glb``/``.ply`` with ``--mesh``. ``generate --format``
uses :func:`write_formats` to write the same files beside ``head.ply``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from blender_addon.core.splat_arrays import SplatArrays

from .common import EXIT_FAILED, EXIT_USAGE, print_error

SPLAT_FORMATS = ("ply", "spz", "glb", "splat")
GENERATE_FORMATS = (*SPLAT_FORMATS, "mesh")
DEFAULT_FACES = 50_000


def parse_formats(text: str) -> list[str]:
    """``"ply,spz,mesh"`` -> ``["ply", "spz", "mesh"]`` (argparse type: a bad name is a usage error)."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in GENERATE_FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(bad) or '(none)'}; choose from {', '.join(GENERATE_FORMATS)}"
        )
    return list(dict.fromkeys(names))


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("convert", help="splat file -> another splat format (ply/spz/glb/splat) or a mesh")
    p.add_argument("input", type=Path, help=".ply, .spz, .splat or .glb splats")
    p.add_argument("output", type=Path, help=".ply, .spz, .splat, .glb (splats) or .obj (mesh)")
    p.add_argument("--mesh", action="store_true", help="write a mesh (needed for .glb/.ply output; .obj implies it)")
    p.add_argument("--faces", type=int, default=DEFAULT_FACES, help="mesh face budget (default %(default)s)")
    p.add_argument("--resolution", type=int, default=128, help="mesh grid: voxels along the longest side")
    p.add_argument(
        "--spz-frame",
        choices=["rub", "rdf"],
        default="rub",
        help="SPZ axes, in and out: rub = the SPZ spec (default); rdf = PLY axes, as PlayCanvas splat-transform writes",
    )
    p.add_argument("--spz-version", type=int, choices=[2, 3], default=3, help="SPZ version to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=convert)


def read_any(path: Path, spz_frame: str = "rub") -> SplatArrays:
    from blender_addon.core import formats
    from blender_addon.core.formats import spz

    if formats.format_of(path) == "spz":
        return spz.read_spz(path, frame=spz_frame)
    return formats.read_splats(path)


def write_mesh_file(path: Path, splats: SplatArrays, faces: int, resolution: int = 128) -> dict[str, Any]:
    """Extract and write a mesh; its figures (faces, watertight, seconds)."""
    from backend.export.mesh import MeshOptions, extract_mesh, write_mesh

    t0 = time.perf_counter()
    result = extract_mesh(splats, MeshOptions(faces=faces, resolution=resolution))
    write_mesh(path, result)
    return {
        "faces": len(result.faces),
        "vertices": len(result.vertices),
        "watertight": result.watertight,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_formats(
    out_dir: Path, splats: SplatArrays, formats_: list[str], *, faces: int = DEFAULT_FACES
) -> dict[str, Path]:
    """Write ``splats`` as ``head.<fmt>`` for each splat format, and ``head_mesh.glb`` for
    ``mesh``, into ``out_dir`` (``head.ply`` is left to the caller, which always writes it)."""
    from blender_addon.core import formats

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt in formats_:
        if fmt == "ply":
            continue
        if fmt == "mesh":
            written["mesh"] = out_dir / "head_mesh.glb"
            write_mesh_file(written["mesh"], splats, faces)
        else:
            written[fmt] = out_dir / f"head.{fmt}"
            formats.write_splats(written[fmt], splats, fmt)
    return written


def convert(args: Any) -> int:
    from blender_addon.core import formats
    from blender_addon.core.formats import spz

    src, dst = Path(args.input), Path(args.output)
    suffix = dst.suffix.lower()
    mesh = args.mesh or suffix == ".obj"
    if mesh and suffix not in (".glb", ".obj", ".ply"):
        print_error("bad_format", f"a mesh is written as .glb, .obj or .ply, not {suffix or '(none)'}")
        return EXIT_USAGE
    if not mesh and suffix not in formats.SUFFIXES:
        print_error("bad_format", f"unknown output type {suffix or '(none)'}", "Use .ply, .spz, .glb, .splat or .obj.")
        return EXIT_USAGE
    if args.faces < 100:
        print_error("bad_option", f"--faces {args.faces} is too few for a head", "Use at least 100.")
        return EXIT_USAGE
    if not src.is_file():
        print_error("not_found", f"{src} does not exist", "Check the input path.")
        return EXIT_FAILED
    try:
        splats = read_any(src, args.spz_frame)
    except ValueError as exc:  # each codec's typed error is a ValueError
        print_error("bad_file", f"cannot read {src}: {exc}", "Is it a Gaussian-splat file of that type?")
        return EXIT_FAILED
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if mesh:
            figures = write_mesh_file(dst, splats, args.faces, args.resolution)
            if not args.quiet:
                print(
                    f"wrote {dst}: mesh of {figures['faces']} faces, watertight={figures['watertight']}, "
                    f"{figures['seconds']} s",
                    file=sys.stderr,
                )
        else:
            fmt = formats.format_of(dst)
            if fmt == "spz":
                spz.write_spz(dst, splats, frame=args.spz_frame, version=args.spz_version)
            else:
                formats.write_splats(dst, splats, fmt)
            if not args.quiet:
                print(f"wrote {dst}: {len(splats)} splats, {dst.stat().st_size} bytes", file=sys.stderr)
    except ValueError as exc:
        print_error("bad_file", f"cannot write {dst}: {exc}")
        return EXIT_FAILED
    return 0
