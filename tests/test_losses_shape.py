"""The shape and flatness penalties (backend.gaussians.losses): zero inside their bounds, and
under gradient descent they hold splats that something else stretches to those bounds."""

from __future__ import annotations

import math

import torch

from backend.gaussians.losses import flat_penalty, normal_extent, shape_penalty


def test_zero_inside_the_bounds_positive_outside():
    log_s = torch.log(torch.tensor([[0.004, 0.004, 0.004], [0.010, 0.002, 0.002], [0.030, 0.010, 0.010]]))
    p = shape_penalty(log_s, max_ratio=5.0, max_scale=0.015)
    assert p[0] == 0.0 and p[1] == 0.0  # round, and 5x exactly
    assert math.isclose(float(p[2]), math.log(0.030 / 0.015), rel_tol=1e-5)  # too long, 3x is fine
    needle = shape_penalty(torch.log(torch.tensor([[0.012, 0.001, 0.001]])), 5.0, 0.015)
    assert math.isclose(float(needle[0]), math.log(12 / 5), rel_tol=1e-5)
    # a disc (long in two axes, a surface splat) is no needle; a blade (long in one) is
    disc, blade = shape_penalty(torch.log(torch.tensor([[0.010, 0.001, 0.010], [0.012, 0.001, 0.002]])), 5.0, 0.015)
    assert disc == 0.0
    assert math.isclose(float(blade), math.log(12 / 2 / 5), rel_tol=1e-5)


def test_holds_stretched_splats_at_the_bounds():
    target = torch.log(torch.tensor([[0.040, 0.002, 0.002], [0.008, 0.001, 0.0012]])).repeat(50, 1)
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
        middle = s.sort(1).values[:, 1]
        finals[weight] = (float(s.max()), float((s.max(1).values / middle).max()))
    assert finals[0.0][0] > 0.03 and finals[0.0][1] > 15  # the pull alone makes needles
    assert finals[1.0][0] < 0.015 * 1.1 and finals[1.0][1] < 5.0 * 1.15, finals


def test_normal_extent_follows_the_rotation():
    half = math.sqrt(0.5)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0], [half, half, 0.0, 0.0], [half, 0.0, half, 0.0]])  # 90 deg about x, y
    scales = torch.tensor([[0.001, 0.010, 0.002]]).repeat(3, 1)
    up = torch.tensor([[0.0, 0.0, 1.0]]).repeat(3, 1)
    ext = normal_extent(quats, scales, up)
    # z sees the splat's z axis, then (about x) its y axis, then (about y) its x axis
    assert torch.allclose(ext, torch.tensor([0.002, 0.010, 0.001]), rtol=1e-5)
    diag = normal_extent(quats[:1], scales[:1], torch.tensor([[0.0, half, half]]))
    assert math.isclose(float(diag), math.sqrt((0.010**2 + 0.002**2) / 2), rel_tol=1e-5)
    p = flat_penalty(quats, scales, up, 0.002)
    assert p[0] == 0.0 and p[2] == 0.0
    assert math.isclose(float(p[1]), math.log(5.0), rel_tol=1e-5)


def test_flat_penalty_holds_splats_on_their_surface():
    """A pull that grows every axis (what one view does to a splat facing it: depth costs it
    nothing) makes balls; with the penalty the splats stay discs, free to grow along the surface,
    whatever their rotation does."""
    torch.manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    finals = {}
    for weight in (0.0, 1.0):
        quats = torch.nn.functional.normalize(torch.randn(100, 4), dim=-1).requires_grad_()
        log_s = torch.log(torch.full((100, 3), 0.001)).requires_grad_()
        opt = torch.optim.Adam([quats, log_s], lr=0.02)
        for _ in range(400):
            opt.zero_grad()
            pull = 0.05 * (log_s - math.log(0.006)).square().sum(-1).mean()
            loss = pull + weight * flat_penalty(quats, log_s.exp(), normals, 0.002).mean()
            loss.backward()
            opt.step()
        s = log_s.detach().exp()
        finals[weight] = (float(normal_extent(quats.detach(), s, normals).max()), float(s.max(1).values.min()))
    assert finals[0.0][0] > 0.005  # balls: as deep as they are wide
    assert finals[1.0][0] < 0.002 * 1.15, finals  # discs
    assert finals[1.0][1] > 0.005  # that still grew along their surface
