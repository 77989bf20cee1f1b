"The DiffFlow SDE: the split keeps the marginals (closed form and exact mixture scores), the broken condition does not, the exact likelihood of the deterministic member, the learned free-particle model through the CLI, and bad input."
import json, math
from dataclasses import replace
import numpy as np, pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, get_dataset
from gpm_nb.metrics import energy_distance
from gpm_nb.scores import mixture_denoiser, log_likelihood
from gpm_nb.gpm import METHODS, RunConfig, evaluate, flow_grid
from gpm_nb.diffflow import (split_weights, fp_velocity, gaussian_marginal, DiffFlowField, mixture_score, kernel_ratio, Annealing,
                             ode_log_likelihood, RatioField, DiffFlowConfig, DiffFlowParticles, diffflow, resolve_diffflow,
                             DIFFFLOW_PRESETS)
from gpm_nb.cli import train, sample_run, gpm_train, gpm_sample, run_configs
from helpers import cli

def test_split_weights_keep_the_fokker_planck_velocity():
    s_p, s_q = torch.randn(2, 50, 2, dtype=torch.float64)
    for beta in (0.5, 2.):
        u = [fp_velocity(s_p, s_q, beta, *split_weights(beta, lam)) for lam in (0., 0.25, 1.)]
        assert all(torch.allclose(u[0], v) for v in u) and torch.allclose(u[0], beta * (s_p - s_q))
    assert split_weights(2., 0.25) == (1.5, 0.5) and split_weights(2., 1., kappa=2.) == (0., 4.)
    assert not torch.allclose(fp_velocity(s_p, s_q, 1., *split_weights(1., 0.5, kappa=2.)), s_p - s_q)

@pytest.mark.parametrize('kw, what', [(dict(beta=-1., split=.5), 'beta'), (dict(beta=1., split=1.5), 'split'),
                                      (dict(beta=1., split=-0.1), 'split'), (dict(beta=1., split=float('nan')), 'split'),
                                      (dict(beta=1., split=.5, kappa=-1.), 'kappa')])
def test_split_weights_refuse_bad_weights(kw, what):
    with pytest.raises(ValueError, match=what): split_weights(**kw)

def test_field_refuses_missing_estimates_and_negative_beta():
    f = lambda x, t: x
    with pytest.raises(ValueError, match='pass `ratio`'): DiffFlowField(f, None, 1., 0.5)
    with pytest.raises(ValueError, match='pass `score`'): DiffFlowField(None, f, 1., 0.5)
    with pytest.raises(ValueError, match='beta'): DiffFlowField(f, f, -1., 0.5)
    with pytest.raises(ValueError, match='split'): DiffFlowField(f, f, 1., 2.)
    g = DiffFlowField(f, None, lambda t: -1., 1.)
    with pytest.raises(ValueError, match='beta'): g(torch.zeros(3, 2), torch.zeros(3))
    assert DiffFlowField(None, f, 1., 0.).method == 'euler' and DiffFlowField(f, None, 1., 1.).method == 'euler_maruyama'
    assert DiffFlowField(f, None, 2., 1.).noise(0.) == pytest.approx(2.)   # sqrt(2 g), g = beta

def test_gaussian_marginals_match_the_closed_form_for_every_split_not_for_a_broken_one():
    mu, v_p, m0, v0 = torch.tensor([2., -1.], dtype=torch.float64), 0.5, torch.zeros(2, dtype=torch.float64), 1.5
    s_p = lambda x, t: -(x - mu) / v_p
    ratio = lambda x, t: s_p(x, t) + (x - x.mean(0)) / x.var(0).mean()        # grad log p - grad log (the cloud's Gaussian fit)
    grid, n = torch.linspace(0, 1, 101, dtype=torch.float64), 4000
    for lam, kappa in ((0., 1.), (0.5, 1.), (1., 1.), (1., 2.), (0., 0.5)):
        torch.manual_seed(0)
        xs = DiffFlowField(s_p, ratio, 1., lam, kappa).simulate(m0 + math.sqrt(v0) * torch.randn(n, 2, dtype=torch.float64), grid, traj=True)[1]
        for k in (25, 50, 100):
            m, v = gaussian_marginal(grid[k].item(), mu, v_p, m0, v0, 1., c=kappa)
            assert (xs[k].mean(0) - m).abs().max() < 0.05 and abs(xs[k].var(0).mean() - v) < 0.05 * v, (lam, kappa, k)
            if kappa != 1:   # the condition (4) broken: another variance than the splits'
                assert abs(v - gaussian_marginal(grid[k].item(), mu, v_p, m0, v0, 1.)[1]) > 0.1 * v

