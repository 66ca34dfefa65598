"""Densification: gsplat's DefaultStrategy, its AbsGS variant, and SAS's surface-guided one.

Every strategy here IS a gsplat ``DefaultStrategy`` (same settings, same hooks, same
bookkeeping of gradients, counts and Adam moments). We only add:

- ``SurfaceGuidedStrategy``: changes where new Gaussians are placed (METHOD A.3, SAS Eq. 4-7):
  the offset ``d ~ N(0, s_old)`` (drawn in the Gaussian's frame and rotated to the world,
  as 3DGS's split does) is projected onto the local tangent plane, ``d - (d . n) n``.
  ``n`` is the smallest-eigenvalue eigenvector of the covariance of the k = 6 nearest
  neighbour centres. Both clone and split displace new points this way.
- ``displaced_duplicate`` / ``displaced_split``: gsplat's ``duplicate`` / ``split`` with the
  offsets passed in; they rewrite the Adam moments with gsplat's ``_update_param_with_optimizer``.
- ``PRESETS`` with the papers' settings next to their section numbers, and ``make_strategy``.

Usage (the training-loop shape of ARCHITECTURE.md; ``info`` is the renderer's gsplat-shaped
dict with ``means2d`` (grad, or ``.absgrad`` with absgrad), ``radii`` [C, N, 2] int32,
``width``, ``height``, ``n_cameras``, ``gaussian_ids``)::

    strategy = make_strategy("sas_paper")
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=head_unit(mesh))   # thresholds in head units
    for step in range(steps):
        out, info = render(...)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss.backward()
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values(): opt.step(); opt.zero_grad()

gsplat 1.5.3 quirks worth knowing (tests pin them):

- Refinement runs when ``step > refine_start_iter`` (strictly) and ``step % refine_every == 0``.
- The opacity reset never fires: ``step % reset_every == 0 & step > 0`` parses as
  ``step % reset_every == (0 & step) > 0``, which is always False. ``reset_every`` still
  gates "too big" pruning (only when ``step > reset_every``) and ``pause_refine_after_reset``.
- Scale thresholds (``grow_scale3d``, ``prune_scale3d``) are multiplied by
  ``state["scene_scale"]`` (``initialize_state(scene_scale=...)``; the training loop passes
  ``LoopConfig.scene_scale``). SAS's values are in the paper's head units, like its initial
  scale 0.02 (METHOD A.1): the stylize pipeline sets ``scene_scale`` to the head's height in
  metres (``backend.prior.sample.head_unit``), so the clone/split threshold reads as 0.01 of
  the head, whatever the world units. ``SurfaceGuidedStrategy.normal_radius`` scales the same
  way. Other callers keep ``scene_scale = 1`` (thresholds in metres).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import _update_param_with_optimizer
from gsplat.utils import normalized_quat_to_rotmat
from torch import Tensor

__all__ = [
    "SurfaceGuidedStrategy",
    "PRESETS",
    "STRATEGY_KINDS",
    "make_strategy",
    "knn",
    "pca_normals",
    "shortest_axes",
    "surface_normals",
    "gaussian_offsets",
    "project_to_tangent",
    "displaced_duplicate",
    "displaced_split",
]

Params = dict[str, torch.nn.Parameter] | torch.nn.ParameterDict
Optimizers = dict[str, torch.optim.Optimizer]


# ----------------------------------------------------------------------------- geometry


def knn(points: Tensor, queries: Tensor, k: int, chunk_elems: int = 1 << 25) -> tuple[Tensor, Tensor]:
    """The k nearest ``points`` [N, 3] of each query [M, 3] -> (distances [M, k], indices [M, k]).

    Sorted nearest first. CPU: scipy's cKDTree. Other devices: ``torch.cdist`` in query chunks
    of at most ``chunk_elems`` distances (2^25 floats = 128 MiB), then ``topk``.
    """
    k = min(int(k), len(points))
    if len(queries) == 0 or k == 0:
        empty = queries.new_zeros((len(queries), k))
        return empty, empty.long()
    if points.device.type == "cpu":
        from scipy.spatial import cKDTree

        tree = cKDTree(points.detach().double().numpy())
        dist, idx = tree.query(queries.detach().double().numpy(), k=k)
        dist, idx = np.asarray(dist).reshape(len(queries), k), np.asarray(idx).reshape(len(queries), k)
        return torch.from_numpy(dist).to(points.dtype), torch.from_numpy(idx).long()
    return _knn_cdist(points, queries, k, chunk_elems)


def _knn_cdist(points: Tensor, queries: Tensor, k: int, chunk_elems: int = 1 << 25) -> tuple[Tensor, Tensor]:
    chunk = max(1, chunk_elems // max(len(points), 1))
    dists, idxs = [], []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        _, idx = torch.cdist(q, points).topk(k, dim=1, largest=False)  # [m, k]
        # cdist's matmul form loses digits for small distances; recompute them exactly
        dists.append((points[idx] - q[:, None]).norm(dim=-1))
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def pca_normals(points: Tensor, index: Tensor, k: int = 6, radius: float | None = None) -> tuple[Tensor, Tensor]:
    """PCA normals of ``points[index]`` from their k nearest neighbours (SAS Eq. 7).

    ``Sigma_n = cov(x' - x)`` over the k nearest other centres x' (optionally only those within
    ``radius``); the normal is its smallest-eigenvalue eigenvector (sign arbitrary).

    Returns (normals [M, 3], ok [M] bool). ``ok`` is False where the plane is undefined: fewer
    than 3 neighbours (within ``radius``) or neighbours on one line / one point.
    """
    index = index.reshape(-1)
    queries = points[index]  # [M, 3]
    dist, nbr = knn(points, queries, k + 1)
    dist, nbr = dist[:, 1:].to(points.device), nbr[:, 1:].to(points.device)  # drop the point itself
    weight = torch.ones_like(dist, dtype=torch.float64)
    if radius is not None:
        weight = (dist <= radius).double()
    offsets = (points[nbr] - queries[:, None]).double()  # x' - x, [M, k, 3]
    count = weight.sum(1)  # [M]
    mean = (weight[..., None] * offsets).sum(1) / count.clamp_min(1.0)[:, None]
    centred = (offsets - mean[:, None]) * weight[..., None]
    cov = torch.einsum("mki,mkj->mij", centred, centred) / count.clamp_min(1.0)[:, None, None]
    # ascending eigenvalues. On the CPU: CUDA's batched eigh asked for 101 GiB of workspace
    # for 200k 3x3 matrices (torch 2.11, H100); the CPU does 200k in ~0.2 s.
    evals, evecs = torch.linalg.eigh(cov.cpu())
    evals, evecs = evals.to(points.device), evecs.to(points.device)
    normals = evecs[..., 0].to(points.dtype)  # [M, 3]
    ok = (count >= 3) & (evals[:, 1] > 1e-6 * evals[:, 2]) & (evals[:, 2] > 0)
    return normals, ok


def shortest_axes(quats: Tensor, log_scales: Tensor) -> Tensor:
    """Unit world direction of each Gaussian's shortest axis [M, 3] (its own normal guess)."""
    R = normalized_quat_to_rotmat(F.normalize(quats, dim=-1))  # [M, 3, 3], columns = local axes
    j = log_scales.argmin(dim=-1)  # [M]
    return torch.gather(R, 2, j[:, None, None].expand(-1, 3, 1)).squeeze(-1)


def surface_normals(params: Params, index: Tensor, k: int = 6, radius: float | None = None) -> Tensor:
    """Normals [M, 3] for Gaussians ``index``: PCA of neighbour centres, else the shortest axis."""
    means = params["means"].detach()
    normals, ok = pca_normals(means, index, k=k, radius=radius)
    if not ok.all():
        own = shortest_axes(params["quats"].detach()[index], params["scales"].detach()[index])
        normals = torch.where(ok[:, None], normals, own)
    return normals


def gaussian_offsets(params: Params, index: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Offsets ``d ~ N(0, s_old)`` [n_samples, M, 3], drawn in each Gaussian's frame (3DGS split).

    Draws ``torch.randn(n_samples, M, 3)`` exactly as gsplat's ``split`` does, so under the same
    seed the isotropic and the tangent-projected placements share their random numbers.
    """
    scales = torch.exp(params["scales"].detach()[index])  # [M, 3]
    R = normalized_quat_to_rotmat(F.normalize(params["quats"].detach()[index], dim=-1))  # [M, 3, 3]
    eps = torch.randn(n_samples, len(index), 3, device=scales.device, generator=generator)
    return torch.einsum("nij,nj,bnj->bni", R, scales, eps)


def project_to_tangent(offsets: Tensor, normals: Tensor) -> Tensor:
    """``d - (d . n) n`` for offsets [..., M, 3] and unit normals [M, 3] (Eq. 6, METHOD A.3 reading)."""
    return offsets - (offsets * normals).sum(-1, keepdim=True) * normals


# ----------------------------------------------------------------------------- parameter ops


@torch.no_grad()
def displaced_duplicate(
    params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor, offsets: Tensor
) -> None:
    """gsplat's ``duplicate`` with the copies moved by ``offsets`` [M, 3] (M = mask.sum()).

    Copies are appended after the existing Gaussians, in index order; their Adam moments are
    zero; running state tensors (grad2d, count, radii) are copied from the originals.
    """
    sel = torch.where(mask)[0]

    def param_fn(name: str, p: Tensor) -> Tensor:
        new = p[sel] + offsets.to(p) if name == "means" else p[sel]
        return torch.nn.Parameter(torch.cat([p, new]), requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        return torch.cat([v, v.new_zeros((len(sel), *v.shape[1:]))])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
    for key, v in state.items():
        if isinstance(v, Tensor):
            state[key] = torch.cat((v, v[sel]))


@torch.no_grad()
def displaced_split(
    params: Params,
    optimizers: Optimizers,
    state: dict[str, Any],
    mask: Tensor,
    offsets: Tensor,
    revised_opacity: bool = False,
) -> None:
    """gsplat's ``split`` with the two children placed at ``parent + offsets`` ([2, M, 3]).

    As in gsplat: parents are removed, the 2M children are appended (all first children,
    then all second children), scales shrink by 1.6, Adam moments of children are zero.
    """
    sel = torch.where(mask)[0]
    rest = torch.where(~mask)[0]
    scales = torch.exp(params["scales"][sel])

    def param_fn(name: str, p: Tensor) -> Tensor:
        repeats = [2] + [1] * (p.dim() - 1)
        if name == "means":
            children = (p[sel] + offsets.to(p)).reshape(-1, 3)  # [2M, 3]
        elif name == "scales":
            children = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            children = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[sel]))).repeat(repeats)
        else:
            children = p[sel].repeat(repeats)
        return torch.nn.Parameter(torch.cat([p[rest], children]), requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        return torch.cat([v[rest], v.new_zeros((2 * len(sel), *v.shape[1:]))])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
    for key, v in state.items():
        if isinstance(v, Tensor):
            repeats = [2] + [1] * (v.dim() - 1)
            state[key] = torch.cat((v[rest], v[sel].repeat(repeats)))


# ----------------------------------------------------------------------------- strategy


@dataclass
class SurfaceGuidedStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with new Gaussians placed in the local tangent plane.

    SAS (METHOD A.3, Eq. 4-7): ``x_new = x_old + (d - (d . n) n)``, ``d ~ N(0, s_old)``.
    Selection (the gradient E of Eq. 4 against ``grow_grad2d`` = beta_E), pruning, state and
    Adam bookkeeping are gsplat's. Differences from DefaultStrategy, all in ``_grow_gs``:

    - clone: the copy is displaced by one tangent offset (3DGS leaves it on the original);
    - split: both children are sampled in the tangent plane (3DGS: anywhere in N(0, s_old));
    - ``paper_clone_split_order=True`` flips the scale rule to the paper's printed order
      (clone when max scale > ``grow_scale3d``, split when smaller). Default: 3DGS's order
      (split large, clone small), as METHOD A.3 adopts.

    Args (besides DefaultStrategy's):
        knn_k: neighbours for the PCA normal (Eq. 7: 6).
        normal_radius: only neighbours within this distance count (paper, Eq. 7: 0.01), in
          the units of ``grow_scale3d`` (times ``state["scene_scale"]``); ``None`` (default) =
          off. With fewer than 3 neighbours inside it, the Gaussian's own shortest axis is the
          normal.
        paper_clone_split_order: see above.
    """

    knn_k: int = 6
    normal_radius: float | None = None
    paper_clone_split_order: bool = False

    @torch.no_grad()
    def _grow_gs(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grads > self.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        if self.paper_clone_split_order:  # A.3 as printed: clone large, split small
            is_dupli, is_split = is_grad_high & ~is_small, is_grad_high & is_small
        else:  # 3DGS: clone small, split large
            is_dupli, is_split = is_grad_high & is_small, is_grad_high & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
            is_dupli &= ~is_split
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli + n_split == 0:
            return 0, 0

        # normals from the centres before any growth; one kNN for all grown Gaussians
        grown = torch.where(is_dupli | is_split)[0]
        normals = torch.zeros_like(params["means"])
        radius = None if self.normal_radius is None else self.normal_radius * state["scene_scale"]
        normals[grown] = surface_normals(params, grown, k=self.knn_k, radius=radius)
        dupli_idx, split_idx = torch.where(is_dupli)[0], torch.where(is_split)[0]
        # split offsets are drawn first, as gsplat draws them, so seeds line up with DefaultStrategy
        split_off = project_to_tangent(gaussian_offsets(params, split_idx, 2), normals[split_idx])
        dupli_off = project_to_tangent(gaussian_offsets(params, dupli_idx, 1)[0], normals[dupli_idx])

        if n_dupli > 0:
            displaced_duplicate(params, optimizers, state, is_dupli, dupli_off)
        if n_split > 0:
            # copies appended by the clone are not split
            is_split = torch.cat([is_split, is_split.new_zeros(n_dupli)])
            displaced_split(params, optimizers, state, is_split, split_off, self.revised_opacity)
        return n_dupli, n_split


# ----------------------------------------------------------------------------- presets

STRATEGY_KINDS: dict[str, tuple[type, dict[str, Any]]] = {
    # 3DGS clone / split / prune, gsplat's defaults
    "default": (DefaultStrategy, {}),
    # AbsGS: |dL/dmu2D| accumulated per pixel (the renderer must set means2d.absgrad);
    # gsplat's suggested threshold for absgrad
    "absgrad": (DefaultStrategy, {"absgrad": True, "grow_grad2d": 0.0008}),
    # SAS surface-guided placement (METHOD A.3)
    "surface": (SurfaceGuidedStrategy, {}),
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # SAS (METHOD A.2, A.3). Lengths are in head units, as the paper's (its SMPL head; METHOD
    # A.1's reading: a fraction of the chin-to-crown height): pass scene_scale = the head's
    # height in metres to initialize_state (LoopConfig.scene_scale; stylize does).
    "sas_paper": (
        "surface",
        {
            "refine_every": 100,  # A.2 (SAS §IV.A.2): densify every 100 steps
            "grow_grad2d": 0.0002,  # A.2 (SAS §IV.A.2): beta_E, threshold on E (Eq. 4); pixels, no scene scale
            # A.3 (SAS §IV.A.2, used by Eq. 5-6): clone/split scale threshold 0.01 head units,
            # the units of the initial scale 0.02 (§IV.A.1): x scene_scale = 2.3 mm on a 0.23 m head
            "grow_scale3d": 0.01,
            "knn_k": 6,  # A.3 / Eq. 7: 6 nearest neighbours
            "normal_radius": None,  # A.3 / Eq. 7: the paper's 0.01 (head units) radius is an option, off
            "paper_clone_split_order": False,  # A.3: we follow 3DGS (split large, clone small)
            "refine_start_iter": 500,  # not in the paper: gsplat / 3DGS default
            "refine_stop_iter": 3000,  # A.2: 3000 iterations, densify throughout
            "reset_every": 3000,  # not in the paper: no reset inside the 3000-step run
        },
    ),
    # Instax3D construction (METHOD B.2)
    "instax_paper": (
        "absgrad",
        {
            "refine_every": 1000,  # B.2 (Eq. 7-8): densify every 1000 steps
            "grow_grad2d": 0.0002,  # B.2: paper's threshold (gsplat suggests ~0.0008 with absgrad)
            "refine_start_iter": 500,  # not in the paper: gsplat / 3DGS default
            "refine_stop_iter": 15_000,  # not in the paper: 3DGS default (run is 20,000, B.2)
            "reset_every": 3000,  # not in the paper: 3DGS default (never fires in gsplat 1.5.3)
        },
    ),
    # ours: the weight-free photo pipeline (METHOD C), a short CPU fit; provisional
    "photo": (
        "absgrad",
        {
            "refine_every": 100,
            "grow_grad2d": 0.0008,  # gsplat's absgrad suggestion
            "refine_start_iter": 100,
            "refine_stop_iter": 1000,
            "reset_every": 100_000,  # no opacity reset or too-big pruning in a short fit
        },
    ),
}


def make_strategy(name: str, **overrides: Any) -> DefaultStrategy:
    """Build a strategy by kind ("default", "absgrad", "surface") or preset name (``PRESETS``).

    ``overrides`` are constructor arguments of the class (gsplat's DefaultStrategy settings,
    plus ``knn_k`` / ``normal_radius`` / ``paper_clone_split_order`` for "surface");
    an unknown argument raises TypeError.

    >>> make_strategy("sas_paper").refine_every
    100
    >>> make_strategy("absgrad", grow_grad2d=0.0002).absgrad
    True
    """
    if name in PRESETS:
        kind, settings = PRESETS[name]
    elif name in STRATEGY_KINDS:
        kind, settings = name, {}
    else:
        known = sorted(STRATEGY_KINDS) + sorted(PRESETS)
        raise ValueError(f"unknown densification strategy {name!r}; choose one of {known}")
    cls, kind_defaults = STRATEGY_KINDS[kind]
    return cls(**{**kind_defaults, **settings, **overrides})
