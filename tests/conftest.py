"""Shared pytest fixtures. Keep each fixture small; put test-specific helpers in the test file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def astronaut_image() -> np.ndarray:
    """The demo portrait ``examples/astronaut.jpg`` as ``[512, 512, 3]`` uint8 RGB (read-only)."""
    from backend.image_io import load_image

    img = load_image(EXAMPLES / "astronaut.jpg")
    img.setflags(write=False)
    return img
