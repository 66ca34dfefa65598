"""Gaussians bound to the triangles of a head mesh (Instax3D construction, METHOD B.2, Eq. 6).

Each Gaussian belongs to one triangle and stores a *residual* in that triangle's frame:

    mu = s_tri R_tri dmu + mu_tri        R = R_tri dR        s = s_tri ds          (Eq. 6)

The triangle frame (R_tri its axes, mu_tri its centroid, s_tri the mean of its base and
height) is ``triangle_frames``, defined with the other per-triangle math in
:mod:`backend.gaussians.triangles` (those names are re-exported here).

So deforming the mesh (any rotation, translation, uniform scale, or a non-rigid stretch)
carries every Gaussian with its triangle: its centre keeps its place in the triangle's
frame, its axes turn with the frame and its size follows ``s_tri``.

Parameters (gsplat names, so gsplat's densification ops copy / split / remove every entry):

    means      [N, 3]  dmu, in units of s_tri, in the triangle frame
    quats      [N, 4]  dR, wxyz (normalised on use)
    scales     [N, 3]  log ds (world std-dev = s_tri * exp(scales))
    opacities  [N]     logit          sh0 [N, 1, 3]   shN [N, K, 3]     (as GaussianModel)
    tri_ids    [N]     int64, not trainable: the triangle each Gaussian is bound to
    tri_scale  [N]     float, not trainable: s_tri of that triangle (kept in step with the
                       mesh by ``set_vertices``) so strategies can judge world sizes

:class:`BoundGaussianModel` is a :class:`GaussianModel` whose ``means`` / ``quats`` /
``scales`` properties return WORLD values, so the training loop and the renderer do not
change; its ``to_splats`` exports world values too.

Densification. gsplat's ``split`` draws its offsets from ``params["quats"]`` and
``params["scales"]``, i.e. from dR and ds. Mapped through Eq. 6 that offset is
``s_tri R_tri dR diag(ds) eps = R diag(s) eps``: exactly 3DGS's world-space split, because
the triangle map is a similarity. So split and clone need no change (a test pins this).
What does need a change is every *threshold on a 3D size* (clone vs split, "too big"
pruning): gsplat would compare ds, a ratio, with a length in metres. :class:`BoundStrategy`
is gsplat's ``DefaultStrategy`` with those comparisons made on the world scale
``s_tri * ds``; its hooks and everything else are gsplat's.

Usage::

    head = build_head()
    verts, faces = decimate(head.vertices, head.faces, 2500)      # optional, CPU presets
    model = bind(verts, faces, per_triangle=4, total_steps=3000)   # 4 Gaussians per triangle
    strategy = make_bound_strategy("instax_paper")                 # absgrad, every 1000 steps
    optimise(model, LoopConfig(steps=3000, absgrad=True), sample_views, terms, strategy)
    model.set_vertices(deformed_vertices)                          # Gaussians follow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove, split
from torch import Tensor

from blender_addon.core.splat_arrays import SH_C0, SplatArrays

from .model import GaussianModel, LearningRates
from .strategies import PRESETS, STRATEGY_KINDS
from .triangles import TriangleFrames, decimate, quat_multiply, rotmat_to_quat, sample_barycentric, triangle_frames

__all__ = [
    "TriangleFrames",
    "triangle_frames",
    "rotmat_to_quat",
    "quat_multiply",
    "decimate",
    "sample_barycentric",
    "BoundGaussianModel",
    "bind",
    "BoundStrategy",
    "make_bound_strategy",
    "BOUND_LR_PRESETS",
]

Params = dict[str, torch.nn.Parameter] | torch.nn.ParameterDict

# Non-trainable per-Gaussian entries of the ParameterDict.
BINDING_KEYS = ("tri_ids", "tri_scale")

# Learning rates for the residuals. dmu is in units of s_tri (~4 mm on the template), ds is a
# ratio; so these are not the metre-valued rates of model.LR_PRESETS. The values are the
# published GaussianAvatars settings for triangle-bound head Gaussians (position 5e-3,
# scaling 1.7e-2, rotation 1e-3, opacity 0.05, colour 2.5e-3); the position rate decays to
# 0.01x its initial value over the run (METHOD B.2, Instax3D Sec. 4 implementation details).
BOUND_LR_PRESETS: dict[str, LearningRates] = {
    "instax": LearningRates(
        means=5e-3, means_final=5e-5, quats=1e-3, scales=1.7e-2, opacities=0.05, sh0=2.5e-3, shN=2.5e-3 / 20
    ),
    # ours: short CPU runs (a few hundred steps), so colours and opacities move faster
    "instax_fast": LearningRates(
        means=1e-2, means_final=1e-4, quats=2e-3, scales=2e-2, opacities=0.05, sh0=0.02, shN=0.001
    ),
}


# ------------------------------------------------------------------------------- model


class BoundGaussianModel(GaussianModel):
    """Gaussians bound to mesh triangles (Eq. 6); ``means``/``quats``/``scales`` are world values.

    ``params`` hold the residuals (see the module docstring); one Adam per *trainable*
    parameter (``tri_ids``/``tri_scale`` have none). The position learning rate decays
    exponentially from ``lrs.means`` to ``lrs.means_final`` (``GaussianModel.means_lr``).
    """

    def __init__(
        self,
        params: torch.nn.ParameterDict,
        vertices: Tensor,
        faces: Tensor,
        lrs: LearningRates,
        total_steps: int = 3000,
    ):
        self.params = params
        self.lrs = lrs
        self.total_steps = max(int(total_steps), 1)
        self.optimizers = {
            name: torch.optim.Adam([{"params": p, "lr": getattr(lrs, name), "name": name}], eps=1e-15)
            for name, p in params.items()
            if p.requires_grad
        }
        self.faces = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=params["means"].device)
        self._frames: TriangleFrames | None = None
        self.set_vertices(vertices)

    # ------------------------------------------------------------------ the mesh
    def set_vertices(self, vertices: Tensor | np.ndarray) -> None:
        """Move the mesh (same topology); every Gaussian follows its triangle.

        ``vertices`` [V, 3] may require grad (then frames are recomputed on every use).
        """
        device = self.params["means"].device
        v = vertices if isinstance(vertices, Tensor) else torch.as_tensor(np.asarray(vertices, dtype=np.float32))
        self.vertices = v.to(device=device, dtype=torch.float32)
        self._frames = None
        with torch.no_grad():
            s = triangle_frames(self.vertices.detach(), self.faces).scales
            self.params["tri_scale"].data = s[self.params["tri_ids"]].to(self.params["tri_scale"].dtype)

    def frames(self) -> TriangleFrames:
        if self.vertices.requires_grad:
            return triangle_frames(self.vertices, self.faces)
        if self._frames is None:
            self._frames = triangle_frames(self.vertices, self.faces)
        return self._frames

    @property
    def tri_ids(self) -> Tensor:  # [N] int64
        return self.params["tri_ids"]

    # ----------------------------------------------------------- world values
    @property
    def means(self) -> Tensor:  # [N, 3] mu = s_tri R_tri dmu + mu_tri
        fr, t = self.frames(), self.tri_ids
        local = torch.einsum("nij,nj->ni", fr.rotations[t], self.params["means"])
        return fr.scales[t, None] * local + fr.centroids[t]

    @property
    def quats(self) -> Tensor:  # [N, 4] unit wxyz of R = R_tri dR
        fr = self.frames()
        return quat_multiply(fr.quats[self.tri_ids], F.normalize(self.params["quats"], dim=-1))

    @property
    def scales(self) -> Tensor:  # [N, 3] s = s_tri ds
        return self.frames().scales[self.tri_ids, None] * torch.exp(self.params["scales"])

    def to_splats(self) -> SplatArrays:
        """World-space splats (what the renderer draws); residuals stay in ``params``."""
        with torch.no_grad():
            p = {k: v.detach().float().cpu().numpy() for k, v in self.params.items() if k not in BINDING_KEYS}
            return SplatArrays(
                means=self.means.detach().float().cpu().numpy(),
                quats=self.quats.detach().float().cpu().numpy(),
                log_scales=torch.log(self.scales).detach().float().cpu().numpy(),
                opacity_logits=p["opacities"],
                sh0=p["sh0"][:, 0, :].copy(),
                shN=p["shN"] if p["shN"].shape[1] else None,
            )

    def triangle_counts(self) -> Tensor:  # [F] Gaussians per triangle
        return torch.bincount(self.tri_ids, minlength=len(self.faces))


def bind(
    vertices: np.ndarray | Tensor,
    faces: np.ndarray | Tensor,
    *,
    per_triangle: int = 4,
    rng: np.random.Generator | int | None = 0,
    opacity: float = 0.1,
    scale_factor: float = 1.0,
    colors: np.ndarray | None = None,
    sh_degree: int = 0,
    lrs: LearningRates | str = "instax",
    total_steps: int = 3000,
    device: str | torch.device = "cpu",
) -> BoundGaussianModel:
    """Sample ``per_triangle`` Gaussians uniformly on every triangle and bind them (METHOD B.2).

    Instax3D (after HeadStudio) samples 4 random points on every face. Initial values:
    dmu = the sample's position in its triangle's frame (on the plane, so dmu_z = 0);
    dR = identity (the Gaussian's axes are the triangle's); an isotropic world std-dev of
    ``scale_factor * sqrt(area / per_triangle)`` (the samples' spacing), i.e.
    ds = that / s_tri; ``opacity`` (0.1, 3DGS's initial value); colour grey (SH DC 0)
    unless ``colors`` [F * per_triangle, 3] in [0, 1] are given (face-major order).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    if isinstance(lrs, str):
        lrs = BOUND_LR_PRESETS[lrs]
    v = torch.as_tensor(
        np.asarray(vertices.detach().cpu() if isinstance(vertices, Tensor) else vertices, dtype=np.float32)
    )
    f_np = np.asarray(faces.detach().cpu() if isinstance(faces, Tensor) else faces, dtype=np.int64)
    f = torch.as_tensor(f_np)
    fr = triangle_frames(v.double(), f)
    n_f = len(f_np)
    bary = torch.as_tensor(sample_barycentric(n_f, per_triangle, rng))  # [N, 3] float64
    tri = torch.arange(n_f).repeat_interleave(per_triangle)  # [N]
    pts = torch.einsum("nk,nkd->nd", bary, v.double()[f[tri]])
    dmu = torch.einsum("nji,nj->ni", fr.rotations[tri], pts - fr.centroids[tri]) / fr.scales[tri, None].clamp_min(1e-12)
    area = 0.5 * torch.linalg.cross(
        v.double()[f[:, 1]] - v.double()[f[:, 0]], v.double()[f[:, 2]] - v.double()[f[:, 0]]
    ).norm(dim=-1)
    sigma = scale_factor * torch.sqrt(area / per_triangle)  # [F] world std-dev
    ds = torch.log((sigma / fr.scales.clamp_min(1e-12)).clamp_min(1e-6))[tri]
    n = len(tri)
    quats = torch.zeros(n, 4, dtype=torch.float32)
    quats[:, 0] = 1.0
    if colors is None:
        sh0 = torch.zeros(n, 1, 3)
    else:
        sh0 = torch.as_tensor((np.asarray(colors, np.float32).reshape(n, 3) - 0.5) / SH_C0)[:, None, :]
    k = (sh_degree + 1) ** 2 - 1
    frozen = lambda t: torch.nn.Parameter(t, requires_grad=False)  # noqa: E731
    params = torch.nn.ParameterDict(
        {
            "means": dmu.float(),
            "quats": quats,
            "scales": ds.float()[:, None].repeat(1, 3),
            "opacities": torch.full((n,), float(np.log(opacity / (1.0 - opacity)))),
            "sh0": sh0.float(),
            "shN": torch.zeros(n, k, 3),
            "tri_ids": frozen(tri),
            "tri_scale": frozen(fr.scales[tri].float()),
        }
    ).to(device)
    return BoundGaussianModel(params, v, f_np, lrs, total_steps)


# ---------------------------------------------------------------------------- strategy


def world_max_scale(params: Params) -> Tensor:
    """Largest world std-dev of each bound Gaussian [N]: s_tri * max(ds)."""
    return torch.exp(params["scales"]).max(dim=-1).values * params["tri_scale"]


@dataclass
class BoundStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` for triangle-bound Gaussians (same settings, same hooks).

    Only the two 3D size tests change: "small enough to clone rather than split"
    (``grow_scale3d``) and "too big, prune" (``prune_scale3d``) compare the WORLD std-dev
    ``s_tri * ds`` with the thresholds (metres times ``scene_scale``), not the residual
    ratio ds. Clone and split are gsplat's own ops applied to the residuals, which equals
    3DGS's world-space placement (module docstring). With ``absgrad=True`` this is the
    Instax3D absolute-gradient densification (Eq. 7-8).
    """

    @torch.no_grad()
    def _grow_gs(self, params: Params, optimizers, state: dict[str, Any], step: int) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grads > self.grow_grad2d
        is_small = world_max_scale(params) <= self.grow_scale3d * state["scene_scale"]
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
            is_dupli &= ~is_split
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        if n_split > 0:
            # copies appended by the clone are not split
            is_split = torch.cat([is_split, is_split.new_zeros(n_dupli)])
            split(
                params=params, optimizers=optimizers, state=state, mask=is_split, revised_opacity=self.revised_opacity
            )
        return n_dupli, n_split

    @torch.no_grad()
    def _prune_gs(self, params: Params, optimizers, state: dict[str, Any], step: int) -> int:
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.reset_every:
            is_too_big = world_max_scale(params) > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop_iter:
                is_too_big |= state["radii"] > self.prune_scale2d
            is_prune |= is_too_big
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
        return n_prune


def make_bound_strategy(name: str, **overrides: Any) -> BoundStrategy:
    """A :class:`BoundStrategy` with the settings of a strategy kind or preset of
    ``backend.gaussians.strategies`` ("default", "absgrad", "instax_paper", ...).

    Only DefaultStrategy-based kinds qualify (the surface-guided one places points by
    world-space neighbours and is not bound-aware).

    >>> make_bound_strategy("instax_paper").refine_every
    1000
    """
    if name in PRESETS:
        kind, settings = PRESETS[name]
    elif name in STRATEGY_KINDS:
        kind, settings = name, {}
    else:
        raise ValueError(
            f"unknown densification strategy {name!r}; choose one of {sorted(STRATEGY_KINDS) + sorted(PRESETS)}"
        )
    cls, kind_defaults = STRATEGY_KINDS[kind]
    if cls is not DefaultStrategy:
        raise ValueError(
            f"strategy {name!r} ({cls.__name__}) has no triangle-bound variant; use 'default', 'absgrad' or an absgrad preset"
        )
    return BoundStrategy(**{**kind_defaults, **settings, **overrides})
