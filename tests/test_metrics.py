"gpm_nb.metrics: closed-form values, exactness of the estimators, floors, mode statistics, and bad input."
import math
import pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, gaussians25
from gpm_nb.metrics import (check_samples, pairwise_sum, energy_distance, unit_directions, w2_sorted, sliced_w2,
                            median_distance, mmd, MMD_SCALES, metric_floor, mode_stats)

METRICS = [energy_distance, sliced_w2, mmd]


@pytest.mark.parametrize('metric', METRICS)
@pytest.mark.parametrize('x, y, err, msg', [
    (torch.randn(10), torch.randn(10, 2), ValueError, r'x must have shape \(n, d\)'),
    (torch.randn(10, 2), torch.randn(10, 3), ValueError, r'same dimension d, got x \(10, 2\) and y \(10, 3\)'),
    (torch.randn(10, 2), torch.full((10, 2), float('nan')), ValueError, 'y contains NaN'),
    (torch.full((10, 2), float('inf')), torch.randn(10, 2), ValueError, 'x contains inf'),
    (torch.zeros(0, 2), torch.randn(10, 2), ValueError, 'x must be non-empty'),
    (torch.randn(10, 2), torch.zeros(10, 0), ValueError, 'y must be non-empty'),
    ([[0., 1.]], torch.randn(10, 2), TypeError, 'torch.Tensor')])
def test_bad_input(metric, x, y, err, msg):
    with pytest.raises(err, match=msg): metric(x, y)


def test_inputs_are_flattened_and_promoted():
    x, y = check_samples(torch.zeros(3, 1, 2, 2), torch.ones(5, 4, dtype=torch.float16))
    assert x.shape == (3, 4) and y.shape == (5, 4) and x.dtype == y.dtype == torch.float64
    img = torch.randn(6, 1, 8, 8)
    assert math.isclose(sliced_w2(img, img + 1), sliced_w2(img.flatten(1), img.flatten(1) + 1), rel_tol=1e-12)


def test_pairwise_sum_chunks_agree_with_the_full_matrix():
    a, b = torch.randn(123, 3, dtype=torch.float64), torch.randn(77, 3, dtype=torch.float64)
    full = ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()
    for me in (50, 1000, 2**22): assert math.isclose(pairwise_sum(a, b, max_elems=me).item(), full.sum().item(), rel_tol=1e-12)
    fa = ((a[:, None] - a[None]) ** 2).sum(-1).sqrt()
    assert math.isclose(pairwise_sum(a, a, torch.exp, max_elems=500).item(), fa.exp().sum().item(), rel_tol=1e-12)
    a64, b64 = torch.randn(40, 64, dtype=torch.float64), torch.randn(30, 64, dtype=torch.float64)
    assert math.isclose(pairwise_sum(a64, b64).item(), ((a64[:, None] - b64[None]) ** 2).sum(-1).sqrt().sum().item(), rel_tol=1e-10)


def test_energy_distance_closed_forms():
    a, b = torch.tensor([1., 2., 3.]), torch.tensor([4., 6., 3.])
    assert math.isclose(energy_distance(a.expand(4, 3), b.expand(9, 3)), 10., rel_tol=1e-12)
    x = torch.randn(300, 2)
    assert energy_distance(x, x) == 0.
    seed_everything(0)
    mu, n = 1., 4000
    exact = 2 * (2 / math.sqrt(math.pi) * math.exp(-mu**2 / 4) + mu * math.erf(mu / 2) - 2 / math.sqrt(math.pi))
    assert abs(energy_distance(torch.randn(n, 1), mu + torch.randn(n, 1)) - exact) < 0.1  # sd 0.02 at n = 4000


def test_energy_floor_is_the_v_statistic_bias():
    g5 = gaussians5(); seed_everything(3)
    dxx = pairwise_sum(g5.sample(2000, 'cpu').double(), g5.sample(2000, 'cpu').double()).item() / 2000**2
    fl = metric_floor(energy_distance, lambda n: g5.sample(n, 'cpu'), 2000, repeats=5)
    assert abs(fl - dxx * 2 / 2000) < 0.003 and 0.001 < fl < 0.01


def test_w2_sorted_is_exact_for_unequal_sizes():
    sx = torch.randn(4, 200, dtype=torch.float64).sort().values
    sy = (1 + 2 * torch.randn(4, 300, dtype=torch.float64)).sort().values
    ref = ((sx.repeat_interleave(3, 1) - sy.repeat_interleave(2, 1)) ** 2).mean(1)
    assert torch.allclose(w2_sorted(sx, sy), ref, atol=1e-10)
    assert torch.allclose(w2_sorted(sx, sx), torch.zeros(4, dtype=torch.float64))


def test_sliced_w2_shift_and_gaussians():
    x = torch.randn(500, 2, dtype=torch.float64); s = torch.tensor([1., -2.], dtype=torch.float64)
    th = unit_directions(256, 2, seed=0)
    assert torch.allclose(th.norm(dim=1), torch.ones(256, dtype=torch.float64))
    assert math.isclose(sliced_w2(x, x + s) ** 2, ((th @ s) ** 2).mean().item(), rel_tol=1e-10)
    assert abs(((unit_directions(10**5, 2, seed=1) @ s) ** 2).mean().item() - 2.5) < 0.03  # E (theta.s)^2 = |s|^2 / 2
    seed_everything(1)
    mu = torch.tensor([1., 1.], dtype=torch.float64); n, m = 20_000, 21_000
    sw = sliced_w2(torch.randn(n, 2), mu + torch.randn(m, 2), n_proj=64)
    assert abs(sw**2 - ((unit_directions(64, 2) @ mu) ** 2).mean().item()) < 5 * math.sqrt(2) * math.sqrt(1 / n + 1 / m) + 0.01


