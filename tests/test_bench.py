"""Tests for ``python -m numbabn bench`` (numbabn/tools/bench.py).

The bench runs in-process on tiny shapes with two samples per cell; nothing here asserts a
timing. What is checked: the report's rows and columns, the JSON and Markdown files, that the
NumPy baseline computes what numbabn computes, and that missing peers are skipped with a note.
"""
import io
import json
import sys

import numpy as np
import pytest
from conftest import assert_close

import numbabn
from numbabn import BatchNormalization
from numbabn.tools import bench
from numbabn.__main__ import build_parser

TINY = {
    "NC": bench.Case("NC", (64, 8), -1),
    "NHWC": bench.Case("NHWC", (8, 4, 4, 8), -1),
    "NCHW": bench.Case("NCHW", (8, 8, 4, 4), 1),
    "small": bench.Case("small", (16, 8), -1, small=True),
}
FAST = ["--reps", "2", "--small-reps", "2", "--gap", "0", "--no-startup", "--quiet"]
OURS = ("numbabn", "renorm", "ghost", "numpy")


def run_bench(argv, cases=TINY):
    out = io.StringIO()
    status = bench.main(FAST + argv, cases=cases, out=out)
    return status, out.getvalue()


@pytest.fixture
def no_peers(monkeypatch):
    """Make PyTorch and TensorFlow unimportable, whether or not they are installed."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run over every tiny case and op, peers left out, with every output file."""
    path = tmp_path_factory.mktemp("bench")
    files = {"json": path / "bench.json", "markdown": path / "bench.md"}
    status, text = run_bench(["--quick", "--skip", "torch,tf", "--json", str(files["json"]),
                              "--markdown", str(files["markdown"])])
    return status, text, {k: p.read_text(encoding="utf-8") for k, p in files.items()}


