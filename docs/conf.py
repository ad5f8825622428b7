"""Sphinx configuration of the numbabn documentation.

Build with warnings as errors, so that a broken link, an unresolved reference or a docstring
that numpydoc cannot parse fails the build::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""
import os
import sys

# The docs describe the checkout they live in, not whatever numbabn happens to be installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numbabn  # noqa: E402

project = "numbabn"
author = "numbabn contributors"
copyright = "numbabn contributors"
release = numbabn.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Every reference must resolve: a misspelt class name in a docstring is an error, not plain text.
nitpicky = True

# ---- MyST: the hand-written pages
myst_enable_extensions = ["dollarmath", "amsmath"]
# The existing pages link sections as page.md#heading-text.
myst_heading_anchors = 3

# ---- autodoc + numpydoc: the API reference
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
# autodoc documents each member in full; numpydoc's member tables would list them a second time.
numpydoc_show_class_members = False
# numpydoc loads autosummary, which would otherwise insist on writing .rst stub pages.
autosummary_generate = False
# Checks that fail the build (numpydoc's codes): a docstring on every documented object (GL08)
# with a one-line summary ending in a period (SS01, SS03, SS06); every parameter documented,
# described and in signature order, and none that does not exist (PR01, PR02, PR03, PR07, PR10);
# a described Returns section wherever a value is returned (RT01, RT03); known sections in
# numpydoc's order (GL06, GL07); closing quotes right after the text and no double blank lines
# (GL02, GL03); an Examples section (EX01).
numpydoc_validation_checks = {
    "GL06", "GL07", "GL08", "PR01", "PR02", "PR03", "PR07", "PR10", "RT01", "RT03", "SS01", "SS03",
    "SS06", "GL02", "GL03", "EX01",
}

# ---- HTML
html_theme = "alabaster"
html_title = f"numbabn {release}"
