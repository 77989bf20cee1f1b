"The score-difference flow: the field from denoisers, the kernel denoiser, particles between toys, the regression loss, bad inputs."
import math
from types import SimpleNamespace
import pytest
import torch
from gpm_nb.sdflow import sd_field, kernel_denoiser, sd_particles, sd_regression_loss
from gpm_nb.scores import mixture_denoiser
from gpm_nb.data import get_dataset, GaussianMixture
from gpm_nb.metrics import energy_distance, metric_floor, mode_stats
from gpm_nb.gpm import push_loss
from gpm_nb.nets import MLP

f64 = dict(dtype=torch.float64)

def test_kernel_denoiser_is_the_mixture_denoiser_of_point_masses():
    "The kernel denoiser (4) equals eq. (3) of 11_scores for std-0 components at the samples, at every sigma and per sample."
    torch.manual_seed(0)
    y = get_dataset('gaussians5').sample(200, 'cpu').double()
    pts = SimpleNamespace(means=y, std=0., weights=torch.full((len(y),), 1 / len(y), **f64), dim=2)
    x = 4 * torch.randn(300, 2, **f64)
    for s in (0.01, 0.3, 3.):
        torch.testing.assert_close(kernel_denoiser(y)(x, s), mixture_denoiser(pts)(x, s), rtol=1e-10, atol=1e-10)
    s = torch.rand(300, **f64) + 0.05
    torch.testing.assert_close(kernel_denoiser(y, max_elems=777)(x, s), mixture_denoiser(pts)(x, s), rtol=1e-10, atol=1e-10)

def test_kernel_denoiser_converges_to_the_exact_denoiser():
    torch.manual_seed(0)
    mix = get_dataset('gaussians5')
    x = mix.noised(0.5).sample(1000, 'cpu').double()
    exact = mixture_denoiser(mix)(x, 0.5)
    err = [(kernel_denoiser(mix.sample(m, 'cpu').double())(x, 0.5) - exact).pow(2).sum(1).mean().sqrt().item() for m in (100, 5000)]
    assert err[1] < err[0] / 3 and err[1] < 0.05, err

def test_kernel_denoiser_takes_images_and_is_stable_at_tiny_sigma():
    y = torch.randn(9, 1, 3, 3, **f64)
    out = kernel_denoiser(y)(y[:4] + 0.05, 0.4)
    assert out.shape == (4, 1, 3, 3)
    torch.testing.assert_close(out.flatten(1), kernel_denoiser(y.flatten(1))(y[:4].flatten(1) + 0.05, 0.4))
    far = kernel_denoiser(y.float())(y[:4].float() + 0.01, 1e-4)          # logits ~ -1e6: no overflow, nearest sample
    assert torch.isfinite(far).all(); torch.testing.assert_close(far, y[:4].float())

