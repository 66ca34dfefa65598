"""CLIP metrics, when the ``clip_vit_l14`` weights are present (SAS Table 1, Instax3D Table 1).

- ``clip_id``: 100 x the mean cosine between the CLIP image embedding of each ring view and
  of the photo (SAS's "ID (CLIP)", 58.63 in the paper);
- ``clip_style``: 100 x the mean cosine between each ring view and the style prompt's text
  embedding (SAS's "Style (CLIP)", 32.79), only when a style prompt is given;
- ``clip_mvc``: the mean cosine between neighbouring ring views (the CLIP half of
  Instax3D's MVC, 0.905 for CLIP+DINO there; DINO is not in the registry).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .orbit import Orbit


def _unit(features: Any) -> Any:
    feats = getattr(features, "pooler_output", features)  # a tensor, or an output holding one
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_metrics(orbit: Orbit, photo: np.ndarray, style: str | None = None) -> dict[str, float]:
    """Raises ``ModelMissingError`` (naming ``models download``) when the weights are absent."""
    import torch

    from backend.models import load_clip

    model, processor = load_clip()
    ring = [np.ascontiguousarray(im) for im in orbit.images[orbit.ring()]]
    with torch.no_grad():
        images = _unit(model.get_image_features(**processor(images=[*ring, photo], return_tensors="pt")))
        views, ref = images[:-1], images[-1]
        out = {
            "clip_id": round(float(100 * (views @ ref).mean()), 3),
            "clip_mvc": round(float((views * torch.roll(views, 1, dims=0)).sum(-1).mean()), 4),
        }
        if style:
            tokens = processor(text=[style], return_tensors="pt", padding=True, truncation=True)
            text = _unit(model.get_text_features(**tokens))[0]
            out["clip_style"] = round(float(100 * (views @ text).mean()), 3)
    return out
