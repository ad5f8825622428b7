"""Tests for ``python -m numbabn demo`` (numbabn/tools/demo.py and numbabn/__main__.py).

The comparison runs once, in-process, with few steps; the assertions are properties of the
training itself (BN learns, tolerates the high learning rate, the plain network does not), of the
report computed from it, and of the command line.
"""
import io
import math
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from numbabn.tools import demo
from numbabn.tools._cli import ProgressBar  # noqa: E402
from numbabn.__main__ import build_parser, main  # noqa: E402

STEPS = 200


@pytest.fixture(scope="module")
def data():
    return demo.load_data(seed=0)


@pytest.fixture(scope="module")
def results(data):
    return demo.compare(steps=STEPS, seed=0, data=data)


def _run(results, batch_norm, lr_name):
    (run,) = [r for r in results if r.batch_norm == batch_norm and r.lr_name == lr_name]
    return run


# ------------------------------------------------------------------------------------------------
# the data


def test_data_is_the_raw_digits_split(data):
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.x_train.dtype == np.float32
    # raw pixel values, not standardized
    assert data.x_train.min() == 0 and data.x_train.max() == 16
    assert set(np.unique(data.y_test)) == set(range(10))


def test_split_is_reproducible(data):
    again = demo.load_data(seed=0)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert not np.array_equal(demo.load_data(seed=1).y_test, data.y_test)


# ------------------------------------------------------------------------------------------------
# the four runs


def test_four_runs_one_per_network_and_learning_rate(results):
    assert len(results) == 4
    assert {(r.batch_norm, r.lr_name) for r in results} == {
        (bn, lr) for bn in (False, True) for lr in demo.LEARNING_RATES}
    for run in results:
        assert run.learning_rate == demo.LEARNING_RATES[run.lr_name]
        assert run.eval_steps[0] == 0
        assert len(run.eval_steps) == len(run.test_accuracy)
        if not run.diverged:
            assert run.eval_steps[-1] == STEPS and len(run.losses) == STEPS


def test_bn_at_the_normal_learning_rate_learns(results):
    run = _run(results, True, "normal")
    assert run.final_accuracy > 0.8
    assert not run.diverged
    assert all(math.isfinite(loss) for loss in run.losses)
    assert np.mean(run.losses[-20:]) < 0.5 * run.losses[0]


def test_bn_tolerates_the_high_learning_rate_and_the_plain_network_does_not(results):
    bn = _run(results, True, "high")
    plain = _run(results, False, "high")
    assert bn.steps_to_target is not None and bn.steps_to_target <= STEPS
    assert bn.final_accuracy >= demo.TARGET_ACCURACY - 0.02
    assert plain.steps_to_target is None
    assert plain.final_accuracy < 0.5


def test_steps_to_target_is_the_first_evaluation_at_the_target(results):
    for run in results:
        hits = [s for s, acc in zip(run.eval_steps, run.test_accuracy)
                if acc >= demo.TARGET_ACCURACY]
        assert run.steps_to_target == (hits[0] if hits else None)


def test_runs_are_reproducible(data, results):
    again = demo.train(data, True, demo.LEARNING_RATES["normal"], STEPS, seed=0)
    first = _run(results, True, "normal")
    assert again.losses == first.losses
    assert again.test_accuracy == first.test_accuracy


def test_a_nan_loss_stops_the_run_and_is_reported(data):
    run = demo.train(data, False, 1e10, 50, seed=0)
    assert run.diverged
    assert run.diverged_at == len(run.losses) < 50
    assert not math.isfinite(run.losses[-1])
    assert run.eval_steps[-1] == run.diverged_at


