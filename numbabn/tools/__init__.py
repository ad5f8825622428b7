"""The command-line tools and what they share; ``import numbabn`` imports none of this.

Commands (``python -m numbabn COMMAND``, registered in ``numbabn/__main__.py``):

* :mod:`~numbabn.tools.bench` (``bench``): the layer against a memory roofline, NumPy, PyTorch
  and TensorFlow on the CPU;
* :mod:`~numbabn.tools.loopbench` (``loop``): whole training steps of the NumPy networks in
  :mod:`~numbabn.tools.nets`, against PyTorch eager and tf.keras;
* :mod:`~numbabn.tools.selftest` (``selftest``): the CUDA engine against the CPU engine on this
  GPU, then against cuDNN;
* :mod:`~numbabn.tools.demo` (``demo``): a small MLP trained with and without batch norm.

Shared by them, the tests and the asv suite (``asv_bench/``):

* :mod:`~numbabn.tools.timing`: the one timer (median of repeated timed calls);
* :mod:`~numbabn.tools.traffic`: the bytes each op must move (GB/s, memory floors);
* :mod:`~numbabn.tools.shapes`: the benchmark shapes;
* :mod:`~numbabn.tools.tolerances`: the per-dtype tolerances of every comparison (tests/ and
  ``selftest``);
* :mod:`~numbabn.tools._cli`: a progress bar and argument types for the commands.
"""
