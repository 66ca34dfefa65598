"""Gaussian splats as plain numpy arrays: the one data type that crosses every boundary.

The backend hands these to the wire, the PLY writer and the Blender add-on. Fields are
the *raw* (pre-activation) parameters, exactly as the INRIA 3DGS PLY stores them, so no
information is lost in transit:

    means          [N, 3]  float32  centres, head frame (metres, +Z up, face toward -Y)
    quats          [N, 4]  float32  rotation, wxyz
    log_scales     [N, 3]  float32  natural log of the per-axis standard deviation (metres)
    opacity_logits [N]     float32  pre-sigmoid opacity
    sh0            [N, 3]  float32  SH DC coefficient per channel; rgb = 0.5 + C0 * sh0
    shN            [N, K, 3] float32 higher SH bands (K = 3, 8 or 15), or None

Float16 is allowed for transport (previews); ``astype`` converts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from .sh import DEGREE_OF_K

SH_C0 = 0.28209479177387814  # Y_0^0; rgb = 0.5 + SH_C0 * f_dc

_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) - 0.5) / SH_C0


def sh0_to_rgb(sh0: np.ndarray) -> np.ndarray:
    return 0.5 + SH_C0 * np.asarray(sh0, dtype=np.float32)


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))).astype(np.float32)


class SplatArrayError(ValueError):
    """Arrays that do not describe a valid splat cloud (shape, dtype or non-finite values)."""


@dataclass
class SplatArrays:
    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] wxyz
    log_scales: np.ndarray  # [N, 3]
    opacity_logits: np.ndarray  # [N]
    sh0: np.ndarray  # [N, 3]
    shN: np.ndarray | None = None  # [N, K, 3]

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
            "sh0": (n, 3),
        }
        for name, shape in expect.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise SplatArrayError(f"{name} must be a numpy array, got {type(arr).__name__}")
            if arr.shape != shape:
                raise SplatArrayError(f"{name} has shape {arr.shape}, expected {shape}")
            if arr.dtype not in (np.float32, np.float16):
                raise SplatArrayError(f"{name} has dtype {arr.dtype}, expected float32 or float16")
        if self.shN is not None:
            if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
                raise SplatArrayError(f"shN has shape {self.shN.shape}, expected ({n}, K, 3)")
            if self.shN.shape[1] not in (0, 3, 8, 15):
                raise SplatArrayError(f"shN has {self.shN.shape[1]} coefficients, expected 3, 8 or 15")

    def check_finite(self) -> None:
        for name in _FIELDS:
            arr = getattr(self, name)
            if arr is not None and not np.all(np.isfinite(arr)):
                raise SplatArrayError(f"{name} holds NaN or Inf values")

    # ------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return DEGREE_OF_K[0 if self.shN is None else self.shN.shape[1]]

    def rgb(self) -> np.ndarray:  # [N, 3] in [0, 1]
        rgb: np.ndarray = np.clip(sh0_to_rgb(self.sh0), 0.0, 1.0)
        return rgb

    def opacity(self) -> np.ndarray:  # [N]
        return sigmoid(self.opacity_logits)

    def scales(self) -> np.ndarray:  # [N, 3] metres
        scales: np.ndarray = np.exp(self.log_scales.astype(np.float32))
        return scales

    def unit_quats(self) -> np.ndarray:  # [N, 4] wxyz
        q = self.quats.astype(np.float32)
        unit: np.ndarray = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return unit

    # ------------------------------------------------------------ conversions
    def as_dict(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in _FIELDS}
        if out["shN"] is None:
            del out["shN"]
        return out

    @classmethod
    def from_dict(cls, arrays: dict[str, np.ndarray]) -> SplatArrays:
        missing = [k for k in _FIELDS[:-1] if k not in arrays]
        if missing:
            raise SplatArrayError(f"missing splat arrays: {', '.join(missing)}")
        return cls(**{k: arrays[k] for k in _FIELDS if k in arrays})

    def astype(self, dtype: npt.DTypeLike) -> SplatArrays:
        dtype = np.dtype(dtype)
        arrays: dict[str, Any] = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).astype(dtype))
            for f in fields(self)
        }
        return SplatArrays(**arrays)

    def subset(self, index: np.ndarray) -> SplatArrays:
        arrays: dict[str, Any] = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index]) for f in fields(self)
        }
        return SplatArrays(**arrays)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.as_dict().values())

    @classmethod
    def empty(cls) -> SplatArrays:
        z = np.zeros
        return cls(
            z((0, 3), np.float32),
            z((0, 4), np.float32),
            z((0, 3), np.float32),
            z((0,), np.float32),
            z((0, 3), np.float32),
        )
