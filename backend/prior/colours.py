"""Colours for the head's points: the photo's where it sees them, a colour model elsewhere.

The photo sees one side of the head. Points it sees (and that land on the person, not the
background) take the photo's colour; an unseen point whose mirror image across the midplane
is seen takes that colour (faces are near-symmetric). Every other point gets a class and a
colour drawn from that class's typical pixels in the photo
(:class:`backend.face.regions.PhotoRegions`):

- **hair** where the template is scalp (:func:`backend.prior.hair.hair_weight` > 0.5) and the
  photo shows hair; the back of the head is hair, never skin;
- otherwise the class (skin or clothes) of the nearest point the photo sees as one of them;
- the colour is a random pixel of that class, averaged over the ``TEXTURE_K`` nearest points of
  the same class (a low-frequency texture, not salt and pepper), pulled toward the class
  median by ``TEXTURE_GAIN``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..face.regions import PhotoRegions, to_lab
from .sample import bilinear

SKIN, HAIR, CLOTHES, BACKGROUND = 0, 1, 2, 3
TEXTURE_K = 12
TEXTURE_GAIN = 0.6  # 0 = flat median colour, 1 = the full spread of the averaged samples
TYPICAL = 2.0  # texture samples: only the pixels within this Mahalanobis distance of their class
MIRROR_M = 0.004  # an unseen point whose mirror image is this close to a seen point takes its colour


def pixel_classes(regions: PhotoRegions, uv: np.ndarray) -> np.ndarray:
    """Class [N] of the photo pixel under each point's projection uv [N, 2]."""
    h, w = regions.person.shape
    x = np.clip(np.floor(uv[:, 0]).astype(np.int64), 0, w - 1)
    y = np.clip(np.floor(uv[:, 1]).astype(np.int64), 0, h - 1)
    out = np.full(len(uv), BACKGROUND, np.int64)
    out[regions.clothes[y, x]] = CLOTHES
    out[regions.skin[y, x]] = SKIN
    out[regions.hair[y, x]] = HAIR
    return out


def _texture(points: np.ndarray, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    drawn = samples[rng.integers(0, len(samples), len(points))].astype(np.float64)
    if len(points) > 1:
        _, nn = cKDTree(points).query(points, k=min(TEXTURE_K, len(points)))
        drawn = drawn[nn].mean(axis=1)
    median = np.median(samples, axis=0)
    return np.clip(median + TEXTURE_GAIN * (drawn - drawn.mean(axis=0)), 0.0, 1.0)


def fill_colours(
    points: np.ndarray,
    uv: np.ndarray,
    seen: np.ndarray,
    scalp: np.ndarray,
    image: np.ndarray,
    regions: PhotoRegions,
    rng,
    *,
    grazing: np.ndarray | None = None,
    nape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colours [N, 3] (RGB in [0, 1]), classes [N] and the photo-coloured points [N] (bool).

    ``uv`` are the points' pixels in the photo, ``seen`` whether the photo sees each point
    (:func:`backend.prior.sample.project_colors`), ``scalp`` the hair weight at each point.
    ``grazing`` [N]: seen points the photo sees edge-on; they keep the class of their pixel but
    take its model's colour (the photo's pixels there are smeared over the surface).
    ``nape`` [N]: the back of the neck; unseen and not hair, it takes the collar's colour (the
    clothes model) where the photo shows one, so no skin-coloured band sits under the hair."""
    rng = np.random.default_rng(rng)
    img = np.asarray(image, np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    cls = pixel_classes(regions, uv)
    known = seen & (cls != BACKGROUND)
    photo = known & ~grazing if grazing is not None else known
    rgb = np.zeros((len(points), 3), np.float32)
    rgb[photo] = bilinear(img, uv[photo])
    unseen = np.flatnonzero(~photo)
    if len(unseen) and photo.any():  # faces are near-symmetric: the mirror point's colour, where the photo sees it
        d, i = cKDTree(points[photo]).query(points[unseen] * np.array([-1.0, 1.0, 1.0]))
        mirrored = d < MIRROR_M
        src = np.flatnonzero(photo)[i[mirrored]]
        rgb[unseen[mirrored]], cls[unseen[mirrored]] = rgb[src], cls[src]
        unseen = unseen[~mirrored]
    free = unseen[~known[unseen]]  # no pixel says what they are
    cls[free] = -1
    if regions.hair_model is not None:
        cls[free[scalp[free] > 0.5]] = HAIR
    if nape is not None and regions.clothes_model is not None:
        cls[free[nape[free] & (cls[free] < 0)]] = CLOTHES
    rest = free[cls[free] < 0]
    body = np.flatnonzero(photo & ((cls == SKIN) | (cls == CLOTHES)))
    if len(rest):
        cls[rest] = cls[body[cKDTree(points[body]).query(points[rest])[1]]] if len(body) else SKIN
    models = {SKIN: regions.skin_model, HAIR: regions.hair_model, CLOTHES: regions.clothes_model}
    for c, model in models.items():
        idx = unseen[cls[unseen] == c]
        if len(idx) == 0:
            continue
        model = model or regions.skin_model
        samples = model.samples[model.distance(to_lab(model.samples)) < TYPICAL]
        rgb[idx] = _texture(points[idx], samples if len(samples) >= 20 else model.samples, rng)
    return rgb, cls, photo
