"""The float64 reference against closed forms and finite differences.

The reference is the oracle for everything else, so it is checked on its own terms first:
statistics against direct formulas, gradients against central differences of the forward pass.
"""
import numpy as np
import pytest
from conftest import numeric_grad

from numbabn import reference as R


def test_moments_closed_form(rng):
    x = rng.normal(size=(7, 3))
    mean, var = R.moments(x, (1,))
    np.testing.assert_allclose(mean.ravel(), x.sum(0) / 7)
    np.testing.assert_allclose(var.ravel(), ((x - x.sum(0) / 7) ** 2).sum(0) / 7)


def test_ghost_groups_are_strided(rng):
    x = rng.normal(size=(6, 2))
    mean, var = R.moments(x, (1,), virtual_batch_size=3)       # G = 2 groups of 3
    for g in range(2):
        np.testing.assert_allclose(mean[0, g], x[g::2].mean(0))
        np.testing.assert_allclose(var[0, g], x[g::2].var(0))


def test_forward_is_normalized(rng):
    x = rng.normal(5.0, 3.0, size=(50, 4, 3))
    y, _, _ = R.forward_train(x, (2,), epsilon=0.0)
    # closed-form properties of the float64 oracle: tighter than the float64 TOLERANCE row
    np.testing.assert_allclose(y.mean(axis=(0, 1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1)), 1.0, rtol=1e-12)


CASES = [
    dict(shape=(6, 3), axes=(1,)),
    dict(shape=(4, 3, 2), axes=(1,)),
    dict(shape=(3, 2, 2, 2), axes=(1, 3)),
    dict(shape=(8, 3), axes=(1,), virtual_batch_size=2),
    dict(shape=(6, 2, 3), axes=(2,), virtual_batch_size=3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("extras", ["plain", "renorm", "adjust"])
def test_backward_train_matches_finite_differences(case, extras, rng):
    shape, axes, vbs = case["shape"], case["axes"], case.get("virtual_batch_size")
    pshape = tuple(shape[a] if a in axes else 1 for a in range(len(shape)))
    x = rng.normal(1.0, 2.0, size=shape)
    dy = rng.normal(size=shape)
    gamma = rng.uniform(0.5, 1.5, size=pshape)
    beta = rng.normal(size=pshape)
    kw = {}
    if extras == "renorm":
        kw = dict(r=rng.uniform(0.8, 1.2, size=pshape), d=rng.normal(0, 0.2, size=pshape))
    elif extras == "adjust":
        kw = dict(adj_scale=rng.uniform(0.9, 1.1, size=pshape),
                  adj_bias=rng.normal(0, 0.1, size=pshape))

    def loss(x_, gamma_=gamma, beta_=beta):
        y, _, _ = R.forward_train(x_, axes, 1e-3, gamma_, beta_, vbs, **kw)
        return float((y * dy).sum())

    dx, dgamma, dbeta = R.backward_train(dy, x, axes, 1e-3, gamma, vbs, **kw)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dgamma, numeric_grad(lambda g: loss(x, g), gamma), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(dbeta, numeric_grad(lambda b: loss(x, gamma, b), beta),
                               rtol=1e-6, atol=1e-7)


def test_backward_infer_matches_finite_differences(rng):
    x = rng.normal(size=(5, 3))
    dy = rng.normal(size=(5, 3))
    mm, mv, gamma = rng.normal(size=(1, 3)), rng.uniform(0.5, 2, (1, 3)), rng.normal(size=(1, 3))

    def loss(x_, g_=gamma):
        return float((R.forward_infer(x_, mm, mv, 1e-3, g_, 0.0) * dy).sum())

    dx, dgamma, dbeta = R.backward_infer(dy, x, (1,), mm, mv, 1e-3, gamma)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(dgamma, numeric_grad(lambda g: loss(x, g), gamma), rtol=1e-7,
                               atol=1e-8)
    np.testing.assert_allclose(dbeta, dy.sum(0, keepdims=True))


def test_single_element_batch_has_zero_input_gradient(rng):
    x = rng.normal(size=(1, 4))
    dy = rng.normal(size=(1, 4))
    dx, dgamma, _ = R.backward_train(dy, x, (1,), 1e-3)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dgamma, 0.0)


def test_moving_updates():
    np.testing.assert_allclose(R.moving_update(np.array([1.0]), np.array([3.0]), 0.75), [1.5])
    m, v = R.moving_update_fused(np.zeros(1), np.ones(1), np.ones(1), np.full(1, 2.0), n=5,
                                 momentum=0.5)
    np.testing.assert_allclose(m, [0.5])
    np.testing.assert_allclose(v, [0.5 + 0.5 * 2.0 * 5 / 4])


def test_renorm_correction_clipping():
    r, d = R.renorm_correction(np.array([1.0]), np.array([3.0]), np.array([0.0]),
                               np.array([1.0]), 1.0, rmin=0.5, rmax=1.5, dmax=0.25)
    np.testing.assert_allclose(r, [1.5])          # sqrt(4) / 1 clipped to rmax
    np.testing.assert_allclose(d, [0.25])
    r, _ = R.renorm_correction(np.array([0.0]), np.array([0.0]), np.array([0.0]),
                               np.array([0.0]), 0.01)
    np.testing.assert_allclose(r, [1.0])          # renorm_stddev floored at sqrt(eps)
