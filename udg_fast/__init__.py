"""udg_fast: fused kernels and models for User-Dependent Gating (UDG) CTR recommendation.

    >>> import udg_fast
    >>> udg_fast.backends()          # which kernels are built and usable here
    >>> layer = udg_fast.GatedLinear(400, 200)
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from udg_fast import _backend

try:
    from udg_fast import _C  # noqa: F401

    _C_ERROR = None
except ImportError as _e:  # the package still works, on the reference backend
    _C = None
    _C_ERROR = f"{type(_e).__name__}: {_e}"
_backend._set_extension(_C, _C_ERROR)

from udg_fast._backend import BACKENDS, backends, format_backends, use_backend  # noqa: E402
from udg_fast import ops  # noqa: E402
from udg_fast.modules import AUGRU, GatedLinear  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """What the extension was compiled with: CUDA on/off, arch list, torch version, flags.

    Without a compiled extension: {"extension": False, "error": why}.
    """
    import torch as _torch

    if _C is None:
        return {"extension": False, "error": _C_ERROR, "runtime_torch_version": _torch.__version__}
    info = dict(_C.build_info())
    info["extension"] = True
    info["runtime_torch_version"] = _torch.__version__
    return info


__all__ = ["AUGRU", "BACKENDS", "GatedLinear", "backends", "build_info", "format_backends", "ops", "use_backend"]
