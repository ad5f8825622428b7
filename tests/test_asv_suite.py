"""The asv suite runs: every benchmark's set-up and body, once, on the small case (or the
first case of classes that do not have it).

asv itself is not part of the test environment, so a benchmark broken by an API change would
otherwise go unnoticed until someone runs the suite.
"""
import importlib
import inspect
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "asv_bench"))

MODULES = ["benchmarks.layer", "benchmarks.functional", "benchmarks.startup", "benchmarks.cuda",
           "benchmarks.half", "benchmarks.loop"]
PREFIXES = ("time_", "peakmem_", "track_", "timeraw_")


def benchmark_classes():
    for name in MODULES:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not cls_name.startswith("_"):
                if any(m.startswith(PREFIXES) for m in dir(cls)):
                    yield pytest.param(cls, id=f"{name}.{cls_name}")


@pytest.mark.parametrize("cls", list(benchmark_classes()))
def test_benchmark_runs_on_the_small_case(cls):
    params = getattr(cls, "params", None)
    args = ()
    if params:
        values = params[0] if isinstance(params[0], list) else params
        args = ("small",) if "small" in values else (values[0],)
        if isinstance(params[0], list):      # further parameters: their last value
            args += tuple(p[-1] for p in params[1:])
    bench = cls()
    if hasattr(bench, "setup"):
        try:
            bench.setup(*args)
        except NotImplementedError as err:      # asv's way of skipping (the CUDA benchmarks)
            pytest.skip(str(err))
    for name in dir(bench):
        if name.startswith(("time_", "peakmem_", "track_")):
            result = getattr(bench, name)(*args)
            if name.startswith("track_"):
                assert result > 0
        elif name.startswith("timeraw_"):
            code = getattr(bench, name)(*args)
            stmt = code[0] if isinstance(code, tuple) else code
            assert "numbabn" in stmt
