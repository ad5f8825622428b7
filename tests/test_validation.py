"""Bad arguments and inputs.

Every bad argument or input raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right
kind, wrong value), or ``RuntimeError`` for a call made in the wrong order, with a message that
names the argument and shows what was received. A failed call changes nothing: the weights (bit
for bit), ``built``, the config, the gradients of the last ``backward`` and the state that the
next ``backward`` uses are exactly as they were before it.
"""
import copy
import re
from dataclasses import dataclass

import numpy as np
import pytest

from numbabn import BatchNormalization
from numbabn import functional as F


# ------------------------------------------------------------------------------------------------
# helpers


def names(argument, value):
    """Regex for a message that names ``argument`` and, somewhere after it, shows ``value``."""
    return "(?s)" + re.escape(argument) + ".*" + re.escape(value)


def assert_bitwise_equal(actual, expected, what=""):
    """Same dtype, shape and bits (NaN equals NaN; 0.0 and -0.0 differ)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)
    assert actual.tobytes() == expected.tobytes(), f"{what}: equal values but different bits"


class LayerState:
    """A snapshot of everything a failed call must leave untouched."""

    def __init__(self, layer):
        self.built = layer.built
        self.names = [v.name for v in layer.weights]
        self.values = copy.deepcopy(layer.get_weights())
        self.flags = [v.trainable for v in layer.weights]
        self.config = copy.deepcopy(layer.get_config())
        self.grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}

    def assert_unchanged(self, layer):
        after = LayerState(layer)
        assert after.built == self.built, "`built` changed"
        assert after.config == self.config, "get_config() changed"
        assert after.names == self.names, "the list of weights changed"
        assert after.flags == self.flags, "trainable flags of the weights changed"
        assert len(after.values) == len(self.values)
        for name, a, b in zip(self.names, after.values, self.values):
            assert_bitwise_equal(a, b, name)
        assert sorted(after.grads) == sorted(self.grads), "layer.grads changed"
        for key in self.grads:
            assert_bitwise_equal(after.grads[key], self.grads[key], f"grads[{key!r}]")


def expect_clean_failure(layer, action, exc, pattern):
    """``action()`` raises ``exc`` matching ``pattern`` and leaves ``layer`` as it was."""
    before = LayerState(layer)
    with pytest.raises(exc, match=pattern):
        action()
    before.assert_unchanged(layer)




def _data(shape, dtype=np.float32, seed=0, loc=2.0, scale=3.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(dtype)


def test_bitwise_comparison_is_nan_aware_and_strict():
    assert_bitwise_equal(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    with pytest.raises(AssertionError):
        assert_bitwise_equal(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(AssertionError):
        assert_bitwise_equal(np.array([0.0]), np.array([-0.0]))
    with pytest.raises(AssertionError):
        assert_bitwise_equal(np.array([1.0], np.float32), np.array([1.0], np.float64))


# Bad inputs shared by the layer and the functional API: (id, value, shown value or None).
# None means the message shows the dtype of the array, as "dtype=<name>".
BAD_INPUTS = [
    ("complex", np.ones((8, 3), np.complex64), None),
    ("bool", np.ones((8, 3), bool), None),
    ("object", np.ones((8, 3)).astype(object), None),
    ("str-array", np.full((8, 3), "a"), None),
    ("bytes-array", np.full((8, 3), b"a"), None),
    ("datetime", np.zeros((8, 3), "datetime64[s]"), None),
    ("str", "abc", "'abc'"),
    ("none", None, "None"),
    ("ragged", [[1.0, 2.0], [3.0]], "[[1.0, 2.0], [3.0]]"),
]


def bad_input_pattern(argument, value, shown):
    if shown is None:
        return names(argument, f"dtype={np.asarray(value).dtype.name}")
    return names(argument, f"{argument}={shown}")


def _unit_adjustment(shape):
    return np.ones(shape[-1]), np.zeros(shape[-1])


# ------------------------------------------------------------------------------------------------
# constructor

CONSTRUCTOR_CASES = []


def ctor(case_id, kwargs, exc, pattern):
    CONSTRUCTOR_CASES.append(pytest.param(kwargs, exc, pattern, id=case_id))


for _value in [1.5, "x", None, [1, "a"], [], True, (1, 2.0), np.array([1]), {1: 1}]:
    ctor(f"axis={_value!r}", dict(axis=_value), TypeError, names("axis", repr(_value)))

for _arg in ["momentum", "epsilon", "renorm_momentum"]:
    for _value in ["0.9", None, True, [0.9], 1j]:
        _kw = dict(renorm=True) if _arg == "renorm_momentum" else {}
        ctor(f"{_arg}={_value!r}", {**_kw, _arg: _value}, TypeError,
             names(_arg, f"{_arg}={_value!r}"))
for _value in [float("nan"), float("inf"), -float("inf")]:
    ctor(f"momentum={_value!r}", dict(momentum=_value), ValueError,
         names("momentum", f"momentum={_value!r}"))
for _value in [-1e-3, -1e-12, float("nan"), float("inf")]:
    ctor(f"epsilon={_value!r}", dict(epsilon=_value), ValueError,
         names("epsilon", f"epsilon={_value!r}"))
for _value in [float("nan"), float("inf")]:
    ctor(f"renorm_momentum={_value!r}", dict(renorm=True, renorm_momentum=_value), ValueError,
         names("renorm_momentum", f"renorm_momentum={_value!r}"))
for _value in [1e39, -1e39, 3.5e38]:          # finite, but 1 - momentum overflows float32
    ctor(f"momentum={_value!r}", dict(momentum=_value), ValueError,
         names("momentum", f"momentum={_value!r}"))
    ctor(f"renorm_momentum={_value!r}", dict(renorm=True, renorm_momentum=_value), ValueError,
         names("renorm_momentum", f"renorm_momentum={_value!r}"))
for _key in ["rmax", "rmin", "dmax"]:
    ctor(f"renorm_clipping-{_key}-nan", dict(renorm=True, renorm_clipping={_key: float("nan")}),
         ValueError, names(f"renorm_clipping['{_key}']", "nan"))

for _arg in ["center", "scale", "renorm", "trainable"]:
    for _value in ["yes", 1, 0, None, 1.0]:
        ctor(f"{_arg}={_value!r}", {_arg: _value}, TypeError, names(_arg, f"{_arg}={_value!r}"))

for _value in ["yes", 2, "auto", [True]]:
    ctor(f"fused={_value!r}", dict(fused=_value), TypeError, names("fused", f"fused={_value!r}"))
for _value in [0, 1.0]:
    ctor(f"fused={_value!r}", dict(fused=_value), TypeError, names("fused", f"fused={_value!r}"))

for _arg in ["beta_initializer", "gamma_initializer", "moving_mean_initializer",
             "moving_variance_initializer"]:
    for _value in ["bogus", {"class_name": "Bogus", "config": {}}, {"class_name": "Zeros"},
                   {"class_name": "Constant", "config": {"bogus": 1}}, None, 3]:
        ctor(f"{_arg}={_value!r}", {_arg: _value}, ValueError,
             names(_arg, f"{_arg}={_value!r}"))
for _arg in ["beta_regularizer", "gamma_regularizer"]:
    for _value in ["l3", {"class_name": "L3", "config": {}}, {"class_name": "L2", "config": 0.1},
                   3]:
        ctor(f"{_arg}={_value!r}", {_arg: _value}, ValueError,
             names(_arg, f"{_arg}={_value!r}"))
for _arg in ["beta_constraint", "gamma_constraint"]:
    for _value in ["positive", {"class_name": "Positive", "config": {}}, 3]:
        ctor(f"{_arg}={_value!r}", {_arg: _value}, ValueError,
             names(_arg, f"{_arg}={_value!r}"))

ctor("renorm_clipping-unknown-key", dict(renorm=True, renorm_clipping={"rmax": 3.0, "foo": 1.0}),
     ValueError, names("renorm_clipping", "'foo'"))
ctor("renorm_clipping-value-str", dict(renorm=True, renorm_clipping={"rmax": "x"}), TypeError,
     names("renorm_clipping['rmax']", "'x'"))
for _value in [[("rmax", 3.0)], 3.0, "rmax"]:
    ctor(f"renorm_clipping={_value!r}", dict(renorm=True, renorm_clipping=_value), TypeError,
         names("renorm_clipping", f"renorm_clipping={_value!r}"))

for _value in [0, -2]:
    ctor(f"virtual_batch_size={_value!r}", dict(virtual_batch_size=_value), ValueError,
         names("virtual_batch_size", f"virtual_batch_size={_value!r}"))
for _value in [2.0, "2", True, [2]]:
    ctor(f"virtual_batch_size={_value!r}", dict(virtual_batch_size=_value), TypeError,
         names("virtual_batch_size", f"virtual_batch_size={_value!r}"))
ctor("virtual_batch_size-with-adjustment",
     dict(virtual_batch_size=2, adjustment=_unit_adjustment), ValueError,
     names("adjustment", "adjustment=<function _unit_adjustment"))
for _value in [3, "scale", (np.ones(3), np.zeros(3))]:
    ctor(f"adjustment-{type(_value).__name__}", dict(adjustment=_value), TypeError,
         names("adjustment", f"adjustment={_value!r}"))

for _value in [3, b"bn", ["bn"]]:
    ctor(f"name={_value!r}", dict(name=_value), TypeError, names("name", f"name={_value!r}"))
ctor("unknown-kwarg", dict(foo=1), TypeError, names("foo", "foo=1"))
ctor("misspelt-kwarg", dict(input_shap=(3,)), TypeError, names("input_shap", "input_shap=(3,)"))

for _value in ["int32", "bogus", "complex64", np.int32, np.dtype("int8")]:
    ctor(f"dtype={_value!r}", dict(dtype=_value), ValueError, names("dtype", f"dtype={_value!r}"))
ctor("dtype-policy-dict", dict(dtype={"class_name": "Policy", "config": {"name": "int32"}}),
     ValueError, names("dtype", "'int32'"))
for _value in [["float32"], {"name": "float32"}]:
    ctor(f"dtype={_value!r}", dict(dtype=_value), (TypeError, ValueError),
         names("dtype", f"dtype={_value!r}"))


@pytest.mark.parametrize("kwargs, exc, pattern", CONSTRUCTOR_CASES)
def test_constructor_rejects(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        BatchNormalization(**kwargs)


def test_renorm_clipping_is_not_checked_without_renorm():
    """Like Keras: renorm_clipping and renorm_momentum are ignored when renorm=False."""
    for clipping in [{"foo": 1.0}, {"rmax": "x"}, "not a dict"]:
        layer = BatchNormalization(renorm=False, renorm_clipping=clipping, renorm_momentum="x")
        assert "renorm_clipping" not in layer.get_config()
        y = layer(_data((8, 3)), training=True)
        assert y.shape == (8, 3)


def test_synchronized_keyword_is_accepted_and_dropped():
    layer = BatchNormalization(synchronized=False)
    assert "synchronized" not in layer.get_config()


def test_fused_numpy_false_means_not_fused():
    x = _data((2, 3, 3, 4))
    expected = BatchNormalization(fused=False, momentum=0.0)
    expected(x, training=True)
    layer = BatchNormalization(fused=np.False_, momentum=0.0)
    layer(x, training=True)
    # the same computation both ways: tighter than the float32 TOLERANCE row
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected.moving_variance.numpy(),
                               rtol=1e-6)


def _default_name_index(name):
    match = re.fullmatch(r"batch_normalization(?:_(\d+))?", name)
    assert match, name
    return int(match.group(1) or 0)


@pytest.mark.parametrize("kwargs", [
    dict(axis=1.5),
    dict(momentum="x"),
    dict(virtual_batch_size=0),
    dict(foo=1),
    dict(dtype="bogus"),
])
def test_failed_constructor_uses_up_no_default_name(kwargs):
    first = _default_name_index(BatchNormalization().name)
    with pytest.raises((TypeError, ValueError)):
        BatchNormalization(**kwargs)
    assert _default_name_index(BatchNormalization().name) == first + 1


# ------------------------------------------------------------------------------------------------
# failed calls on an unbuilt layer: the layer stays unbuilt

UNBUILT_CASES = []


def unbuilt(case_id, kwargs, action, exc, pattern):
    UNBUILT_CASES.append(pytest.param(kwargs, action, exc, pattern, id=case_id))


def _call(x, training=True):
    return lambda layer: layer(x, training=training)


unbuilt("axis-out-of-range", dict(axis=2), _call(_data((8, 3))), ValueError,
        names("rank=2", "axis=2"))
unbuilt("axis-negative-out-of-range", dict(axis=-3), _call(_data((8, 3))), ValueError,
        names("rank=2", "axis=-3"))
unbuilt("axis-out-of-range-inference", dict(axis=[1, 2]), _call(_data((8, 3)), False),
        ValueError, names("rank=2", "axis=[1, 2]"))
unbuilt("duplicate-axes", dict(axis=[1, -1]), _call(_data((8, 3))), ValueError,
        names("Duplicate axis", "axis=[1, -1]"))
unbuilt("duplicate-axes-rank3", dict(axis=(0, 2, -1)), _call(_data((4, 2, 3))), ValueError,
        names("Duplicate axis", "axis=[0, 2, -1]"))
unbuilt("scalar-input", {}, _call(np.float32(1.0)), ValueError, names("rank", "rank=0"))
unbuilt("python-scalar-input", {}, _call(1.0, False), ValueError, names("rank", "rank=0"))
unbuilt("ghost-axis-0", dict(axis=0, virtual_batch_size=2), _call(_data((8, 3))), ValueError,
        names("axis", "axis=0"))
unbuilt("ghost-axes-with-0", dict(axis=[0, 2], virtual_batch_size=2), _call(_data((8, 3, 2))),
        ValueError, names("axis", "axis=[0, 2]"))
unbuilt("ghost-indivisible-batch", dict(virtual_batch_size=4), _call(_data((6, 3))), ValueError,
        names("virtual_batch_size", "virtual_batch_size=4") + ".*" + re.escape("(6, 3)"))
for _id, _value, _shown in BAD_INPUTS:
    unbuilt(f"input-{_id}", {}, _call(_value), TypeError,
            bad_input_pattern("inputs", _value, _shown))
for _value in ["yes", 2, 0.5]:
    unbuilt(f"training={_value!r}", {}, _call(_data((8, 3)), _value), TypeError,
            names("training", f"training={_value!r}"))
unbuilt("initializer-wrong-shape",
        dict(gamma_initializer=lambda shape, dtype=None: np.ones(2)), _call(_data((8, 3))),
        ValueError, names("gamma_initializer", "(2,)"))
unbuilt("initializer-non-numeric",
        dict(moving_variance_initializer=lambda shape, dtype=None: np.full(shape, "a")),
        _call(_data((8, 3))), (TypeError, ValueError), names("moving_variance_initializer", "<U1"))
unbuilt("weights-kwarg-wrong-shape", dict(weights=[np.ones(2)] * 4), _call(_data((8, 3))),
        ValueError, names("gamma", "(2,)"))


@pytest.mark.parametrize("kwargs, action, exc, pattern", UNBUILT_CASES)
def test_failed_first_call_leaves_layer_unbuilt(kwargs, action, exc, pattern):
    layer = BatchNormalization(**kwargs)
    expect_clean_failure(layer, lambda: action(layer), exc, pattern)
    assert not layer.built
    with pytest.raises(RuntimeError, match="backward"):
        layer.backward(np.ones((8, 3), np.float32))


BUILD_CASES = [
    pytest.param(5, TypeError, names("input_shape", "input_shape=5"), id="int"),
    pytest.param(None, TypeError, names("input_shape", "input_shape=None"), id="none"),
    pytest.param((), ValueError, names("rank", "rank=0"), id="rank-0"),
    pytest.param((4, None), ValueError, names("axis", "(4, None)"), id="unknown-feature-dim"),
    pytest.param(("a", 3), (TypeError, ValueError), names("input_shape", "'a'"), id="str-dim"),
    pytest.param((4, -3), ValueError, names("input_shape", "-3"), id="negative-dim"),
    pytest.param((4, 3.5), TypeError, names("input_shape", "3.5"), id="float-dim"),
]


@pytest.mark.parametrize("shape, exc, pattern", BUILD_CASES)
def test_build_rejects(shape, exc, pattern):
    layer = BatchNormalization()
    expect_clean_failure(layer, lambda: layer.build(shape), exc, pattern)
    assert not layer.built


# ------------------------------------------------------------------------------------------------
# failed calls on a built (and trained) layer


def _adjustment(shape):
    """Valid for a batch of 8; each other batch size returns (or raises) something bad."""
    batch, channels = int(shape[0]), int(shape[-1])
    if batch == 2:
        return np.ones(channels), np.zeros(channels), np.ones(channels)
    if batch == 3:
        raise RuntimeError("adjustment failed on purpose")
    if batch == 4:
        return None, None
    if batch == 5:
        return np.ones(channels)
    if batch == 6:
        return np.ones(channels - 1), np.zeros(channels)
    if batch == 7:
        return "a", "b"
    return np.linspace(0.5, 1.5, channels), np.linspace(-0.5, 0.5, channels)


LAYERS = {
    "plain": (dict(), (8, 3)),
    "renorm": (dict(renorm=True, renorm_clipping={"rmax": 2.0, "dmax": 1.0},
                    renorm_momentum=0.9), (8, 3)),
    "ghost": (dict(virtual_batch_size=4), (8, 3)),
    "multi_axis": (dict(axis=[1, 3]), (2, 3, 4, 5)),
    "rank3": (dict(), (4, 5, 3)),
    "fused": (dict(), (2, 3, 3, 4)),
    "adjusted": (dict(adjustment=_adjustment), (8, 3)),
    "float64": (dict(dtype="float64"), (8, 3)),
}


@dataclass
class Trained:
    """A layer after one training call and its backward, and what that backward returned."""
    layer: BatchNormalization
    shape: tuple
    dy: np.ndarray
    dx: np.ndarray
    grads: dict


def _trained(key):
    kwargs, shape = LAYERS[key]
    layer = BatchNormalization(momentum=0.8, name=f"bn_{key}", **kwargs)
    x = _data(shape, layer.compute_dtype)
    layer(x, training=True)
    rng = np.random.default_rng(1)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
    layer(x, training=True)
    dy = _data(shape, layer.compute_dtype, seed=2, loc=0.0, scale=1.0)
    dx = layer.backward(dy)
    return Trained(layer, shape, dy, dx, {k: v.copy() for k, v in layer.grads.items()})


BUILT_CASES = []


def built(case_id, key, action, exc, pattern):
    BUILT_CASES.append(pytest.param(key, action, exc, pattern, id=f"{key}-{case_id}"))


_ZEROS = object()


def _input(shape, training=True, dtype=np.float32, value=_ZEROS):
    """Call the layer with ``value``, or with zeros of ``shape`` and ``dtype``."""
    def action(t):
        x = np.zeros(shape, dtype) if value is _ZEROS else value
        return t.layer(x, training=training)
    return action


def _set_weights(edit):
    """set_weights with every weight changed (+1), then ``edit`` applied to the list."""
    def action(t):
        new = [w + 1 for w in t.layer.get_weights()]
        return t.layer.set_weights(edit(new))
    return action


def _replace(index, value):
    def edit(weights):
        weights[index] = value(weights[index]) if callable(value) else value
        return weights
    return edit


for _key, (_kwargs, _shape) in LAYERS.items():
    _rank = len(_shape)
    _feature_axis = max(_kwargs["axis"]) if "axis" in _kwargs else _rank - 1
    _wider = tuple(d + 1 if a == _feature_axis else d for a, d in enumerate(_shape))
    _dtype = np.float64 if _key == "float64" else np.float32
    _n = 7 if _key == "renorm" else 4
    _last = _n - 1
    _last_name = "renorm_stddev" if _key == "renorm" else "moving_variance"

    built("rank-up", _key, _input(_shape + (2,)), ValueError,
          names(f"ndim={_rank}", f"ndim={_rank + 1}"))
    built("rank-down", _key, _input(_shape[:-1]), ValueError,
          f"(rank={_rank - 1}|found ndim={_rank - 1})")
    built("feature-size", _key, _input(_wider), ValueError,
          names(f"axis {_feature_axis}", str(_wider)))
    built("feature-size-inference", _key, _input(_wider, False), ValueError,
          names(f"axis {_feature_axis}", str(_wider)))
    built("scalar", _key, _input(()), ValueError, names("ndim", "ndim=0"))
    built("complex-input", _key, _input(_shape, dtype=np.complex128), TypeError,
          names("inputs", "dtype=complex128"))
    built("str-input", _key, _input(None, value="abc"), TypeError, names("inputs", "'abc'"))
    built("training='yes'", _key, _input(_shape, training="yes"), TypeError,
          names("training", "training='yes'"))
    built("set_weights-too-few", _key, _set_weights(lambda w: w[:-1]), ValueError,
          names("weights", f"length {_n - 1}"))
    built("set_weights-too-many", _key, _set_weights(lambda w: w + [w[0]]), ValueError,
          names("weights", f"length {_n + 1}"))
    built("set_weights-last-wrong-shape", _key, _set_weights(_replace(_last, np.ones(2))),
          ValueError, names(_last_name, "(2,)"))
    built("set_weights-middle-wrong-shape", _key,
          _set_weights(_replace(2, lambda w: np.ones(w.shape + (1,)))), ValueError,
          r"(?s)moving_mean.*of shape \(.*, 1\)")
    built("set_weights-last-non-numeric", _key,
          _set_weights(_replace(_last, lambda w: np.full(w.shape, "a"))), TypeError,
          names(_last_name, "<U1"))
    built("trainable=1", _key, lambda t: setattr(t.layer, "trainable", 1), TypeError,
          names("trainable", "trainable=1"))
    built("backward-dy-shape", _key,
          lambda t, s=_wider, d=_dtype: t.layer.backward(np.ones(s, d)),
          ValueError, names("dy", str(_wider)))
    built("backward-dy-complex", _key,
          lambda t: t.layer.backward(t.dy.astype(np.complex64)), TypeError,
          names("dy", "dtype=complex64"))

for _id, _value, _shown in BAD_INPUTS:
    built(f"input-{_id}", "plain", _input(None, value=_value), TypeError,
          bad_input_pattern("inputs", _value, _shown))
for _value in [2, -1, 0.5, 1.0, [True], "False"]:
    built(f"training={_value!r}", "plain", _input((8, 3), training=_value), TypeError,
          names("training", f"training={_value!r}"))
built("indivisible-batch", "ghost", _input((6, 3)), ValueError,
      names("virtual_batch_size", "virtual_batch_size=4") + ".*" + re.escape("(6, 3)"))
built("indivisible-batch-2", "ghost", _input((10, 3)), ValueError,
      names("virtual_batch_size", "virtual_batch_size=4") + ".*" + re.escape("(10, 3)"))
built("feature-dim-3", "multi_axis", _input((2, 3, 4, 6)), ValueError,
      names("axis 3", "(2, 3, 4, 6)"))
built("feature-dim-1", "multi_axis", _input((2, 4, 4, 5)), ValueError,
      names("axis 1", "(2, 4, 4, 5)"))
built("set_weights-flat-wrong-size", "multi_axis", _set_weights(_replace(3, np.ones(14))),
      ValueError, names("moving_variance", "(14,)"))
built("set_weights-2d-per-feature", "multi_axis", _set_weights(_replace(3, np.ones((3, 5)))),
      ValueError, names("moving_variance", "(3, 5)"))
built("set_weights-2d", "ghost", _set_weights(_replace(3, np.ones((1, 3)))), ValueError,
      names("moving_variance", "(1, 3)"))
built("set_weights-bool", "plain", _set_weights(_replace(1, np.ones(3, bool))), TypeError,
      names("beta", "bool"))
built("set_weights-complex", "plain", _set_weights(_replace(3, np.ones(3, complex))), TypeError,
      names("moving_variance", "complex"))
built("set_weights-none-entry", "plain", _set_weights(_replace(3, None)), TypeError,
      names("moving_variance", "object"))
built("set_weights-none", "plain", lambda t: t.layer.set_weights(None), TypeError,
      names("weights", "None"))
built("set_weights-ragged", "plain", _set_weights(_replace(3, [1.0, [2.0, 3.0], 4.0])),
      (TypeError, ValueError), names("moving_variance", "[1.0, [2.0, 3.0], 4.0]"))
built("backward-dy-none", "plain", lambda t: t.layer.backward(None), TypeError,
      names("dy", "dy=None"))
built("backward-dy-bool", "plain", lambda t: t.layer.backward(np.ones((8, 3), bool)), TypeError,
      names("dy", "dtype=bool"))
built("backward-dy-str", "plain", lambda t: t.layer.backward("dy"), TypeError,
      names("dy", "dy='dy'"))
built("backward-dy-transposed", "plain", lambda t: t.layer.backward(np.ones((3, 8))), ValueError,
      names("dy", "(3, 8)"))
built("backward-dy-broadcastable", "plain", lambda t: t.layer.backward(np.ones((1, 3))),
      ValueError, names("dy", "(1, 3)"))
built("adjustment-triple", "adjusted", _input((2, 3)), ValueError,
      names("adjustment", "tuple"))
built("adjustment-raises", "adjusted", _input((3, 3)), RuntimeError, "on purpose")
built("adjustment-not-a-pair", "adjusted", _input((5, 3)), ValueError,
      names("adjustment", "ndarray"))
built("adjustment-not-broadcastable", "adjusted", _input((6, 3)), ValueError,
      names("adjustment", "(2,)"))
built("adjustment-non-numeric", "adjusted", _input((7, 3)), (TypeError, ValueError),
      names("adjustment", "'a'"))
built("adjustment-none-pair", "adjusted", _input((4, 3)), (TypeError, ValueError),
      names("adjustment", "None"))


@pytest.mark.parametrize("key, action, exc, pattern", BUILT_CASES)
def test_failed_call_on_built_layer_changes_nothing(key, action, exc, pattern):
    t = _trained(key)
    expect_clean_failure(t.layer, lambda: action(t), exc, pattern)
    # The state backward() uses is still that of the last successful call.
    assert_bitwise_equal(t.layer.backward(t.dy), t.dx, "dx")
    assert sorted(t.layer.grads) == sorted(t.grads)
    for k in t.grads:
        assert_bitwise_equal(t.layer.grads[k], t.grads[k], f"grads[{k!r}]")


def test_backward_before_any_call():
    layer = BatchNormalization()
    with pytest.raises(RuntimeError, match=names("backward", "before any forward call")):
        layer.backward(np.ones((8, 3), np.float32))
    layer.build((8, 3))
    expect_clean_failure(layer, lambda: layer.backward(np.ones((8, 3), np.float32)),
                         RuntimeError, names("backward", "before any forward call"))


def test_set_weights_before_build():
    layer = BatchNormalization()
    expect_clean_failure(layer, lambda: layer.set_weights([np.ones(3)] * 4), RuntimeError,
                         "no weights yet")
    assert not layer.built


def test_failed_calls_in_a_row_keep_the_first_gradient():
    """Several different failures after one good call: backward still answers for that call."""
    t = _trained("renorm")
    failures = [
        (lambda: t.layer(np.ones((8, 4), np.float32), training=True), ValueError),
        (lambda: t.layer(np.ones((8, 4), np.float32), training=False), ValueError),
        (lambda: t.layer(np.ones((8, 3), complex)), TypeError),
        (lambda: t.layer.backward(np.ones((8, 4))), ValueError),
        (lambda: t.layer.set_weights([np.ones(3)] * 6 + [np.ones(4)]), ValueError),
    ]
    before = LayerState(t.layer)
    for action, exc in failures:
        with pytest.raises(exc):
            action()
    before.assert_unchanged(t.layer)
    assert_bitwise_equal(t.layer.backward(t.dy), t.dx, "dx")


# ------------------------------------------------------------------------------------------------
# what is accepted


@pytest.mark.parametrize("shape", [(0, 3), (4, 0, 3)])
def test_empty_batch_in_inference_returns_empty(shape):
    x = np.zeros(shape, np.float32)
    fresh = BatchNormalization()
    y = fresh(x)
    assert y.shape == shape and y.dtype == np.float32
    assert fresh.built
    layer = BatchNormalization()
    layer(_data(tuple(d or 5 for d in shape)), training=True)
    before = LayerState(layer)
    for training in (False, None, 0):
        y = layer(x, training=training)
        assert y.shape == shape and y.dtype == np.float32
    before.assert_unchanged(layer)
    assert layer.backward(np.zeros(shape, np.float32)).shape == shape


EMPTY_TRAINING = [
    ({}, (0, 3)), ({}, (4, 0, 3)), ({}, (0, 5, 3)), (dict(axis=1), (0, 3, 4, 4)),
    ({}, (0, 4, 4, 3)), (dict(virtual_batch_size=2), (0, 3)), (dict(renorm=True), (0, 3)),
    (dict(center=False, scale=False), (0, 3)), (dict(dtype="float64"), (0, 3)),
    (dict(adjustment=lambda shape: (np.full(3, 2.0), np.ones(3))), (0, 3)),
]


# the CUDA simulator runs kernels as Python, where the NaN statistics of nothing warn
SIMULATED_NAN = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@SIMULATED_NAN
@pytest.mark.parametrize("kwargs, shape", EMPTY_TRAINING, ids=str)
def test_an_empty_batch_in_training_returns_empty_and_changes_no_state(kwargs, shape, backend):
    """PyTorch's rule: an empty output, no moving-statistics update, zero parameter gradients."""
    layer = BatchNormalization(momentum=0.5, **kwargs)
    full = tuple(d or 8 for d in shape)
    layer(backend.to(_data(full, layer.compute_dtype)), training=True)   # some state to keep
    before = LayerState(layer)
    x = np.zeros(shape, layer.compute_dtype)
    y = layer(backend.to(x), training=True)
    assert y.shape == shape and backend.host(y).dtype == layer.compute_dtype
    before.assert_unchanged(layer)
    dx = layer.backward(backend.to(x))
    assert dx.shape == shape
    assert sorted(layer.grads) == [k for k in ("beta", "gamma") if kwargs.get(
        {"beta": "center", "gamma": "scale"}[k], True)]
    for key, grad in layer.grads.items():
        np.testing.assert_array_equal(backend.host(grad), 0.0, err_msg=key)
    assert all(np.isfinite(w).all() for w in layer.get_weights())


