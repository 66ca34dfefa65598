"""Message fields <-> JSON and buffer frames: field schemas, type checks, zero-copy arrays.

A descriptor names the field a buffer belongs to and says how to read it, for example
``{"field": "splats", "key": "means", "dtype": "float32", "shape": [100000, 3]}``. Buffers
are never pickled: a receiver checks the dtype against a whitelist, checks that
``prod(shape) * itemsize`` equals the frame length, and views the frame with
``np.frombuffer`` (zero-copy; the array is read-only and keeps the frame alive).
"""

from __future__ import annotations

import math
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np
import zmq

from ..splat_arrays import SplatArrays
from .constants import BYTES_DTYPE, DTYPES, MAX_NDIM, ProtocolError
from .messages import Message


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    hint: Any
    kind: str  # "json" | "splats" | "bytes" | "array"
    optional: bool
    required: bool  # no default


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        module = sys.modules.get(cls.__module__)
        # names resolve in the protocol's own modules, then in the message's (its fields' types)
        namespace = {**vars(sys.modules[Message.__module__]), **globals(), **(vars(module) if module else {})}
        hints = typing.get_type_hints(cls, globalns=namespace)
        out = []
        for f in fields(typing.cast(Any, cls)):  # every message class is a dataclass
            hint = hints[f.name]
            args = _union_args(hint)
            optional = type(None) in args
            core = [a for a in args if a is not type(None)]
            kind = "json"
            if core == [SplatArrays]:
                kind = "splats"
            elif core == [bytes]:
                kind = "bytes"
            elif core == [np.ndarray]:
                kind = "array"
            required = f.default is MISSING and f.default_factory is MISSING
            out.append(_FieldSpec(f.name, hint, kind, optional, required))
        specs = _SPECS[cls] = tuple(out)
    return specs


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _conforms(value: Any, hint: Any) -> bool:
    """Does a decoded JSON value fit a (simple) type hint?"""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        if not isinstance(value, list):
            return False
        args = typing.get_args(hint)
        return not args or all(_conforms(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    raise TypeError(f"protocol fields cannot use the type {hint!r}")


# ------------------------------------------------------------------ array buffers
def pack_splats(
    splats: SplatArrays, dtype: str | np.dtype | None = None, field_name: str = "splats"
) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """SplatArrays -> (descriptors, buffers), one buffer per array, zero-copy where the
    arrays are already contiguous little-endian (``dtype="float16"`` converts, for previews)."""
    if dtype is not None:
        splats = splats.astype(dtype)
    descriptors, buffers = [], []
    for key, arr in splats.as_dict().items():
        desc, buf = _pack_array(arr)
        desc.update(field=field_name, key=key)
        descriptors.append(desc)
        buffers.append(buf)
    return descriptors, buffers


def unpack_splats(descriptors: Sequence[dict[str, Any]], buffers: Sequence[Any]) -> SplatArrays:
    """The inverse of :func:`pack_splats` (arrays are read-only views of ``buffers``)."""
    arrays = {}
    for desc, buf in zip(descriptors, buffers, strict=True):
        arrays[desc["key"]] = _unpack_array(desc, buf)
    return SplatArrays.from_dict(arrays)


def _pack_array(arr: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in DTYPES:
        raise ProtocolError("invalid_content", f"dtype {arr.dtype} cannot be sent (allowed: {', '.join(DTYPES)})")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])  # no copy when already C-contiguous LE
    return {"dtype": name, "shape": list(arr.shape)}, arr.reshape(-1).view(np.uint8).data


def _unpack_array(desc: dict[str, Any], buf: Any) -> np.ndarray:
    dtype = DTYPES[desc["dtype"]]
    shape = tuple(desc["shape"])
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _buffer_view(frame: Any) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def _check_descriptor(desc: Any, buf: Any, specs: dict[str, _FieldSpec]) -> str:
    """Validate one buffer descriptor against its frame; returns the field name."""
    if not isinstance(desc, dict):
        raise ProtocolError("buffer_mismatch", "a buffer descriptor is not a JSON object")
    name = desc.get("field")
    spec = specs.get(name) if isinstance(name, str) else None
    if spec is None or spec.kind == "json":
        raise ProtocolError("buffer_mismatch", f"buffer for unknown field {str(name)[:64]!r}")
    dtype, shape = desc.get("dtype"), desc.get("shape")
    if spec.kind == "bytes":
        if dtype != BYTES_DTYPE:
            raise ProtocolError("buffer_mismatch", f"field {name!r} must have dtype {BYTES_DTYPE!r}")
        itemsize = 1
    elif dtype not in DTYPES:
        raise ProtocolError(
            "buffer_mismatch", f"dtype {str(dtype)[:32]!r} is not allowed (allowed: {', '.join(DTYPES)})"
        )
    else:
        itemsize = DTYPES[dtype].itemsize
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or (spec.kind == "bytes" and len(shape) != 1)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError("buffer_mismatch", f"bad shape {str(shape)[:64]} for field {name!r}")
    expected = math.prod(shape) * itemsize
    got = _buffer_view(buf).nbytes
    if expected != got:
        raise ProtocolError(
            "buffer_mismatch", f"field {name!r}: shape {shape} x {dtype} is {expected} bytes, the frame has {got}"
        )
    return str(name)
