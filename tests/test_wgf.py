"gpm_nb.wgf: KL-flow velocity, Gaussian closed forms (OU process) and kernel scores; particles moved by `integrate`."
import math
import pytest
import torch
from gpm_nb.core import seed_everything
from gpm_nb.integrate import integrate
from gpm_nb.wgf import kl_flow_velocity, gaussian_score, ou_mean_cov, gaussian_kl, kernel_score

D64 = dict(dtype=torch.float64)
M_P, S_P = torch.tensor([0., 0.], **D64), torch.tensor([[1., .8], [.8, .89]], **D64)   # MonoFlow's toy target
M_0, S_0 = torch.tensor([1., 1.], **D64), torch.eye(2, **D64)

def mean_cov(x): return x.mean(0), torch.cov(x.T)
def score_p(x, t): return gaussian_score(x, M_P, S_P)
def steps(eta, K): return eta * torch.arange(K + 1, **D64)             # the grid t_k = k eta
def flow(v, x0, eta, K, **kw): return integrate(v, x0, steps(eta, K), **kw)                       # Euler, eq. (13)
def langevin(score, x0, eta, K, **kw):                                                           # Euler-Maruyama, eq. (12)
    return integrate(score, x0, steps(eta, K), 'euler_maruyama', g=math.sqrt(2), **kw)
def score_q_exact(x, t):
    "Score of the analytic q_t (16) at per-sample times t (n,)."
    tu, i = t.unique(return_inverse=True)
    m, S = ou_mean_cov(tu, M_P, S_P, M_0, S_0)
    return gaussian_score(x, m[i], S[i])

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

# ---------------------------------------------------------------- OU closed form vs simulation
def test_ou_closed_form_vs_langevin_simulation():
    seed_everything(0)
    n, eta, K = 4000, 0.01, 150
    x0 = M_0 + torch.randn(n, 2, **D64)
    store = {}
    langevin(score_p, x0, eta, K, callback=lambda k, t, x: store.__setitem__(k, mean_cov(x)) if k % 50 == 0 else None)
    assert sorted(store) == [0, 50, 100, 150]
    for k, (m_hat, S_hat) in store.items():
        mt, St = ou_mean_cov(k * eta, M_P, S_P, M_0, S_0)
        var = St.diagonal()
        se_m, se_S = (var / n).sqrt(), ((var[:, None] * var[None] + St**2) / n).sqrt()
        assert ((m_hat - mt).abs() <= 5 * se_m + 0.02).all(), (k, m_hat, mt)        # MC + O(eta) discretisation
        assert ((S_hat - St).abs() <= 5 * se_S + 0.02).all(), (k, S_hat, St)
    # the flow really moved: the final moments are far from the initial ones
    assert (store[150][0] - M_0).norm() > 0.5

def test_probability_flow_with_fitted_gaussian_tracks_ou():
    "PF-ODE with the particles' fitted-Gaussian score: moments follow (16) from the empirical start, error O(eta)."
    seed_everything(1)
    x0 = M_0 + torch.randn(300, 2, **D64)
    m0, S0 = mean_cov(x0)
    v = lambda x, t: kl_flow_velocity(x, score_p, lambda y, s: gaussian_score(y, *mean_cov(y)), t)
    def max_err(eta):
        errs = []
        def cb(k, t, x):
            (m_, S_), (mt, St) = mean_cov(x), ou_mean_cov(t, M_P, S_P, m0, S0)
            errs.append(max((m_ - mt).abs().max().item(), (S_ - St).abs().max().item()))
        flow(v, x0, eta, round(1 / eta), callback=cb)
        return max(errs)
    e1, e2 = max_err(0.02), max_err(0.01)
    assert e1 < 0.05 and 1.7 < e1 / e2 < 2.3, (e1, e2)        # first-order Euler convergence

def test_probability_flow_with_exact_score_matches_langevin_marginals():
    seed_everything(2)
    n, eta, K = 4000, 0.01, 100
    x0 = M_0 + torch.randn(n, 2, **D64)
    x_ode = flow(lambda x, t: kl_flow_velocity(x, score_p, score_q_exact, t), x0, eta, K)
    x_sde = langevin(score_p, x0, eta, K)
    mt, St = ou_mean_cov(K * eta, M_P, S_P, M_0, S_0)
    for x in (x_ode, x_sde):
        m_, S_ = mean_cov(x)
        assert (m_ - mt).abs().max() < 0.1 and (S_ - St).abs().max() < 0.1