def test_an_empty_masked_batch_changes_no_state():
    layer = BatchNormalization()
    layer(_data((8, 5, 3)), training=True, mask=np.ones((8, 5), bool))
    before = LayerState(layer)
    empty = np.zeros((0, 5, 3), np.float32)
    assert layer(empty, training=True, mask=np.zeros((0, 5), bool)).shape == (0, 5, 3)
    before.assert_unchanged(layer)
    y, cache = F.batch_norm_train(empty, mask=np.zeros((0, 5), bool))
    assert y.shape == (0, 5, 3)
    with pytest.raises(ValueError, match="no true value"):      # a non-empty batch still must
        layer(_data((2, 5, 3)), training=True, mask=np.zeros((2, 5), bool))


@SIMULATED_NAN
@pytest.mark.parametrize("shape", [(0, 3), (4, 0, 3)])
def test_functional_empty_batch_in_training(shape, backend):
    y, cache = F.batch_norm_train(backend.to(np.zeros(shape, np.float32)))
    assert y.shape == shape
    dx, dgamma, dbeta = F.batch_norm_backward(backend.to(np.zeros(shape, np.float32)), cache)
    assert dx.shape == shape
    np.testing.assert_array_equal(backend.host(dgamma), 0.0)
    np.testing.assert_array_equal(backend.host(dbeta), 0.0)
    y, _ = F.batch_norm_train(np.zeros((0, 3), np.float32), virtual_batch_size=2)
    assert y.shape == (0, 3)


