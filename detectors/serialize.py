"""The one msgpack serialiser of detector state (never pickle).

A state is a dict with string keys whose values are only dicts, lists, tuples,
numbers, strings, booleans, None and numpy arrays (CONVENTIONS.md, Snapshots).
numpy arrays travel as ``{"__nd__": True, "dtype": str, "shape": list,
"data": bytes}``; object arrays are refused. numpy scalars become Python scalars.

Source: msgpack (https://msgpack.org), numpy ``ndarray.tobytes``.

>>> import numpy as np
>>> s = {"w": np.arange(3, dtype=np.float32), "n": 2, "name": "hst"}
>>> out = loads(dumps(s))
>>> out["w"].tolist(), out["n"], out["name"]
([0.0, 1.0, 2.0], 2, 'hst')
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_ND = "__nd__"


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be serialised")
        arr = np.ascontiguousarray(obj)
        return {_ND: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot serialise object of type {type(obj).__name__}")


def _hook(obj: dict) -> Any:
    if obj.get(_ND) is True:
        dtype = np.dtype(obj["dtype"])
        if dtype.hasobject:
            raise ValueError("object arrays are refused")
        return np.frombuffer(obj["data"], dtype=dtype).reshape(obj["shape"]).copy()
    return obj


def dumps(state: dict) -> bytes:
    """Serialise a state dict to msgpack bytes.

    Raises:
        TypeError: on a value type outside the allowed set.
    """
    return msgpack.packb(state, default=_default, use_bin_type=True, strict_types=False)


def loads(data: bytes) -> dict:
    """Deserialise bytes produced by :func:`dumps` (arrays restored, writable).

    Raises:
        ValueError: on malformed bytes or a refused dtype.
    """
    try:
        return msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid state bytes: {exc}") from exc
