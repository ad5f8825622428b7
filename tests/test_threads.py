"""The serial/parallel choice made from measured cost (``numbabn.cpu.threads``).

A fake kernel with a fake clock makes the decisions deterministic; the real kernels are checked to
give the same bits under every policy. How the choice behaves inside a NumPy training loop, timed
for real, is in ``test_training_loop.py``.
"""
import numpy as np
import pytest

import numbabn
from numbabn.cpu import threads


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeKernel:
    """A parallel kernel and its serial twin that take ``cost[True]`` / ``cost[False]`` seconds."""

    def __init__(self, clock, parallel_cost, serial_cost):
        self.clock = clock
        self.cost = {True: parallel_cost, False: serial_cost}
        self.calls = []
        self.serial = lambda: self._run(False)

    def __call__(self):
        return self._run(True)

    def _run(self, parallel):
        self.calls.append(parallel)
        self.clock.now += self.cost[parallel]


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(threads, "_clock", c)
    monkeypatch.setattr(threads, "_layer", "omp")      # as if a thread-safe layer had run
    return c


def run(choice, kernel, n):
    start = len(kernel.calls)
    for _ in range(n):
        choice()
    return kernel.calls[start:]


def test_warm_up_times_both_twins_then_keeps_the_faster(clock):
    kernel = FakeKernel(clock, parallel_cost=1.0, serial_cost=3.0)
    choice = threads.Choice(kernel)
    warm_up = 2 + 2 * threads.Choice.SAMPLES
    calls = run(choice, kernel, warm_up)
    assert calls.count(True) == calls.count(False) == 1 + threads.Choice.SAMPLES
    assert all(run(choice, kernel, threads.Choice.FIRST_INTERVAL - 1))

    kernel = FakeKernel(clock, parallel_cost=3.0, serial_cost=1.0)
    choice = threads.Choice(kernel)
    run(choice, kernel, warm_up)
    assert not any(run(choice, kernel, threads.Choice.FIRST_INTERVAL - 1))


def test_the_first_call_of_each_twin_is_not_counted(clock):
    kernel = FakeKernel(clock, parallel_cost=100.0, serial_cost=3.0)   # e.g. a cache load
    choice = threads.Choice(kernel)
    choice()
    kernel.cost[True] = 1.0
    run(choice, kernel, 1 + 2 * threads.Choice.SAMPLES)
    assert all(run(choice, kernel, 10))


def test_a_settled_site_probes_rarely(clock):
    kernel = FakeKernel(clock, parallel_cost=1.0, serial_cost=2.0)
    choice = threads.Choice(kernel)
    calls = run(choice, kernel, 20000)
    probes = calls[2000:].count(False)
    assert 0 < probes <= 18000 * 0.004


def test_a_parallel_site_goes_serial_when_the_pool_starts_fighting_and_back(clock):
    kernel = FakeKernel(clock, parallel_cost=1.0, serial_cost=2.0)
    choice = threads.Choice(kernel)
    run(choice, kernel, 5000)                     # settled, long probe interval
    kernel.cost[True] = 20.0                      # another pool spins beside ours
    calls = run(choice, kernel, 10)
    assert calls[-5:] == [False] * 5              # one slow call triggered the probe
    assert calls.count(True) <= 2
    kernel.cost[True] = 1.0                       # the other pool went quiet
    calls = run(choice, kernel, 2 * threads.Choice.FIRST_INTERVAL + 10)
    assert calls[-5:] == [True] * 5


def test_a_serial_site_returns_to_the_pool_when_parallel_becomes_faster(clock):
    kernel = FakeKernel(clock, parallel_cost=5.0, serial_cost=2.0)
    choice = threads.Choice(kernel)
    run(choice, kernel, 100)
    kernel.cost[True] = 1.0
    calls = run(choice, kernel, 4 * threads.Choice.LAST_INTERVAL)
    assert calls[-10:] == [True] * 10


