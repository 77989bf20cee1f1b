"""gpm_nb.scores: Tweedie and the closed-form mixture denoiser, EDM preconditioning, the Karras grid, samplers through `integrate`, edm_defaults,
DPM-Solver++(2M) and the sampler registry, log-likelihoods through the probability-flow ODE."""
import math
import pytest
import torch
from gpm_nb.core import seed_everything, append_dims
from gpm_nb.data import gaussians5, gaussians_uneven, GaussianMixture
from gpm_nb.metrics import energy_distance, metric_floor, mode_stats
from gpm_nb.nets import MLP, UNet
from gpm_nb.scores import (score_from_denoiser, denoiser_from_score, mixture_denoiser, edm_precond, Denoiser, edm_loss,
                           get_sigmas_karras, to_d, denoiser_field, sample_euler, sample_heun, sample_euler_maruyama,
                           NFECounter, edm_defaults, sample_dpmpp_2m, SAMPLERS, get_sampler, sampler_nfe,
                           log_likelihood, bits_per_dim)

D64 = dict(dtype=torch.float64)
MIX = gaussians5()
D_MIX = mixture_denoiser(MIX)

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

# ---------------------------------------------------------------- Tweedie and the mixture denoiser
@pytest.mark.parametrize('sigma', [0.02, 0.5, 2., 40.])
def test_mixture_denoiser_matches_noised_score(sigma):
    seed_everything(0)
    y = 4 * torch.randn(300, 2, **D64)
    exact = MIX.noised(sigma).score(y)
    got = score_from_denoiser(D_MIX, y, sigma)
    assert (got - exact).abs().max() <= 1e-9 * exact.abs().max()
    assert torch.allclose(denoiser_from_score(lambda x, s: MIX.noised(sigma).score(x), y, sigma), D_MIX(y, sigma), atol=1e-10)

def test_mixture_denoiser_per_sample_sigma_and_limits():
    seed_everything(1)
    y, s = 3 * torch.randn(40, 2, **D64), torch.rand(40, **D64) + 0.1
    exact = torch.stack([MIX.noised(v).score(y[i:i + 1])[0] for i, v in enumerate(s.tolist())])
    assert torch.allclose(score_from_denoiser(D_MIX, y, s), exact, atol=1e-10)
    assert torch.equal(D_MIX(y, 0.), y)
    assert torch.allclose(D_MIX(y, 1e6), MIX.mean().expand_as(y), atol=1e-5)

def test_mixture_denoiser_vs_monte_carlo():
    seed_everything(2)
    xs, q, sig = MIX.sample(100_000).double(), torch.tensor([[3., 0.], [1.5, 1.5], [-2., -1.]], **D64), 1.
    w = (-((q[:, None] - xs[None]) ** 2).sum(-1) / (2 * sig**2)).softmax(1)
    assert (w @ xs - D_MIX(q, sig)).abs().max() < 0.03

# ---------------------------------------------------------------- preconditioning and loss
def test_preconditioning_identities():
    sd, sig = 0.7, torch.logspace(-3, 3, 25, **D64)
    c_skip, c_out, c_in, c_noise = edm_precond(sig, sd)
    one = torch.ones_like(sig)
    assert torch.allclose(c_in**2 * (sd**2 + sig**2), one, atol=1e-12)
    assert torch.allclose(((1 - c_skip)**2 * sd**2 + c_skip**2 * sig**2) / c_out**2, one, atol=1e-12)   # unit target variance
    assert torch.allclose((sig**2 + sd**2) / (sig * sd)**2 * c_out**2, one, atol=1e-12)                  # lambda c_out^2 = 1
    assert torch.allclose(c_noise, sig.log() / 4)

def test_edm_loss_of_optimal_linear_denoiser_is_one():
    seed_everything(3)
    sd = 0.5
    x = sd * torch.randn(50_000, 2, **D64)
    lin = lambda x, s: append_dims(edm_precond(s, sd)[0], x.dim()) * x
    assert abs(edm_loss(lin, x, sigma_data=sd).item() - 1) < 0.03
    assert edm_loss(lin, x, sigma_data=sd, reduction='none').shape == (50_000,)

