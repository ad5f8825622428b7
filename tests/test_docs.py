"""The documentation: every public object has a runnable example, and the site builds cleanly.

The examples themselves run as doctests (``--doctest-modules``); here we check that none is
missing, build the Sphinx site with warnings as errors, and run the code of the guides.
"""
import importlib.util
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import numbabn
import numbabn.distributed
import numbabn.functional

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# An "Examples" heading underlined with dashes, then at least one prompt.
EXAMPLES = re.compile(r"^\s*Examples\n\s*-{8,}\n(.*)", re.M | re.S)


def _members(cls):
    """``cls``'s public methods and properties (``__call__`` counts as public), by name."""
    out = {}
    for name, raw in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(raw, property):
            out[name] = raw
        elif isinstance(raw, (classmethod, staticmethod)) or inspect.isfunction(raw):
            out[name] = getattr(cls, name)
    return out


def _public_objects():
    """Every documented public object, keyed by its dotted name."""
    objects = {}
    for name in numbabn.__all__:
        obj = getattr(numbabn, name)
        if isinstance(obj, str):          # __version__
            continue
        objects[f"numbabn.{name}"] = obj
    for name in numbabn.functional.__all__:
        objects[f"numbabn.functional.{name}"] = getattr(numbabn.functional, name)
    classes = {
        "numbabn.BatchNormalization": numbabn.BatchNormalization,
        "numbabn.Variable": numbabn.Variable,
        "numbabn.functional.BatchNormCache": numbabn.functional.BatchNormCache,
        "numbabn.distributed.Synchronizer": numbabn.distributed.Synchronizer,
    }
    for prefix, cls in classes.items():
        objects[prefix] = cls
        for name, member in _members(cls).items():
            objects[f"{prefix}.{name}"] = member
    return objects


PUBLIC = _public_objects()


def test_public_objects_are_enumerated():
    # guards the enumeration itself: a refactoring that hid the members would pass vacuously
    for name in ("numbabn.BatchNormalization.backward", "numbabn.BatchNormalization.__call__",
                 "numbabn.BatchNormalization.weights", "numbabn.BatchNormalization.from_config",
                 "numbabn.Variable.value", "numbabn.load", "numbabn.functional.moments",
                 "numbabn.functional.BatchNormCache.mean",
                 "numbabn.distributed.Synchronizer.sums"):
        assert name in PUBLIC
    assert len(PUBLIC) >= 40


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_object_has_an_example(name):
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert doc, f"{name} has no docstring"
    match = EXAMPLES.search(doc)
    assert match, f"{name}'s docstring has no Examples section"
    assert ">>>" in match.group(1), f"{name}'s Examples section has no >>> example"


def _missing_doc_tools():
    return [m for m in ("sphinx", "numpydoc", "myst_parser")
            if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(_missing_doc_tools()),
                    reason="building the docs needs sphinx, numpydoc and myst-parser "
                           "(pip install '.[docs]')")
def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in DOCS.glob("*.md"):
        assert (out / f"{page.stem}.html").exists(), f"{page.name} is not in the site"
    assert (out / "_images" / "bench-2core-epyc.png").exists()     # the performance chart
    api = (out / "api.html").read_text()
    for name in ("numbabn.BatchNormalization.backward", "numbabn.load",
                 "numbabn.functional.batch_norm_train", "numbabn.distributed.Synchronizer"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"


# Guides whose Python blocks run without a GPU, MPI or another framework.
GUIDES = ["getting-started.md", "training-loops.md", "math.md", "comparison.md"]
NEEDS_MORE = re.compile(r"^\s*(import|from) (cupy|mpi4py|tensorflow|torch)\b", re.M)


def _guide_blocks():
    for page in GUIDES:
        blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
        for i, block in enumerate(blocks):
            if not NEEDS_MORE.search(block):
                yield pytest.param(page, block, id=f"{page}-{i}")


@pytest.mark.parametrize("page, block", list(_guide_blocks()))
def test_guide_code_runs(page, block, capsys):
    exec(compile(block, str(DOCS / page), "exec"), {"__name__": "guide"})