def test_exact_mixture_scores_splits_agree_within_the_floor_and_a_broken_split_does_not():
    "The issue's check: GAN-like (split 0), mixed and Langevin (split 1) marginals agree at several times; gamma + g = 2 beta does not."
    p, n, dt = gaussians5(), 2000, 0.02
    grid = torch.linspace(0, 2, 101, dtype=torch.float64); at = [25, 50, 100]
    def run(lam, seed, kappa=1., n=n):
        f = DiffFlowField(mixture_score(p), kernel_ratio(p, 0.2), 1., lam, kappa)
        return f.simulate(torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)), grid, traj=True,
                          generator=torch.Generator().manual_seed(seed + 100))[1][at]
    ref = run(1., 0, n=8000)
    floors = torch.tensor([[energy_distance(xs[j], ref[j]) for j in range(3)] for xs in (run(1., s) for s in range(1, 5))]).mean(0)
    got = {lam: run(lam, 10 + i) for i, lam in enumerate((0., 0.5))}
    broken = run(1., 20, kappa=2.)
    for j in range(3):
        for lam, xs in got.items(): assert energy_distance(xs[j], ref[j]) < 2 * floors[j], (lam, j, floors)
        assert energy_distance(broken[j], ref[j]) > 2 * floors[j]

def test_annealed_exact_splits_reach_the_mixture():
    p = gaussians5(); ann = Annealing(2.2, 0.022, 20.)
    torch.manual_seed(0); x0 = 2.2 * math.sqrt(2) * torch.randn(1500, 2)
    for lam in (0., 1.):
        f = DiffFlowField(mixture_score(p, ann.sigma), kernel_ratio(p, 0.15, ann.sigma), ann.beta, lam)
        x = f.simulate(x0, torch.linspace(0, 1, 26, dtype=torch.float64))
        near = (torch.cdist(x, p.means).min(1).values < 3 * p.std).float().mean()
        assert near > 0.93 and energy_distance(x, p.sample(1500, 'cpu')) < 0.01
    with pytest.raises(ValueError, match='sigma_min'): Annealing(0.1, 1., 1.)
    with pytest.raises(ValueError, match='eta'): Annealing(1., .1, 0.)
    with pytest.raises(ValueError, match='bandwidth'): kernel_ratio(p, 0.)

def test_exact_likelihood_of_the_deterministic_member():
    mu, v_p, m0, v0 = torch.tensor([1., 0.5], dtype=torch.float64), 0.3, torch.zeros(2, dtype=torch.float64), 2.
    def s_q(x, t):
        m, v = gaussian_marginal(float(t[0]), mu, v_p, m0, v0)
        return -(x - m) / v
    ln = lambda x, m, v: -((x - m) ** 2).sum(1) / (2 * v) - math.log(2 * math.pi * v)
    torch.manual_seed(0); x0 = m0 + math.sqrt(v0) * torch.randn(300, 2, dtype=torch.float64)
    f = DiffFlowField(None, lambda x, t: -(x - mu) / v_p - s_q(x, t), 1., 0.)
    x1, l1 = ode_log_likelihood(f, x0, ln(x0, m0, v0), torch.linspace(0, 1, 101, dtype=torch.float64))
    m1, v1 = gaussian_marginal(1., mu, v_p, m0, v0)
    assert (l1 - ln(x1, m1, v1)).abs().max() < 1e-3
    p = gaussians5(); x = p.sample(100, 'cpu').double()    # the probability-flow member: log_likelihood of 11_scores
    assert (log_likelihood(mixture_denoiser(p), x, 0.05, 40.) - p.noised(0.05).log_prob(x)).abs().mean() < 5e-3
    with pytest.raises(ValueError, match='logq0'): ode_log_likelihood(f, x0, torch.zeros(3), [0., 1.])

