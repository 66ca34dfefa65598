"""Gaussian parameters, their activations and one optimiser per parameter.

Parameters follow gsplat's names so its strategies work unchanged:

    means     [N, 3]     head frame, metres
    quats     [N, 4]     wxyz, unnormalised (normalised on use)
    scales    [N, 3]     log of the per-axis standard deviation
    opacities [N]        logit
    sh0       [N, 1, 3]  SH DC; rgb = 0.5 + C0 * sh0
    shN       [N, K, 3]  higher SH bands (K = 0 when sh_degree = 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from blender_addon.core.splat_arrays import SH_C0, SplatArrays


@dataclass(frozen=True)
class LearningRates:
    """Adam learning rates. Position decays exponentially from ``means`` to ``means_final``."""

    means: float
    means_final: float
    quats: float
    scales: float
    opacities: float
    sh0: float
    shN: float


LR_PRESETS: dict[str, LearningRates] = {
    # METHOD A.2 (SAS, Sec. 4 implementation details): opacity 0.05, colour 0.01,
    # rotation 0.001, scale 0.001; position 1e-3 -> 1e-4 exponentially over training.
    "paper": LearningRates(
        means=1e-3, means_final=1e-4, quats=1e-3, scales=1e-3, opacities=0.05, sh0=0.01, shN=0.01 / 20
    ),
    # METHOD B.2 (Instax3D): position decays to 0.01x its initial value.
    "instax": LearningRates(
        means=1.6e-4, means_final=1.6e-6, quats=1e-3, scales=5e-3, opacities=0.05, sh0=2.5e-3, shN=2.5e-3 / 20
    ),
    # Photo pipeline: few hundred steps, so colours and scales move faster than the paper's 3000-step run.
    "photo": LearningRates(means=4e-4, means_final=4e-5, quats=2e-3, scales=5e-3, opacities=0.05, sh0=0.02, shN=0.001),
}


class GaussianModel:
    """A splat cloud as a ``ParameterDict`` plus one Adam per parameter (gsplat's layout)."""

    def __init__(self, params: torch.nn.ParameterDict, lrs: LearningRates, total_steps: int = 3000):
        self.params = params
        self.lrs = lrs
        self.total_steps = max(int(total_steps), 1)
        # gsplat's choice: a tiny eps, since gradients of small splats are tiny.
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.Adam([{"params": p, "lr": getattr(lrs, name), "name": name}], eps=1e-15)
            for name, p in params.items()
        }

    # ---------------------------------------------------------------- creation
    @classmethod
    def from_splats(
        cls,
        splats: SplatArrays,
        lrs: LearningRates | str = "paper",
        total_steps: int = 3000,
        device="cpu",
        sh_degree: int | None = None,
    ) -> GaussianModel:
        if isinstance(lrs, str):
            lrs = LR_PRESETS[lrs]
        s = splats.astype(np.float32)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device)  # noqa: E731
        degree = s.sh_degree if sh_degree is None else sh_degree
        k = (degree + 1) ** 2 - 1
        shN = torch.zeros(len(s), k, 3, device=device)
        if s.shN is not None and k:
            kk = min(k, s.shN.shape[1])
            shN[:, :kk] = t(s.shN[:, :kk])
        params = torch.nn.ParameterDict(
            {
                "means": t(s.means),
                "quats": t(s.quats),
                "scales": t(s.log_scales),
                "opacities": t(s.opacity_logits),
                "sh0": t(s.sh0)[:, None, :],
                "shN": shN,
            }
        )
        return cls(params, lrs, total_steps)

    def to_splats(self) -> SplatArrays:
        p = {k: v.detach().float().cpu().numpy() for k, v in self.params.items()}
        return SplatArrays(
            means=p["means"],
            quats=p["quats"],
            log_scales=p["scales"],
            opacity_logits=p["opacities"],
            sh0=p["sh0"][:, 0, :].copy(),
            shN=p["shN"] if p["shN"].shape[1] else None,
        )

    # ------------------------------------------------------------- activations
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.params["shN"].shape[1] + 1))) - 1

    @property
    def means(self) -> torch.Tensor:  # [N, 3]
        return self.params["means"]

    @property
    def quats(self) -> torch.Tensor:  # [N, 4] unit wxyz
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def scales(self) -> torch.Tensor:  # [N, 3] metres
        return torch.exp(self.params["scales"])

    @property
    def opacities(self) -> torch.Tensor:  # [N]
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh_coeffs(self) -> torch.Tensor:  # [N, (d+1)^2, 3]
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def rgb_dc(self) -> torch.Tensor:  # [N, 3] view-independent colour
        return 0.5 + SH_C0 * self.params["sh0"][:, 0, :]

    # ---------------------------------------------------------------- training
    def means_lr(self, step: int) -> float:
        """Exponential decay from lrs.means to lrs.means_final over total_steps (METHOD A.2)."""
        t = min(max(step / self.total_steps, 0.0), 1.0)
        return self.lrs.means * (self.lrs.means_final / self.lrs.means) ** t

    def step(self, step: int) -> None:
        for group in self.optimizers["means"].param_groups:
            group["lr"] = self.means_lr(step)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
