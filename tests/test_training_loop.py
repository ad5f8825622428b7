"""Inside a NumPy training loop: a coarse guard on two thread pools meeting, and the loop command.

A layer training step alternating with a NumPy matmul once cost 7-16x the two timed apart (Numba's
OpenMP workers and OpenBLAS's threads spinning against each other on two cores). The serial or
parallel choice from measured cost (``numbabn.cpu.threads``) brings it to about 1x; this test
fails if it regresses past 2x under any threading layer Numba may pick. The real figures come
from ``python -m numbabn loop`` and the asv ``loop`` benchmarks, not from here.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import threading_layer_env

from numbabn.tools import loopbench

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUARD = 2.0

PAIRS = """
import json, numba
from numbabn.tools.loopbench import time_pairs
rows = time_pairs()
print(json.dumps({"layer": numba.threading_layer(), "rows": rows}))
"""


def _env(layer):
    return threading_layer_env(layer, ROOT)


@pytest.mark.long                 # timings: seconds under each layer, and a busy machine skews them
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two pools need two cores to fight over")
@pytest.mark.parametrize("layer", ["default", "workqueue", "tbb"])
def test_a_layer_step_between_matmuls_costs_about_the_two_apart(layer):
    done = subprocess.run([sys.executable, "-c", PAIRS], env=_env(layer), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for row in report["rows"]:
        assert row["ratio"] < GUARD, (f"under the {report['layer']} layer a {row['shape']} step "
                                      f"between matmuls took {row['ratio']:.1f}x the two apart: "
                                      f"{row}")


# the convolutional networks take most of the time; test_nets.py checks them in process
@pytest.mark.parametrize("networks", [pytest.param(["mlp"], id="mlp"),
                                      pytest.param(None, id="every", marks=pytest.mark.long)])
def test_the_loop_command_reports_every_network(tmp_path, networks):
    out = tmp_path / "loop.json"
    md = tmp_path / "loop.md"
    done = subprocess.run(
        [sys.executable, "-m", "numbabn", "loop", "--quick", "--rounds", "1", "--impls",
         "numbabn,numpy", "--no-pairs", "--quiet", "--json", str(out), "--markdown", str(md)]
        + (["--nets", ",".join(networks)] if networks else []),
        env=_env("default"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert sorted(data["networks"]) == sorted(networks or loopbench.nets.NETWORKS)
    for name, by_impl in data["networks"].items():
        assert sorted(by_impl) == ["numbabn", "numpy"]
        for impl, r in by_impl.items():
            assert r["agrees"], (name, impl)
            assert 0 < r["bn_ms"] < r["ms"]
    text = md.read_text()
    assert "| mlp | NumPy + numbabn |" in text.replace("  ", " ") and "ms / step" in text
    assert "NumPy + numbabn" in done.stdout


def test_the_loop_command_refuses_unknown_networks():
    done = subprocess.run([sys.executable, "-m", "numbabn", "loop", "--nets", "resnet50"],
                          env=_env("default"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "resnet50" in done.stderr