# ---------------------------------------------------------------- KL
def test_gaussian_kl_matches_torch_and_decreases_along_flow():
    q, p = torch.distributions.MultivariateNormal(M_0, S_0), torch.distributions.MultivariateNormal(M_P, S_P)
    assert torch.allclose(gaussian_kl(M_0, S_0, M_P, S_P), torch.distributions.kl_divergence(q, p), atol=1e-12)
    assert gaussian_kl(M_P, S_P, M_P, S_P).abs() < 1e-13
    ts = torch.linspace(0, 6, 61, **D64)
    kl = gaussian_kl(*ou_mean_cov(ts, M_P, S_P, M_0, S_0), M_P, S_P)
    assert kl.shape == (61,) and (kl.diff() < 0).all() and kl[-1] < 1e-3 * kl[0]
    lam = torch.linalg.eigvalsh(S_P).max()
    assert (kl <= torch.exp(-2 * ts / lam) * kl[0] + 1e-15).all()          # log-Sobolev decay

def test_kl_rate_is_minus_fisher_divergence():
    A, h = torch.linalg.inv(S_P), 1e-5
    for t in (0.3, 1.5):
        mt, St = ou_mean_cov(t, M_P, S_P, M_0, S_0)
        D = torch.linalg.inv(St) - A
        fisher = (D @ St @ D).trace() + (A @ (mt - M_P)).pow(2).sum()
        slope = (gaussian_kl(*ou_mean_cov(t + h, M_P, S_P, M_0, S_0), M_P, S_P)
                 - gaussian_kl(*ou_mean_cov(t - h, M_P, S_P, M_0, S_0), M_P, S_P)) / (2 * h)
        assert torch.isclose(slope, -fisher, rtol=1e-6)

def test_fitted_kl_monotone_along_deterministic_flow():
    seed_everything(3)
    x0 = M_0 + torch.randn(500, 2, **D64)
    kls = []
    v = lambda x, t: kl_flow_velocity(x, score_p, lambda y, s: gaussian_score(y, *mean_cov(y)), t)
    flow(v, x0, 0.02, 100, callback=lambda k, t, x: kls.append(gaussian_kl(*mean_cov(x), M_P, S_P)))
    kls = torch.stack(kls)
    assert len(kls) == 101 and (kls.diff() < 0).all() and kls[-1] < 0.05 * kls[0]

def test_ou_moment_ode_by_finite_differences():
    A, h, t = torch.linalg.inv(S_P), 1e-5, 0.7
    (mp, Sp), (mm, Sm) = ou_mean_cov(t + h, M_P, S_P, M_0, S_0), ou_mean_cov(t - h, M_P, S_P, M_0, S_0)
    mt, St = ou_mean_cov(t, M_P, S_P, M_0, S_0)
    assert torch.allclose((mp - mm) / (2 * h), -A @ (mt - M_P), atol=1e-8)
    assert torch.allclose((Sp - Sm) / (2 * h), -A @ St - St @ A + 2 * torch.eye(2, **D64), atol=1e-8)
    m0, S0 = ou_mean_cov(0., M_P, S_P, M_0, S_0)
    assert torch.allclose(m0, M_0) and torch.allclose(S0, S_0)

# ---------------------------------------------------------------- scores
def test_gaussian_score_matches_autograd():
    x = torch.randn(9, 2, **D64).requires_grad_()
    auto = torch.autograd.grad(torch.distributions.MultivariateNormal(M_P, S_P).log_prob(x).sum(), x)[0]
    assert torch.allclose(gaussian_score(x.detach(), M_P, S_P), auto, atol=1e-12)

def test_kernel_score_matches_autograd_of_kernel_mixture():
    seed_everything(4)
    x, y, sigma = torch.randn(40, 3, **D64), torch.randn(70, 3, **D64) * 2, 0.6
    xr = x.clone().requires_grad_()
    logq = torch.logsumexp(-((xr[:, None] - y[None])**2).sum(-1) / (2 * sigma**2), 1)
    auto = torch.autograd.grad(logq.sum(), xr)[0]
    assert torch.allclose(kernel_score(x, y, sigma), auto, atol=1e-10)
    assert torch.allclose(kernel_score(x, y, sigma, chunk=6), auto, atol=1e-10)
    assert not torch.allclose(auto, torch.zeros_like(auto))

def test_kernel_score_is_stable_far_away_and_keeps_shape_and_dtype():
    y = torch.randn(30, 2)
    far = torch.tensor([[500., -300.]])
    s = kernel_score(far, y, 0.05)
    nearest = y[(y - far).norm(dim=1).argmin()]
    assert torch.isfinite(s).all() and torch.allclose(s, (nearest - far) / 0.05**2, rtol=1e-4)
    assert s.dtype == torch.float32
    xi, yi = torch.randn(3, 1, 2, 2), torch.randn(5, 1, 2, 2)
    assert kernel_score(xi, yi, 1.).shape == (3, 1, 2, 2)

