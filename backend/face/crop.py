"""Square crops around a face, with the mapping back to the input image.

Crops may reach past the image border; the missing pixels repeat the nearest edge pixel
(``cv2.BORDER_REPLICATE``), which disturbs detectors and generators less than black bars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from backend.face.analyse import FaceAnalysis


def square_crop(
    image: np.ndarray, centre: tuple[float, float], side: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the square of ``side`` pixels centred on ``centre`` (x, y) and resize it to ``size``.

    Returns ``(crop, crop_box)``: crop is ``[size, size, 3]`` uint8; crop_box is ``[4]`` int
    x0, y0, x1, y1 in input pixels (x1 - x0 == y1 - y0). A point ``(u, v)`` in crop pixels is
    ``(x0 + u * s, y0 + v * s)`` in the input, with ``s = (x1 - x0) / size``.
    """
    side_px = max(1, int(round(side)))
    x0 = int(round(centre[0] - side_px / 2))
    y0 = int(round(centre[1] - side_px / 2))
    x1, y1 = x0 + side_px, y0 + side_px
    height, width = image.shape[:2]
    inner = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if inner.size == 0:
        raise ValueError(f"crop {x0, y0, x1, y1} lies outside the {width}x{height} image")
    padded = cv2.copyMakeBorder(
        np.ascontiguousarray(inner),
        top=max(-y0, 0),
        bottom=max(y1 - height, 0),
        left=max(-x0, 0),
        right=max(x1 - width, 0),
        borderType=cv2.BORDER_REPLICATE,
    )
    interp = cv2.INTER_AREA if side_px > size else cv2.INTER_CUBIC
    crop = cv2.resize(padded, (size, size), interpolation=interp)
    return crop, np.array([x0, y0, x1, y1], dtype=np.int64)


def crop_face(
    image: np.ndarray, analysis: FaceAnalysis, margin: float = 0.6, size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """A square head crop for later pipelines.

    The square is centred on the box around the 478 landmarks (mid-forehead to chin, cheek
    to cheek) and its side is that box's longer side times ``1 + 2 * margin``: with the
    default 0.6 the face takes up 1/2.2 of the crop, leaving room for hair, ears and chin.

    Returns ``(crop [size, size, 3] uint8, crop_box [4] int x0, y0, x1, y1)``; see
    :func:`square_crop` for the mapping, and for how pixels past the border are filled.
    """
    pts = analysis.landmarks2d  # [478, 2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
    side = float(max(hi - lo)) * (1.0 + 2.0 * margin)
    return square_crop(image, centre, side, size)
