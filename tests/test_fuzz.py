"""Property-based fuzzing of the layer: constructor arguments, shapes and call sequences.

Whatever hypothesis draws, every call either succeeds with the right numbers (checked against
the float64 reference) or raises ``ValueError``/``TypeError`` (``RuntimeError`` for a backward
before any forward) and leaves the layer exactly as it was: built or not, every weight bitwise.
A crash or a hang fails the test run itself.
"""
import math

import numpy as np
import pytest
from conftest import tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbabn
from numbabn import reference as R

EXPECTED = (ValueError, TypeError)
OUTCOMES = {"refused layer": 0, "refused call": 0, "checked call": 0}
# Valid values of every argument, and values that must be refused.
VALID = {
    "axis": st.one_of(st.integers(-4, 3), st.lists(st.integers(-4, 3), min_size=1, max_size=3,
                                                   unique=True)),
    "momentum": st.floats(0.0, 1.0),
    "epsilon": st.floats(1e-4, 1.0),
    "center": st.booleans(),
    "scale": st.booleans(),
    "renorm": st.booleans(),
    "renorm_clipping": st.one_of(st.none(), st.fixed_dictionaries(
        {}, optional={"rmin": st.floats(0.1, 1.0), "rmax": st.floats(1.0, 4.0),
                      "dmax": st.floats(0.0, 3.0)})),
    "renorm_momentum": st.floats(0.0, 1.0),
    "virtual_batch_size": st.one_of(st.none(), st.integers(1, 3)),
    "fused": st.sampled_from([None, True, False]),
    "trainable": st.booleans(),
    "dtype": st.sampled_from([None, "float32", "float64", "float16", "mixed_float16"]),
}
INVALID = {
    "axis": st.one_of(st.integers(5, 9), st.just([0, 0]), st.just(1.5), st.just("x")),
    "momentum": st.sampled_from([float("nan"), float("inf"), "0.9", None]),
    "epsilon": st.sampled_from([-1e-3, float("nan"), float("inf"), "1e-3", None]),
    "center": st.sampled_from(["yes", None, 2]),
    "renorm_clipping": st.sampled_from([{"rmax": 0.5, "rmin": 2.0}, {"dmax": -1.0},
                                        {"bogus": 1.0}, "rmax", {"rmax": float("nan")}]),
    "virtual_batch_size": st.sampled_from([0, -2, 2.5, "4", True]),
    "fused": st.sampled_from(["yes", 1.5]),
    "dtype": st.sampled_from(["int8", "float7", 3, "complex64"]),
}


@st.composite
def constructor_args(draw):
    """Mostly valid keyword arguments; one in three has one invalid argument."""
    kwargs = {name: draw(values) for name, values in VALID.items() if draw(st.booleans())}
    if draw(st.integers(0, 2)) == 0:
        name = draw(st.sampled_from(sorted(INVALID)))
        kwargs[name] = draw(INVALID[name])
    return kwargs


@st.composite
def inputs(draw, rank=None):
    rank = rank or draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    if draw(st.integers(0, 9)) == 0:              # now and then an empty axis
        empty = draw(st.integers(0, rank - 1))
        shape = tuple(0 if i == empty else d for i, d in enumerate(shape))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    if dtype == np.int32:
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.normal(draw(st.floats(-5, 5)), draw(st.floats(0.1, 4)), size=shape).astype(dtype)


def _snapshot(layer):
    return (layer.built, [w.copy() for w in layer.get_weights()] if layer.built else [])


def _assert_unchanged(layer, before, what):
    built, weights = before
    assert layer.built == built, f"{what} changed whether the layer is built"
    if built:
        for a, b in zip(layer.get_weights(), weights):
            np.testing.assert_array_equal(a, b, err_msg=f"{what} changed a weight")


def _per_feature(layer, name, default, x):
    """A weight (or its default) shaped to broadcast against ``x``."""
    axes = layer._axes
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    var = layer._variables.get(name)
    if var is None:
        return np.full(shape, default)
    if var.value.size != math.prod(shape):
        return None                       # the input does not fit the built layer
    return var.value.astype(np.float64).reshape(shape)


def _assert_close(actual, expected, layer):
    tol = tolerance(np.dtype(layer.compute_dtype))
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=4 * tol.rtol, atol=4 * tol.atol * scale)


FUZZING = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])


