"""Gaussian splat core: model, renderer, cameras, densification strategies and PLY."""
