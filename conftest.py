"""Test configuration: the whole suite runs in the course's fast mode, on the CPU.

Set before anything imports course_lib, and inherited by the Jupyter kernels that nbval
starts for the notebooks.

The notebooks run on the CPU even on a GPU machine: their output-checked cells were recorded
on a CPU, and exact token equality between a fast sampler and its reference is a property of
the CPU's float32 kernels, not of GPU ones. The GPU paths have their own tests
(tests/test_gpu.py, skipped without CUDA), which `python3 scripts/gpu_session.py` runs on a
lent GPU. `COURSE_DEVICE=cuda python -m pytest` overrides this, for a look.
"""

import os

os.environ["COURSE_FAST"] = "1"
os.environ.setdefault("COURSE_DEVICE", "cpu")
