"""Compile every CUDA kernel to PTX for a given compute capability, without a GPU.

The simulator runs kernels as Python, so it never sees what only the real compiler checks:
typing of every argument combination the engine launches, and intrinsics such as warp shuffles
(which the simulator does not have). Run as a script in a process without
``NUMBA_ENABLE_CUDASIM``; ``tests/test_cuda.py`` does. Prints one line per kernel signature.

    python tests/ptx_compile.py [major minor]
"""
import re
import sys


def signatures():
    from numba import boolean, float32, float64, int64, types, uint16, uint32
    float16 = types.float16

    def arr(dtype, ndim, layout="C"):
        return types.Array(dtype, ndim, layout)

    f64_2 = arr(float64, 2)
    f64_1 = arr(float64, 1)
    i = int64
    out = []
    for f in (float32, float64):
        x2, x3 = arr(f, 2), arr(f, 3)
        c2 = arr(f, 2)
        out += [
            ("unit_moments_rows", (x2, i, i, i, f64_2, f64_2, f64_2)),
            ("unit_moments_planes", (x3, i, i, i, f64_2, f64_2, f64_2)),
            ("affine_rows", (x2, i, i, c2, c2, c2, x2)),
            ("affine_planes", (x3, i, i, c2, c2, c2, x3)),
            ("unit_grad_sums_rows", (x2, x2, i, i, i, c2, f64_2, f64_2)),
            ("unit_grad_sums_planes", (x3, x3, i, i, i, c2, f64_2, f64_2)),
            ("grad_input_rows", (x2, x2, i, i, c2, c2, c2, c2, c2, x2)),
            ("grad_input_planes", (x3, x3, i, i, c2, c2, c2, c2, c2, x3)),
            ("masked_unit_moments_rows", (x2, arr(boolean, 1), i, f64_2, f64_2, f64_2)),
            ("masked_unit_moments_planes", (x3, arr(boolean, 2), i, f64_2, f64_2, f64_2)),
            ("masked_grad_input_rows", (x2, x2, arr(boolean, 1), c2, c2, c2, c2, c2, x2)),
            ("masked_grad_input_planes", (x3, x3, arr(boolean, 2), c2, c2, c2, c2, c2, x3)),
            ("nan_means_as_sums", (x3, i, f64_2)),
            ("masked_nan_means_as_sums", (x3, arr(boolean, 2), f64_2)),
            ("cast", (arr(float64, 1), arr(f, 1))),
            ("cast", (arr(f, 1), arr(f, 1))),
            ("gather", (arr(f, 8, "A"), arr(f, 1))),
            ("add_scaled", (arr(f, 1), arr(f, 1), float64)),
            ("moving_averages", (arr(f, 1), f64_1, float64, arr(f, 1), f)),
            ("variance_from_stddev", (arr(f, 1), f, arr(f, 1))),
        ]
        # weights in the layer's dtype (f) or float64 vectors; moving statistics as the mean
        for w in (float32, float64):
            wv, wm = arr(w, 1), arr(w, 2)
            for mean in (f64_2, wm):
                out.append(("affine_coefficients", (mean, mean, float64, wv, wv, f64_1, f64_1,
                                                    f64_2, c2, c2, c2)))
                out.append(("grad_coefficients", (f64_2, f64_2, mean, c2, f64_2, float64, boolean,
                                                  wv, f64_1, f64_1, c2, c2, c2, c2, f64_1,
                                                  f64_1)))
            out.append(("renorm_correction", (f64_1, f64_1, wv, wv, float64, float64, float64,
                                              float64, f64_1, f64_1)))
    # float16 data read and written as it is, float32 coefficients and arithmetic
    h2, h3, c2 = arr(float16, 2), arr(float16, 3), arr(float32, 2)
    for y2, y3 in ((h2, h3), (arr(float32, 2), arr(float32, 3))):
        out += [
            ("affine_rows", (h2, i, i, c2, c2, c2, y2)),
            ("affine_planes", (h3, i, i, c2, c2, c2, y3)),
            ("grad_input_rows", (h2, h2, i, i, c2, c2, c2, c2, c2, y2)),
            ("grad_input_planes", (h3, h3, i, i, c2, c2, c2, c2, c2, y3)),
            ("masked_grad_input_rows", (h2, h2, arr(boolean, 1), c2, c2, c2, c2, c2, y2)),
            ("masked_grad_input_planes", (h3, h3, arr(boolean, 2), c2, c2, c2, c2, c2, y3)),
        ]
    out += [
        ("unit_moments_rows", (h2, i, i, i, f64_2, f64_2, f64_2)),
        ("unit_moments_planes", (h3, i, i, i, f64_2, f64_2, f64_2)),
        ("unit_grad_sums_rows", (h2, h2, i, i, i, c2, f64_2, f64_2)),
        ("unit_grad_sums_planes", (h3, h3, i, i, i, c2, f64_2, f64_2)),
        ("masked_unit_moments_rows", (h2, arr(boolean, 1), i, f64_2, f64_2, f64_2)),
        ("masked_unit_moments_planes", (h3, arr(boolean, 2), i, f64_2, f64_2, f64_2)),
        ("nan_means_as_sums", (h3, i, f64_2)),
        ("masked_nan_means_as_sums", (h3, arr(boolean, 2), f64_2)),
        ("gather", (arr(float16, 8, "A"), arr(float16, 1))),
        ("gather", (arr(float32, 8, "A"), arr(float16, 1))),
    ]
    out += [
        ("merge_moments", (f64_2, f64_2, f64_2, f64_2, f64_2)),
        ("merge_sums", (f64_2, f64_2, f64_2, f64_2)),
        ("group_average", (f64_2, f64_2, f64_1, f64_1)),
        ("stddev", (f64_1, float64, f64_1)),
        ("combine_ranks", (arr(float64, 3), f64_2, f64_2)),
        ("sum_ranks", (f64_2, f64_1)),
        ("weighted_average", (arr(float64, 3), f64_2)),
        ("cast", (arr(float16, 1), arr(float32, 1))),
        ("cast", (arr(float32, 1), arr(float16, 1))),
        ("cast", (arr(int64, 1), arr(float32, 1))),
        ("gather", (arr(float16, 8, "A"), arr(float32, 1))),
        ("gather", (arr(boolean, 8, "A"), arr(boolean, 1))),
        ("gather", (arr(uint16, 8, "A"), arr(uint16, 1))),
        ("widen_bfloat16", (arr(uint16, 1), arr(uint32, 1))),
        ("narrow_bfloat16", (arr(uint32, 1), arr(uint16, 1))),
    ]
    return out


def main(cc=(9, 0)):
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        sys.exit("ptx_compile.py must run without NUMBA_ENABLE_CUDASIM")
    from numbabn.cuda import kernels
    names = set()
    half_math = re.compile(r"\b(?:add|sub|mul|fma|div)(?:\.rn)?\.(?:f16|f16x2|bf16)\b")
    for name, sig in signatures():
        ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, sig, cc=cc)
        names.add(name)
        # float16 data is only converted: every operation on it must be float32 or wider
        if half_math.search(ptx):
            sys.exit(f"{name}{sig} does arithmetic in half precision")
        print(f"{name}{tuple(str(t) for t in sig)}: {len(ptx)} bytes of PTX", flush=True)
    launched = {n for n in dir(kernels) if hasattr(getattr(kernels, n), "py_func")
                and not getattr(getattr(kernels, n), "targetoptions", {}).get("device")}
    missing = sorted(launched - names)
    if missing:
        sys.exit(f"kernels without a PTX check: {missing}")
    print(f"compiled {len(names)} kernels for sm_{cc[0]}{cc[1]}")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (9, 0))