def test_inference_batch_need_not_divide_virtual_batch_size():
    layer = BatchNormalization(virtual_batch_size=4)
    layer(_data((8, 3)), training=True)
    before = LayerState(layer)
    for batch in (1, 5, 6, 10):
        assert layer(_data((batch, 3)), training=False).shape == (batch, 3)
    before.assert_unchanged(layer)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_input_is_cast(dtype):
    x = np.arange(24).reshape(8, 3).astype(dtype)
    for layer_dtype, out in [("float32", np.float32), ("float64", np.float64)]:
        layer = BatchNormalization(dtype=layer_dtype)
        reference = BatchNormalization(dtype=layer_dtype)
        y = layer(x, training=True)
        y_ref = reference(x.astype(out), training=True)
        assert y.dtype == out
        # the same values cast first or inside the layer: tighter than the float32 row
        np.testing.assert_allclose(y, y_ref, rtol=1e-6)
        np.testing.assert_allclose(layer.moving_mean.numpy(), reference.moving_mean.numpy())
        assert layer.backward(np.ones((8, 3), dtype)).dtype == out


@pytest.mark.parametrize("training, updates", [
    (True, True), (1, True), (np.True_, True), (np.int64(1), True),
    (False, False), (0, False), (None, False), (np.False_, False),
])
def test_training_flag_values(training, updates):
    layer = BatchNormalization(momentum=0.5)
    layer.build((8, 3))
    x = _data((8, 3))
    before = layer.moving_mean.numpy()
    layer(x, training=training)
    assert (not np.array_equal(layer.moving_mean.numpy(), before)) == updates


