"""Tests for ``python -m numbabn selftest`` (numbabn/tools/selftest.py).

Without a GPU the suite runs on Numba's CUDA simulator (tests/conftest.py), where the command
verifies its tiny ``--quick`` cases; the command runs once in full, the other tests on one case.
The benchmark needs CuPy and a GPU: here its code runs against a stand-in for CuPy built on NumPy
(events from the host clock, a NumPy batch normalization behind CuPy's cuDNN signatures), which
checks the wiring and the report, not any timing.
"""
import ctypes
import io
import sys
import threading
import time
import types

import numpy as np
import pytest

from numbabn.tools import selftest
from numbabn.__main__ import main
from numbabn.tools.shapes import Case

ONE_CHECK = (selftest.Check("NC", (12, 10)),)


def verdict_lines(text):
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith(("PASS", "FAIL"))]


@pytest.fixture
def one_check(monkeypatch):
    """Verify a single tiny case, whichever shapes the command picks."""
    monkeypatch.setattr(selftest, "QUICK_CHECKS", ONE_CHECK)
    monkeypatch.setattr(selftest, "CHECKS", ONE_CHECK)


@pytest.fixture
def no_cupy(monkeypatch):
    """Make CuPy unimportable, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


# ------------------------------------------------------------------------------------------------
# the command


def test_quick_selftest_passes_every_case(capsys, tmp_path):
    markdown = tmp_path / "selftest.md"
    status = main(["selftest", "--quick", "--skip-bench", "--markdown", str(markdown)])
    out = capsys.readouterr().out
    lines = verdict_lines(out)
    assert status == 0, out
    assert len(lines) == len(selftest.QUICK_CHECKS)
    assert all(line.startswith("PASS") and "max abs err" in line for line in lines), out
    assert f"{len(lines)} of {len(lines)} cases pass" in out
    assert "Benchmark" not in out
    text = markdown.read_text(encoding="utf-8")
    assert "## Verification" in text and "| NC 12x10 float32 | PASS |" in text
    assert "numbabn against cuDNN" not in text


def test_quick_cases_cover_every_feature_on_tiny_shapes():
    checks = selftest.QUICK_CHECKS
    assert all(np.prod(c.shape) <= 500 for c in checks)
    assert {c.dtype for c in checks} == {"float16", "float32", "float64"}
    kwargs = [c.kwargs for c in checks]
    assert any(k.get("axis") == 1 for k in kwargs)
    assert any(k.get("axis") == [1, 3] for k in kwargs)
    assert any(k.get("virtual_batch_size") for k in kwargs)
    assert any(k.get("renorm") and k.get("renorm_clipping") for k in kwargs)
    # the GPU cases exercise the same features
    assert {c.name.split()[0] for c in selftest.CHECKS} >= {"NC", "NHWC", "NCHW", "ghost",
                                                           "renorm", "axis"}


def test_a_result_out_of_tolerance_fails(monkeypatch, one_check, capsys):
    monkeypatch.setattr(selftest, "TOLERANCE", {
        dtype: (-1.0, -1.0) for dtype in selftest.TOLERANCE})
    status = main(["selftest", "--quick", "--skip-bench"])
    out = capsys.readouterr().out
    (line,) = verdict_lines(out)
    assert status == 1
    assert line.startswith("FAIL") and "out of tolerance" in line and "step 1 y" in line
    assert "0 of 1 cases pass" in out


def test_a_wrong_device_result_fails(monkeypatch, one_check, capsys):
    def off_by_a_little(a):
        return a.copy_to_host() + np.float32(1e-3)
    monkeypatch.setattr(selftest, "to_host", off_by_a_little)
    status = main(["selftest", "--quick", "--skip-bench"])
    (line,) = verdict_lines(capsys.readouterr().out)
    assert status == 1
    assert line.startswith("FAIL") and "step 1 y" in line and "step 1 dx" in line
    assert "max abs err 1.0e-03" in line


def test_an_error_in_a_case_is_reported_and_fails(monkeypatch, one_check, capsys):
    def broken(a):
        raise RuntimeError("device lost")
    monkeypatch.setattr(selftest, "to_host", broken)
    status = main(["selftest", "--quick", "--skip-bench"])
    (line,) = verdict_lines(capsys.readouterr().out)
    assert status == 1
    assert line.startswith("FAIL") and "error: RuntimeError: device lost" in line


def test_benchmark_is_skipped_with_a_note_without_cupy(no_cupy, one_check, capsys, tmp_path):
    markdown = tmp_path / "selftest.md"
    status = main(["selftest", "--quick", "--markdown", str(markdown)])
    out = capsys.readouterr().out
    assert status == 0
    assert "benchmark skipped: CuPy is not importable" in out
    assert "benchmark skipped: CuPy is not importable" in markdown.read_text(encoding="utf-8")


def test_benchmark_is_skipped_after_a_failed_check(monkeypatch, one_check, capsys):
    monkeypatch.setattr(selftest, "TOLERANCE", {
        dtype: (-1.0, -1.0) for dtype in selftest.TOLERANCE})
    assert main(["selftest", "--quick"]) == 1
    assert "benchmark skipped: a verification case failed" in capsys.readouterr().out


def test_no_cuda_device_returns_2(monkeypatch, capsys):
    from numba import cuda
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    assert main(["selftest", "--quick"]) == 2
    captured = capsys.readouterr()
    assert "no CUDA device is available" in captured.err
    assert not verdict_lines(captured.out)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["selftest", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--repeats", "--skip-bench", "--markdown"):
        assert option in out
    assert "cuDNN" in out


def test_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["selftest", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the comparison


def test_compare_accepts_float32_rounding_and_rejects_more():
    from numba import cuda
    want = np.linspace(-3, 3, 12, dtype=np.float32)
    close = selftest.compare("y", cuda.to_device(want + np.float32(1e-6)), want)
    assert close.ok and 0 < close.ratio < 1
    far = selftest.compare("y", cuda.to_device(want + np.float32(1e-3)), want)
    assert not far.ok and far.ratio > 1 and far.error == pytest.approx(1e-3, rel=1e-3)


def test_compare_scales_the_absolute_tolerance_for_sums():
    from numba import cuda
    want = np.zeros(3, np.float32)
    got = cuda.to_device(np.full(3, 1e-4, np.float32))
    assert not selftest.compare("grads", got, want).ok
    assert selftest.compare("grads", got, want, scale=100.0).ok


def test_compare_rejects_nan_host_arrays_and_mismatched_dtypes():
    from numba import cuda
    want = np.ones(4, np.float32)
    nan = selftest.compare("y", cuda.to_device(np.array([1, np.nan, 1, 1], np.float32)), want)
    assert not nan.ok and nan.ratio == np.inf
    host = selftest.compare("y", want.copy(), want)
    assert not host.ok and "not a device array" in host.note
    dtype = selftest.compare("y", cuda.to_device(want.astype(np.float64)), want)
    assert not dtype.ok and "expected float32" in dtype.note
    assert selftest.compare("moving_mean", want.copy(), want, on_device=False).ok


def test_simulator_shared_arrays_are_one_per_call_site_and_block_then_restored():
    kernelapi = pytest.importorskip("numba.cuda.simulator.kernelapi")
    before = kernelapi.FakeCUDAShared.array
    with selftest.simulator_shared_arrays_locked():
        assert kernelapi.FakeCUDAShared.array is not before
        shared = kernelapi.FakeCUDAShared(0)
        start = threading.Barrier(16)
        got = []

        def thread():
            start.wait()            # every thread asks at once, as a block's threads do
            got.append(shared.array((4, 2), np.float64))
        threads = [threading.Thread(target=thread) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 16 and all(a is got[0] for a in got)
        assert got[0].shape == (4, 2) and got[0].dtype == np.float64
        assert shared.array((4, 2), np.float64) is not got[0]     # another call site
    assert kernelapi.FakeCUDAShared.array is before


# ------------------------------------------------------------------------------------------------
# the benchmark, against a stand-in for CuPy

TINY_BENCH = (
    Case("NC", (64, 8), -1),
    Case("NHWC", (4, 3, 3, 8), -1),
    Case("NCHW", (4, 8, 3, 3), 1),
)


class FakeArray:
    """A host buffer posing as a CuPy array for the copy measurement (``.data.ptr``)."""

    def __init__(self, a):
        self.a = a
        self.nbytes = a.nbytes
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)


class FakeEvent:
    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def fake_batch_norm(calls, failing_mode=None):
    """cupy.cudnn's three batch normalization calls, with CuPy's positional signatures, in
    NumPy; a call in ``failing_mode`` raises as an unsupported cuDNN mode would."""

    def axes(x, is_for_conv2d, d_layout):
        if not is_for_conv2d:          # CuPy: (size / C, C, 1, 1)
            return (0,), (1, -1)
        if d_layout == 1:              # CUDNN_TENSOR_NHWC
            return (0, 1, 2), (1, 1, 1, -1)
        return (0, 2, 3), (1, -1, 1, 1)

    def check(x, mode):
        calls.append(mode)
        if mode == failing_mode:
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        return x.reshape(-1, x.shape[-1]) if x.ndim == 2 else x

    def forward_training(x, gamma, beta, running_mean, running_var, mean, inv_std, eps, decay,
                         is_for_conv2d, cudnn_mode, debug, d_layout=0):
        assert mean is None and inv_std is None and debug is False
        x = check(x, cudnn_mode)
        red, shape = axes(x, is_for_conv2d, d_layout)
        m, v = x.mean(axis=red), x.var(axis=red)
        inv = 1 / np.sqrt(v + eps)
        y = (x - m.reshape(shape)) * (gamma * inv).reshape(shape) + beta.reshape(shape)
        running_mean += (1 - decay) * (m - running_mean)
        running_var += (1 - decay) * (v - running_var)
        return y.astype(x.dtype), m, inv

    def forward_inference(x, gamma, beta, mean, var, eps, is_for_conv2d, cudnn_mode,
                          d_layout=0):
        x = check(x, cudnn_mode)
        _, shape = axes(x, is_for_conv2d, d_layout)
        inv = gamma / np.sqrt(var + eps)
        return ((x - mean.reshape(shape)) * inv.reshape(shape) + beta.reshape(shape)).astype(
            x.dtype)

    def backward(x, gamma, gy, mean, inv_std, eps, is_for_conv2d, cudnn_mode, debug,
                 d_layout=0):
        x = check(x, cudnn_mode)
        red, shape = axes(x, is_for_conv2d, d_layout)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        n = x.size // gamma.size
        gbeta, ggamma = gy.sum(axis=red), (gy * xhat).sum(axis=red)
        gx = (gamma * inv_std / n).reshape(shape) * (
            n * gy - gbeta.reshape(shape) - xhat * ggamma.reshape(shape))
        return gx.astype(x.dtype), ggamma, gbeta

    return types.SimpleNamespace(batch_normalization_forward_training=forward_training,
                                 batch_normalization_forward_inference=forward_inference,
                                 batch_normalization_backward=backward)


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy module on NumPy: numbabn then runs on its CPU engine; cuDNN is NumPy code."""
    calls = []
    stream = types.SimpleNamespace(ptr=0, synchronize=lambda: None)
    lib = types.SimpleNamespace(
        CUDNN_BATCHNORM_PER_ACTIVATION=0, CUDNN_BATCHNORM_SPATIAL=1,
        CUDNN_BATCHNORM_SPATIAL_PERSISTENT=2, CUDNN_TENSOR_NCHW=0, CUDNN_TENSOR_NHWC=1,
        getVersion=lambda: 90100)
    runtime = types.SimpleNamespace(
        memcpyDeviceToDevice=3, getDeviceCount=lambda: 1,
        memcpyAsync=lambda dst, src, size, kind, s: ctypes.memmove(dst, src, size))
    cuda = types.SimpleNamespace(
        Event=FakeEvent, get_current_stream=lambda: stream, runtime=runtime, cudnn=lib,
        get_elapsed_time=lambda start, end: (end.t - start.t) * 1e3)

    def elementwise_kernel(in_params, out_params, body, name):
        return lambda src, dst: np.copyto(dst.a, src.a)

    api = fake_batch_norm(calls, failing_mode=2)
    cp = types.SimpleNamespace(
        __version__="0.0-fake", cuda=cuda, cudnn=api, float32=np.float32, float64=np.float64,
        asarray=lambda a, dtype=None: np.array(a, dtype=dtype), abs=np.abs,
        ElementwiseKernel=elementwise_kernel,
        ones=lambda n, dtype: FakeArray(np.ones(n, dtype)),
        empty_like=lambda a: FakeArray(np.empty_like(a.a)))
    for name, module in (("cupy", cp), ("cupy.cuda", cuda), ("cupy.cudnn", api),
                         ("cupy.cuda.cudnn", lib)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(selftest, "QUICK_BENCH_CASES", TINY_BENCH)
    return cp, calls


def test_benchmark_times_numbabn_and_every_agreeing_cudnn_mode(fake_cupy):
    cp, calls = fake_cupy
    args = types.SimpleNamespace(quick=True, repeats=2)
    out = io.StringIO()
    results = selftest.benchmark(cp, args, out)
    text = out.getvalue()
    assert "cuDNN 90100" in text and "median of 2 samples" in text
    assert [r.case for r in results] == list(TINY_BENCH)
    for res in results:
        assert set(res.numbabn) == set(res.cudnn) == set(selftest.OPS)
        assert all(t > 0 for t in list(res.numbabn.values()) + list(res.cudnn.values()))
        assert set(res.copy) == {"memcpy", "kernel"} and res.copy_bandwidth > 0
        # the stand-in computes what numbabn computes: every op agrees
        assert all(d < selftest.AGREEMENT_TOL for d in res.difference.values())
    nc, nhwc, nchw = results
    assert set(nc.cudnn_mode.values()) <= {"PER_ACTIVATION", "SPATIAL"}
    # SPATIAL_PERSISTENT fails in the stand-in: noted, and the op falls back to SPATIAL
    assert nhwc.cudnn_mode == {"train": "SPATIAL", "infer": "SPATIAL", "step": "SPATIAL"}
    assert any("SPATIAL_PERSISTENT train failed" in n for n in nchw.notes)
    assert 2 in calls

    rows = selftest.bench_rows(results)
    assert len(rows) == len(TINY_BENCH) * len(selftest.OPS)
    assert all(row["mode"] and row["ratio"] for row in rows)


def test_report_cells_are_traffic_over_time_against_the_copy_bandwidth():
    case = Case("NC", (64, 8), -1)                    # 2048 bytes
    res = selftest.BenchResult(
        case, copy={"memcpy": 4e12, "kernel": 3e12},
        numbabn={"train": 2e-9, "infer": 1e-9, "step": 8e-9},
        cudnn={"train": 4e-9, "step": 4e-9}, cudnn_mode={"train": "SPATIAL", "step": "SPATIAL"},
        difference={"train": 1e-7, "step": 2e-7})
    train, infer, step = selftest.bench_rows([res])
    # train moves 3 x 2048 bytes: in 2 ns that is 3072 GB/s, 77% of 4000 GB/s
    assert (train["ours_ms"], train["ours_rate"], train["ours_share"]) == (
        "0.000", "3072", "77%")
    assert (train["cudnn_rate"], train["cudnn_share"], train["ratio"]) == ("1536", "38%", "0.50")
    assert (infer["ours_rate"], infer["cudnn_ms"], infer["ratio"], infer["mode"]) == (
        "4096", "", "", "")
    # step moves 8 x 2048 bytes
    assert (step["ours_rate"], step["cudnn_rate"], step["ratio"], step["difference"]) == (
        "2048", "4096", "2.00", "2.0e-07")
    (copy,) = selftest.copy_rows([res])
    assert (copy["memcpy"], copy["kernel"]) == ("4000", "3000")
    text = selftest.format_table(selftest.bench_rows([res]), selftest.BENCH_COLUMNS,
                                 selftest.BENCH_HEADERS)
    assert text.splitlines()[0].split() == [
        "case", "op", "numbabn", "ms", "GB/s", "%", "copy", "cuDNN", "ms", "GB/s", "%", "copy",
        "numbabn", "÷", "cuDNN", "cuDNN", "mode", "max", "diff"]


def test_benchmark_disagreeing_cudnn_is_not_timed(fake_cupy, monkeypatch):
    cp, _ = fake_cupy
    monkeypatch.setattr(selftest, "QUICK_BENCH_CASES", TINY_BENCH[:1])
    monkeypatch.setattr(selftest, "AGREEMENT_TOL", -1.0)
    (res,) = selftest.benchmark(cp, types.SimpleNamespace(quick=True, repeats=1), io.StringIO())
    assert res.cudnn == {} and set(res.numbabn) == set(selftest.OPS)
    assert any("differs from numbabn" in n and "not timed" in n for n in res.notes)
    rows = selftest.bench_rows([res])
    assert all(row["cudnn_ms"] == "" and row["ratio"] == "" for row in rows)


def test_benchmark_without_cudnn_times_numbabn_alone(fake_cupy, monkeypatch):
    cp, _ = fake_cupy
    monkeypatch.setitem(sys.modules, "cupy.cudnn", None)
    monkeypatch.setattr(selftest, "QUICK_BENCH_CASES", TINY_BENCH[:1])
    out = io.StringIO()
    (res,) = selftest.benchmark(cp, types.SimpleNamespace(quick=True, repeats=1), out)
    assert "cuDNN is not usable through CuPy" in out.getvalue()
    assert res.cudnn == {} and set(res.numbabn) == set(selftest.OPS)


def test_markdown_report_has_the_benchmark_tables(fake_cupy, tmp_path):
    cp, _ = fake_cupy
    results = selftest.benchmark(cp, types.SimpleNamespace(quick=True, repeats=1),
                                 io.StringIO())
    checks = [selftest.CheckResult(ONE_CHECK[0], [selftest.Comparison("step 1 y", 1e-7, 0.01,
                                                                      True)])]
    path = tmp_path / "report.md"
    selftest.write_markdown(path, {"device": "stand-in"}, checks, results, ["a note"])
    text = path.read_text(encoding="utf-8")
    assert "| device | stand-in |" in text
    assert "| NC 12x10 float32 | PASS | 1.0e-07 | 0.01 |" in text
    assert "## Copy bandwidth" in text and "## numbabn against cuDNN" in text
    header = "| " + " | ".join(selftest.BENCH_HEADERS) + " |"
    assert header in text
    for op in selftest.OPS:
        assert f"| NC 64x8 | {op} |" in text
    assert "- a note" in text
