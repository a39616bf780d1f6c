"""Compatibility fixes applied when nerfstudio loads the plugin.

torch >= 2.6 loads checkpoints with ``weights_only=True`` by default. nerfstudio 1.1.5's own checkpoints hold numpy
scalars (its LR-scheduler lambdas return ``np.float64``, which end up in the optimizer and scheduler state), so
``ns-eval``, ``ns-viewer``, ``ns-export`` and ``--load-dir`` fail with "Unsupported global: numpy._core.multiarray.scalar"
(nerfstudio issue #3683). Allow-listing the numpy scalar and dtype types restores loading without falling back to
full unpickling: they are plain data, not code.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_safe_globals() -> list:
    """The numpy types found in nerfstudio checkpoints (numpy 1 and numpy 2 module layouts)."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    types = [multiarray.scalar, np.dtype]
    # numpy >= 1.25 gives each dtype its own class (np.dtypes.Float64DType, ...), which pickles by name.
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        types += [getattr(dtypes_mod, n) for n in dir(dtypes_mod) if n.endswith("DType")]
    else:  # pragma: no cover - numpy < 1.25
        types.append(type(np.dtype(np.float64)))
    return types


def allow_numpy_in_checkpoints() -> bool:
    """Register :func:`numpy_safe_globals` with ``torch.serialization``; returns False on torch without the API."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: weights_only loading is not the default, nothing to fix
        return False
    add(numpy_safe_globals())
    return True
