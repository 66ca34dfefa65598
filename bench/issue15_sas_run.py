"""Issue 15 (items 3-4) before/after: the stylize pipeline on tiny random-weight models.

Runs ``stylize.run`` offline with the tiny models of :mod:`backend.testing` (random weights:
the figures show that the pipeline runs and how densification behaves, never quality) on
examples/astronaut.jpg, records every SAS clone/split round (wrapping
``SurfaceGuidedStrategy._grow_gs``, so it works on any commit that has that class), and
writes head.ply, metrics.json and densify.json into ``--out``. Evaluate the result with
``python -m backend eval OUT --photo examples/astronaut.jpg``.

    PYTHONPATH=<tree> .venv/bin/python bench/issue15_sas_run.py --out /tmp/after --models /tmp/tiny_models
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A run long enough for several densification rounds, still tiny: 2,000 template points,
# 40 steps at 64 px, densify every 5 steps from step 5.
OPTIONS = {"n_points": 2000, "steps": 40, "refine_every": 5, "refine_start_iter": 4, "style": "a watercolor portrait"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True, help="tiny model root (built here if absent)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from backend.gaussians import strategies
    from backend.image_io import load_image
    from backend.testing import save_tiny_model_root

    if not (args.models / "sd15").is_dir():
        save_tiny_model_root(args.models)
    os.environ["PORTRAITSPLAT_MODELS"] = str(args.models)
    from backend.pipelines import stylize
    from backend.pipelines.outputs import write_outputs

    rounds: list[dict[str, float]] = []
    grow = strategies.SurfaceGuidedStrategy._grow_gs

    def recording_grow(self, params, optimizers, state, step):
        before = len(params["means"])
        n_dupli, n_split = grow(self, params, optimizers, state, step)
        rounds.append(
            {
                "step": step,
                "before": before,
                "cloned": n_dupli,
                "split": n_split,
                "after_growth": len(params["means"]),
                "threshold_m": float(self.grow_scale3d * state["scene_scale"]),
            }
        )
        return n_dupli, n_split

    strategies.SurfaceGuidedStrategy._grow_gs = recording_grow  # type: ignore[method-assign]
    torch.set_num_threads(2)
    image = load_image(REPO / "examples" / "astronaut.jpg")
    t0 = time.perf_counter()
    result = stylize.run(image, preset="test", seed=args.seed, options=dict(OPTIONS))
    wall = time.perf_counter() - t0
    write_outputs(args.out, result)
    metrics = dict(result.metrics) | {"wall_s": round(wall, 2), "options": OPTIONS}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    summary = {
        "n_init": int(metrics["n_init"]),
        "n_final": len(result.splats),
        "cloned": sum(int(r["cloned"]) for r in rounds),
        "split": sum(int(r["split"]) for r in rounds),
        "rounds": rounds,
    }
    (args.out / "densify.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"} | {"wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
