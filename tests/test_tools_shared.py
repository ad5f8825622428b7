"""What the tools share (numbabn/tools): the timer, the traffic model, the shapes, the tolerances.

Each exists once; these tests pin their numbers and check that bench, selftest, loop, the asv
suite and the test suite all read the same objects.
"""
import pathlib
import sys
import types

import numpy as np
import pytest

import conftest
from numbabn.tools import bench, loopbench, selftest, shapes, timing, tolerances, traffic

ROOT = pathlib.Path(__file__).resolve().parent.parent


class StepClock:
    """A clock that advances one second per reading and counts its syncs."""

    def __init__(self):
        self.now, self.syncs = 0.0, 0

    def sync(self):
        self.syncs += 1

    def start(self):
        self.now += 1.0
        return self.now

    def stop(self, started):
        self.now += 1.0
        return self.now - started


# ------------------------------------------------------------------------------------------------
# timing


def test_a_sample_is_the_time_of_inner_calls_over_inner():
    calls = []
    assert timing.sample(lambda: calls.append(1), inner=4, clock=StepClock()) == 0.25
    assert len(calls) == 4


def test_samples_warm_up_sync_then_take_at_least_repeats():
    calls, clock = [], StepClock()
    taken = timing.samples(lambda: calls.append(1), repeats=3, inner=2, warmup=5, clock=clock)
    assert taken == [0.5, 0.5, 0.5]
    assert len(calls) == 5 + 3 * 2
    assert clock.syncs == 1


def test_samples_continue_until_min_time():
    taken = timing.samples(lambda: None, repeats=1, min_time=0.02)
    assert len(taken) > 1 and all(t >= 0 for t in taken)


def test_median_seconds_and_summarize():
    durations = iter([5.0, 1.0, 3.0])

    class Clock(StepClock):
        def stop(self, started):
            return next(durations)

    assert timing.median_seconds(lambda: None, repeats=3, clock=Clock()) == 3.0
    summary = timing.summarize([4.0, 1.0, 2.0, 3.0, 5.0])
    assert summary["median"] == 3.0 and summary["samples"] == [4.0, 1.0, 2.0, 3.0, 5.0]
    assert summary["spread"] == pytest.approx(1.0)


def test_host_clock_calls_its_sync_hook_around_the_interval():
    synced = []
    clock = timing.HostClock(sync=lambda: synced.append(1))
    assert timing.sample(lambda: None, clock=clock) >= 0
    assert len(synced) == 2


def test_cuda_event_clock_records_on_its_stream():
    recorded = []

    class Event:
        def record(self, stream=None):
            recorded.append(stream)
            self.t = len(recorded) * 1.0          # milliseconds

        def synchronize(self):
            pass

    stream = types.SimpleNamespace(synchronize=lambda: None)
    cuda = types.SimpleNamespace(Event=Event, get_current_stream=lambda: stream,
                                 get_elapsed_time=lambda a, b: b.t - a.t)
    clock = timing.CudaEventClock(types.SimpleNamespace(cuda=cuda))
    assert clock.stream is stream
    assert timing.sample(lambda: None, inner=2, clock=clock) == pytest.approx(0.5e-3)
    assert recorded == [stream, stream]


# ------------------------------------------------------------------------------------------------
# traffic


def test_traffic_model():
    assert {op: traffic.TRAFFIC[op].passes for op in traffic.OPS} == {
        "train": 3, "infer": 2, "step": 8}
    assert traffic.legend() == "train = 1 copy + 1 read, infer = 1 copy, step = 2 copies + 4 reads"
    assert traffic.floors(2.0, 0.5) == {"train": 2.5, "infer": 2.0, "step": 6.0}
    assert traffic.gb_per_s("step", 1e9, 2.0) == 4.0
    assert traffic.bytes_moved("infer", 10) == 20
    assert bench.OPS is selftest.OPS is traffic.OPS


# ------------------------------------------------------------------------------------------------
# shapes


def test_one_shape_table():
    assert list(shapes.CASES) == ["NC", "NHWC", "NCHW", "small"]
    assert [c.name for c in shapes.LARGE_CASES] == ["NC", "NHWC", "NCHW"]
    assert [c.layout for c in shapes.QUICK_CASES] == [c.layout for c in shapes.LARGE_CASES]
    assert bench.CASES is shapes.CASES
    assert selftest.BENCH_CASES is shapes.LARGE_CASES
    assert selftest.QUICK_BENCH_CASES is shapes.QUICK_CASES
    assert loopbench.PAIR_SHAPES is shapes.PAIR_SHAPES
    assert bench.STARTUP_SHAPE == shapes.CASES["small"].shape


def test_the_asv_suite_uses_the_shape_table():
    sys.path.insert(0, str(ROOT / "asv_bench"))
    try:
        from benchmarks import common, layer, loop
    finally:
        sys.path.remove(str(ROOT / "asv_bench"))
    assert common.CASES is shapes.CASES
    assert layer.TrainingForward.params == [list(shapes.CASES)]
    assert loop.Interleaved.params == [["32x16x16x64", "64x8x8x32"]]
    assert loop.Interleaved.MATMUL == shapes.PAIR_MATMUL


# ------------------------------------------------------------------------------------------------
# tolerances


def test_one_tolerance_table_for_the_tests_and_selftest():
    assert conftest.TOLERANCE is tolerances.TOLERANCE is selftest.TOLERANCE
    assert conftest.STATS_RTOL is tolerances.STATS_RTOL
    assert tolerances.tolerance(np.float32) == (2e-5, 2e-5)
    assert tolerances.tolerance("float64") == (1e-10, 1e-12)
    rtol, atol = tolerances.tolerance(np.float16)
    assert (rtol, atol) == (2e-3, 2e-3)


def test_bfloat16_has_its_row():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert tolerances.tolerance(ml_dtypes.bfloat16) == (8e-3, 8e-3)