def test_denoiser_wraps_vector_and_image_nets():
    torch.manual_seed(0)
    Dv = Denoiser(MLP(2, 2, width=16, depth=1, t_emb=8), sigma_data=2.)
    x = torch.randn(6, 2)
    assert Dv(x, torch.rand(6) + 0.1).shape == (6, 2)
    loss = edm_loss(Dv, x); loss.backward()
    assert torch.isfinite(loss) and next(Dv.net.parameters()).grad is not None
    Di = Denoiser(UNet(1, 8, width=8, emb=16), sigma_data=0.5)           # zero output layer: D = c_skip x
    xi, si = torch.randn(3, 1, 8, 8), torch.tensor([0.05, 1., 20.])
    assert torch.allclose(Di(xi, si), append_dims(edm_precond(si, 0.5)[0], 4) * xi, atol=1e-6)

# ---------------------------------------------------------------- the Karras grid
def test_karras_grid():
    s = get_sigmas_karras(12, 0.002, 80., rho=7.)
    assert s.shape == (13,) and s.dtype == torch.float64
    assert math.isclose(s[0].item(), 80., rel_tol=1e-12) and math.isclose(s[-2].item(), 0.002, rel_tol=1e-12) and s[-1] == 0
    assert (s.diff() < 0).all()
    d = (s[:-1] ** (1 / 7)).diff()
    assert torch.allclose(d, d[0].expand_as(d), atol=1e-12)
    assert torch.allclose(get_sigmas_karras(4, 1., 4., rho=1.)[:-1], torch.tensor([4., 3., 2., 1.], **D64))
    one = get_sigmas_karras(1, 0.1, 5.)
    assert one.shape == (2,) and math.isclose(one[0].item(), 5., rel_tol=1e-12) and one[1] == 0

# ---------------------------------------------------------------- samplers
def test_nfe_counts():
    x = 80 * torch.randn(16, 2, **D64)
    for N in (1, 3, 10):
        sg = get_sigmas_karras(N, 0.002, 80.)
        for fn, want in [(sample_euler, N), (sample_heun, 2 * N - 1), (sample_euler_maruyama, N),
                         (lambda m, x, s: sample_heun(m, x, s, s_churn=4.), 2 * N - 1)]:
            c = NFECounter(D_MIX); fn(c, x, sg); assert c.nfe == want

def test_churn_outside_window_equals_heun_and_field_time():
    x, sg = 80 * torch.randn(16, 2, **D64), get_sigmas_karras(10, 0.002, 80.)
    assert torch.allclose(sample_heun(D_MIX, x, sg, s_churn=20., s_tmin=200.), sample_heun(D_MIX, x, sg), atol=1e-12)
    assert denoiser_field(D_MIX).time == 'sigma'
    assert torch.allclose(to_d(x, 2., D_MIX(x, 2.)), -2. * MIX.noised(2.).score(x), atol=1e-10)

@pytest.fixture(scope='module')
def samples():
    seed_everything(6)
    n, smin, smax = 2000, 0.002, 80.
    floor = metric_floor(energy_distance, lambda k: MIX.sample(k).double(), n, repeats=5)
    xT = smax * torch.randn(n, 2, **D64)
    g = lambda: torch.Generator().manual_seed(7)
    out = {'euler': sample_euler(D_MIX, xT, get_sigmas_karras(128, smin, smax)),
           'heun': sample_heun(D_MIX, xT, get_sigmas_karras(32, smin, smax)),
           'churn': sample_heun(D_MIX, xT, get_sigmas_karras(32, smin, smax), s_churn=10., s_tmin=0.05, s_tmax=50.,
                                s_noise=1.003, generator=g()),
           'em': sample_euler_maruyama(D_MIX, xT, get_sigmas_karras(256, smin, smax), generator=g()),
           'bad': sample_euler(D_MIX, xT, get_sigmas_karras(3, smin, smax))}
    ratio = {k: sum(energy_distance(v, MIX.sample(n)) for _ in range(3)) / 3 / floor for k, v in out.items()}
    return ratio