@settings(max_examples=300, **FUZZING)
@given(constructor_args(), st.data())
def test_fuzzed_layers_fail_cleanly_or_answer_right(kwargs, data):
    fuzz(kwargs, data)


@pytest.mark.long
@settings(max_examples=3000, **FUZZING)
@given(constructor_args(), st.data())
def test_fuzzed_layers_at_length(kwargs, data):
    fuzz(kwargs, data)


def fuzz(kwargs, data):
    """One fuzzed layer: constructed from ``kwargs``, then a drawn sequence of actions."""
    try:
        layer = numbabn.BatchNormalization(**kwargs)
    except EXPECTED:
        OUTCOMES["refused layer"] += 1
        return
    rank = data.draw(st.integers(1, 4))
    last = None                                   # the last successful forward: (x, training)
    for action in data.draw(st.lists(st.sampled_from(
            ["train", "infer", "backward", "set_weights", "config"]), min_size=1, max_size=6)):
        x = data.draw(inputs(rank if data.draw(st.integers(0, 4)) else None))
        before = _snapshot(layer)
        if action in ("train", "infer"):
            training = action == "train"
            # a training call changes the weights: predict the output from those before it
            fits = gamma_beta = moving = None
            if layer.built and x.ndim == rank:
                gamma_beta = (_per_feature(layer, "gamma", 1.0, x),
                              _per_feature(layer, "beta", 0.0, x))
                moving = (_per_feature(layer, "moving_mean", 0.0, x),
                          _per_feature(layer, "moving_variance", 1.0, x))
                fits = all(v is not None for v in gamma_beta + moving)
            try:
                y = layer(x, training=training)
            except EXPECTED:
                OUTCOMES["refused call"] += 1
                _assert_unchanged(layer, before, action)
                continue
            OUTCOMES["checked call"] += 1
            assert fits is not False, f"accepted {x.shape} for weights of another shape"
            assert y.shape == x.shape and y.dtype == np.dtype(layer.compute_dtype)
            rank = x.ndim
            last = (x, training)
            if gamma_beta is None:          # built by this call: initial weights
                gamma_beta = (_per_feature(layer, "gamma", 1.0, x),
                              _per_feature(layer, "beta", 0.0, x))
                moving = (np.zeros(1), np.ones(1))
            axes = tuple(layer._axes)
            if training and not layer.renorm and x.size:
                y_ref, _, _ = R.forward_train(x.astype(np.float64), axes, layer.epsilon,
                                              *gamma_beta,
                                              virtual_batch_size=layer.virtual_batch_size)
                _assert_close(y, y_ref, layer)
            elif not training:
                y_ref = R.forward_infer(x.astype(np.float64), *moving, layer.epsilon,
                                        *gamma_beta)
                _assert_close(y, y_ref, layer)
            if not training and before[0]:
                _assert_unchanged(layer, before, "an inference call")
        elif action == "backward":
            dy = x if last is None or x.shape != last[0].shape else np.cos(last[0])
            try:
                dx = layer.backward(dy)
            except EXPECTED + (RuntimeError,):
                _assert_unchanged(layer, before, "backward")
                continue
            assert dx.shape == last[0].shape
            assert np.isfinite(np.asarray(dx, np.float64)).all() or not np.isfinite(
                np.asarray(last[0], np.float64)).all()
            _assert_unchanged(layer, before, "backward")
        elif action == "set_weights":
            if not layer.built:
                continue
            weights = layer.get_weights()
            if data.draw(st.booleans()):
                weights = [np.abs(w) + 0.5 for w in weights]
            elif weights:
                weights[data.draw(st.integers(0, len(weights) - 1))] = np.ones(7)
            try:
                layer.set_weights(weights)
            except EXPECTED:
                _assert_unchanged(layer, before, "set_weights")
                continue
            for got, want in zip(layer.get_weights(), weights):
                np.testing.assert_array_equal(got, np.asarray(want, got.dtype))
        else:
            config = layer.get_config()
            clone = numbabn.BatchNormalization.from_config(config)
            assert clone.get_config() == config


def test_fuzzing_reached_every_outcome():
    """The strategies are not degenerate: the fuzz test above built and refused layers, and
    made calls that were checked and calls that were refused."""
    if not any(OUTCOMES.values()):
        pytest.skip("runs after test_fuzzed_layers_fail_cleanly_or_answer_right")
    assert all(OUTCOMES.values()), OUTCOMES