def test_flat_per_feature_weights_are_accepted():
    layer = BatchNormalization(axis=[1, 3])
    layer(_data((2, 3, 4, 5)))
    values = [np.arange(15.0) + k for k in range(4)]
    layer.set_weights(values)
    for w, v in zip(layer.get_weights(), values):
        assert w.shape == (1, 3, 1, 5) and w.dtype == np.float32
        np.testing.assert_array_equal(w.reshape(-1), v)
    ghost = BatchNormalization(virtual_batch_size=2)
    ghost(_data((8, 3)))
    ghost.set_weights([np.full(3, 2.0)] * 4)
    assert all(w.shape == (1, 1, 3) for w in ghost.get_weights())


def test_adjustment_is_not_called_in_inference():
    t = _trained("adjusted")
    before = LayerState(t.layer)
    for batch in (2, 3, 4, 5, 6, 7):       # each would make `adjustment` fail in training
        assert t.layer(_data((batch, 3)), training=False).shape == (batch, 3)
    before.assert_unchanged(t.layer)


def test_a_call_does_not_write_into_its_input():
    x = _data((8, 3))
    kept = x.copy()
    layer = BatchNormalization()
    y = layer(x, training=True)
    layer.backward(y)
    assert_bitwise_equal(x, kept, "input")