def test_pick_below_the_threshold_and_under_forced_policies():
    from numbabn.cpu import kernels
    k = kernels.affine_rows
    small, big = np.zeros((2, 5), np.float32), np.zeros((20, 50), np.float32)
    assert threads.pick(k, small, 100) is k.serial
    old = threads.set_policy("serial")
    try:
        assert threads.pick(k, big, 100) is k.serial
        threads.set_policy("parallel")
        assert threads.pick(k, big, 100) is not k.serial
        threads.set_policy("auto")
        site = threads.pick(k, big, 100)
        assert isinstance(site, threads.Choice)
        assert threads.pick(k, np.zeros((20, 50), np.float32), 100) is site
        assert threads.pick(k, big.astype(np.float64), 100) is not site     # per dtype
        assert threads.pick(k, big.reshape(50, 20), 100) is not site        # per shape
    finally:
        threads.set_policy(old)
    with pytest.raises(ValueError, match="Received: policy='fast'"):
        threads.set_policy("fast")


def test_concurrent_probes_cannot_derail_a_site(clock):
    """Two threads that both start a one-call probe: the second result must not count twice."""
    kernel = FakeKernel(clock, parallel_cost=1.0, serial_cost=3.0)
    choice = threads.Choice(kernel)
    run(choice, kernel, 8 + threads.Choice.FIRST_INTERVAL - 1)     # settled on parallel
    choice()                                      # the countdown runs out: a serial probe is due
    assert choice.probing == threads.Choice.PROBES[False]
    # three threads each take the probe, then record it, interleaved
    picked = [choice._next() for _ in range(3)]
    assert picked == [False] * 3
    for p in picked:
        choice._record(p, 3.0)
    assert choice.probing == 0 and choice.parallel
    assert all(run(choice, kernel, 50)[-10:])


def test_a_serial_fallback_under_a_busy_pool_is_not_a_parallel_time(clock, monkeypatch):
    monkeypatch.setattr(threads, "_layer", None)          # not known to be thread-safe
    monkeypatch.setattr(threads, "_known_layer", lambda: None)
    kernel = FakeKernel(clock, parallel_cost=1.0, serial_cost=3.0)
    choice = threads.Choice(kernel)
    run(choice, kernel, 20)
    assert choice.parallel
    threads._lock.acquire()                               # another thread holds the pool
    try:
        calls = run(choice, kernel, 5)
    finally:
        threads._lock.release()
    assert calls == [False] * 5 and choice.parallel       # ran serially, learned nothing wrong
    assert all(t == 1.0 for t in choice.times[True])


@pytest.mark.parametrize("shape, axis", [((512, 96), -1), ((8, 24, 16, 16), 1),
                                         ((4, 16, 16, 40), -1)])
def test_the_same_bits_under_every_policy(shape, axis, rng):
    """Both twins, and every call of the measured choice's warm-up (which alternates them)."""
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)

    def step():
        layer = numbabn.BatchNormalization(axis=axis, momentum=0.5)
        y = layer(x, training=True)
        dx = layer.backward(dy)
        return [y.copy(), dx.copy(), layer.grads["gamma"].copy(),
                layer.moving_variance.value.copy()]

    old = threads.set_policy("serial")
    try:
        want = step()
        results = []
        threads.set_policy("parallel")
        results.append(step())
        threads.set_policy("auto")
        results += [step() for _ in range(12)]
        assert any(not site.parallel or site.times[False] for site in threads._sites.values())
    finally:
        threads.set_policy(old)
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_a_parallel_probe_that_loses_by_far_waits_much_longer(clock):
    """Inside a fight each parallel probe costs milliseconds: after one, the next waits 16x."""
    kernel = FakeKernel(clock, parallel_cost=20.0, serial_cost=1.0)
    choice = threads.Choice(kernel)
    calls = run(choice, kernel, 3000)
    warm_up = 1 + threads.Choice.SAMPLES
    assert calls.count(True) - warm_up == 2       # probes after 32 calls, then 32 * 16 more
