"""Test configuration: no test may reach the network; ``bench/`` is importable (``from spfbench import tables``)."""

import os
import sys

import pytest
import torch
from bench_scripts import BENCH

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

# As for a script run from bench/. Appended: bench/'s script names must never shadow an installed module.
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread: tiny matmuls on a loaded 2-core machine run 10-100x slower with an OpenMP
    team that spins against other work than with one thread. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
