"""Evaluation: orbit renders of a head -> metrics -> metrics.json + contact sheet.

Knows no pipeline: it reads a head (``SplatArrays`` in the head frame, or a result on disk)
and the photo it was made from. Offline metrics (weights that ship in PyPI wheels):

- identity across views (dlib's 128-D descriptor; :mod:`.identity`),
- PCK of MediaPipe's 478 landmarks against the head's own projected landmarks (:mod:`.landmarks_pck`),
- ghost faces behind the head (MediaPipe and dlib detectors; :mod:`.ghosts`),
- mean HSV saturation over the orbit (:mod:`.colour`),
- front fidelity, PSNR / SSIM inside the face oval from the photo's camera (:mod:`.fidelity`);

ArcFace IPA when insightface's ``buffalo_l`` is installed (:mod:`.optional`). Definitions and
the paper tables they mirror: docs/metrics.md.

Usage::

    from backend.eval import evaluate, evaluate_splats
    figures = evaluate("out/demo", "examples/astronaut.jpg", "out/demo/eval")   # files + figures
    figures = evaluate_splats(result.splats, image, None, views=12, size=256)   # figures only

Or ``python -m backend eval out/demo --photo examples/astronaut.jpg``.
"""

from .report import DEFAULT_SIZE, DEFAULT_VIEWS, evaluate, evaluate_splats
from .result_io import ResultError, read_result

__all__ = ["DEFAULT_SIZE", "DEFAULT_VIEWS", "ResultError", "evaluate", "evaluate_splats", "read_result"]