# ------------------------------------------------------------------------------------------------
# functional API

X = _data((8, 3))
MEAN, VAR = np.zeros(3), np.ones(3)
_, CACHE = F.batch_norm_train(X)

FUNCTIONAL_CASES = []


def functional(case_id, action, exc, pattern):
    FUNCTIONAL_CASES.append(pytest.param(action, exc, pattern, id=case_id))


_FUNCTIONS = {
    "moments": lambda x, **kw: F.moments(x, **kw),
    "batch_norm_train": lambda x, **kw: F.batch_norm_train(x, **kw),
    "batch_norm_infer": lambda x, **kw: F.batch_norm_infer(x, MEAN, VAR, **kw),
}
for _fname, _fn in _FUNCTIONS.items():
    functional(f"{_fname}-axis=1.5", lambda f=_fn: f(X, axis=1.5), TypeError,
               names("axis", "1.5"))
    functional(f"{_fname}-axis=[]", lambda f=_fn: f(X, axis=[]), TypeError, names("axis", "[]"))
    functional(f"{_fname}-axis=2", lambda f=_fn: f(X, axis=2), ValueError,
               names("rank=2", "axis=2"))
    functional(f"{_fname}-axis=-3", lambda f=_fn: f(X, axis=-3), ValueError,
               names("rank=2", "axis=-3"))
    functional(f"{_fname}-duplicate-axes", lambda f=_fn: f(X, axis=[1, -1]), ValueError,
               names("Duplicate axis", "axis=[1, -1]"))
    functional(f"{_fname}-scalar", lambda f=_fn: f(np.float32(1.0)), ValueError,
               names("rank", "rank=0"))
    for _id, _value, _shown in BAD_INPUTS:
        functional(f"{_fname}-input-{_id}", lambda f=_fn, v=_value: f(v), TypeError,
                   bad_input_pattern("x", _value, _shown))

