"""The metrics that need downloaded weights: ArcFace IPA runs on a tiny random buffalo_l pack
(the real insightface code path, no hub), and is skipped with the `models download` line,
never a zero, when the pack is missing."""

from __future__ import annotations

import numpy as np
import pytest

from backend.eval.optional import optional_metrics
from backend.eval.orbit import Orbit, orbit_cameras_for
from backend.models.registry import ENV_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def _orbit(size: int = 256) -> Orbit:
    yaw = np.array([0.0, 30.0, -30.0, 90.0, 180.0])
    pitch = np.zeros_like(yaw)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(yaw), size, size, 3), dtype=np.uint8)
    alpha = np.ones((len(yaw), size, size), np.float32)
    return Orbit(images=images, alpha=alpha, yaw=yaw, pitch=pitch, cameras=orbit_cameras_for(yaw, pitch, size))


def test_arcface_ipa_runs_on_a_tiny_pack(tiny_models_root, monkeypatch):
    monkeypatch.setenv(ENV_ROOT, str(tiny_models_root))
    # the tiny detector answers one box at 1/10 of the image: large enough at 1024 px
    photo = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    figures, skipped = optional_metrics(_orbit(), photo)
    assert not any("ArcFace" in line for line in skipped)
    assert figures["arcface_views_asked"] == 3  # the views within +-45 deg of yaw
    assert figures["arcface_views"] == 3  # the tiny detector always finds its face
    assert -1.0 <= figures["arcface_ipa"] <= 1.0


def test_a_missing_pack_is_skipped_with_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "empty"))
    figures, skipped = optional_metrics(_orbit(), np.zeros((64, 64, 3), np.uint8))
    assert "arcface_ipa" not in figures
    assert any("ArcFace" in line and "models download --only buffalo_l" in line for line in skipped)
    assert any("CLIP" in line and "models download --only clip_vit_l14" in line for line in skipped)
    assert not any(key.startswith("clip_") for key in figures)


def test_clip_id_style_and_mvc_run_on_a_tiny_clip(tmp_path, monkeypatch):
    from backend.testing import save_tiny_clip

    save_tiny_clip(tmp_path / "root" / "clip_vit_l14")
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "root"))
    orbit = _orbit(64)
    figures, skipped = optional_metrics(orbit, orbit.images[0], "golden statue style")
    assert not any("CLIP-ID" in line for line in skipped)
    assert -100 <= figures["clip_style"] <= 100 and -1 <= figures["clip_mvc"] <= 1
    # the photo is the first view itself: its own similarity lifts the mean above the others'
    alone, _ = optional_metrics(orbit, orbit.images[3], None)
    assert figures["clip_id"] != alone["clip_id"] and "clip_style" not in alone
