import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('GPM_PRESET', 'quick')      # notebooks and presets run small under test
# pytest -n 2 runs two workers on two cores: one thread each. More threads than cores makes OpenMP
# spin and slows small networks down by an order of magnitude. Subprocesses (notebooks, CLI) inherit it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

@pytest.fixture
def root(): return ROOT

@pytest.fixture
def bin_dir(): return Path(sys.executable).parent
