"core: seeding, forked random-number generators."
import random
import numpy as np
import pytest, torch
from gpm_nb.core import seed_everything, rng_state, fork_rng

def draws(): return random.random(), float(np.random.rand()), torch.randn(4).tolist()

def test_fork_rng_leaves_the_outer_stream_alone():
    seed_everything(0); ref = draws() + draws()
    seed_everything(0); a = draws()
    with fork_rng(11): inner = draws()
    assert a + draws() == ref and inner != ref[:3]

def test_fork_rng_same_seed_same_draws():
    seed_everything(0)
    with fork_rng(5): a = draws()
    random.random(); torch.rand(3)
    with fork_rng(5): b = draws()
    with fork_rng(6): c = draws()
    assert a == b and a != c

def test_fork_rng_without_seed_rewinds():
    seed_everything(1)
    with fork_rng(): a = draws()
    assert draws() == a

def test_fork_rng_restores_on_exception():
    seed_everything(2); ref = draws(); seed_everything(2)
    with pytest.raises(KeyError):
        with fork_rng(3): draws(); raise KeyError('x')
    assert draws() == ref
    st = rng_state()
    with pytest.raises(ValueError, match='non-negative'):
        with fork_rng(-1): pass
    assert torch.equal(rng_state()['torch'], st['torch'])

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fork_rng_cuda():
    seed_everything(0); ref = torch.randn(4, device='cuda'); seed_everything(0)
    with fork_rng(9): torch.randn(100, device='cuda')
    assert torch.equal(torch.randn(4, device='cuda'), ref)