# ---------------------------------------------------------------- fields at per-sample times
def test_kl_velocity_passes_per_sample_times_to_the_scores():
    x, t = torch.randn(5, 2, **D64), torch.linspace(0, 1, 5, **D64)
    sp = lambda x, t: t[:, None] * x                      # a score that depends on each sample's own time
    sq = lambda x, t: torch.zeros_like(x)
    assert torch.equal(kl_flow_velocity(x, sp, sq, t), t[:, None] * x)
    assert torch.equal(kl_flow_velocity(x, sp, sq, 0.5), 0.5 * x)          # one number: every sample
    assert torch.equal(kl_flow_velocity(x, sp, sq), torch.zeros_like(x))    # default t = 0
    seen = []
    kl_flow_velocity(x.float(), lambda x, t: seen.append(t) or x, sq, 2.)
    assert seen[0].shape == (5,) and seen[0].dtype == torch.float32

def test_gaussian_score_one_gaussian_per_point():
    seed_everything(7)
    x, m = torch.randn(6, 2, **D64), torch.randn(6, 2, **D64)
    S = S_P + torch.rand(6, 1, 1, **D64) * torch.eye(2, **D64)
    batched = gaussian_score(x, m, S)
    rows = torch.cat([gaussian_score(x[i:i+1], m[i], S[i]) for i in range(6)])
    assert torch.allclose(batched, rows, atol=1e-13)

def test_exact_q_score_at_mixed_times_matches_each_time_alone():
    x, t = torch.randn(6, 2, **D64), torch.tensor([0., .5, .5, 2., 0., 1.], **D64)
    got = score_q_exact(x, t)
    for i in range(6):
        want = gaussian_score(x[i:i+1], *ou_mean_cov(t[i].item(), M_P, S_P, M_0, S_0))
        assert torch.allclose(got[i:i+1], want, atol=1e-13)

# ---------------------------------------------------------------- eqs. (12)-(13) through the one integrator
def test_euler_on_the_flow_grid_is_eq13():
    x0 = torch.randn(5, 2)
    assert torch.allclose(flow(lambda x, t: -x, x0, 0.1, 10), 0.9**10 * x0, atol=1e-6)
    seen = []
    xK, tr = integrate(lambda x, t: t[:, None].expand_as(x), x0, 1. + steps(0.25, 4),
                       callback=lambda k, t, x: seen.append((k, t)), traj=True)
    assert seen == [(0, 1.), (1, 1.25), (2, 1.5), (3, 1.75), (4, 2.)]
    assert torch.allclose(xK, x0 + 0.25 * (1 + 1.25 + 1.5 + 1.75))
    assert tr.shape == (5, 5, 2) and torch.equal(tr[0], x0) and torch.equal(tr[-1], xK)
    assert xK.dtype == torch.float32

def test_euler_maruyama_with_g_sqrt2_is_langevin_eq12():
    seed_everything(5)
    inc = langevin(lambda x, t: torch.zeros_like(x), torch.zeros(20000, 2, **D64), 0.05, 1)
    assert (inc.var(0) - 0.1).abs().max() < 5 * 0.1 * math.sqrt(2 / 20000)     # one step adds N(0, 2 eta I)
    x0 = torch.randn(4, 2)
    a = langevin(lambda x, t: -x, x0, 0.1, 5, generator=torch.Generator().manual_seed(6))
    b = langevin(lambda x, t: -x, x0, 0.1, 5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, 0.9**5 * x0)

# ---------------------------------------------------------------- diffusion's probability-flow ODE
B0, B1 = 0.1, 20.
def beta(t): return B0 + (B1 - B0) * t
def alpha(t): return torch.exp(-0.5 * B0 * t - 0.25 * (B1 - B0) * t**2)

def test_vp_probability_flow_ode_follows_the_exact_gaussian_flow_map():
    "dx/dt = -beta/2 (x + grad log p_t) for p = N(m, S): x_t = m_t + C_t^1/2 C_u^-1/2 (x_u - m_u), C_t = a^2 S + (1 - a^2) I."
    def score_t(x, t):
        a = alpha(t)[:, None, None]
        return gaussian_score(x, a[:, 0] * M_P, a**2 * S_P + (1 - a**2) * torch.eye(2, **D64))
    lam, U = torch.linalg.eigh(S_P)
    a1, ae = alpha(torch.tensor(1., **D64)), alpha(torch.tensor(1e-3, **D64))
    c1, ce = a1**2 * lam + 1 - a1**2, ae**2 * lam + 1 - ae**2
    seed_everything(8)
    x1 = torch.randn(500, 2, **D64)
    exact = ae * M_P + ((x1 - a1 * M_P) @ U * (ce / c1).sqrt()) @ U.T
    err = {N: (integrate(lambda x, t: -0.5 * beta(t)[:, None] * (x + score_t(x, t)), x1,
                         torch.linspace(1., 1e-3, N + 1, **D64), 'heun') - exact).abs().max().item() for N in (100, 200)}
    assert err[200] < 1e-3 and 3.3 < err[100] / err[200] < 4.7, err      # Heun: second order
    assert (exact - x1).abs().max() > 0.5                                 # the ODE really moved the particles