def test_sliced_w2_leaves_the_global_rng_alone():
    x, y = torch.randn(100, 3), torch.randn(120, 3)
    st = torch.get_rng_state()
    a, b = sliced_w2(x, y, seed=5), sliced_w2(x, y, seed=5)
    assert torch.equal(st, torch.get_rng_state()) and a == b and a != sliced_w2(x, y, seed=6)
    with pytest.raises(ValueError, match='n_proj must be a positive integer'): sliced_w2(x, y, n_proj=0)


def test_mmd_closed_form_and_identity():
    seed_everything(2)
    hs, mu = (0.5, 1., 2.), torch.tensor([1., 0.5])
    exact = sum(2 * (h * h / (h * h + 2)) * (1 - math.exp(-(mu @ mu).item() / (2 * (h * h + 2)))) for h in hs)
    ests = torch.tensor([mmd(torch.randn(600, 2), mu + torch.randn(600, 2), bandwidths=hs) for _ in range(8)])
    assert abs(ests.mean().item() - exact) < 5 * ests.std().item() / 8**.5
    x = torch.randn(600, 2)
    assert -2 * len(MMD_SCALES) / 600 <= mmd(x, x) <= 0
    assert abs(mmd(torch.randn(600, 2), torch.randn(600, 2))) < 0.015
    assert median_distance(torch.tensor([[0.], [1.], [3.]])) == 2.


@pytest.mark.parametrize('kw, msg', [(dict(bandwidths=(1., -1.)), 'bandwidths must be positive'),
                                     (dict(bandwidths=()), 'bandwidths must be positive')])
def test_mmd_bad_bandwidths(kw, msg):
    with pytest.raises(ValueError, match=msg): mmd(torch.randn(5, 2), torch.randn(5, 2), **kw)


def test_mmd_needs_two_samples():
    with pytest.raises(ValueError, match='at least 2 samples'): mmd(torch.randn(1, 2), torch.randn(5, 2))


def test_metric_floor_bad_args():
    with pytest.raises(ValueError, match='n must be a positive integer'): metric_floor(mmd, torch.randn, 0)
    with pytest.raises(ValueError, match='repeats must be a positive integer'): metric_floor(mmd, lambda n: torch.randn(n, 2), 10, repeats=0)


def test_metrics_separate_a_wrong_model_from_the_floor():
    g5 = gaussians5(); seed_everything(0)
    far = gaussians5(); far.means = far.means * 1.5
    for metric in METRICS:
        fl = metric_floor(metric, lambda n: g5.sample(n, 'cpu'), 600, repeats=2)
        assert metric(far.sample(600, 'cpu'), g5.sample(600, 'cpu')) > 2 * abs(fl) + 1e-3


def test_mode_stats_on_exact_samples():
    g5 = gaussians5(); seed_everything(4); n = 40_000
    st = mode_stats(g5.sample(n, 'cpu'), g5.means, g5.std)
    p = 1 - math.exp(-4.5)
    assert abs(st['high_quality'] - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert (st['modes_covered'], st['n_modes']) == (5, 5) and st['mode_weight_tv'] < 0.02
    assert math.isclose(sum(st['mode_weights']), 1.) and sum(st['mode_counts']) == round(st['high_quality'] * n)
    g25 = gaussians25()
    assert mode_stats(g25.sample(2000, 'cpu'), g25.means, g25.std)['modes_covered'] == 25


def test_mode_stats_collapse_and_misses():
    g5 = gaussians5()
    seed_everything(5); one = g5.means[2] + 0.25 * torch.randn(2000, 2)
    st = mode_stats(one, g5.means, g5.std)
    assert st['modes_covered'] == 1 and math.isclose(st['mode_weight_tv'], 0.8, abs_tol=1e-12)
    assert mode_stats(one, g5.means, g5.std, weights=torch.tensor([0., 0., 1., 0., 0.]))['mode_weight_tv'] < 1e-12
    st0 = mode_stats(100 + torch.randn(50, 2), g5.means, g5.std)
    assert (st0['high_quality'], st0['modes_covered'], st0['mode_weight_tv']) == (0., 0, 1.)
    # coverage threshold: max(1, min_frac * n) high-quality samples
    x = torch.cat([g5.means[:1].expand(95, 2), g5.means[1:2].expand(5, 2)])
    assert mode_stats(x, g5.means, g5.std)['modes_covered'] == 2            # 5 >= max(1, 0.01 * 100)
    assert mode_stats(x, g5.means, g5.std, min_frac=0.06)['modes_covered'] == 1


def test_mode_stats_bad_input():
    g5 = gaussians5()
    with pytest.raises(ValueError, match='same dimension d'): mode_stats(torch.zeros(3, 2), torch.zeros(4, 3), 1.)
    with pytest.raises(ValueError, match='weights must be 5'): mode_stats(torch.zeros(3, 2), g5.means, 1., weights=torch.ones(4))
    with pytest.raises(ValueError, match='std must be a positive'): mode_stats(torch.zeros(3, 2), g5.means, 0.)
    with pytest.raises(ValueError, match='x contains NaN'): mode_stats(torch.full((3, 2), float('nan')), g5.means, 1.)
