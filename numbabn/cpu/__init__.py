"""The CPU engine: Numba kernels behind a small array-in, array-out interface."""
from .engine import *  # noqa: F401,F403
from .engine import __all__  # noqa: F401
