"""Every CUDA kernel once with the GPU's tiles and grids, on Numba's simulator.

Run in a fresh interpreter (tests/test_cuda.py) with NUMBA_ENABLE_CUDASIM=1 and
NUMBABN_CUDA_TILES=production: the launch constants are read at import. The cases are the
self-check's (CUDA engine against the CPU engine, three training steps and an inference call),
on inputs just large enough to cross a 32-feature tile and a 256-thread plane block; plus a
masked call and a feature of infinities (the NaN-mean kernel). Prints one JSON line.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.setswitchinterval(1e-4)
import simulator_fix  # noqa: E402

simulator_fix.install()

from numba import cuda  # noqa: E402

from numbabn import functional as F  # noqa: E402
from numbabn.cuda import kernels as K  # noqa: E402
from numbabn.tools import selftest  # noqa: E402
from numbabn.tools.tolerances import tolerance  # noqa: E402

assert K.SIMULATOR and not K.SMALL_TILES and (K.TX, K.TY, K.T) == (32, 8, 256)

CASES = (
    selftest.Check("NC", (12, 40)),                                  # 2 feature tiles
    selftest.Check("NC", (12, 40), "float16"),
    selftest.Check("NCHW", (2, 2, 300), kwargs={"axis": 1}),         # planes over 256 threads
    selftest.Check("ghost", (8, 40), kwargs={"virtual_batch_size": 2}),
    selftest.Check("renorm", (12, 33), kwargs=selftest.RENORM),
    selftest.Check("axis [1, 3]", (2, 2, 3, 2), kwargs={"axis": [1, 3]}),
)
results = [selftest.run_check(check) for check in CASES]
failures = [r.line() for r in results if not r.ok]

rtol, atol = tolerance(np.float32)
rng = np.random.default_rng(0)
x = rng.normal(size=(6, 5, 40)).astype(np.float32)
mask = rng.random((6, 5)) > 0.3
x[:, :, 3] = np.inf                                 # an infinite mean: the NaN-mean kernel
with np.errstate(invalid="ignore"):
    want, want_cache = F.batch_norm_train(x, mask=mask)
    got, got_cache = F.batch_norm_train(cuda.to_device(x), mask=cuda.to_device(mask))
    ok = np.allclose(got.copy_to_host(), want, rtol=rtol, atol=atol, equal_nan=True)
    ok &= np.allclose(got_cache.mean.copy_to_host(), want_cache.mean, equal_nan=True)
if not ok:
    failures.append("masked rows with an infinite feature differ")
planes = rng.normal(size=(2, 3, 300)).astype(np.float32)
keep = rng.random((2, 300)) > 0.3
want, want_cache = F.batch_norm_train(planes, axis=1, mask=keep)
got, got_cache = F.batch_norm_train(cuda.to_device(planes), axis=1, mask=cuda.to_device(keep))
dy = rng.normal(size=planes.shape).astype(np.float32)
want_dx = F.batch_norm_backward(dy, want_cache)[0]
got_dx = F.batch_norm_backward(cuda.to_device(dy), got_cache)[0].copy_to_host()
if not (np.allclose(got.copy_to_host(), want, rtol=rtol, atol=atol)
        and np.allclose(got_dx, want_dx, rtol=rtol, atol=atol)):
    failures.append("masked planes differ")
print(json.dumps({"cases": len(CASES) + 2, "failures": failures}))
