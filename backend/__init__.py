"""PortraitSplat backend: photo (+ style prompt) -> 3D Gaussian head."""

__version__ = "0.1.0"