# ---------------------------------------------------------------- bad input
X = torch.randn(6, 2)
V = lambda x, t: -x

@pytest.mark.parametrize('call, err, msg', [
    (lambda: kl_flow_velocity(X, V, V, torch.zeros(5)), ValueError, 't must have shape (6)'),
    (lambda: kl_flow_velocity(X, V, V, '0.5'), TypeError, 't must be a tensor of per-sample times'),
    (lambda: kl_flow_velocity(X, V, V, True), TypeError, 't must be a tensor of per-sample times'),
    (lambda: kl_flow_velocity(torch.ones(6), V, V), ValueError, 'x must have shape'),
    (lambda: kl_flow_velocity(X.long(), V, V), TypeError, 'floating-point'),
    (lambda: kl_flow_velocity(X, V, lambda x, t: x.sum(1)), ValueError, 'score_q(x, t) must have shape (6, 2)'),
    (lambda: kl_flow_velocity(X, 1, V), TypeError, 'score_p must be a callable'),
    (lambda: gaussian_score(X.double(), M_P, torch.tensor([[1., 2.], [2., 1.]], **D64)), ValueError, 'S must be positive definite'),
    (lambda: gaussian_score(X.double(), M_P, torch.tensor([[1., .5], [0., 1.]], **D64)), ValueError, 'S must be symmetric'),
    (lambda: gaussian_score(X.double(), M_P, torch.eye(3, **D64)), ValueError, 'S must have shape (2, 2)'),
    (lambda: gaussian_score(torch.ones(4, 3, **D64), M_P, S_P), ValueError, 'x must have shape (*, 2)'),
    (lambda: gaussian_score(X.double(), torch.zeros(2, 2, **D64), S_P), ValueError, 'S must have shape (2, 2, 2)'),
    (lambda: gaussian_score(X.double(), torch.zeros(5, 2, **D64), S_P.expand(5, 2, 2)), ValueError, 'x must have shape (5, 2)'),
    (lambda: gaussian_score(X.double(), torch.zeros(1, 6, 2, **D64), S_P.expand(1, 6, 2, 2)), ValueError, 'm must have shape (2,) or (n, 2)'),
    (lambda: gaussian_score(X.double(), torch.zeros(6, 2, **D64), -S_P.expand(6, 2, 2)), ValueError, 'S must be positive definite'),
    (lambda: ou_mean_cov(-0.5, M_P, S_P, M_0, S_0), ValueError, 't must be a finite time >= 0'),
    (lambda: ou_mean_cov(torch.ones(2, 2), M_P, S_P, M_0, S_0), ValueError, 't must be a finite time >= 0'),
    (lambda: ou_mean_cov(1., M_P, S_P, M_0, -S_0), ValueError, 'S0 must be positive definite'),
    (lambda: ou_mean_cov(1., M_P, S_P, torch.ones(3, **D64), torch.eye(3, **D64)), ValueError, 'm0 must have shape (2,)'),
    (lambda: gaussian_kl(M_0, S_0, torch.ones(3, **D64), torch.eye(3, **D64)), ValueError, 'm1 must have shape (2,)'),
    (lambda: gaussian_kl(M_0, torch.zeros(2, 2, **D64), M_P, S_P), ValueError, 'S0 must be positive definite'),
    (lambda: gaussian_kl(M_0, S_0, M_P, S_P * float('nan')), ValueError, 'S1 contains NaN'),
    (lambda: kernel_score(X, X, 0.), ValueError, 'sigma must be a positive'),
    (lambda: kernel_score(X, X, float('inf')), ValueError, 'sigma must be a positive'),
    (lambda: kernel_score(X, torch.randn(5, 3), 1.), ValueError, 'y must have shape (*, 2)'),
    (lambda: kernel_score(X, X, 1., chunk=0), ValueError, 'chunk must be a positive integer'),
    (lambda: kernel_score(X, X.double(), 1.), TypeError, 'same dtype'),
    (lambda: kernel_score(torch.ones(3), X, 1.), ValueError, 'x must have shape'),
])
def test_bad_input(call, err, msg):
    with pytest.raises(err) as e: call()
    assert msg in str(e.value), str(e.value)
