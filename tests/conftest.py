"""Unit tests run torch on one thread.

Their tensors are small: one thread is as fast as two, and on a busy 2-core machine two torch
threads can wait on each other long enough to make a test 10-20x slower. (The notebooks run in
their own kernels and keep torch's default.)
"""

import torch

torch.set_num_threads(1)
