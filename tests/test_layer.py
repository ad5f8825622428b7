"""Layer behaviour beyond the golden fixtures: API contract, state rules, gradients, config."""
import json

import numpy as np
import pytest
from conftest import assert_close, numeric_grad

import numbabn
from numbabn import reference as R

BN = numbabn.BatchNormalization


LAYERS = [
    dict(),
    dict(axis=1),
    dict(axis=[1, 3]),
    dict(renorm=True, renorm_clipping={"rmax": 1.2, "rmin": 0.9, "dmax": 0.1}),
    dict(virtual_batch_size=2),
    dict(adjustment=lambda shape: (np.linspace(0.9, 1.1, shape[-1]),
                                   np.linspace(-0.1, 0.1, shape[-1]))),
    dict(center=False),
    dict(scale=False),
]


@pytest.mark.parametrize("kwargs", LAYERS, ids=lambda k: ",".join(k) or "default")
@pytest.mark.parametrize("training", [True, False])
def test_float64_gradients_match_finite_differences(kwargs, training, rng):
    """dx, dgamma and dbeta of a float64 layer against central differences of its forward."""
    x = rng.normal(1.0, 2.0, size=(4, 3, 2, 3))
    dy = rng.normal(size=x.shape)
    layer = BN(dtype="float64", **kwargs)
    layer.build(x.shape)
    weights = [w + rng.uniform(-0.3, 0.3, w.shape) for w in layer.get_weights()]
    layer.set_weights(weights)
    snapshot = layer.get_weights()

    def loss(x_):
        layer.set_weights(snapshot)                   # forward passes must not drift the stats
        return float((layer(x_, training=training) * dy).sum())

    def loss_wrt(key):
        index = [w.name.split("/")[-1].split(":")[0] for w in layer.weights].index(key)

        def f(p):
            w = [v.copy() for v in snapshot]
            w[index] = p
            layer.set_weights(w)
            return float((layer(x, training=training) * dy).sum())
        return f, snapshot[index]

    numeric_dx = numeric_grad(loss, x)
    layer.set_weights(snapshot)
    layer(x, training=training)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numeric_dx, rtol=1e-6, atol=1e-7)
    for key in ("gamma", "beta"):
        if key not in layer.grads:
            continue
        f, p = loss_wrt(key)
        np.testing.assert_allclose(layer.grads[key], numeric_grad(f, p), rtol=1e-6, atol=1e-7)


def test_call_contract_and_weights_api(rng):
    x = rng.normal(size=(16, 5)).astype(np.float32)
    layer = BN(name="bn")
    assert not layer.built and layer.weights == [] and layer.losses == []
    y = layer(x, training=True)
    assert y.shape == x.shape and y.dtype == np.float32 and layer.built
    assert [w.name for w in layer.weights] == ["bn/gamma:0", "bn/beta:0", "bn/moving_mean:0",
                                               "bn/moving_variance:0"]
    assert [w.name for w in layer.trainable_weights] == ["bn/gamma:0", "bn/beta:0"]
    assert [w.name for w in layer.non_trainable_weights] == ["bn/moving_mean:0",
                                                             "bn/moving_variance:0"]
    assert layer.gamma is layer.weights[0]
    got = layer.get_weights()
    got[0][:] = 7.0                               # copies: the layer is not affected
    assert layer.gamma.value[0] == 1.0
    layer.set_weights([np.full(5, 2.0), np.zeros(5), np.zeros(5), np.ones(5)])
    assert_close(layer(x, training=False), 2.0 * x / np.sqrt(1.0 + 1e-3))


def test_default_names_are_unique():
    a, b = BN(), BN()
    assert a.name != b.name
    assert a.name.startswith("batch_normalization") and b.name.startswith("batch_normalization")


def test_flat_weights_accepted_for_multi_axis_params(rng):
    layer = BN(axis=[1, 3])
    layer.build((2, 3, 4, 5))
    assert [w.shape for w in layer.weights] == [(1, 3, 1, 5)] * 4
    flat = [rng.normal(size=15) for _ in range(4)]
    layer.set_weights(flat)
    for got, want in zip(layer.get_weights(), flat):
        np.testing.assert_array_equal(got.ravel(), want.astype(np.float32))