@pytest.mark.parametrize('name', ['euler', 'heun', 'churn', 'em'])
def test_samplers_reproduce_gaussians5(samples, name):
    assert samples[name] < 2, samples

def test_bar_is_not_vacuous(samples):
    assert samples['bad'] > 10, samples

def test_error_order():
    seed_everything(8)
    x = 80 * torch.randn(200, 2, **D64)
    ref = sample_heun(D_MIX, x, get_sigmas_karras(1024, 0.002, 80.))
    err = lambda f, N: (f(D_MIX, x, get_sigmas_karras(N, 0.002, 80.)) - ref).pow(2).sum(1).mean().sqrt().item()
    eu = [err(sample_euler, N) for N in (32, 64, 128)]
    he = [err(sample_heun, N) for N in (32, 64, 128)]
    assert all(1.8 < a / b < 2.3 for a, b in zip(eu, eu[1:])), eu
    assert all(3.5 < a / b < 5.5 for a, b in zip(he, he[1:])), he

# ---------------------------------------------------------------- edm_defaults
def test_edm_defaults_equivariance_and_values():
    seed_everything(9)
    x = MIX.sample(1500).double()                                          # below max_points: no subsample
    d, dc = edm_defaults(x), edm_defaults(7 * x)
    for k in ('sigma_data', 'sigma_min', 'sigma_max'):
        assert math.isclose(dc[k], 7 * d[k], rel_tol=1e-9), k
    assert math.isclose(dc['P_mean'], d['P_mean'] + math.log(7), rel_tol=1e-9)
    assert math.isclose(d['sigma_data'], x.pow(2).mean().sqrt().item(), rel_tol=1e-12)
    assert d['sigma_min'] < 0.05 * MIX.std and d['sigma_max'] > 3 * d['sigma_data']
    assert math.log(d['sigma_min']) < d['P_mean'] < math.log(d['sigma_max'])
    g = 0.5 * torch.randn(3000, 8, **D64)                                    # EDM-like scale: P_mean ~ -1.2
    assert abs(edm_defaults(g)['P_mean'] + 1.2) < 0.05

def test_edm_defaults_sigma_min_moves_points_a_fixed_share_of_their_neighbour_distance():
    "Eq. (8b) of 11_scores: the noise at sigma_min has RMS length 0.1 sqrt(2) times the median nearest-neighbour distance, whatever the dimension."
    def nn_median(x): x = x.flatten(1); return torch.cdist(x, x).fill_diagonal_(math.inf).min(1).values.median().item()
    seed_everything(3)
    for d in (1, 2, 8, 64):
        x = torch.randn(1000, d, **D64) * torch.linspace(0.5, 1.5, d, **D64)
        assert math.isclose(edm_defaults(x)['sigma_min'] * math.sqrt(d), 0.1 * math.sqrt(2) * nn_median(x), rel_tol=1e-9), d
    img = torch.rand(500, 1, 8, 8, **D64)                                    # images: d counts every pixel
    assert math.isclose(edm_defaults(img)['sigma_min'], 0.1 * math.sqrt(2 / 64) * nn_median(img), rel_tol=1e-9)

def test_edm_defaults_sigma_max_start_kl():
    seed_everything(10)
    v, d = 2., 3
    s = edm_defaults(math.sqrt(v) * torch.randn(5000, d, **D64), kl_tol=1e-4)['sigma_max']
    r = s**2 / (s**2 + v)
    assert abs(d / 2 * (r - 1 - math.log(r)) - 1e-4) < 2e-5

def test_sigma_max_too_small_gets_weights_wrong():
    um = gaussians_uneven(); D = mixture_denoiser(um)
    seed_everything(11)
    z = torch.randn(2000, 2, **D64)
    tv = lambda smax: mode_stats(sample_heun(D, smax * z, get_sigmas_karras(48, 0.002, smax)), um.means, um.std,
                                 weights=um.weights)['mode_weight_tv']
    assert tv(0.5) > 0.15 and tv(edm_defaults(um.sample(3000))['sigma_max']) < 0.04

