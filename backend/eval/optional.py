"""Metrics that need downloaded weights: run when the weights are present, else one line.

- ArcFace IPA (Instax3D's identity metric, METHOD B.3): the mean cosine between the ArcFace
  embedding (insightface ``buffalo_l``) of the photo and of each view with |yaw| <= 45 deg
  where insightface finds a face.
- CLIP-ID / CLIP-style (SAS Table 1, METHOD A.6) and CLIP/DINO MVC (Instax3D): left out for
  now; there is no CLIP ViT-L/14 in the model registry yet. Reported as skipped, never as 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import FaceError
from ..face import analyse_identity, insightface_available
from ..face.identity import cosine_similarity
from .orbit import Orbit

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


def optional_metrics(orbit: Orbit, photo: np.ndarray) -> tuple[dict, list[str]]:
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
    skipped.append(
        "CLIP-ID, CLIP-style and CLIP/DINO MVC skipped: not implemented yet "
        "(no CLIP ViT-L/14 in the model registry; once added: python -m backend models download)"
    )
    return figures, skipped
