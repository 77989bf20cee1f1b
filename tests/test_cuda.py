"GPU-only checks, skipped where no CUDA device is visible: a CUDA graph replays what it recorded, and Discriminator Flow and the GAN trained from captured computations (`cuda_graph`) train as the uncaptured ones."
import json
import pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, digits
from gpm_nb.train import CudaGraphed
from gpm_nb.gpm import discr_flow, DiscrFlowConfig, gan, GANConfig, RunConfig
from gpm_nb.cli import gpm_train, bench, bench_compare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

def test_cuda_graphed_replays_the_function_on_new_inputs():
    f = lambda x, y: (2 * x, [x.sin()])
    g = CudaGraphed(f, torch.randn(5, device='cuda'), None)
    for _ in range(3):
        x = torch.randn(5, device='cuda')
        out = g(x, None)
        torch.testing.assert_close(out[0], 2 * x); torch.testing.assert_close(out[1][0], x.sin())
    with pytest.raises(ValueError, match='must match the recorded'): g(torch.randn(6, device='cuda'), None)
    with pytest.raises(ValueError, match='must match the recorded'): g(x, x)

def _df(graph:bool, bf16:bool=False, **kw):
    seed_everything(0)
    cfg = DiscrFlowConfig(width=128, depth=3, K=20, gp=0.1, ema=0.9, eta=20., bf16=bf16, cuda_graph=graph, **kw)
    return discr_flow(gaussians5(), cfg, RunConfig(batch_size=256), device='cuda')

def _weights(m): return torch.cat([p.detach().flatten() for p in m.parameters()])

@pytest.mark.parametrize('bf16', [False, True])
def test_captured_iterations_train_as_the_uncaptured_ones(bf16):
    a, b = _df(False, bf16), _df(True, bf16)
    seed_everything(1); la = [a.train_step() for _ in range(30)]
    seed_everything(1); lb = [b.train_step() for _ in range(30)]
    assert len(b._graphs) == 1 and not a._graphs          # the second run replayed one recorded graph, the first none
    assert list(lb[0]) == ['d_loss', 'd_real', 'd_fake', 'gp']
    tol = 2e-2 if bf16 else 1e-3
    torch.testing.assert_close(torch.tensor([list(l.values()) for l in lb]), torch.tensor([list(l.values()) for l in la]), rtol=tol, atol=tol)
    torch.testing.assert_close(_weights(b), _weights(a), rtol=tol, atol=tol)
    if not bf16:                                          # same weights, same prior draws: the same samples
        xs = [(seed_everything(3), m.sample(1000))[1] for m in (a, b)]
        torch.testing.assert_close(xs[1], xs[0], rtol=1e-2, atol=1e-2)

def _gan(graph:bool, n_critic:int=1, data=None):
    seed_everything(0)
    cfg = GANConfig(width=128, depth=3, g_width=128, g_depth=3, latent=16, gp=0.1, ema=0.99, n_critic=n_critic, cuda_graph=graph)
    return gan(data if data is not None else gaussians5(), cfg, RunConfig(batch_size=256), device='cuda')

@pytest.mark.parametrize('n_critic', [1, 2])
def test_captured_gan_trains_as_the_uncaptured_one(n_critic):
    a, b = _gan(False, n_critic), _gan(True, n_critic)
    seed_everything(1); la = [a.train_step() for _ in range(30)]
    seed_everything(1); lb = [b.train_step() for _ in range(30)]
    assert len(b._graphs) == 2 and not a._graphs          # the critic's and the generator's computations
    assert list(lb[0]) == ['d_loss', 'd_real', 'd_fake', 'gp', 'g_loss', 'speed']
    torch.testing.assert_close(torch.tensor([list(l.values()) for l in lb]), torch.tensor([list(l.values()) for l in la]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(_weights(b), _weights(a), rtol=1e-3, atol=1e-3)

def test_captured_gan_on_images():
    a, b = _gan(False, data=digits()), _gan(True, data=digits())
    seed_everything(1); la = [a.train_step() for _ in range(10)]
    seed_everything(1); lb = [b.train_step() for _ in range(10)]
    torch.testing.assert_close(torch.tensor([list(l.values()) for l in lb]), torch.tensor([list(l.values()) for l in la]), rtol=1e-2, atol=1e-2)

def test_the_graph_follows_the_weights_when_they_move():
    a, b = _df(False), _df(True)
    for m in (a, b):
        seed_everything(1); m.train_step()
        m.to('cpu').to('cuda')                            # new tensors (or the old addresses reused): either way the replay must read them
        seed_everything(2)
        for _ in range(5): m.train_step()
    torch.testing.assert_close(_weights(b), _weights(a), rtol=1e-3, atol=1e-3)

def test_a_captured_run_trains_resumes_and_benches(tmp_path):
    out = tmp_path / 'run'
    gpm_train(['--method', 'discr_flow', '--preset', 'quick', '--steps', '100', '--cuda_graph', 'true', '--out', str(out), '--quiet'])
    assert json.loads((out / 'config.json').read_text())['cfg']['cuda_graph'] is True
    gpm_train(['--resume', '--steps', '150', '--out', str(out), '--quiet'])   # a captured run resumes as any run
    assert json.loads((out / 'metrics.json').read_text())['step'] == 150
    r = bench('discr_flow', 'gaussians5', 'quick', iters=20, n_samples=500, cuda_graph=True)
    assert r['train_it_per_s'] > 0 and 'gpu_util_pct' in r, r
    c = bench_compare('gaussians5', 'quick', iters=5, n_samples=500)
    assert {'train_speedup_ours_graph', 'train_speedup_ours_graph_bf16'} <= set(c), c