# ---------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x = torch.randn(5, 2, **D64)
    sg = get_sigmas_karras(4, 0.002, 80.)
    cases = [(lambda: get_sigmas_karras(0, 0.1, 1.), 'n must be a positive integer'),
             (lambda: get_sigmas_karras(3, 1., 0.1), '0 < sigma_min < sigma_max'),
             (lambda: get_sigmas_karras(3, 0., 1.), '0 < sigma_min < sigma_max'),
             (lambda: get_sigmas_karras(3, 0.1, 1., rho=-1), 'rho must be a positive'),
             (lambda: sample_euler(D_MIX, x, sg.flip(0)), 'strictly decreasing'),
             (lambda: sample_heun(D_MIX, x, [80., 1., 2., 0.]), 'strictly increasing or strictly decreasing'),
             (lambda: sample_euler_maruyama(D_MIX, x, [1., .5, -.1]), 'final value >= 0'),
             (lambda: sample_heun(D_MIX, x, sg, s_churn=-1.), 'must be >= 0'),
             (lambda: sample_euler(D_MIX, x[:, 0], sg), 'batch-first'),
             (lambda: score_from_denoiser(D_MIX, x, 0.), 'sigma must be finite and > 0'),
             (lambda: score_from_denoiser(D_MIX, x, torch.ones(3)), 'sigma must have shape (5)'),
             (lambda: D_MIX(x, -1.), 'sigma must be finite and >= 0'),
             (lambda: D_MIX(torch.randn(5, 3, **D64), 1.), 'x must have shape (*, 2)'),
             (lambda: to_d(x, 1., x[:2]), 'denoised must have shape (5, 2)'),
             (lambda: Denoiser(torch.nn.Identity(), sigma_data=-1.), 'sigma_data must be a positive number'),
             (lambda: edm_loss(D_MIX, x), 'sigma_data must be a positive number'),
             (lambda: edm_loss(D_MIX, x, sigma_data=1., reduction='sum'), "'mean' or 'none'"),
             (lambda: edm_defaults(torch.ones(10, 2)), 'no spread'),
             (lambda: edm_defaults(torch.ones(1, 2)), 'at least 2 samples'),
             (lambda: edm_defaults(x, kl_tol=0.), 'kl_tol must be a positive')]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=None) as e: fn()
        assert msg in str(e.value), (msg, str(e.value))

# ---------------------------------------------------------------- DPM-Solver++(2M) and the registry
def _dpmpp_2m_lambda(model, x, sigmas):
    "DPM-Solver++(2M) transcribed in lambda = -ln sigma (k-diffusion's form): an independent reference."
    lam, old = lambda s: -math.log(s), None
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        D = model(x, torch.full((len(x),), s0, dtype=x.dtype))
        if s1 == 0: x = D                                                     # h = inf: 1 - e^-h = 1
        elif old is None: x = s1 / s0 * x - math.expm1(-(lam(s1) - lam(s0))) * D
        else:
            h, h_last = lam(s1) - lam(s0), lam(s0) - lam(sigmas[i - 1])
            x = s1 / s0 * x - math.expm1(-h) * ((1 + h / (2 * h_last)) * D - h / (2 * h_last) * old)
        old = D
    return x

def test_dpmpp_2m_nfe_formula_and_callback():
    seed_everything(20)
    x = 80 * torch.randn(32, 2, **D64)
    for N in (1, 2, 7, 13):
        sg = get_sigmas_karras(N, 0.002, 80.)
        c = NFECounter(D_MIX); out = sample_dpmpp_2m(c, x, sg)
        assert c.nfe == N == sampler_nfe('dpmpp_2m', N)
        assert torch.allclose(out, _dpmpp_2m_lambda(D_MIX, x, sg.tolist()), atol=1e-10)
    sg, seen, eu = get_sigmas_karras(9, 0.002, 80.), [], []
    sample_dpmpp_2m(D_MIX, x, sg, callback=lambda i, s, y: seen.append((i, s, y)))
    sample_euler(D_MIX, x, sg, callback=lambda i, s, y: eu.append(y))
    assert [i for i, _, _ in seen] == list(range(10)) and torch.allclose(torch.tensor([s for _, s, _ in seen], **D64), sg)
    assert torch.allclose(seen[1][2], eu[1], atol=1e-12)                       # first step = Euler = DDIM
    assert torch.allclose(seen[-1][2], D_MIX(seen[-2][2], sg[-2].item()), atol=1e-12)   # last step returns the denoised