@pytest.mark.parametrize('sigma', [0.1, 1., 4.])
def test_sd_field_matches_closed_form_on_gaussians(sigma):
    "Between N(m, s^2 I) and N(0, I) the proxies' score difference is -x/(1+sigma^2) + (x-m)/(s^2+sigma^2)."
    m, s = torch.tensor([1.5, -0.5], **f64), 0.6
    field = sd_field(mixture_denoiser(GaussianMixture(torch.zeros(1, 2), 1.)), mixture_denoiser(GaussianMixture(m[None].float(), s)))
    assert field.time == 'sigma'
    x = 3 * torch.randn(100, 2, **f64)
    torch.testing.assert_close(field(x, sigma), -x / (1 + sigma**2) + (x - m) / (s**2 + sigma**2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(field(x, torch.full((100,), sigma, **f64)), field(x, sigma))

def test_sd_field_matches_mixture_scores():
    p, q = get_dataset('gaussians5'), GaussianMixture(torch.tensor([[-1., 0.], [1., 2.]]), 0.7, torch.tensor([.3, .7]))
    x = 3 * torch.randn(200, 2, **f64)
    v = sd_field(mixture_denoiser(p), mixture_denoiser(q))(x, 0.7)
    torch.testing.assert_close(v, p.noised(0.7).score(x) - q.noised(0.7).score(x), rtol=1e-9, atol=1e-9)

def test_sd_particles_moons_to_gaussians():
    torch.manual_seed(0)
    mix, moons = get_dataset('gaussians5'), get_dataset('moons')
    n = 400
    sig = torch.logspace(math.log10(3.), math.log10(0.05), 80)
    x = sd_particles(moons.sample(n, 'cpu'), mix.sample(n, 'cpu'), sig)
    ms = mode_stats(x, mix.means, mix.std)
    assert ms['high_quality'] >= 0.95 and ms['modes_covered'] == 5, ms
    ed = sum(energy_distance(x, mix.sample(n, 'cpu')) for _ in range(5)) / 5
    floor = metric_floor(energy_distance, lambda k: mix.sample(k, 'cpu'), n, repeats=5)
    assert ed <= 3 * floor, (ed, floor)

def test_sd_particles_fixed_point_and_callback():
    y = torch.randn(50, 2)
    seen = []
    out = sd_particles(y, y, [2., 1., .5], callback=lambda k, s, x: seen.append((k, s)))
    torch.testing.assert_close(out, y)
    assert seen == [(0, 2.), (1, 2.), (2, 1.), (3, .5)]

def test_regression_gradient_is_twice_eta_the_surrogate():
    torch.manual_seed(0)
    g = MLP(2, 2, 16, 2, t_emb=0).double()
    z, v = torch.randn(32, 2, **f64), torch.randn(32, 2, **f64)
    for eta in (0.25, 1.):
        g1 = torch.autograd.grad(sd_regression_loss(g(z), v, eta), list(g.parameters()))
        g2 = torch.autograd.grad(push_loss(g(z), v), list(g.parameters()))
        for a, b in zip(g1, g2): torch.testing.assert_close(a, 2 * eta * b, rtol=1e-10, atol=1e-12)

def test_bad_inputs():
    y, x = torch.randn(10, 2), torch.randn(5, 2)
    D = kernel_denoiser(y)
    with pytest.raises(ValueError, match='sigma must be finite and > 0'): D(x, 0.)
    with pytest.raises(ValueError, match='sigma must be finite and > 0'): D(x, -1.)
    with pytest.raises(ValueError, match=r'x holds points of shape \(3,\) but the samples y have shape \(2,\)'): D(torch.randn(5, 3), 1.)
    with pytest.raises(ValueError, match='y must be a non-empty'): kernel_denoiser(torch.zeros(0, 2))
    with pytest.raises(ValueError, match='y must be a non-empty'): kernel_denoiser(torch.zeros(5))
    with pytest.raises(TypeError, match='y must be a tensor'): kernel_denoiser([[0., 1.]])
    with pytest.raises(ValueError, match='max_elems must be a positive integer'): kernel_denoiser(y, max_elems=0)
    with pytest.raises(TypeError, match='D_q must be a denoiser callable'): sd_field(D, 'not a denoiser')
    with pytest.raises(ValueError, match='sigma must be finite and > 0'): sd_field(D, D)(x, 0.)
    with pytest.raises(ValueError, match='every sigma must be finite and > 0'): sd_particles(x, y, [1., 0.])
    with pytest.raises(ValueError, match='non-empty 1-D'): sd_particles(x, y, [])
    with pytest.raises(ValueError, match=r'x0 holds points of shape \(2,\) but the samples y have shape \(3,\)'): sd_particles(x, torch.randn(4, 3), [1.])
    with pytest.raises(ValueError, match='y must be a non-empty'): sd_particles(x, torch.zeros(0, 2), [1.])
    with pytest.raises(ValueError, match=r'eta must be a number in \(0, 1\]'): sd_particles(x, y, [1.], eta=1.5)
    with pytest.raises(ValueError, match='same shape'): sd_regression_loss(x, x[:2])
    with pytest.raises(ValueError, match='eta must be a positive number'): sd_regression_loss(x, x, eta=0.)
