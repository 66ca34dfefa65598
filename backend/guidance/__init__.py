"""Guidance terms: one self-contained file per method (ARCHITECTURE "Backend layers").

A term is a callable ``(out, cams, step) -> {"loss_x": tensor}`` that the one training loop
(``backend.gaussians.loop.optimise``) sums with its weights. Shared diffusion arithmetic lives
in :mod:`backend.guidance.diffusion`.
"""
