"""One table of dtypes: for each storage dtype, how the kernels compute with it.

=========  ==========  ========  =========  =======
storage    arithmetic  CPU view  CUDA view  result
=========  ==========  ========  =========  =======
float16    float32     uint16    float16    float16
bfloat16   float32     int16     float32    bfloat16
float32    float32     float32   float32    float32
float64    float64     float64   float64    float64
other      float32     float32   float32    float32
=========  ==========  ========  =========  =======

* **arithmetic**: what the kernels compute in (accumulators are float64 whatever it is); also
  the functional API's compute dtype.
* **CPU view**: the dtype the CPU kernels see the stored bits as. Numba's CPU target has no
  16-bit float type, so float16 and bfloat16 arrive as integer views and are widened and
  narrowed exactly in the kernels (``numbabn/cpu/kernels.py``).
* **CUDA view**: what the CUDA kernels read. Numba's CUDA target has float16 but no bfloat16,
  so a bfloat16 input is widened to float32 in one pass first, and results narrowed after.
* **result**: the dtype of the functional API's outputs and input gradients for input of that
  dtype. (The layer returns its compute dtype, as Keras does, and its ``dx`` has the input's
  floating dtype: the same as this column for a float32 layer.)

Other dtypes (integers, booleans) are converted to float32 before the kernels see them; a
floating dtype of the other byte order follows its native row.
"""
from typing import NamedTuple

import numpy as np


class Rule(NamedTuple):
    """One row of the table."""
    arithmetic: np.dtype
    cpu_view: np.dtype
    cuda_view: np.dtype
    result: np.dtype


_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_OTHER = Rule(_F32, _F32, _F32, _F32)
_RULES = {
    _F16: Rule(_F32, np.dtype(np.uint16), _F16, _F16),
    _F32: Rule(_F32, _F32, _F32, _F32),
    _F64: Rule(_F64, _F64, _F64, _F64),
}


def is_bfloat16(dtype):
    """ml_dtypes' bfloat16 (an extension dtype of kind 'V'), told apart without importing it."""
    return dtype.kind == "V" and dtype.name == "bfloat16"    # .name is slow: kind first


def rule(dtype):
    """The :class:`Rule` of ``dtype`` (a ``numpy.dtype``)."""
    found = _RULES.get(dtype)
    if found is not None:
        return found
    if is_bfloat16(dtype):
        found = _RULES[dtype] = Rule(_F32, np.dtype(np.int16), _F32, dtype)
        return found
    if dtype.kind == "f" and not dtype.isnative:
        return rule(dtype.newbyteorder("="))
    return _OTHER


def arithmetic(dtype):
    """The kernels' arithmetic for data of ``dtype``."""
    return rule(dtype).arithmetic


def result(dtype):
    """The functional API's output dtype for input of ``dtype``."""
    return rule(dtype).result


def is_half(dtype):
    """float16 or bfloat16 (of either byte order): 16-bit storage, float32 arithmetic."""
    return rule(dtype).result.itemsize == 2