def test_inference_equals_training_at_momentum_zero(rng):
    """momentum=0 copies the batch statistics, so inference then reproduces training."""
    x = rng.normal(3.0, 2.0, size=(32, 6, 4)).astype(np.float32)
    layer = BN(momentum=0.0, fused=False)
    y_train = layer(x, training=True)
    assert_close(layer(x, training=False), y_train, scale=5)


def test_fused_path_tracks_unbiased_variance(rng):
    x = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)     # NHWC: n = 12 per channel
    fused, plain = BN(momentum=0.0), BN(momentum=0.0, fused=False)
    fused(x, training=True)
    plain(x, training=True)
    var = x.reshape(-1, 4).astype(np.float64).var(0)
    assert_close(fused.moving_variance.value, var * 12 / 11)
    assert_close(plain.moving_variance.value, var)


def test_training_none_is_inference(rng):
    x = rng.normal(size=(8, 3)).astype(np.float32)
    layer = BN()
    layer.build(x.shape)
    before = layer.get_weights()
    y = layer(x, training=None)
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert_close(y, x / np.sqrt(1 + 1e-3))


def test_frozen_layer_uses_batch_statistics_but_keeps_moving_ones(rng):
    x = rng.normal(4.0, 2.0, size=(32, 3)).astype(np.float32)
    layer = BN(trainable=False)
    layer.build(x.shape)
    before = layer.get_weights()
    y = layer(x, training=True)
    assert_close(y, R.forward_train(x, (1,), 1e-3)[0])
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    layer.backward(np.ones_like(y))
    assert layer.grads == {}
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 4
    layer.trainable = True
    layer(x, training=True)
    layer.backward(np.ones_like(y))
    assert sorted(layer.grads) == ["beta", "gamma"]
    assert not np.array_equal(layer.moving_mean.value, before[2])


def test_frozen_renorm_layer_still_updates_renorm_statistics(rng):
    x = rng.normal(4.0, 2.0, size=(32, 3)).astype(np.float32)
    layer = BN(renorm=True, trainable=False)
    layer.build(x.shape)
    before = dict(zip([w.name.split("/")[1][:-2] for w in layer.weights], layer.get_weights()))
    layer(x, training=True)
    after = dict(zip(before, layer.get_weights()))
    for key in ("moving_mean", "moving_variance", "moving_stddev", "gamma", "beta"):
        np.testing.assert_array_equal(before[key], after[key])
    for key in ("renorm_mean", "renorm_stddev"):
        assert not np.array_equal(before[key], after[key])


def test_config_round_trips_every_argument():
    layer = BN(axis=[1, 2], momentum=0.8, epsilon=1e-4, center=False, scale=True,
               beta_initializer="ones", gamma_initializer={"class_name": "Constant",
                                                           "config": {"value": 2.0}},
               moving_mean_initializer="random_normal", moving_variance_initializer="ones",
               beta_regularizer="l1", gamma_regularizer={"class_name": "L2",
                                                         "config": {"l2": 0.5}},
               beta_constraint="non_neg", gamma_constraint="unit_norm", renorm=True,
               renorm_clipping={"rmax": 2.0}, renorm_momentum=0.7, trainable=False,
               virtual_batch_size=4, name="custom", dtype="float64")
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = BN.from_config(config)
    assert clone.get_config() == config
    layer(np.ones((8, 2, 3, 2)), training=True)
    built = layer.get_config()
    assert built["axis"] == [1, 2] and built["virtual_batch_size"] == 4
    rebuilt = BN.from_config(built)
    rebuilt(np.ones((8, 2, 3, 2)), training=True)        # TF's shifted axis would fail here
    assert rebuilt.get_config() == built


def test_config_before_build_reports_axis_as_given():
    assert BN().get_config()["axis"] == -1
    assert BN(axis=(1, -1)).get_config()["axis"] == [1, -1]


