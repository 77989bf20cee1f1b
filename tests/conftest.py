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

@pytest.fixture(autouse=True)
def seeded():
    "Every test starts from seed 0: torch seeds its global generator from the OS, so an unseeded draw differs run to run."
    from gpm_nb.core import seed_everything
    seed_everything(0)

@pytest.fixture
def root(): return ROOT

@pytest.fixture
def bin_dir(): return Path(sys.executable).parent

@pytest.fixture
def check_init():
    "A check of a network's init by its first linear layer: GPM's N(0, std^2) weights with zero biases, or for std = 0 PyTorch's default."
    def check(net:torch.nn.Module, std:float):
        lin = next(l for l in net.modules() if isinstance(l, torch.nn.Linear))
        if std:
            assert lin.bias.abs().max() == 0 and abs(lin.weight.std().item() / std - 1) < 0.15, (lin, std)
            return
        bound = 1 / lin.weight.shape[1] ** 0.5                    # PyTorch: weights U(-b, b), b = 1/sqrt(fan_in); biases spread
        assert lin.weight.abs().max() <= bound and abs(lin.weight.std().item() / (bound / 3 ** 0.5) - 1) < 0.2, lin
        assert lin.bias.abs().max() > bound / 4, lin
    return check

# The longest tests first (the cpu-preset quality bars, longest of all ScoreGAN's; then the notebooks and the
# multi-process runs), handed out one at a time: pytest -n 2 sends tests in collection order, by default in
# chunks of a quarter of a worker's share, so long tests collected last (or chunked together) ran on one core
# while the other idled.
_FIRST = ('test_quality.py::test_cpu_preset_reaches_its_bar_on_gaussians5[score_gan]', 'test_quality.py',
          'test_notebooks.py', 'test_ddp.py')

def pytest_collection_modifyitems(config, items):
    rank = lambda item: next((i for i, key in enumerate(_FIRST) if key in item.nodeid), len(_FIRST))
    items.sort(key=rank)   # stable: the order within each group stays

def pytest_configure(config):
    if getattr(config.option, 'maxschedchunk', 0) is None: config.option.maxschedchunk = 1   # pytest-xdist's --maxschedchunk
    if getattr(config.option, 'durations', 0) is None: config.option.durations = 25   # the slowest tests, in CI's log: where its time goes
