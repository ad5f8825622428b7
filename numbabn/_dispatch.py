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
    """The engine module for ``device``; the CUDA engine is imported on first use."""
    if device == CPU:
        return _cpu
    from . import cuda as _cuda
    return _cuda


def check_same_device(device, arrays):
    """``TypeError`` unless every ``(name, array)`` in ``arrays`` lives on ``device``.

    Copies between host and device are the caller's decision: a silent one would hide a
    transfer (and, from the device, a synchronization) inside every call.
    """
    for name, a in arrays:
        other = device_of(a) or CPU
        if other != device:
            where = {CPU: "host (NumPy)", CUDA: "CUDA device"}
            raise TypeError(
                f"`{name}` must be on the same device as the input ({where[device]}); copy it "
                f"there first. Received: {name} on the {where[other]}")
