"""Tests for numbabn.keras.identifiers (Keras-style initializers, regularizers,
constraints and their identifiers)."""

import json
import math
import re

import numpy as np
import pytest

from numbabn.keras import identifiers as kc

TRUNC_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


def _msg(text):
    return re.escape(text)


# ---------------------------------------------------------------------------
# initializer identifiers
# ---------------------------------------------------------------------------
INITIALIZER_ALIASES = [
    ("zeros", "Zeros", {}),
    ("Zeros", "Zeros", {}),
    ("zero", "Zeros", {}),
    ("ZerosV2", "Zeros", {}),
    ("ones", "Ones", {}),
    ("Ones", "Ones", {}),
    ("one", "Ones", {}),
    ("OnesV2", "Ones", {}),
    ("constant", "Constant", {"value": 0}),
    ("Constant", "Constant", {"value": 0}),
    ("ConstantV2", "Constant", {"value": 0}),
    ("random_normal", "RandomNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("RandomNormal", "RandomNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("normal", "RandomNormal", {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("RandomNormalV2", "RandomNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("random_uniform", "RandomUniform",
     {"minval": -0.05, "maxval": 0.05, "seed": None}),
    ("RandomUniform", "RandomUniform",
     {"minval": -0.05, "maxval": 0.05, "seed": None}),
    ("uniform", "RandomUniform",
     {"minval": -0.05, "maxval": 0.05, "seed": None}),
    ("RandomUniformV2", "RandomUniform",
     {"minval": -0.05, "maxval": 0.05, "seed": None}),
    ("truncated_normal", "TruncatedNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("TruncatedNormal", "TruncatedNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("TruncatedNormalV2", "TruncatedNormal",
     {"mean": 0.0, "stddev": 0.05, "seed": None}),
    ("variance_scaling", "VarianceScaling",
     {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal",
      "seed": None}),
    ("VarianceScaling", "VarianceScaling",
     {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal",
      "seed": None}),
    ("VarianceScalingV2", "VarianceScaling",
     {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal",
      "seed": None}),
    ("identity", "Identity", {"gain": 1.0}),
    ("Identity", "Identity", {"gain": 1.0}),
    ("IdentityV2", "Identity", {"gain": 1.0}),
    ("orthogonal", "Orthogonal", {"gain": 1.0, "seed": None}),
    ("Orthogonal", "Orthogonal", {"gain": 1.0, "seed": None}),
    ("OrthogonalV2", "Orthogonal", {"gain": 1.0, "seed": None}),
]
for _snake, _camel in [
    ("glorot_uniform", "GlorotUniform"),
    ("glorot_normal", "GlorotNormal"),
    ("he_normal", "HeNormal"),
    ("he_uniform", "HeUniform"),
    ("lecun_normal", "LecunNormal"),
    ("lecun_uniform", "LecunUniform"),
]:
    for _name in (_snake, _camel, _snake + "V2", _camel + "V2"):
        INITIALIZER_ALIASES.append((_name, _camel, {"seed": None}))


@pytest.mark.parametrize("name,class_name,config", INITIALIZER_ALIASES)
def test_initializer_aliases(name, class_name, config):
    init = kc.get_initializer(name, argument="gamma_initializer")
    assert type(init) is getattr(kc, class_name)
    assert init.get_config() == config
    assert kc.serialize_initializer(init) == {
        "class_name": class_name, "config": config}
    # the serialized dict is JSON-safe and can be used as an identifier
    data = json.loads(json.dumps(kc.serialize_initializer(init)))
    again = kc.get_initializer(data)
    assert type(again) is type(init)
    assert again.get_config() == config


def test_initializer_serialize_with_module():
    out = kc.serialize_initializer(kc.GlorotUniform(seed=3), with_module=True)
    assert out == {
        "module": "keras.initializers",
        "class_name": "GlorotUniform",
        "config": {"seed": 3},
        "registered_name": None,
    }
    assert list(out) == ["module", "class_name", "config", "registered_name"]
    assert kc.get_initializer(out).get_config() == {"seed": 3}


def test_initializer_dict_ignores_module_keys_and_dtype():
    ident = {
        "module": "keras.initializers",
        "class_name": "VarianceScaling",
        "config": {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform",
                   "seed": 7, "dtype": "float32"},
        "registered_name": None,
    }
    init = kc.get_initializer(ident)
    assert init.get_config() == {
        "scale": 2.0, "mode": "fan_avg", "distribution": "uniform", "seed": 7}


def test_variance_scaling_distribution_normalization():
    assert kc.VarianceScaling(distribution="Normal").distribution == (
        "truncated_normal")
    assert kc.VarianceScaling(distribution="UNIFORM").distribution == "uniform"


def test_instances_returned_as_is_and_classes_instantiated():
    init = kc.RandomNormal(seed=1)
    assert kc.get_initializer(init) is init
    assert type(kc.get_initializer(kc.HeNormal)) is kc.HeNormal
    reg = kc.L2(0.5)
    assert kc.get_regularizer(reg) is reg
    assert type(kc.get_regularizer(kc.L1)) is kc.L1
    con = kc.MaxNorm(3)
    assert kc.get_constraint(con) is con
    assert type(kc.get_constraint(kc.NonNeg)) is kc.NonNeg


# ---------------------------------------------------------------------------
# deterministic initializers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zeros_ones_constant(dtype):
    z = kc.Zeros()((3, 4), dtype)
    assert z.dtype == dtype and z.shape == (3, 4) and not z.any()
    o = kc.get_initializer("ones")((5,), dtype=dtype)
    assert o.dtype == dtype and np.array_equal(o, np.ones(5))
    c = kc.Constant(2.5)([2, 2], dtype)
    assert c.dtype == dtype and np.array_equal(c, np.full((2, 2), 2.5))
    c = kc.Constant([1.0, 2.0, 3.0, 4.0])((2, 2), dtype)
    assert np.array_equal(c, [[1.0, 2.0], [3.0, 4.0]])


def test_default_dtype_is_float32_and_int_shape():
    assert kc.Ones()(4).dtype == np.float32
    assert kc.Ones()(4).shape == (4,)
    assert kc.RandomNormal(seed=0)((2, 3)).dtype == np.float32
    assert kc.GlorotUniform(seed=0)(np.int64(6)).shape == (6,)
    assert kc.Zeros()((), np.float64).shape == ()


def test_initializers_return_new_arrays():
    init = kc.Ones()
    a = init((3,), np.float32)
    a[:] = 5
    assert np.array_equal(init((3,), np.float32), np.ones(3))


def test_zeros_integer_dtype():
    out = kc.Zeros()((3,), np.int32)
    assert out.dtype == np.int32 and not out.any()


def test_identity():
    out = kc.Identity(gain=3.0)((3, 4), np.float64)
    expected = np.zeros((3, 4))
    expected[np.arange(3), np.arange(3)] = 3.0
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 3, 4)])
def test_orthogonal(shape):
    out = kc.Orthogonal(gain=2.0, seed=4)(shape, np.float64)
    assert out.shape == shape
    flat = out.reshape(-1, shape[-1])
    if flat.shape[0] >= flat.shape[1]:
        gram = flat.T @ flat
    else:
        gram = flat @ flat.T
    assert np.allclose(gram, 4.0 * np.eye(gram.shape[0]), atol=1e-12)


def test_compute_fans():
    assert kc.compute_fans(()) == (1, 1)
    assert kc.compute_fans((7,)) == (7, 7)
    assert kc.compute_fans(7) == (7, 7)
    assert kc.compute_fans((3, 5)) == (3, 5)
    assert kc.compute_fans((3, 3, 4, 8)) == (36, 72)
    assert kc.compute_fans((2, 2, 2, 3, 5)) == (24, 40)


# ---------------------------------------------------------------------------
# random initializers
# ---------------------------------------------------------------------------
RANDOM_NAMES = [
    "random_normal", "random_uniform", "truncated_normal", "variance_scaling",
    "glorot_uniform", "glorot_normal", "he_normal", "he_uniform",
    "lecun_normal", "lecun_uniform", "orthogonal",
]


@pytest.mark.parametrize("name", RANDOM_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_seeded_determinism_and_round_trip(name, dtype):
    init = kc.get_initializer({"class_name": name, "config": {"seed": 42}})
    a = init((6, 5), dtype)
    assert a.dtype == dtype and a.shape == (6, 5)
    assert np.array_equal(a, init((6, 5), dtype))  # same on every call
    twin = kc.get_initializer(kc.serialize_initializer(init))
    assert np.array_equal(a, twin((6, 5), dtype))
    other = kc.get_initializer({"class_name": name, "config": {"seed": 43}})
    assert not np.array_equal(a, other((6, 5), dtype))


@pytest.mark.parametrize("name", RANDOM_NAMES)
def test_random_unseeded_calls_differ(name):
    init = kc.get_initializer(name)
    assert not np.array_equal(init((6, 5)), init((6, 5)))


def test_negative_seed_is_accepted():
    init = kc.RandomNormal(seed=-3)
    assert np.array_equal(init((4,)), init((4,)))


def test_random_normal_statistics():
    out = kc.RandomNormal(mean=0.3, stddev=0.2, seed=1)((400, 500), np.float64)
    assert abs(out.mean() - 0.3) < 0.002
    assert abs(out.std() / 0.2 - 1) < 0.01


def test_random_uniform_statistics_and_bounds():
    out = kc.RandomUniform(-0.5, 1.5, seed=1)((200000,), np.float64)
    assert out.min() >= -0.5 and out.max() < 1.5
    assert abs(out.mean() - 0.5) < 0.01
    assert abs(out.std() / (2.0 / math.sqrt(12)) - 1) < 0.01
    ints = kc.RandomUniform(0, 10, seed=2)((1000,), np.int32)
    assert ints.dtype == np.int32 and ints.min() >= 0 and ints.max() <= 9


def test_random_uniform_defaults_in_float32():
    out = kc.get_initializer("uniform")((100000,))
    assert out.dtype == np.float32
    assert out.min() >= -0.05 and out.max() <= 0.05


def test_truncated_normal_bounds_and_statistics():
    mean, stddev = -1.0, 0.5
    out = kc.TruncatedNormal(mean, stddev, seed=5)((200000,), np.float64)
    assert np.all(np.abs(out - mean) <= 2 * stddev)
    assert abs(out.mean() - mean) < 0.005
    assert abs(out.std() / (stddev * TRUNC_STD) - 1) < 0.01
    # the tails are resampled, not clipped: no mass piles up at the bound;
    # P(1.9 < |z| <= 2 | |z| <= 2) = 0.01251 for a standard normal z
    assert np.mean(np.abs(out - mean) == 2 * stddev) == 0
    assert abs(np.mean(np.abs(out - mean) > 1.9 * stddev) - 0.01251) < 0.002
    default = kc.get_initializer("truncated_normal")((50000,), np.float32)
    assert np.all(np.abs(default) <= np.float32(0.1))


@pytest.mark.parametrize("shape", [(1000,), (300, 700), (3, 3, 16, 8)])
@pytest.mark.parametrize(
    "name,scale,mode,dist",
    [
        ("glorot_uniform", 1.0, "fan_avg", "uniform"),
        ("glorot_normal", 1.0, "fan_avg", "truncated_normal"),
        ("he_normal", 2.0, "fan_in", "truncated_normal"),
        ("he_uniform", 2.0, "fan_in", "uniform"),
        ("lecun_normal", 1.0, "fan_in", "truncated_normal"),
        ("lecun_uniform", 1.0, "fan_in", "uniform"),
    ],
)
def test_variance_scaling_presets(shape, name, scale, mode, dist):
    if len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape
    else:
        rf = int(np.prod(shape[:-2]))
        fan_in, fan_out = shape[-2] * rf, shape[-1] * rf
    n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
    target_std = math.sqrt(scale / n)
    repeats = max(1, 200000 // int(np.prod(shape)))
    outs = [kc.get_initializer({"class_name": name, "config": {"seed": s}})(
        shape, np.float64) for s in range(repeats)]
    out = np.concatenate([o.ravel() for o in outs])
    assert abs(out.std() / target_std - 1) < 0.02
    assert abs(out.mean()) < 0.02 * target_std
    if dist == "uniform":
        assert np.abs(out).max() <= math.sqrt(3) * target_std
    else:
        assert np.abs(out).max() <= 2 * target_std / TRUNC_STD


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize(
    "dist", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_modes(mode, dist):
    shape = (200, 800)
    n = {"fan_in": 200, "fan_out": 800, "fan_avg": 500}[mode]
    init = kc.VarianceScaling(scale=3.0, mode=mode, distribution=dist, seed=9)
    out = init(shape, np.float64)
    assert abs(out.std() / math.sqrt(3.0 / n) - 1) < 0.02


def test_variance_scaling_fan_floor_of_one():
    out = kc.VarianceScaling(distribution="uniform", seed=0)((0, 5))
    assert out.shape == (0, 5)
    out = kc.VarianceScaling(distribution="uniform", seed=0)((), np.float64)
    assert abs(out) <= math.sqrt(3.0)


# ---------------------------------------------------------------------------
# regularizers
# ---------------------------------------------------------------------------
REGULARIZER_ALIASES = [
    ("l1", "L1", {"l1": 0.01}),
    ("L1", "L1", {"l1": 0.01}),
    ("l2", "L2", {"l2": 0.01}),
    ("L2", "L2", {"l2": 0.01}),
    ("l1_l2", "L1L2", {"l1": 0.01, "l2": 0.01}),
    ("L1L2", "L1L2", {"l1": 0.0, "l2": 0.0}),
]


@pytest.mark.parametrize("name,class_name,config", REGULARIZER_ALIASES)
def test_regularizer_aliases(name, class_name, config):
    reg = kc.get_regularizer(name, argument="gamma_regularizer")
    assert type(reg) is getattr(kc, class_name)
    assert kc.serialize_regularizer(reg) == {
        "class_name": class_name, "config": config}
    again = kc.get_regularizer(json.loads(json.dumps(
        kc.serialize_regularizer(reg))))
    assert again.get_config() == config


def test_regularizer_dict_l1_l2_uses_string_defaults():
    reg = kc.get_regularizer({"class_name": "l1_l2", "config": {"l2": 0.5}})
    assert reg.get_config() == {"l1": 0.01, "l2": 0.5}
    reg = kc.get_regularizer({"class_name": "L1L2", "config": {"l2": 0.5}})
    assert reg.get_config() == {"l1": 0.0, "l2": 0.5}


def test_regularizer_legacy_l_key_and_none():
    assert kc.get_regularizer(
        {"class_name": "L2", "config": {"l": 0.5}}).get_config() == {"l2": 0.5}
    assert kc.get_regularizer(
        {"class_name": "L1", "config": {"l": 0.5}}).get_config() == {"l1": 0.5}
    assert kc.L2(None).l2 == 0.01
    assert kc.L1(None).l1 == 0.01
    assert kc.L1L2(None, None).get_config() == {"l1": 0.0, "l2": 0.0}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularizer_closed_forms(dtype):
    w = np.random.default_rng(0).standard_normal((40, 3)).astype(dtype)
    w64 = w.astype(np.float64)
    l1 = 0.01 * np.abs(w64).sum()
    l2 = 0.01 * (w64 ** 2).sum()
    for ident, expected in [("l1", l1), ("l2", l2), ("l1_l2", l1 + l2),
                            ("L1L2", 0.0)]:
        value = kc.get_regularizer(ident)(w)
        assert type(value) is float
        assert math.isclose(value, expected, rel_tol=1e-12)
    value = kc.L1L2(l1=0.3, l2=0.7)(w)
    assert math.isclose(value, 0.3 * np.abs(w64).sum()
                        + 0.7 * (w64 ** 2).sum(), rel_tol=1e-12)


def test_regularizer_accepts_lists_and_skips_zero_terms():
    assert kc.L2(0.5)([1.0, 2.0]) == 2.5
    # zero factors skip their term (no 0 * inf = nan), as Keras does
    assert kc.L1L2(l1=0.0, l2=0.5)(np.array([np.inf])) == np.inf


def test_plain_callable_regularizer():
    def my_reg(w):
        return 3.0 * float(np.sum(w))

    assert kc.get_regularizer(my_reg) is my_reg
    assert kc.get_regularizer(None) is None
    assert kc.serialize_regularizer(None) is None


# ---------------------------------------------------------------------------
# constraints
# ---------------------------------------------------------------------------
CONSTRAINT_ALIASES = [
    ("non_neg", "NonNeg", {}),
    ("NonNeg", "NonNeg", {}),
    ("nonneg", "NonNeg", {}),
    ("unit_norm", "UnitNorm", {"axis": 0}),
    ("UnitNorm", "UnitNorm", {"axis": 0}),
    ("unitnorm", "UnitNorm", {"axis": 0}),
    ("max_norm", "MaxNorm", {"max_value": 2, "axis": 0}),
    ("MaxNorm", "MaxNorm", {"max_value": 2, "axis": 0}),
    ("maxnorm", "MaxNorm", {"max_value": 2, "axis": 0}),
    ("min_max_norm", "MinMaxNorm",
     {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
    ("MinMaxNorm", "MinMaxNorm",
     {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
]


@pytest.mark.parametrize("name,class_name,config", CONSTRAINT_ALIASES)
def test_constraint_aliases(name, class_name, config):
    con = kc.get_constraint(name, argument="beta_constraint")
    assert type(con) is getattr(kc, class_name)
    out = kc.serialize_constraint(con)
    assert out == {"class_name": class_name, "config": config}
    again = kc.get_constraint(json.loads(json.dumps(out)))
    assert again.get_config() == config


def test_constraint_serialize_with_module_and_list_axis():
    con = kc.MaxNorm(1.5, axis=(0, 1))
    out = kc.serialize_constraint(con, with_module=True)
    assert out == {"module": "keras.constraints", "class_name": "MaxNorm",
                   "config": {"max_value": 1.5, "axis": [0, 1]},
                   "registered_name": None}
    assert kc.get_constraint(out).axis == (0, 1)


def _norm(w, axis):
    return np.sqrt((w.astype(np.float64) ** 2).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((5, 4), 0), ((5, 4), 1),
                                        ((3, 3, 4, 2), [0, 1, 2])])
def test_constraint_closed_forms(dtype, shape, axis):
    w = (3 * np.random.default_rng(1).standard_normal(shape)).astype(dtype)
    ax = tuple(axis) if isinstance(axis, list) else axis
    n = _norm(w, ax)
    w64 = w.astype(np.float64)
    eps = 1e-7
    expected = {
        "unit": w64 / (eps + n),
        "max": w64 * np.minimum(n, 1.5) / (eps + n),
        "minmax": w64 * (0.25 * np.clip(n, 0.5, 2.0) + 0.75 * n) / (eps + n),
    }
    got = {
        "unit": kc.UnitNorm(axis=axis)(w),
        "max": kc.MaxNorm(max_value=1.5, axis=axis)(w),
        "minmax": kc.MinMaxNorm(0.5, 2.0, rate=0.25, axis=axis)(w),
    }
    # a few elementwise operations from a closed form: tighter than the TOLERANCE rows
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    for key, out in got.items():
        assert out.dtype == dtype and out.shape == w.shape
        assert np.allclose(out, expected[key], rtol=rtol, atol=0), key
        assert out is not w


def test_max_norm_only_shrinks():
    w = np.array([0.3, -0.4], np.float64)  # norm 0.5 < 2
    out = kc.get_constraint("max_norm")(w)
    assert np.allclose(out, w * 0.5 / (1e-7 + 0.5), rtol=1e-15)
    w = np.array([3.0, -4.0], np.float64)  # norm 5 > 2
    assert np.allclose(kc.MaxNorm()(w), w * 2 / (1e-7 + 5), rtol=1e-15)


def test_non_neg():
    w = np.array([-1.0, -0.0, 0.0, 2.0, np.nan, -np.inf, np.inf], np.float32)
    out = kc.get_constraint("non_neg")(w)
    assert out.dtype == np.float32
    with np.errstate(invalid="ignore"):
        expected = w * (w >= 0).astype(np.float32)
    assert np.array_equal(out, expected, equal_nan=True)
    assert np.array_equal(np.signbit(out), np.signbit(expected))
    assert np.array_equal(kc.NonNeg()(np.array([-1.0, 2.0])), [0.0, 2.0])


def test_plain_callable_constraint():
    def clip01(w):
        return np.clip(w, 0, 1)

    assert kc.get_constraint(clip01) is clip01
    assert kc.get_constraint(None) is None
    assert kc.serialize_constraint(None) is None


# ---------------------------------------------------------------------------
# plain callables and custom objects
# ---------------------------------------------------------------------------
def my_init(shape, dtype=None):
    return np.full(shape, 7.0, dtype=dtype)


class ScaledOnes:
    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, shape, dtype=None):
        return np.full(shape, self.scale, dtype=dtype)

    def get_config(self):
        return {"scale": self.scale}


def test_plain_function_initializer_and_serialization():
    assert kc.get_initializer(my_init) is my_init
    out = kc.serialize_initializer(my_init)
    assert out == {"class_name": "my_init", "config": {}}
    with pytest.raises(ValueError, match="Unknown initializer class_name"):
        kc.get_initializer(out, argument="gamma_initializer")
    again = kc.get_initializer(out, custom_objects={"my_init": my_init})
    assert again is my_init
    assert kc.get_initializer("my_init",
                              custom_objects={"my_init": my_init}) is my_init


def test_callable_object_with_get_config_round_trips():
    obj = ScaledOnes(3.0)
    assert kc.get_initializer(obj) is obj
    out = kc.serialize_initializer(obj)
    assert out == {"class_name": "ScaledOnes", "config": {"scale": 3.0}}
    again = kc.get_initializer(out, custom_objects={"ScaledOnes": ScaledOnes})
    assert isinstance(again, ScaledOnes) and again.scale == 3.0
    new = kc.serialize_initializer(obj, with_module=True)
    assert new["registered_name"] == "ScaledOnes"
    assert new["module"] == __name__


def test_custom_subclass_round_trip():
    class Twos(kc.Initializer):
        def __call__(self, shape, dtype=None):
            return np.full(shape, 2.0, dtype=dtype or np.float32)

    out = kc.serialize_initializer(Twos())
    assert out == {"class_name": "Twos", "config": {}}
    init = kc.get_initializer(out, custom_objects={"Twos": Twos})
    assert isinstance(init, Twos)


def test_custom_objects_take_precedence():
    init = kc.get_initializer("zeros", custom_objects={"zeros": kc.Ones})
    assert type(init) is kc.Ones


def test_lambda_serialization_does_not_crash():
    out = kc.serialize_constraint(lambda w: w)
    assert out == {"class_name": "<lambda>", "config": {}}


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
GETTERS = [
    (kc.get_initializer, "initializer", "gamma_initializer"),
    (kc.get_regularizer, "regularizer", "gamma_regularizer"),
    (kc.get_constraint, "constraint", "beta_constraint"),
]


@pytest.mark.parametrize("getter,kind,argument", GETTERS)
@pytest.mark.parametrize("bad", ["foo", "", "ZEROS_", 5, 1.5, [1], b"l2",
                                 ("zeros",)])
def test_uninterpretable_identifiers(getter, kind, argument, bad):
    expected = (f"Could not interpret {kind} identifier for `{argument}`. "
                f"Received: {argument}={bad!r}")
    with pytest.raises(ValueError, match=_msg(expected)):
        getter(bad, argument=argument)


def test_none_initializer_is_an_error():
    with pytest.raises(ValueError, match=_msg(
            "Could not interpret initializer identifier for "
            "`moving_mean_initializer`. "
            "Received: moving_mean_initializer=None")):
        kc.get_initializer(None, argument="moving_mean_initializer")


def test_default_argument_name():
    with pytest.raises(ValueError, match=_msg(
            "for `regularizer`. Received: regularizer='foo'")):
        kc.get_regularizer("foo")


def test_strings_are_case_sensitive():
    with pytest.raises(ValueError, match="Could not interpret"):
        kc.get_initializer("ZEROS")
    with pytest.raises(ValueError, match="Could not interpret"):
        kc.get_regularizer("l1l2")


@pytest.mark.parametrize("getter,kind,argument", GETTERS)
def test_unknown_class_name(getter, kind, argument):
    ident = {"class_name": "Foo", "config": {}}
    with pytest.raises(ValueError, match=_msg(
            f"Unknown {kind} class_name 'Foo' for `{argument}`. "
            f"Received: {argument}={ident!r}")):
        getter(ident, argument=argument)


@pytest.mark.parametrize("getter,kind,argument", GETTERS)
@pytest.mark.parametrize("ident", [
    {"class_name": "Zeros"},
    {"config": {}},
    {"class_name": 3, "config": {}},
    {"class_name": "Zeros", "config": []},
    {"class_name": "Zeros", "config": {}, "extra": 1},
])
def test_malformed_dicts(getter, kind, argument, ident):
    with pytest.raises(ValueError, match=_msg(
            f"Improper {kind} config for `{argument}`")) as info:
        getter(ident, argument=argument)
    assert f"Received: {argument}={ident!r}" in str(info.value)


@pytest.mark.parametrize("getter,ident,argument,detail", [
    (kc.get_initializer, {"class_name": "Zeros", "config": {"foo": 1}},
     "beta_initializer", "unknown config key 'foo'"),
    (kc.get_initializer, {"class_name": "GlorotUniform",
                          "config": {"scale": 2.0}},
     "gamma_initializer", "unknown config key 'scale'"),
    (kc.get_regularizer, {"class_name": "L2", "config": {"l1": 0.1}},
     "gamma_regularizer", "unknown config key 'l1'"),
    (kc.get_regularizer, {"class_name": "L2", "config": {"l": 1, "l2": 2}},
     "gamma_regularizer", "config key 'l2' is given twice"),
    (kc.get_constraint, {"class_name": "NonNeg", "config": {"axis": 0}},
     "gamma_constraint", "unknown config key 'axis'"),
    (kc.get_regularizer, {"class_name": "L2", "config": {"dtype": "float32"}},
     "gamma_regularizer", "unknown config key 'dtype'"),
])
def test_unknown_config_keys(getter, ident, argument, detail):
    with pytest.raises(ValueError) as info:
        getter(ident, argument=argument)
    text = str(info.value)
    assert f"`{argument}`" in text and detail in text
    assert f"Received: {argument}={ident!r}" in text


BAD_CONFIGS = [
    (kc.get_regularizer, "L2", {"l2": -0.1}, "`l2` must be non-negative",
     "l2=-0.1"),
    (kc.get_regularizer, "L1", {"l1": float("nan")}, "`l1` must be finite",
     "l1=nan"),
    (kc.get_regularizer, "L1L2", {"l1": "a"}, "`l1` must be a real number",
     "l1='a'"),
    (kc.get_regularizer, "l1_l2", {"l2": True},
     "`l2` must be a real number", "l2=True"),
    (kc.get_initializer, "RandomNormal", {"stddev": 0.0},
     "`stddev` must be positive", "stddev=0.0"),
    (kc.get_initializer, "TruncatedNormal", {"stddev": -1},
     "`stddev` must be positive", "stddev=-1"),
    (kc.get_initializer, "RandomUniform", {"minval": 1.0, "maxval": 0.0},
     "`maxval` must not be smaller than `minval`", "minval=1.0, maxval=0.0"),
    (kc.get_initializer, "VarianceScaling", {"scale": 0.0},
     "`scale` must be positive", "scale=0.0"),
    (kc.get_initializer, "VarianceScaling", {"mode": "fan"},
     "`mode` must be one of", "mode='fan'"),
    (kc.get_initializer, "VarianceScaling", {"distribution": "cauchy"},
     "`distribution` must be one of", "distribution='cauchy'"),
    (kc.get_initializer, "HeNormal", {"seed": 1.5},
     "`seed` must be an integer or None", "seed=1.5"),
    (kc.get_initializer, "RandomNormal", {"seed": True},
     "`seed` must be an integer or None", "seed=True"),
    (kc.get_initializer, "Constant", {"value": "x"},
     "`value` must be a real number", "value='x'"),
    (kc.get_constraint, "MaxNorm", {"max_value": -1},
     "`max_value` must be non-negative", "max_value=-1"),
    (kc.get_constraint, "MinMaxNorm", {"min_value": 2.0, "max_value": 1.0},
     "`max_value` must not be smaller than `min_value`",
     "min_value=2.0, max_value=1.0"),
    (kc.get_constraint, "MinMaxNorm", {"rate": 1.5}, "`rate` must be <= 1.0",
     "rate=1.5"),
    (kc.get_constraint, "UnitNorm", {"axis": "a"}, "`axis` must be",
     "axis='a'"),
    (kc.get_constraint, "MaxNorm", {"axis": []}, "`axis` must be", "axis=[]"),
]


@pytest.mark.parametrize("getter,class_name,config,detail,received",
                         BAD_CONFIGS)
def test_invalid_numeric_configs(getter, class_name, config, detail,
                                 received):
    ident = {"class_name": class_name, "config": config}
    with pytest.raises(ValueError) as info:
        getter(ident, argument="gamma_x")
    text = str(info.value)
    assert "configuration for `gamma_x`" in text
    assert detail in text
    assert f"Received: {received}" in text
    assert f"Received: gamma_x={ident!r}" in text


def test_invalid_config_in_direct_construction():
    with pytest.raises(ValueError, match=_msg(
            "L2: `l2` must be non-negative. Received: l2=-1")):
        kc.L2(-1)
    with pytest.raises(ValueError, match=_msg(
            "MaxNorm: `max_value` must be non-negative. "
            "Received: max_value=-2")):
        kc.MaxNorm(-2)


def test_call_time_errors():
    with pytest.raises(ValueError, match=_msg(
            "RandomNormal: expected a floating point dtype. "
            "Received: dtype=int32")):
        kc.RandomNormal()((3,), np.int32)
    with pytest.raises(ValueError, match="2-D shapes"):
        kc.get_initializer("identity")((4,))
    with pytest.raises(ValueError, match="rank >= 2"):
        kc.get_initializer("orthogonal")((4,))
    with pytest.raises(ValueError, match="int\\(minval\\) < int\\(maxval\\)"):
        kc.RandomUniform()((3,), np.int64)
    with pytest.raises(ValueError, match="3 elements but shape"):
        kc.Constant([1.0, 2.0, 3.0])((2, 3))
    with pytest.raises(ValueError, match=_msg(
            "MaxNorm: expected floating point weights. "
            "Received: dtype=int64")):
        kc.MaxNorm()(np.array([1, 2], np.int64))
    with pytest.raises(TypeError, match="`shape` must be"):
        kc.Zeros()(("a",))
    with pytest.raises(ValueError, match="negative dimensions"):
        kc.Zeros()((-1,))


def test_serialize_rejects_non_callables():
    with pytest.raises(ValueError, match="Cannot serialize initializer 5"):
        kc.serialize_initializer(5)


def test_repr():
    assert repr(kc.L2(0.5)) == "L2(l2=0.5)"
    assert repr(kc.get_regularizer("l1_l2")) == "L1L2(l1=0.01, l2=0.01)"