def test_bn_network_gradient_matches_finite_differences(data):
    """The demo's hand-written backward pass, through numbabn's BN layers, is the gradient."""
    layers = demo.build_mlp(batch_norm=True, seed=0)
    x, y = data.x_train[:64], data.y_train[:64]
    loss, dlogits = demo.softmax_cross_entropy(demo.forward(layers, x, training=True), y)
    demo.backward(layers, dlogits)
    rng = np.random.default_rng(0)
    params = [p for layer in layers for p in demo.parameters(layer)]
    directions = [rng.standard_normal(value.shape) for value, _ in params]
    norm = np.sqrt(sum(np.sum(d * d) for d in directions))
    directions = [(d / norm).astype(np.float32) for d in directions]      # one unit direction
    analytic = sum(float(np.sum(grad * d)) for (_, grad), d in zip(params, directions))

    def loss_at(h):
        saved = [value.copy() for value, _ in params]
        for (value, _), d in zip(params, directions):
            value += np.float32(h) * d
        out = demo.softmax_cross_entropy(demo.forward(layers, x, training=True), y)[0]
        for (value, _), s in zip(params, saved):
            value[...] = s
        return out

    h = 1e-3
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert numeric == pytest.approx(analytic, rel=0.02)


# ------------------------------------------------------------------------------------------------
# the report


def _fake(batch_norm, lr_name, lr, steps_to_target, final=0.97, diverged_at=None):
    return demo.RunResult(batch_norm, lr_name, lr, [0, 100], [0.1, final], [2.3, 0.1],
                          steps_to_target, diverged_at)


def test_table_has_a_row_per_run(results):
    lines = demo.format_table(results).splitlines()
    assert len(lines) == 2 + 4
    assert "steps to 95%" in lines[0]
    for run, line in zip(results, lines[2:]):
        assert f"{run.final_accuracy:.1%}" in line
        assert (str(run.steps_to_target) if run.steps_to_target else "never") in line


def test_conclusion_is_computed_from_the_numbers(results):
    text = demo.conclusion(results)
    assert text.startswith("Conclusion: ") and "\n" not in text
    bn = _run(results, True, "high")
    assert f"{bn.steps_to_target} steps at lr={bn.learning_rate:g}" in text


def test_conclusion_reports_when_bn_does_not_help():
    runs = [_fake(False, "normal", 0.01, 100), _fake(True, "normal", 0.01, 300),
            _fake(False, "high", 0.3, 200), _fake(True, "high", 0.3, None, final=0.5)]
    text = demo.conclusion(runs)
    assert "3.0x LATER" in text and "3.0x MORE steps" in text
    assert "only the network without BN reached 95%" in text


def test_conclusion_reports_speedup_and_divergence():
    runs = [_fake(False, "normal", 0.01, 400), _fake(True, "normal", 0.01, 380),
            _fake(False, "high", 0.3, None, final=0.1, diverged_at=7),
            _fake(True, "high", 0.3, 50)]
    text = demo.conclusion(runs)
    assert "8.0x sooner" in text
    assert "similar number of steps" in text
    assert "diverged (NaN/inf loss at step 7)" in text


def test_progress_bar_reaches_100_percent():
    out = io.StringIO()
    bar = ProgressBar(40, stream=out)
    for i in range(1, 41):
        bar.update(i, "run")
    bar.close()
    text = out.getvalue()
    assert "100%" in text and text.endswith("\n")
    assert text.count("\r") <= 11          # not a terminal: redrawn every 10 percent


# ------------------------------------------------------------------------------------------------
# the command line


def test_help_lists_the_demo_command():
    text = build_parser().format_help()
    assert "demo" in text


def test_main_prints_the_table_and_conclusion(capsys):
    assert main(["demo", "--steps", "30", "--quiet", "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert "raw pixel values 0..16" in out
    assert out.count("BN") >= 4 and "Conclusion:" in out
    assert err == ""


def test_main_writes_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert main(["demo", "--steps", "20", "--quiet", "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG")


def test_main_without_matplotlib_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    path = tmp_path / "curves.png"
    assert main(["demo", "--steps", "10", "--quiet", "--plot", str(path)]) == 0
    assert 'pip install "numbabn[demo]"' in capsys.readouterr().out
    assert not path.exists()


def test_main_without_sklearn_exits_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--quiet", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "scikit-learn" in err and 'pip install "numbabn[demo]"' in err