def test_ratio_field_is_the_gradient_of_the_logit():
    p, q = gaussians5(), gaussians5().noised(1.)
    class Exact(torch.nn.Module):   # the optimal logit, log p - log q (one unused parameter for the optimiser)
        def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(()))
        def forward(self, x, t): return p.log_prob(x) - q.log_prob(x) + 0 * self.w
    x = 3 * torch.randn(40, 2)
    assert torch.allclose(RatioField(Exact())(x, torch.zeros(40)), p.score(x) - q.score(x), atol=1e-4)
    with pytest.raises(ValueError, match='log p/q'): RatioField(Exact(), 'ipm')

@pytest.mark.parametrize('field, value, what', [('split', 1.5, 'split must be in \\[0, 1\\]'), ('split', -0.5, 'split must be in \\[0, 1\\]'),
                                                ('eta', -1., 'eta must be > 0'), ('eta', 0., 'eta must be > 0'), ('K', 0, 'K must be >= 1'),
                                                ('sigma_max', -1., 'sigma_max must be >= 0'), ('loss', 'hinge', 'loss must be'),
                                                ('gp', -1., 'gp must be >= 0'), ('s_lr', -1., 's_lr must be >= 0'), ('lr', 0., 'lr must be > 0')])
def test_config_refuses_bad_values_naming_the_field(field, value, what):
    with pytest.raises(ValueError, match=what): DiffFlowConfig(**{field: value})
    with pytest.raises(ValueError, match=what): run_configs('diffflow', 'quick', **{field: value})
    with pytest.raises(ValueError, match='sigma_min <= sigma_max'): DiffFlowConfig(sigma_min=2., sigma_max=1.)
    with pytest.raises(ValueError, match='resolve'): diffflow(gaussians5(), DiffFlowConfig())

def test_gpm_train_bad_split_exits_2_naming_the_field(capsys, tmp_path):
    code, out = cli(capsys, gpm_train, '--method', 'diffflow', '--preset', 'quick', '--split', '1.2', '--out', tmp_path/'r')
    assert code == 2 and 'split must be in [0, 1]' in out
    code, out = cli(capsys, gpm_train, '--method', 'diffflow', '--preset', 'quick', '--eta', '-3', '--out', tmp_path/'r')
    assert code == 2 and 'eta must be > 0' in out

def test_presets_and_resolve():
    assert set(DIFFFLOW_PRESETS) == {'quick', 'cpu', 'gpu', 'digits'} and 'diffflow' in METHODS
    d = resolve_diffflow(get_dataset('digits'), DIFFFLOW_PRESETS['digits'][1])   # images: the start level given, the rest from the data
    assert d.sigma_max == 10. and 0.8 < d.sigma_data < 0.9 and d.sigma_min == pytest.approx(0.01 * d.sigma_data, rel=1e-3)
    for run, cfg in DIFFFLOW_PRESETS.values(): assert isinstance(run, RunConfig) and isinstance(cfg, DiffFlowConfig)
    cfg = resolve_diffflow(gaussians5(), DiffFlowConfig())
    assert 2. < cfg.sigma_max == cfg.sigma_data < 2.4 and cfg.sigma_min == pytest.approx(0.01 * cfg.sigma_max, rel=1e-3)
    assert resolve_diffflow(gaussians5(), DiffFlowConfig(sigma_max=3., sigma_min=.1, sigma_data=1.)).sigma_max == 3.

def test_init_std_initialises_both_networks(check_init):
    "init_std reaches the denoiser's MLP and the discriminator: PyTorch's init for 0, GPM's N(0, 0.02^2) by default."
    p = gaussians5(); small = dict(split=.5, width=32, depth=1, s_width=32, s_depth=1, t_emb=8)
    for std in (0., 0.02):
        m = diffflow(p, resolve_diffflow(p, DiffFlowConfig(init_std=std, **small)), device='cpu')
        for net in (m.field.score, m.field.ratio): check_init(net, std)