for _shape in [(0, 3), (4, 0, 3)]:
    functional(f"moments-empty-{_shape}", lambda s=_shape: F.moments(np.zeros(s, np.float32)),
               ValueError, names("x", str(_shape)))
functional("batch_norm_train-ghost-indivisible",
           lambda: F.batch_norm_train(X, virtual_batch_size=3), ValueError,
           names("virtual_batch_size", "virtual_batch_size=3"))
functional("moments-ghost-axis-0", lambda: F.moments(X, axis=0, virtual_batch_size=2), ValueError,
           names("axis", "axis=[0]"))
for _value, _exc in [(0, ValueError), (-2, ValueError), (2.0, TypeError), ("2", TypeError)]:
    for _fname in ["moments", "batch_norm_train"]:
        functional(f"{_fname}-virtual_batch_size={_value!r}",
                   lambda f=_FUNCTIONS[_fname], v=_value: f(X, virtual_batch_size=v), _exc,
                   names("virtual_batch_size", f"virtual_batch_size={_value!r}"))
for _fname in ["batch_norm_train", "batch_norm_infer"]:
    functional(f"{_fname}-epsilon='x'", lambda f=_FUNCTIONS[_fname]: f(X, epsilon="x"), TypeError,
               names("epsilon", "epsilon='x'"))
    for _value in [-1.0, float("nan"), float("inf")]:
        functional(f"{_fname}-epsilon={_value!r}",
                   lambda f=_FUNCTIONS[_fname], v=_value: f(X, epsilon=v), ValueError,
                   names("epsilon", f"epsilon={_value!r}"))
