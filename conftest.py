"""Test configuration: the whole suite runs in the course's fast mode.

Set before anything imports course_lib, and inherited by the Jupyter kernels that nbval
starts for the notebooks.
"""

import os

os.environ["COURSE_FAST"] = "1"