def test_dpmpp_2m_reproduces_gaussians5_at_13_nfe():
    seed_everything(21)
    n, lv = 2000, edm_defaults(MIX.sample(5000))
    floor = metric_floor(energy_distance, lambda k: MIX.sample(k).double(), n, repeats=5)
    c = NFECounter(D_MIX)
    out = sample_dpmpp_2m(c, lv['sigma_max'] * torch.randn(n, 2, **D64), get_sigmas_karras(13, lv['sigma_min'], lv['sigma_max']))
    ratio = sum(energy_distance(out, MIX.sample(n)) for _ in range(3)) / 3 / floor
    ms = mode_stats(out, MIX.means.double(), MIX.std)
    assert c.nfe == 13
    assert ratio < 3 and ms['high_quality'] >= 0.95 and ms['modes_covered'] == 5, (ratio, ms)

def test_dpmpp_2m_is_second_order():
    seed_everything(22)
    x = 80 * torch.randn(200, 2, **D64)
    ref = sample_heun(D_MIX, x, get_sigmas_karras(1024, 0.002, 80.))
    err = [(sample_dpmpp_2m(D_MIX, x, get_sigmas_karras(N, 0.002, 80.)) - ref).pow(2).sum(1).mean().sqrt().item() for N in (32, 64, 128)]
    assert all(3.5 < a / b < 5.5 for a, b in zip(err, err[1:])), err

def test_sampler_registry():
    assert list(SAMPLERS) == ['euler', 'heun', 'euler_maruyama', 'dpmpp_2m']
    assert get_sampler('heun') is sample_heun and get_sampler('dpmpp_2m') is sample_dpmpp_2m
    x = 80 * torch.randn(8, 2, **D64)
    for name in SAMPLERS:
        for N in (1, 5):
            c = NFECounter(D_MIX); get_sampler(name)(c, x, get_sigmas_karras(N, 0.002, 80.))
            assert c.nfe == sampler_nfe(name, N) == (2 * N - 1 if name == 'heun' else N)
    with pytest.raises(ValueError, match="unknown sampler 'ddim': choose one of euler, heun, euler_maruyama, dpmpp_2m"): get_sampler('ddim')
    with pytest.raises(ValueError, match='unknown sampler'): sampler_nfe('rk4', 3)
    with pytest.raises(ValueError, match='steps must be a positive integer'): sampler_nfe('euler', 0)

# ---------------------------------------------------------------- log-likelihood
def test_log_likelihood_matches_closed_form_2d():
    seed_everything(23)
    x = MIX.noised(0.002).sample(200).double()
    lp = log_likelihood(D_MIX, x, 0.002, 80.)
    assert lp.shape == (200,) and (lp - MIX.noised(0.002).log_prob(x).double()).abs().max() < 1e-2
    um = gaussians_uneven()                                  # mean away from 0: the prior needs a larger sigma_max, eq. (16)
    xu = um.noised(0.01).sample(200).double()
    lpu = log_likelihood(mixture_denoiser(um), xu, 0.01, 1000.)
    assert (lpu - um.noised(0.01).log_prob(xu).double()).abs().max() < 1e-2
    assert torch.equal(log_likelihood(D_MIX, x[:20], 0.002, 80.), log_likelihood(D_MIX, x[:20], 0.002, 80., exact=True))

def test_log_likelihood_image_shaped_input():
    m4 = GaussianMixture(torch.tensor([[1., -1., 0.5, 0.], [-1., 1., -0.5, 0.]]), std=0.6)
    D4 = mixture_denoiser(m4)
    seed_everything(24)
    x = m4.noised(0.01).sample(50).double()
    D_img = lambda y, s: D4(y.flatten(1), s).view_as(y)      # the same model on (n, 1, 2, 2)
    a, b = log_likelihood(D4, x, 0.01, 200.), log_likelihood(D_img, x.view(50, 1, 2, 2), 0.01, 200.)
    assert torch.allclose(a, b, atol=1e-9) and (a - m4.noised(0.01).log_prob(x).double()).abs().max() < 1e-2

