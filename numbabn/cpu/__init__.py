"""The CPU engine: Numba kernels behind a small array-in, array-out interface."""
from .engine import affine, grad_input, grad_sums, moments, moving_average

__all__ = ["moments", "affine", "grad_sums", "grad_input", "moving_average"]