def test_losses_and_constraints(rng):
    layer = BN(gamma_regularizer="l2", beta_regularizer={"class_name": "L1",
                                                         "config": {"l1": 0.5}},
               gamma_constraint="non_neg", beta_constraint={"class_name": "MaxNorm",
                                                            "config": {"max_value": 1.0}})
    layer.build((4, 3))
    gamma = np.array([-1.0, 2.0, -3.0])
    beta = np.array([0.6, 0.8, 0.0])
    layer.set_weights([gamma, beta, np.zeros(3), np.ones(3)])
    # closed-form values of float32 weights: tighter than the float32 TOLERANCE row
    np.testing.assert_allclose(layer.losses, [0.01 * 14.0, 0.5 * 1.4], rtol=1e-6)
    layer(rng.normal(size=(4, 3)), training=True)             # the forward never constrains
    np.testing.assert_array_equal(layer.gamma.value, gamma.astype(np.float32))
    layer.apply_constraints()
    np.testing.assert_allclose(layer.gamma.value, [0.0, 2.0, 0.0])
    np.testing.assert_allclose(layer.beta.value, beta, rtol=1e-6)    # norm 1.0 is within 1.0


def test_float64_layer_accepts_float32_adjustment_and_constraints(rng):
    adj = lambda shape: (np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32))  # noqa
    layer = BN(dtype="float64", adjustment=adj,
               gamma_constraint=lambda w: np.abs(w).astype(np.float32))
    y = layer(rng.normal(size=(8, 3)), training=True)
    assert y.dtype == np.float64
    layer.set_weights([-np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)])
    layer.apply_constraints()
    assert layer.gamma.value.dtype == np.float64
    np.testing.assert_array_equal(layer.gamma.value, 1.0)


@pytest.mark.parametrize("policy, input_dtype, output_dtype", [
    ("float32", np.float16, np.float32), ("float32", np.float64, np.float32),
    ("float32", np.int32, np.float32), ("float64", np.float32, np.float64),
    ("float16", np.float32, np.float16), ("mixed_float16", np.float16, np.float16)])
def test_dtype_policies(policy, input_dtype, output_dtype, rng):
    x = (rng.normal(size=(16, 4)) * 4).astype(input_dtype)
    layer = BN(dtype=policy)
    y = layer(x, training=True)
    assert y.dtype == output_dtype
    assert layer.moving_mean.value.dtype == (np.float64 if policy == "float64" else np.float32)
    assert_close(y, R.forward_train(x.astype(np.float64), (1,), 1e-3)[0], output_dtype)
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == (input_dtype if np.dtype(input_dtype).kind == "f" else output_dtype)


def test_adjustment_receives_the_input_shape_and_is_not_called_in_inference(rng):
    seen = []

    def adjustment(shape):
        seen.append(shape)
        return np.ones(3), np.zeros(3)

    layer = BN(adjustment=adjustment)
    x = rng.normal(size=(5, 3))
    layer(x, training=True)
    layer(x, training=False)
    assert len(seen) == 1 and seen[0].dtype == np.int32 and seen[0].tolist() == [5, 3]


def test_nan_stays_in_its_channel(rng):
    x = rng.normal(size=(16, 3)).astype(np.float32)
    x[3, 1] = np.nan
    layer = BN()
    y = layer(x, training=True)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    assert np.isnan(layer.moving_mean.value[1])
    assert np.isfinite(layer.moving_mean.value[[0, 2]]).all()


def test_non_contiguous_input(rng):
    base = rng.normal(size=(20, 6)).astype(np.float32)
    x = base[::2, ::2]
    y = BN()(x, training=True)
    assert_close(y, R.forward_train(x, (1,), 1e-3)[0])


