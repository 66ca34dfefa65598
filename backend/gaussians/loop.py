"""The one training loop every pipeline uses (ARCHITECTURE: "The training loop").

    for step in range(steps):
        cams = sample_views(step)                       # orbit, random or fixed views
        out = render(model, cams)                       # rgb, alpha, depth, info
        losses = {} ; for term in terms: losses |= term(out, cams, step)
        loss = sum(weights[k] * v for k, v in losses.items())
        strategy.step_pre_backward(...); loss.backward(); strategy.step_post_backward(...)
        model.step(step); preview every ``preview_every`` steps

A *term* is any callable ``(out, cams, step) -> {"loss_name": tensor}``; adding a loss
never edits this loop. A *strategy* is a gsplat ``Strategy`` (``backend.gaussians.strategies``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from backend.errors import CancelledError

from .model import GaussianModel
from .render import RenderOutput, render

Term = Callable[[RenderOutput, object, int], dict[str, torch.Tensor]]


@dataclass
class LoopConfig:
    steps: int
    weights: dict[str, float] = field(default_factory=dict)  # missing keys weigh 1.0
    preview_every: int = 0  # 0 = never
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    absgrad: bool = False
    stage: str = "optimise"
    # metres per unit of the strategy's 3D scale thresholds (gsplat's state["scene_scale"]):
    # 1 = metres; the SAS preset's thresholds are in head units, so stylize passes the head's height
    scene_scale: float = 1.0


def render_model(
    model: GaussianModel, cams, background=None, absgrad: bool = False, draw: torch.Tensor | None = None, **kw
) -> RenderOutput:
    """Render ``model``; ``draw`` [N] (0 or 1) weighs each splat's opacity (None: all drawn)."""
    sh = model.sh_degree
    colors = model.sh_coeffs if sh > 0 else model.rgb_dc
    return render(
        model.means,
        model.quats,
        model.scales,
        model.opacities if draw is None else model.opacities * draw,
        colors,
        cams,
        sh_degree=sh if sh > 0 else None,
        background=background,
        absgrad=absgrad,
        **kw,
    )


def optimise(
    model: GaussianModel,
    cfg: LoopConfig,
    sample_views: Callable[[int], object],
    terms: Iterable[Term],
    strategy=None,
    reporter=None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    draw: Callable[[int], torch.Tensor | None] | None = None,
) -> dict[str, float]:
    """Run ``cfg.steps`` optimisation steps; returns the last step's loss values. ``draw(step)``:
    which splats the step's render draws (``render_model``'s ``draw``; None: all)."""
    terms = list(terms)
    device = model.means.device
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    state = strategy.initialize_state(scene_scale=cfg.scene_scale) if strategy is not None else None
    if strategy is not None:
        strategy.check_sanity(model.params, model.optimizers)
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(cfg.steps):
        if reporter is not None and reporter.cancelled():
            raise CancelledError("the job was cancelled")
        cams = sample_views(step)
        out = render_model(model, cams, background=bg, absgrad=cfg.absgrad, draw=None if draw is None else draw(step))
        losses: dict[str, torch.Tensor] = {}
        for term in terms:
            losses |= term(out, cams, step)
        loss = sum(cfg.weights.get(k, 1.0) * v for k, v in losses.items())
        if strategy is not None:
            strategy.step_pre_backward(model.params, model.optimizers, state, step, out.info)
        loss.backward()
        if strategy is not None:
            strategy.step_post_backward(model.params, model.optimizers, state, step, out.info, packed=False)
        model.step(step)
        last = {k: float(v.detach()) for k, v in losses.items()}
        total = float(loss.detach())
        if on_step is not None:
            on_step(step, last)
        if reporter is not None:
            done = step + 1
            eta = (time.perf_counter() - t0) / done * (cfg.steps - done)
            reporter.progress(cfg.stage, done, cfg.steps, f"loss {total:.4f}, {len(model)} splats, eta {eta:.0f}s")
            if cfg.preview_every and (done % cfg.preview_every == 0 or done == cfg.steps):
                reporter.preview(model.to_splats(), done)
    return last
