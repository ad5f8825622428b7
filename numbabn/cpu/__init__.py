"""The CPU engine: Numba kernels behind a small array-in, array-out interface."""
from .engine import backward, moments, moving_averages, normalize

__all__ = ["moments", "normalize", "backward", "moving_averages"]
