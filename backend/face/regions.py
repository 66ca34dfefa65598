"""Hair, skin, clothes and background in a portrait, and a colour model of each.

Offline, from what ships in the wheels: MediaPipe's selfie segmentation gives the person
(:func:`backend.face.segment.person_mask`), the 478-point mesh gives the face. Inside the
person:

- **skin**: a Gaussian colour model (CIE Lab) learnt from the face oval with the eyes, brows
  and lips cut out; every person pixel within ``SKIN_MAHALANOBIS`` of it is skin-coloured;
- **hair**: seeded by the person's pixels above the brows outside the face oval that are not
  skin-coloured, then grown to the non-skin person pixels down to ``HAIR_BELOW_CHIN`` face
  heights under the chin that the hair model explains better than the skin model and that
  join the seeds;
- **clothes**: the rest of the person in a band under the chin (``COLLAR_BAND``), the collar
  the neck meets, not the whole outfit;
- **background**: outside the person.

Each region keeps its pixels' colours (RGB in [0, 1]), so the head's unseen side can be
coloured from the same distribution the photo shows (:func:`region_colours`), not copied from
the nearest seen point.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .landmarks import FACE_OVAL, LANDMARKS
from .segment import person_mask

SKIN_MAHALANOBIS = 3.0  # Lab distance (in standard deviations) still called skin
HAIR_BELOW_CHIN = 0.3  # hair may reach this many face heights below the chin, joined to the hair above
COLLAR_BAND = 0.6  # clothes: this many face heights under the chin, within a face width of its axis
MIN_HAIR_SEEDS = 200  # fewer seed pixels: no hair model (bald, or a hat the segmenter dropped)

# Eyes, brows and lips: cut out of the face oval before learning the skin colour.
_FEATURES = {
    "right_eye": [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7],
    "left_eye": [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249],
    "right_brow": [70, 63, 105, 66, 107, 55, 65, 52, 53, 46],
    "left_brow": [300, 293, 334, 296, 336, 285, 295, 282, 283, 276],
    "lips": [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146],
}


@dataclass(frozen=True)
class ColourModel:
    """A Gaussian in Lab (L 0-100, a, b), fitted to the pixels it came from."""

    mean: np.ndarray  # [3]
    cov: np.ndarray  # [3, 3]
    samples: np.ndarray  # [K, 3] RGB in [0, 1]: pixels of the region, for sampling colours

    def distance(self, lab: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of Lab colours [..., 3]."""
        d = lab - self.mean
        inv = np.linalg.inv(self.cov)
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", d, inv, d), 0.0))

    @property
    def rgb(self) -> np.ndarray:  # [3] median colour of the region, RGB in [0, 1]
        return np.median(self.samples, axis=0).astype(np.float32)


@dataclass(frozen=True)
class PhotoRegions:
    """Per-pixel regions of one portrait ([H, W] bool each; disjoint) and their colours."""

    person: np.ndarray
    face: np.ndarray  # the face oval (skin and features)
    skin: np.ndarray  # skin-coloured person pixels (face oval, neck, ears, ...)
    hair: np.ndarray
    clothes: np.ndarray
    skin_model: ColourModel
    hair_model: ColourModel | None  # None: no hair was found
    clothes_model: ColourModel | None


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (any shape [..., 3]) -> CIE Lab float32 (L 0-100)."""
    flat = np.ascontiguousarray(np.asarray(rgb, np.float32).reshape(-1, 1, 3))
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb))


def _polygon(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _model(rgb: np.ndarray, lab: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> ColourModel | None:
    if int(mask.sum()) < 20:
        return None
    px = lab[mask].astype(np.float64)
    cov = np.cov(px.T) + np.eye(3) * 1.0  # a floor: a flat-coloured region still has a spread
    samples = rgb[mask]
    if len(samples) > 4096:
        samples = samples[rng.choice(len(samples), 4096, replace=False)]
    return ColourModel(px.mean(0), cov, samples.astype(np.float32))


def photo_regions(image: np.ndarray, landmarks2d: np.ndarray, *, seed: int = 0) -> PhotoRegions:
    """Split an [H, W, 3] uint8 portrait into regions, given its face's 478 landmarks [478, 2]."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    rgb = image.astype(np.float32) / 255.0
    lab = to_lab(rgb)
    lm = np.asarray(landmarks2d, np.float64)[:, :2]
    person = person_mask(image) > 0.5
    face = _polygon((h, w), lm[FACE_OVAL])
    features = np.zeros((h, w), bool)
    for idx in _FEATURES.values():
        features |= _polygon((h, w), lm[idx])
    face_h = float(np.linalg.norm(lm[LANDMARKS["chin"]] - lm[LANDMARKS["forehead"]]))
    k = max(3, int(0.04 * face_h)) | 1
    features = cv2.dilate(features.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    core = face & ~features
    skin_model = _model(rgb, lab, core, rng)
    if skin_model is None:
        raise ValueError("the face oval holds no skin pixels: landmarks outside the image?")
    skin_d = skin_model.distance(lab)
    skin = person & (skin_d < SKIN_MAHALANOBIS)

    # Up: from the chin toward the forehead, so a tilted head's "above the brows" tilts too.
    chin, top = lm[LANDMARKS["chin"]], lm[LANDMARKS["forehead"]]
    up = (top - chin) / max(face_h, 1e-6)
    ys, xs = np.mgrid[0:h, 0:w]
    height = (xs - chin[0]) * up[0] + (ys - chin[1]) * up[1]  # px above the chin, along the face
    brows = max(float(np.dot(lm[i] - chin, up)) for i in (LANDMARKS["left_brow_inner"], LANDMARKS["right_brow_inner"]))
    seeds = person & ~face & ~skin & (height > brows)
    hair_model = _model(rgb, lab, seeds, rng) if int(seeds.sum()) >= MIN_HAIR_SEEDS else None
    hair = np.zeros((h, w), bool)
    if hair_model is not None:
        hair_d = hair_model.distance(lab)
        hair = person & ~face & (hair_d < skin_d) & (height > -HAIR_BELOW_CHIN * face_h) & (hair_d < 4.0)
        hair |= seeds
        # only hair joined to the seeds above the brows: a dark collar is not hair
        _, labels = cv2.connectedComponents(hair.astype(np.uint8), connectivity=8)
        keep = np.unique(labels[seeds])
        hair &= np.isin(labels, keep[keep > 0])
        skin &= ~hair
    # clothes: the collar's band under the chin (what the neck stub meets), not the whole outfit
    axis = (xs - chin[0]) * up[1] - (ys - chin[1]) * up[0]  # px across the face, from the chin
    width = float(np.linalg.norm(lm[LANDMARKS["left_cheek"]] - lm[LANDMARKS["right_cheek"]]))
    band = (height < 0) & (height > -COLLAR_BAND * face_h) & (np.abs(axis) < width)
    clothes = person & ~face & ~hair & ~skin & band
    clothes_model = _model(rgb, lab, clothes, rng)
    return PhotoRegions(person, face, skin | (face & ~hair), hair, clothes, skin_model, hair_model, clothes_model)