functional("batch_norm_train-gamma-size", lambda: F.batch_norm_train(X, gamma=np.ones(2)),
           ValueError, names("gamma", "(2,)"))
functional("batch_norm_train-beta-size", lambda: F.batch_norm_train(X, beta=np.ones(4)),
           ValueError, names("beta", "(4,)"))
functional("batch_norm_infer-gamma-size", lambda: F.batch_norm_infer(X, MEAN, VAR, np.ones(2)),
           ValueError, names("gamma", "(2,)"))
functional("batch_norm_train-gamma-non-numeric", lambda: F.batch_norm_train(X, gamma="abc"),
           (TypeError, ValueError), names("gamma", "'abc'"))
functional("batch_norm_infer-mean-size", lambda: F.batch_norm_infer(X, np.zeros(2), VAR),
           ValueError, names("`mean`", "(2,)"))
functional("batch_norm_infer-variance-size", lambda: F.batch_norm_infer(X, MEAN, np.ones(4)),
           ValueError, names("`variance`", "(4,)"))
functional("backward-dy-shape", lambda: F.batch_norm_backward(np.ones((8, 2)), CACHE),
           ValueError, names("dy", "(8, 2)"))
functional("backward-dy-transposed", lambda: F.batch_norm_backward(np.ones((3, 8)), CACHE),
           ValueError, names("dy", "(3, 8)"))
functional("backward-dy-broadcastable", lambda: F.batch_norm_backward(np.ones(3), CACHE),
           ValueError, names("dy", "(3,)"))
for _id, _value, _shown in BAD_INPUTS:
    functional(f"backward-dy-{_id}", lambda v=_value: F.batch_norm_backward(v, CACHE), TypeError,
               bad_input_pattern("dy", _value, _shown))


@pytest.mark.parametrize("action, exc, pattern", FUNCTIONAL_CASES)
def test_functional_rejects(action, exc, pattern):
    with pytest.raises(exc, match=pattern):
        action()


def test_functional_backward_cache_survives_a_failed_call():
    x = _data((8, 3))
    dy = _data((8, 3), seed=4, loc=0.0, scale=1.0)
    _, cache = F.batch_norm_train(x)
    expected = F.batch_norm_backward(dy, cache)
    with pytest.raises(ValueError):
        F.batch_norm_backward(np.ones((8, 2)), cache)
    again = F.batch_norm_backward(dy, cache)
    for got, want, what in zip(again, expected, ["dx", "dgamma", "dbeta"]):
        assert_bitwise_equal(got, want, what)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0, 3)])
def test_functional_empty_batch_in_inference(shape):
    y, cache = F.batch_norm_infer(np.zeros(shape, np.float32), MEAN, VAR)
    assert y.shape == shape and y.dtype == np.float32
    assert F.batch_norm_backward(np.zeros(shape, np.float32), cache)[0].shape == shape


# ------------------------------------------------------------------------------------------------
# exception types and messages found by adversarial testing: each was an AttributeError,
# IndexError, a message without the argument, or a silent acceptance

class _UnreadableDeviceArray:
    """Claims to be a CUDA array, but reading its interface raises (as a torch CUDA tensor that
    requires grad does)."""
    shape, dtype, ndim = (4, 3), np.dtype(np.float32), 2

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't export tensors that require gradient")