def test_hutchinson_agrees_with_exact():
    mu = 3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(25))
    m16 = GaussianMixture(mu - mu.mean(0), std=1.)
    D16 = mixture_denoiser(m16)
    seed_everything(26)
    x = m16.noised(0.01).sample(100).double()
    exact = log_likelihood(D16, x, 0.01, 500., exact=True)
    g = lambda: torch.Generator().manual_seed(27)
    h = log_likelihood(D16, x, 0.01, 500., generator=g())                  # d = 16 > 8: Hutchinson by default
    assert torch.equal(h, log_likelihood(D16, x, 0.01, 500., exact=False, generator=g()))   # reproducible
    e = h - exact
    assert abs(e.mean()) < 3.5 * e.std() / math.sqrt(len(e)) and 0 < e.std() < 5, (e.mean(), e.std())
    e4 = log_likelihood(D16, x, 0.01, 500., n_probe=4, generator=g()) - exact
    assert abs(e4.mean()) < 3.5 * e4.std() / math.sqrt(len(e4)) and e4.std() < 0.7 * e.std()

def test_bits_per_dim():
    assert math.isclose(bits_per_dim(3 * math.log(127.5 / 256), 3, scale=127.5).item(), 8., rel_tol=1e-12)
    lp = torch.tensor([-2., -4.], **D64)
    assert torch.allclose(bits_per_dim(lp, 2), -lp / (2 * math.log(2)))

def test_likelihood_and_sampler_bad_inputs():
    x = MIX.sample(6).double()
    cases = [(lambda: log_likelihood(D_MIX, x, 1., 0.5), ValueError, 'need 0 < sigma_min < sigma_max'),
             (lambda: log_likelihood(D_MIX, x, 1., 1.), ValueError, 'need 0 < sigma_min < sigma_max'),
             (lambda: log_likelihood(D_MIX, x, 0., 80.), ValueError, 'need 0 < sigma_min < sigma_max'),
             (lambda: log_likelihood(D_MIX, x, -0.1, 80.), ValueError, 'need 0 < sigma_min < sigma_max'),
             (lambda: log_likelihood(None, x, 0.01, 80.), TypeError, 'model must be callable'),
             (lambda: log_likelihood(D_MIX, x[:, 0], 0.01, 80.), ValueError, 'batch-first'),
             (lambda: log_likelihood(D_MIX, x.long(), 0.01, 80.), ValueError, 'batch-first'),
             (lambda: log_likelihood(lambda y, s: y[:3], x, 0.01, 80.), ValueError, 'model(x, sigma) must have shape (6, 2)'),
             (lambda: log_likelihood(D_MIX, x, 0.01, 80., exact=False, n_probe=0), ValueError, 'n_probe must be a positive integer'),
             (lambda: log_likelihood(D_MIX, x, 0.01, 80., probe='normal'), ValueError, "probe must be 'rademacher' or 'gaussian'"),
             (lambda: log_likelihood(D_MIX, x, 0.01, 80., atol=-1.), ValueError, 'rtol and atol must be positive'),
             (lambda: bits_per_dim(-1., 0), ValueError, 'd must be a positive integer'),
             (lambda: bits_per_dim(-1., 2, scale=-1.), ValueError, 'scale must be a positive number'),
             (lambda: sample_dpmpp_2m(D_MIX, x, [0., 1.]), ValueError, 'strictly decreasing'),
             (lambda: sample_dpmpp_2m(3, x, [1., 0.]), TypeError, 'model must be callable'),
             (lambda: sample_dpmpp_2m(lambda y, s: y[:, :1], x, [1., 0.]), ValueError, 'model(x, sigma) must have shape (6, 2)')]
    for fn, exc, msg in cases:
        with pytest.raises(exc) as e: fn()
        assert msg in str(e.value), (msg, str(e.value))
