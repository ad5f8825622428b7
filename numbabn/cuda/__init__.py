"""The CUDA engine: Numba CUDA kernels behind the CPU engine's interface.

Importing it needs Numba's CUDA support but no GPU: kernels compile on first use.
"""
from .engine import *  # noqa: F401,F403
from .engine import __all__  # noqa: F401
