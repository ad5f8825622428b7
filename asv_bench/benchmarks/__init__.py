"""asv benchmarks for numbabn (pandas' asv_bench layout); docs/benchmarks.md explains them.

With the ``existing`` environment (``--python=same``) asv installs nothing, so the benchmarks
import numbabn from this checkout. In environments asv builds itself (``-E virtualenv``) the
installed commit is what gets measured, and the path is left alone.
"""
import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if os.environ.get("ASV_ENV_TYPE", "existing") == "existing" and CHECKOUT not in sys.path:
    sys.path.insert(0, CHECKOUT)