def test_initial_weights_keyword(rng):
    weights = [rng.normal(size=3) for _ in range(4)]
    layer = BN(weights=weights)
    layer.build((2, 3))
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_weights_update_in_place(rng):
    layer = BN()
    with pytest.raises(AttributeError, match="build"):
        layer.gamma
    x = rng.normal(size=(8, 3)).astype(np.float32)
    layer(x, training=True)
    layer.backward(np.ones_like(x))
    gamma = layer.gamma
    layer.gamma -= 0.5 * np.ones(3)
    assert layer.gamma is gamma
    np.testing.assert_array_equal(layer.get_weights()[0], 0.5)
    layer.beta.assign([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(layer.get_weights()[1], [1.0, 2.0, 3.0])
    with pytest.raises(AttributeError, match="assign"):
        layer.gamma = np.zeros(3)
    np.testing.assert_array_equal(layer.get_weights()[0], 0.5)


@pytest.mark.parametrize("shape, axis", [((64, 5), -1), ((4, 3, 6, 6), 1)])
def test_reused_outputs_never_change_arrays_the_caller_holds(shape, axis, rng):
    """Output arrays are recycled only once nothing outside the layer refers to them."""
    layer = BN(axis=axis)
    xs = [rng.normal(size=shape).astype(np.float32) for _ in range(6)]
    held = layer(xs[0], training=True)
    want_held = held.copy()
    view = layer(xs[1], training=True)[:2]          # only a view survives
    want_view = view.copy()
    dxs = []
    for x in xs[2:]:
        y = layer(x, training=True)
        dxs.append((layer.backward(np.ones_like(y)), y))
    np.testing.assert_array_equal(held, want_held)
    np.testing.assert_array_equal(view, want_view)
    for (dx, y), x in zip(dxs, xs[2:]):
        assert_close(y, R.forward_train(x, (layer.axis[0],), 1e-3)[0])
    del held, view, dxs, y
    ids = set()
    for x in xs:                                     # dropped outputs do come back
        ids.add(id(layer(x, training=False)))
    assert len(ids) <= 2
    layer.reuse_outputs = False
    a = layer(xs[0], training=False)
    del a
    b = layer(xs[0], training=False)
    c = layer(xs[0], training=False)
    assert b is not c


@pytest.mark.parametrize("shape", [(64, 8), (512, 96)])
def test_concurrent_inference_on_a_shared_layer(shape, rng):
    """Reused output arrays are handed to one caller at a time, also across threads."""
    import threading

    layer = BN()
    layer(rng.normal(size=shape).astype(np.float32), training=True)
    inputs = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    expected = [layer(x, training=False).copy() for x in inputs]
    errors = []

    def work(i):
        for _ in range(150):
            y = layer(inputs[i], training=False)
            if not np.array_equal(y, expected[i]):
                errors.append(i)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_failed_first_call_leaves_the_layer_unbuilt(rng):
    layer = BN(adjustment=lambda shape: (np.ones(7), np.zeros(7)))      # wrong size for C = 3
    with pytest.raises(ValueError, match="adjustment"):
        layer(rng.normal(size=(8, 3)), training=True)
    assert not layer.built and layer.weights == [] and layer.get_config()["axis"] == -1
    layer.adjustment = lambda shape: (np.ones(shape[-1]), np.zeros(shape[-1]))
    y = layer(rng.normal(size=(8, 5)), training=True)                  # builds for C = 5 now
    assert y.shape == (8, 5) and layer.moving_mean.shape == (5,)


# ------------------------------------------------------------------------------------------------
# the training-loop API: trainable, fused, supports_masking, grads (values checked against tf_keras
# 2.21's V1 class)

BatchNormalization = numbabn.BatchNormalization


def test_setting_trainable_moves_gamma_and_beta_between_the_weight_lists():
    layer = BatchNormalization()
    layer.build((None, 3))
    names = lambda ws: [w.name.split("/")[-1] for w in ws]    # noqa: E731
    assert names(layer.trainable_weights) == ["gamma:0", "beta:0"]
    layer.trainable = False
    assert names(layer.trainable_weights) == []
    assert names(layer.non_trainable_weights) == ["gamma:0", "beta:0", "moving_mean:0",
                                                   "moving_variance:0"]
    layer.trainable = True
    assert names(layer.trainable_weights) == ["gamma:0", "beta:0"]
    assert names(layer.non_trainable_weights) == ["moving_mean:0", "moving_variance:0"]


FUSED_AFTER_BUILD = [
    ({}, (None, 3), False), ({}, (None, 5, 3), False), ({}, (None, 4, 4, 3), True),
    (dict(axis=1), (None, 3, 4, 4), True), (dict(axis=2), (None, 4, 3, 4), False),
    ({}, (None, 2, 4, 4, 3), True), (dict(renorm=True), (None, 4, 4, 3), False),
    (dict(virtual_batch_size=2), (None, 4, 4, 3), False),
    (dict(dtype="float64"), (None, 4, 4, 3), False),
    (dict(fused=False), (None, 4, 4, 3), False), (dict(fused=True), (None, 3), False),
    (dict(adjustment=lambda shape: (1.0, 0.0)), (None, 4, 4, 3), False),
]


@pytest.mark.parametrize("kwargs, shape, fused", FUSED_AFTER_BUILD, ids=str)
def test_fused_follows_the_v1_class(kwargs, shape, fused):
    layer = BatchNormalization(**kwargs)
    assert layer.fused is (kwargs.get("fused") is not False)
    layer.build(shape)
    assert layer.fused is fused


def test_a_failed_first_call_restores_fused():
    layer = BatchNormalization(virtual_batch_size=4)
    with pytest.raises(ValueError):
        layer(np.ones((6, 4, 4, 3), np.float32), training=True)
    assert not layer.built and layer.fused is True


def test_supports_masking():
    assert BatchNormalization().supports_masking is True


def test_a_training_call_clears_the_previous_gradients(rng):
    layer = BatchNormalization()
    x = rng.normal(size=(8, 3)).astype(np.float32)
    layer(x, training=True)
    layer.backward(x)
    assert sorted(layer.grads) == ["beta", "gamma"]
    layer(x, training=False)                # inference keeps them (e.g. a look between steps)
    assert sorted(layer.grads) == ["beta", "gamma"]
    layer(x, training=True)
    assert layer.grads == {}
    layer.backward(x)
    assert sorted(layer.grads) == ["beta", "gamma"]


def test_calls_of_every_plan_interleaved_match_the_reference(rng):
    """One layer called with alternating batch sizes, dtypes and modes (each its own memoized
    call plan, small fused and large kernels mixed) gives each call the reference's output and
    gradient, and moving statistics that follow every training call in order."""
    momentum, eps = 0.9, 1e-3
    layer = BN(momentum=momentum, epsilon=eps, fused=False)
    C = 8
    moving_mean, moving_var = np.zeros(C), np.ones(C)
    calls = [(256, np.float32, True), (256, np.float32, False), (5000, np.float32, True),
             (256, np.float64, True), (5000, np.float32, False), (256, np.float32, True),
             (256, np.float64, False), (5000, np.float32, True), (256, np.float32, False)]
    for rows, dtype, training in calls * 2:
        x = rng.normal(1.5, 2.0, size=(rows, C)).astype(dtype)
        dy = rng.normal(size=(rows, C)).astype(dtype)
        y = layer(x, training=training)
        dx = layer.backward(dy)
        if training:
            want, mean, var = R.forward_train(x, [1], eps)
            want_dx = R.backward_train(dy, x, [1], eps)[0]
            moving_mean = R.moving_update(moving_mean, mean.ravel(), momentum)
            moving_var = R.moving_update(moving_var, var.ravel(), momentum)
        else:
            want = R.forward_infer(x, moving_mean, moving_var, eps)
            want_dx = R.backward_infer(dy, x, [1], moving_mean, moving_var, eps)[0]
        label = f"rows={rows} {np.dtype(dtype).name} training={training}"
        assert y.dtype == np.float32 and dx.dtype == x.dtype, label   # dx: the input's dtype
        assert_close(y, want, dtype=np.float32, scale=4, err_msg=label)
        assert_close(dx, want_dx, dtype=np.float32, scale=4, err_msg=label)
        assert_close(layer.moving_mean.value, moving_mean, dtype=np.float32, err_msg=label)
        assert_close(layer.moving_variance.value, moving_var, dtype=np.float32, err_msg=label)
