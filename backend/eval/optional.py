"""Metrics that need downloaded weights: run when the weights are present, else one line.

- ArcFace IPA (Instax3D's identity metric, METHOD B.3): the mean cosine between the ArcFace
  embedding (insightface ``buffalo_l``) of the photo and of each view with |yaw| <= 45 deg
  where insightface finds a face.
- CLIP-ID / CLIP-style (SAS Table 1, METHOD A.6) and the CLIP half of Instax3D's MVC, with the
  registry's ``clip_vit_l14`` (:mod:`.clip_metrics`). Missing weights: skipped, never 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import FaceError, ModelMissingError
from ..face import analyse_identity, insightface_available
from ..face.identity import cosine_similarity
from .clip_metrics import clip_metrics
from .orbit import Orbit

CLIP_FIX = "python -m backend models download --only clip_vit_l14"

IPA_MAX_YAW = 45.0
ARCFACE_PACK = "buffalo_l"


def arcface_ipa(orbit: Orbit, photo: np.ndarray) -> dict:
    ref = analyse_identity(photo, "insightface", pack=ARCFACE_PACK)
    sims = []
    for i in orbit.within(IPA_MAX_YAW):
        try:
            face = analyse_identity(orbit.images[i], "insightface", pack=ARCFACE_PACK, min_face_px=16)
        except FaceError:
            continue
        if face.embedding is not None and ref.embedding is not None:
            sims.append(cosine_similarity(face.embedding, ref.embedding))
    out: dict = {"arcface_views": len(sims), "arcface_views_asked": len(orbit.within(IPA_MAX_YAW))}
    if sims:
        out["arcface_ipa"] = round(float(np.mean(sims)), 4)
    return out


def optional_metrics(orbit: Orbit, photo: np.ndarray, style: str | None = None) -> tuple[dict, list[str]]:
    """(figures, skipped lines)."""
    figures: dict = {}
    skipped: list[str] = []
    if insightface_available(ARCFACE_PACK):
        figures.update(arcface_ipa(orbit, photo))
    else:
        skipped.append(
            f"ArcFace IPA skipped: the insightface pack {ARCFACE_PACK} is not installed "
            f"(run: python -m backend models download --only {ARCFACE_PACK})"
        )
    try:
        figures.update(clip_metrics(orbit, photo, style))
    except ModelMissingError:
        skipped.append(f"CLIP-ID, CLIP-style and CLIP MVC skipped: CLIP ViT-L/14 is not installed (run: {CLIP_FIX})")
    else:
        if not style:
            skipped.append("CLIP-style skipped: no style prompt")
    skipped.append("DINO half of Instax3D's MVC skipped: no DINO model in the registry")
    return figures, skipped
