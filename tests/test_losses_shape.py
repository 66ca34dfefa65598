"""The shape penalty (backend.gaussians.losses.shape_penalty): zero inside its bounds, and
under gradient descent it holds splats that something else stretches to those bounds."""

from __future__ import annotations

import math

import torch

from backend.gaussians.losses import shape_penalty


def test_zero_inside_the_bounds_positive_outside():
    log_s = torch.log(torch.tensor([[0.004, 0.004, 0.004], [0.010, 0.002, 0.002], [0.030, 0.010, 0.010]]))
    p = shape_penalty(log_s, max_ratio=5.0, max_scale=0.015)
    assert p[0] == 0.0 and p[1] == 0.0  # round, and 5x exactly
    assert math.isclose(float(p[2]), math.log(0.030 / 0.015), rel_tol=1e-5)  # too long, 3x is fine
    needle = shape_penalty(torch.log(torch.tensor([[0.012, 0.001, 0.001]])), 5.0, 0.015)
    assert math.isclose(float(needle[0]), math.log(12 / 5), rel_tol=1e-5)


def test_holds_stretched_splats_at_the_bounds():
    target = torch.log(torch.tensor([[0.040, 0.002, 0.002], [0.008, 0.001, 0.004]])).repeat(50, 1)
    finals = {}
    for weight in (0.0, 1.0):
        log_s = torch.log(torch.full((100, 3), 0.004)).requires_grad_()
        opt = torch.optim.Adam([log_s], lr=0.02)
        for _ in range(600):
            opt.zero_grad()
            loss = 0.05 * (log_s - target).square().sum(-1).mean() + weight * shape_penalty(log_s, 5.0, 0.015).mean()
            loss.backward()
            opt.step()
        s = log_s.detach().exp()
        finals[weight] = (float(s.max()), float((s.max(1).values / s.min(1).values).max()))
    assert finals[0.0][0] > 0.03 and finals[0.0][1] > 15  # the pull alone makes needles
    assert finals[1.0][0] < 0.015 * 1.1 and finals[1.0][1] < 5.0 * 1.15, finals