def markdown_table(markdown, header_start):
    """The rows of the Markdown table whose header line starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    return header, rows


# ------------------------------------------------------------------------------------------------
# the report


def test_run_succeeds_and_prints_every_section(report):
    status, text, _ = report
    assert status == 0
    for title in ("Memory roofline", "Time ÷ memory floor", "Results", "Agreement with numbabn"):
        assert title in text


def test_results_table_has_one_row_per_case_op_and_implementation(report):
    _, _, files = report
    header, rows = markdown_table(files["markdown"], "| case | op | implementation |")
    assert header == list(bench.ROW_HEADERS)
    labels = {"numbabn", "numbabn renorm*", f"numbabn ghost{bench.GHOST_BATCH}*", "NumPy"}
    expected = {(case.label(), op, label) for case in TINY.values() for op in bench.OPS
                for label in labels}
    assert {(r[0], r[1], r[2]) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        unit = "µs" if row[0].startswith("small") else "ms"
        assert unit in row[3]
        float(row[4])                              # GB/s
        float(row[5]), float(row[6])               # x floor, x floor+alloc
        assert row[7] == "—"                       # no peer ran
        if "*" in row[2]:                          # numbabn-only features: no NumPy ratio
            assert row[8] == "—"
        else:
            float(row[8])


def test_summary_and_roofline_tables(report):
    _, _, files = report
    header, rows = markdown_table(files["markdown"], "| case | op | numbabn |")
    assert header[2:] == ["numbabn", "numbabn renorm*", f"numbabn ghost{bench.GHOST_BATCH}*",
                          "NumPy"]
    assert len(rows) == len(TINY) * len(bench.OPS)
    header, rows = markdown_table(files["markdown"], "| case | MB |")
    assert len(header) == len(bench.ROOF_COLUMNS) and len(rows) == len(TINY)


def test_markdown_names_the_machine(report):
    _, _, files = report
    md = files["markdown"]
    for key in ("| cpu |", "| cores |", "| threads |", "| numba |", "| numpy |", "| date |"):
        assert key in md


def test_json_has_medians_for_every_cell(report):
    _, _, files = report
    data = json.loads(files["json"])
    assert set(data["cases"]) == set(TINY)
    for name, case in data["cases"].items():
        assert case["shape"] == list(TINY[name].shape)
        assert set(case["median_s"]) == set(bench.OPS)
        for cells in case["median_s"].values():
            assert set(cells) == set(OURS)
            assert all(t > 0 for t in cells.values())
        assert set(case["roofline_s"]) == set(bench.ROOFLINE)
        assert set(case["floor_s"]) == set(bench.OPS)
        assert set(case["agreement"]) == {"numpy"}


def test_numpy_agrees_with_numbabn_in_the_run(report):
    _, _, files = report
    for case in json.loads(files["json"])["cases"].values():
        for op, err in case["agreement"]["numpy"].items():
            assert err < bench.AGREEMENT_TOL, op


def test_filters_threads_and_variants(tmp_path):
    path = tmp_path / "bench.json"
    status, text = run_bench(["--cases", "NCHW", "--ops", "infer,step", "--threads", "1",
                              "--no-renorm", "--no-ghost", "--skip", "torch,tf",
                              "--json", str(path)])
    assert status == 0
    data = json.loads(path.read_text())
    assert list(data["cases"]) == ["NCHW"]
    assert set(data["cases"]["NCHW"]["median_s"]) == {"infer", "step"}
    assert set(data["cases"]["NCHW"]["median_s"]["step"]) == {"numbabn", "numpy"}
    assert data["machine"]["threads"] == 1
    assert "renorm" not in text


def test_missing_peers_are_skipped_with_a_note(no_peers):
    status, text = run_bench(["--cases", "NC", "--ops", "infer", "--no-renorm", "--no-ghost"])
    assert status == 0
    assert "torch: skipped, not importable" in text
    assert "tf: skipped, not importable" in text
    assert bench.INSTALL_HINT in text
    results = text.split("Results")[1]
    assert "PyTorch" not in results.split("Agreement")[0]
    assert "PyTorch: skipped" in text and "TensorFlow: skipped" in text


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    status, _ = run_bench(["--cases", "NC,small", "--ops", "train", "--skip", "torch,tf",
                           "--plot", str(path)])
    assert status == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peers_agree_with_numbabn_when_installed(tmp_path):
    if bench.Torch().available() and bench.TensorFlow().available():
        pytest.skip("neither PyTorch nor TensorFlow is installed")
    path = tmp_path / "bench.json"
    status, _ = run_bench(["--no-renorm", "--no-ghost", "--skip", "numpy", "--json", str(path)],
                          cases={k: TINY[k] for k in ("NC", "NHWC", "NCHW")})
    assert status == 0
    for case in json.loads(path.read_text())["cases"].values():
        assert case["agreement"], "a peer ran"
        for peer, per_op in case["agreement"].items():
            assert set(per_op) == set(bench.OPS)
            for op, err in per_op.items():
                assert err < bench.AGREEMENT_TOL, (peer, op)


def test_command_is_registered():
    args = build_parser().parse_args(["bench", "--quick", "--cases", "NC,small"])
    assert args.run is bench.run
    assert args.cases == ["NC", "small"] and args.quick
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--cases", "nope"])


# ------------------------------------------------------------------------------------------------
# the NumPy baseline is an independent implementation of the same layer


@pytest.mark.parametrize("shape, axis", [((64, 8), -1), ((6, 5, 3, 4), -1), ((6, 4, 3, 5), 1),
                                         ((5, 7), 1), ((3, 4, 5), 1)])
def test_numpy_baseline_matches_the_layer(rng, shape, axis):
    C = shape[axis]
    x = rng.normal(2.0, 3.0, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma, beta = rng.normal(1, 0.2, C).astype(np.float32), rng.normal(0, 0.2, C).astype(
        np.float32)
    mm, mv = rng.normal(size=C).astype(np.float32), rng.uniform(1, 3, C).astype(np.float32)
    layer = BatchNormalization(axis=axis, momentum=bench.MOMENTUM, epsilon=bench.EPSILON)
    layer.build(shape)
    layer.set_weights([gamma, beta, mm, mv])
    ref = bench.NumpyBatchNorm(len(shape), axis, gamma, beta, mm, mv)

    assert_close(ref.infer(x), layer(x, training=False), np.float32, scale=5)
    y = ref.train(x)
    assert y.dtype == np.float32
    assert_close(y, layer(x, training=True), np.float32, scale=5)
    assert_close(ref.backward(dy), layer.backward(dy), np.float32, scale=5)
    n = x.size // C
    for key in ("gamma", "beta"):          # sums of n terms of order 1
        assert_close(ref.grads[key].reshape(-1), layer.grads[key].reshape(-1), np.float32,
                     scale=n)


def test_floors_follow_the_traffic_model():
    roof = {"copy flat": 2.0, "copy blocks": 1.0, "alloc+copy": 3.0, "np.copy": 4.0,
            "read flat": 0.5, "read blocks": 0.25}
    floor, floor_alloc = bench.floors(roof)
    assert floor == {"train": 1.25, "infer": 1.0, "step": 3.0}
    assert floor_alloc == {"train": 3.25, "infer": 3.0, "step": 7.0}


def test_case_layouts():
    assert [c.layout for c in bench.CASES.values()] == ["NC", "NHWC", "NCHW", "NC"]
    assert bench.CASES["NCHW"].channels == 128
    assert bench.CASES["NC"].nbytes == 65536 * 256 * 4


def test_relative_error():
    a = np.array([1.0, -4.0], np.float32)
    assert bench.relative_error(a, a) == 0.0
    assert bench.relative_error(a + np.float32(0.5), a) == pytest.approx(0.5 / 4)
    assert bench.relative_error(a[:1], a) == float("inf")


def test_startup_runs_numbabn_in_a_fresh_interpreter(monkeypatch, tmp_path):
    # The real script compiles every kernel with a cold cache; this one only imports numbabn,
    # which checks the interpreter, PYTHONPATH and the JSON round trip.
    monkeypatch.setattr(bench, "STARTUP_SCRIPT", (
        "import json, numbabn\n"
        "print(json.dumps({'import': 0.5, 'first_step': 0.25, 'where': numbabn.__file__}))\n"))
    result = bench.startup_once(threads=1, cache_dir=str(tmp_path))
    assert result["import"] == 0.5 and result["first_step"] == 0.25
    assert result["where"] == numbabn.__file__
    assert result["process"] > 0
