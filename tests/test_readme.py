"""The README's example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    y, y_eval = namespace["y"], namespace["y_eval"]
    assert y.shape == y_eval.shape == (256, 64)
    assert abs(float(y.mean())) < 1e-5
