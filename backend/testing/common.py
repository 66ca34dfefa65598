"""Shared pieces of the tiny model factories: the seed, the tiny sizes, and small writers.

This module's one job is what every model family in :mod:`backend.testing` uses: the base
seed, the sizes kept small (or kept real, like the 512-d identity embedding), SD1.5's noise
schedule, seeding, and writing JSON files and a diffusers ``model_index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SEED = 0

# --- sizes -----------------------------------------------------------------------------
#: Text/cross-attention width of the tiny SD1.5 (real: 768).
TINY_CROSS_DIM = 32
#: ArcFace embedding width: kept at the real 512 so the insightface output feeds it directly.
ID_EMBED_DIM = 512
#: LoRA rank of the tiny IP-Adapter-FaceID (real: 128).
TINY_LORA_RANK = 4
#: SD1.5's training noise schedule (scheduler/scheduler_config.json of the real repo).
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _seeded(seed: int = SEED) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_model_index(folder: Path, entries: dict[str, tuple[str, str]], class_name: str) -> None:
    import diffusers

    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    index.update({k: [lib, cls] for k, (lib, cls) in entries.items()})
    _write_json(Path(folder) / "model_index.json", index)
