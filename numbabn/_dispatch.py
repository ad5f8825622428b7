"""Pick the engine that runs a call from the type of its input array.

NumPy arrays run on the CPU engine. Anything else that exposes ``__cuda_array_interface__``
(CuPy arrays, Numba device arrays, PyTorch CUDA tensors) belongs to the CUDA engine. The engines
share one interface (see ``numbabn/cpu/engine.py``), so nothing above this module branches on the
device.
"""
import numpy as np

from . import cpu as _cpu

CPU = "cpu"
CUDA = "cuda"


def device_of(x):
    """``"cpu"`` for NumPy arrays, ``"cuda"`` for CUDA arrays, ``None`` for anything else."""
    if isinstance(x, np.ndarray):
        return CPU
    if getattr(x, "__cuda_ndarray__", False):
        return CUDA
    try:
        # Some objects (a torch CUDA tensor that requires grad) raise here instead of answering.
        if getattr(x, "__cuda_array_interface__", None) is not None:
            return CUDA
    except Exception:
        return CUDA
    return None


def engine(device):
    """The engine module for ``device``."""
    if device == CPU:
        return _cpu
    raise NotImplementedError(
        "the CUDA engine is not available in this version of numbabn; "
        "pass NumPy arrays or convert with cupy.asnumpy()")