@pytest.mark.parametrize('split', [0., 0.5, 1.])
def test_every_split_trains_resumes_and_samples_through_the_cli(tmp_path, capsys, split):
    out = tmp_path/'r'
    kw = dict(split=split, K=8, width=32, depth=2, s_width=32, s_depth=2, t_emb=16)
    m = train('diffflow', 'gaussians5', 'quick', out=out, quiet=True, steps=10, n_samples=200, **kw)
    assert m['step'] == 10 and np.isfinite(m['energy']) and 'diverged' not in m
    opts = set(torch.load(out/'checkpoint.pt', weights_only=True)['optimizers'])
    assert opts == {0.: {'ratio'}, 0.5: {'ratio', 'score'}, 1.: {'score'}}[split]
    assert train('diffflow', 'gaussians5', 'quick', out=out, quiet=True, resume=True, steps=20, n_samples=200, **kw)['step'] == 20
    assert json.loads((out/'config.json').read_text())['cfg']['split'] == split
    x = sample_run(out, 50, steps=5)
    assert x.shape == (50, 2) and torch.isfinite(x).all()
    torch.manual_seed(0); a = sample_run(out, 50, steps=5)
    torch.manual_seed(0); b = sample_run(out, 50, steps=5, denoise=False)          # a config field changed for the draw
    assert torch.equal(a, b) == (split == 0.)                                        # only a split with a denoiser denoises
    with pytest.raises(ValueError, match='unknown config field'): sample_run(out, 5, denoise_twice=True)
    code, msg = cli(capsys, gpm_sample, out, '--n', 30, '--steps', 4, '--out', tmp_path/'s.npy')
    assert code == 0 and np.load(tmp_path/'s.npy').shape == (30, 2)

def test_quick_preset_learns():
    "The quick preset (split 1) moves the particles onto the five Gaussians: far more of them within 3 std of a mode than before training."
    p = gaussians5(); seed_everything(0)
    run, cfg = DIFFFLOW_PRESETS['quick']
    m = diffflow(p, resolve_diffflow(p, cfg), run, 'cpu')
    before = evaluate(m.sample(1000), p, floors=False)
    for _ in range(run.steps): m.train_step()
    after = evaluate(m.sample(1000), p, floors=False)
    assert after['high_quality'] > before['high_quality'] + 0.15 and after['modes_covered'] == 5, (before, after)
    assert after['energy'] < 0.8 * before['energy'], (before, after)
    with pytest.raises(ValueError, match='steps must be a positive integer'): m.sample(10, steps=0)
    assert torch.equal(m.particles.grid, flow_grid(cfg.K)) and torch.equal(m.particles.grid_for(7), flow_grid(7))   # t_k = k/K for any K

def test_sampling_ends_with_the_denoisers_tweedie_step():
    "With a denoiser (split > 0) a draw is D(x_1, sigma_min) of the particles the SDE ends with; split 0 has none and returns them as they are."
    p = gaussians5(); seed_everything(0)
    run, cfg = DIFFFLOW_PRESETS['quick']
    cfg = resolve_diffflow(p, replace(cfg, width=16, depth=1, s_width=16, s_depth=1, t_emb=8))
    def draws(m, denoise):
        m.denoise = denoise; torch.manual_seed(3)
        return m.sample(64, steps=4)
    for split in (0.5, 1.):
        m = diffflow(p, replace(cfg, split=split), run, 'cpu')
        x, x1 = draws(m, True), draws(m, False)
        torch.testing.assert_close(x, m.sampling_field.score.field.denoiser(x1, torch.full((64,), cfg.sigma_min)))
        assert not torch.allclose(x, x1)
    m0 = diffflow(p, replace(cfg, split=0.), run, 'cpu')
    torch.testing.assert_close(draws(m0, True), draws(m0, False))
    assert DiffFlowConfig().denoise and run_configs('diffflow', 'quick', denoise='false')[1].denoise is False
