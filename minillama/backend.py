"""The array-module abstraction: which array library a value lives in.

Every component in minillama is written against one namespace, called ``xp``
by convention, that follows the Python Array API standard. The same function
then runs on

* ``"numpy"``  - NumPy on the CPU (through ``array_api_compat.numpy``),
* ``"cupy"``   - CuPy on an NVIDIA GPU (through ``array_api_compat.cupy``),
* ``"strict"`` - ``array_api_strict``, a CPU stand-in that refuses everything
  outside the standard (NumPy scalars, ``np.`` functions, flat indexing, ...).
  CuPy is just as unforgiving about mixing in NumPy, so running the test suite
  under ``"strict"`` catches a CuPy break without a GPU.

A component never names a library: it asks ``xp = namespace_of(x)`` for the
namespace of the arrays it was given. Only the edges of the library (loading
weights from disk, returning results to the user) move data between the host
(NumPy) and the backend, with :func:`to_backend` and :func:`to_numpy`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "strict")

_MODULES = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "strict": "array_api_strict",
}


def get_namespace(backend: str) -> ModuleType:
    """The ``xp`` namespace for a backend name ("numpy", "cupy" or "strict")."""
    if backend not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    try:
        return importlib.import_module(_MODULES[backend])
    except ImportError as error:
        hint = " (pip install 'minillama[gpu]')" if backend == "cupy" else ""
        raise ImportError(f"backend {backend!r} needs a package that is not installed{hint}: {error}") from error


_NAMESPACE_BY_TYPE: dict[type, ModuleType] = {}


def namespace_of(*arrays) -> ModuleType:
    """The ``xp`` namespace of the arrays passed in (all must share one library).

    Every component calls this, so the answer for one array type is remembered: the
    general lookup costs microseconds, which add up over a decoding step's few hundred calls.
    """
    kinds = {type(a) for a in arrays if a is not None}
    if len(kinds) == 1:
        kind = kinds.pop()
        xp = _NAMESPACE_BY_TYPE.get(kind)
        if xp is None:
            xp = _NAMESPACE_BY_TYPE[kind] = array_api_compat.array_namespace(*arrays)
        return xp
    return array_api_compat.array_namespace(*arrays)


def backend_name(xp: ModuleType) -> str:
    """The backend name of a namespace, the inverse of :func:`get_namespace`."""
    for name, module in _MODULES.items():
        if xp.__name__ == module:
            return name
    raise ValueError(f"unknown array namespace {xp.__name__}")


def get_dtype(xp: ModuleType, name: str):
    """The dtype object called ``name`` ("float32", "float16", ...) in ``xp``."""
    dtype = getattr(xp, name, None)
    if dtype is None:
        raise ValueError(f"dtype {name!r} is not available on the {backend_name(xp)!r} backend")
    return dtype


def to_backend(host_array: np.ndarray, xp: ModuleType):
    """Move a host (NumPy) array onto the backend. No copy for NumPy itself."""
    return xp.asarray(host_array)


def to_numpy(array) -> np.ndarray:
    """Bring a backend array back to the host as a NumPy array."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np.asarray(array)
    if array_api_compat.is_cupy_array(array):
        return array.get()
    return np.from_dlpack(array)


def index_add(xp: ModuleType, shape: tuple, ids, values):
    """A new array of ``shape``, zero but for ``values[k]`` added into row ``ids[k]`` (repeats add up).

    ids: (n,) integers in [0, shape[0]); values: (n, *shape[1:]). The Array API has no
    scatter-add, so NumPy sorts the ids and sums each run of equal ones (``np.add.at``, the
    obvious call, is about ten times slower), CuPy uses ``cupyx.scatter_add``, and any other
    backend a portable one-hot product, a block of rows at a time.
    """
    name = xp.__name__
    if name == _MODULES["numpy"]:
        return _index_add_sorted(shape, np.asarray(ids), np.asarray(values))
    if name == _MODULES["cupy"]:
        import cupyx
        out = xp.zeros(shape, dtype=values.dtype)
        cupyx.scatter_add(out, ids, values)
        return out
    return _index_add_one_hot(xp, shape, ids, values)


def _index_add_sorted(shape: tuple, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``index_add`` in NumPy: sort the ids (stably), then one ``np.add.reduceat`` per run of equal ids."""
    out = np.zeros(shape, dtype=values.dtype)
    if ids.shape[0] == 0:
        return out
    if ids.min() < 0:  # negative ids count from the end, as in np.add.at: -1 and shape[0] - 1 are one row
        ids = np.where(ids < 0, ids + shape[0], ids)
    order = np.argsort(ids, kind="stable")  # repeats keep their order, so each row sums in order of k
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]]))  # first k of each run
    out[sorted_ids[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


def _index_add_one_hot(xp: ModuleType, shape: tuple, ids, values):
    """``index_add`` in standard operations only: row r is one_hot(ids == r) @ values."""
    n = ids.shape[0]
    flat = xp.reshape(values, (n, -1))  # (n, row_size)
    ids_row = xp.reshape(ids, (1, n))
    block = max(1, 2**22 // max(n, 1))  # rows per block: keeps the (block, n) one-hot matrix small
    parts = []
    for start in range(0, shape[0], block):
        rows = xp.arange(start, min(start + block, shape[0]), dtype=ids.dtype)  # (rows,)
        one_hot = xp.astype(xp.reshape(rows, (-1, 1)) == ids_row, values.dtype)  # (rows, n)
        parts.append(one_hot @ flat)  # (rows, row_size)
    if not parts:
        return xp.zeros(shape, dtype=values.dtype)
    return xp.reshape(xp.concat(parts, axis=0), shape)