def test_an_unreadable_cuda_array_interface_is_a_type_error():
    layer = BatchNormalization()
    expect_clean_failure(layer, lambda: layer(_UnreadableDeviceArray(), training=True),
                         TypeError, names("inputs", "require gradient"))
    with pytest.raises(TypeError, match=names("x", "require gradient")):
        F.batch_norm_train(_UnreadableDeviceArray())


def test_a_dtype_config_that_is_not_a_dict_is_a_value_error():
    with pytest.raises(ValueError, match=re.escape("Received: dtype={'config': 5}")):
        BatchNormalization(dtype={"config": 5})


def test_backward_without_a_cache_is_a_type_error():
    with pytest.raises(TypeError, match=names("cache", "cache=None")):
        F.batch_norm_backward(np.ones((2, 3)), None)


def test_moving_average_of_zero_dimensional_arrays():
    out = F.moving_average(np.array(1.0), np.array(3.0), momentum=0.5)
    assert out.shape == () and float(out) == 2.0


def test_assign_add_of_the_wrong_shape_names_the_weight():
    layer = BatchNormalization()
    layer.build((None, 3))
    before = LayerState(layer)
    for action in (lambda: layer.gamma.assign_add(np.ones(4)),
                   lambda: layer.beta.assign_sub(np.ones((2, 3)))):
        with pytest.raises(ValueError, match=r"(gamma|beta):0 of shape \(3,\)"):
            action()
    with pytest.raises(TypeError, match="delta"):
        layer.gamma.assign_add("a")
    before.assert_unchanged(layer)


@pytest.mark.parametrize("value", [0.5, 2.0, np.nan, -1.0])
def test_mask_values_other_than_zero_and_one_are_refused(value, backend):
    layer = BatchNormalization()
    x = backend.to(_data((2, 5, 3)))
    layer(x, training=True)
    mask = np.ones((2, 5))
    mask[1, 3] = value
    expect_clean_failure(layer, lambda: layer(x, training=True, mask=backend.to(mask)),
                         ValueError, names("mask", "(2, 5)"))


def test_a_mask_of_the_wrong_type_shows_its_dtype_and_shape():
    layer = BatchNormalization()
    expect_clean_failure(layer, lambda: layer(_data((2, 5, 3)), training=True,
                                              mask=np.ones((2, 5), complex)),
                         TypeError, names("mask", "complex128 and shape (2, 5)"))


def test_a_complex_device_value_is_refused_as_on_the_cpu():
    from numba import cuda
    layer = BatchNormalization()
    layer.build((None, 3))
    before = LayerState(layer)
    with pytest.raises(TypeError, match="gamma"):
        layer.gamma.assign(np.ones(3, complex))
    with pytest.raises(TypeError, match=names("gamma", "complex128")):
        layer.gamma.assign(cuda.to_device(np.ones(3, complex)))
    before.assert_unchanged(layer)


# epsilon=0 is accepted, as in Keras: a zero variance then gives IEEE results (NaN, as
# TensorFlow's 0 * inf), never an exception from a kernel
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero):RuntimeWarning")
@pytest.mark.parametrize("shape, axis", [((4, 3), -1), ((4, 3, 2, 2), 1), ((4, 2, 2, 3), -1)])
def test_epsilon_zero_gives_ieee_results(shape, axis, backend, rng):
    from conftest import assert_close
    from numbabn import reference as R
    x = rng.normal(size=shape).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[axis] = 0
    x[tuple(index)] = 1.5                          # feature 0 is constant: variance 0
    dy = rng.normal(size=shape).astype(np.float32)
    axes = (axis % len(shape),)
    layer = BatchNormalization(axis=axis, epsilon=0.0)
    y = backend.host(layer(backend.to(x), training=True))
    dx = backend.host(layer.backward(backend.to(dy)))
    with np.errstate(all="ignore"):
        want_y, _, _ = R.forward_train(x, axes, 0.0)
        want_dx, _, _ = R.backward_train(dy, x, axes, 0.0)
    assert np.isnan(y[tuple(index)]).all() and np.isnan(dx[tuple(index)]).all()
    finite = np.isfinite(want_y)
    assert_close(y[finite], want_y[finite], scale=10)
    assert_close(dx[finite], want_dx[finite], scale=10)
    assert np.isfinite(layer.moving_variance.value).all()
    one = BatchNormalization(axis=axis, epsilon=0.0)          # a batch of one sample
    single = x[:1]
    assert np.isnan(backend.host(one(backend.to(single), training=True))[tuple(index)][0]).all()
    flat = BatchNormalization(axis=axis, epsilon=0.0, moving_variance_initializer="zeros")
    y_infer = backend.host(flat(backend.to(x), training=False))   # x * inf + (0 - 0 * inf)
    assert np.isnan(y_infer).all()
    assert backend.host(flat.backward(backend.to(dy))).shape == shape
    y_f, cache = F.batch_norm_train(backend.to(x), axis=axis, epsilon=0.0)
    assert np.isnan(backend.host(y_f)[tuple(index)]).all()
    F.batch_norm_backward(backend.to(dy), cache)


def test_functional_checks_hold_after_a_memoized_call():
    """A valid call's checks are memoized per (shape, axis, virtual_batch_size); arguments whose
    keys compare equal to a memoized one's (a bool axis, a float batch size) are still refused,
    and the memoized layout still serves other shapes' checks."""
    x = np.ones((8, 3), np.float32)
    F.batch_norm_train(x, axis=1)
    F.batch_norm_train(x, axis=1, virtual_batch_size=2)
    with pytest.raises(TypeError, match="axis"):
        F.batch_norm_train(x, axis=True)
    with pytest.raises(TypeError, match="virtual_batch_size"):
        F.batch_norm_train(x, axis=1, virtual_batch_size=2.0)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        F.batch_norm_train(np.ones((6, 3), np.float32), axis=1, virtual_batch_size=4)
    with pytest.raises(ValueError, match="axis"):
        F.batch_norm_infer(np.ones((8,), np.float32), 0.0, 1.0, axis=1)
