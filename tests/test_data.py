"gpm_nb.data: mixtures with exact log-density and score, toys, user arrays, digits, and clear errors on bad input."
import math
import numpy as np, pytest, torch
from gpm_nb.core import seed_everything, rng_state, set_rng_state, default_device
from gpm_nb.data import (GaussianMixture, gaussians5, gaussians8, gaussians25, gaussians_narrow, gaussians_uneven,
                         Toy2D, ArrayData, DATASETS, load_array, get_dataset, load_digits, digits)

TOYS = ['moons', 'swiss_roll', 'checkerboard', 'rings', 'pinwheel']


def weighted5():
    return GaussianMixture(gaussians5().means, 0.5, weights=torch.tensor([1., 2., 3., 4., 5.]))


def test_mixture_geometry():
    g5, g8, g25 = gaussians5(), gaussians8(), gaussians25()
    a = 2 * math.pi * torch.arange(5) / 5
    assert torch.allclose(g5.means, 3 * torch.stack([a.cos(), a.sin()], 1), atol=1e-6)
    assert (g5.std, g8.std, g25.std) == (0.5, 0.02, 0.05)
    assert torch.allclose(g8.means.norm(dim=1), torch.full((8,), 2.))
    assert sorted(set(g25.means.flatten().tolist())) == [-4., -2., 0., 2., 4.] and len(g25.means) == 25
    for g in (g5, g8, g25): assert torch.allclose(g.weights, torch.full_like(g.weights, 1 / len(g.weights)))
    assert torch.allclose(g5.cov(), 4.75 * torch.eye(2, dtype=torch.float64), atol=1e-5)


def test_hard_mixtures():
    gn, gu = gaussians_narrow(), gaussians_uneven()
    assert (gn.name, gu.name) == ('gaussians_narrow', 'gaussians_uneven') and (gn.std, gu.std) == (0.05, 0.5)
    assert torch.allclose(gn.means, gaussians8().means) and torch.allclose(gu.means, gaussians5().means)
    assert torch.allclose(gn.weights, torch.full((8,), 1 / 8))
    assert torch.allclose(gu.weights, torch.tensor([.03, .07, .15, .25, .5])) and math.isclose(gu.weights.sum().item(), 1, abs_tol=1e-6)
    for g, lim, h in [(gn, 2.5, 0.05), (gu, 7., 0.1)]:
        assert torch.equal(g.mode_index(g.means), torch.arange(len(g.means)))
        t = torch.arange(-lim, lim + h / 2, h, dtype=torch.float64)
        assert abs(g.log_prob(torch.cartesian_prod(t, t)).exp().sum().item() * h * h - 1) < 1e-6
    seed_everything(3); n = 40_000
    O = torch.bincount(gu.mode_index(gu.sample(n, device='cpu')), minlength=5).double(); E = n * gu.weights.double()
    assert ((O - E) ** 2 / E).sum() < 18.47  # chi^2_4 99.9% quantile: the light modes get their share
    x = gn.sample(n, device='cpu')
    assert ((x - gn.means[gn.mode_index(x)]).norm(dim=1) < 6 * 0.05).all()  # every draw sits in a narrow mode


def test_log_prob_matches_torch_distributions_and_integrates_to_one():
    gm = weighted5()
    TD = torch.distributions
    ref = TD.MixtureSameFamily(TD.Categorical(gm.weights.double()), TD.Independent(TD.Normal(gm.means.double(), 0.5), 1))
    x = 4 * torch.randn(200, 2, dtype=torch.float64)
    lp = gm.log_prob(x)
    assert lp.dtype == torch.float64 and lp.shape == (200,)
    assert torch.allclose(lp, ref.log_prob(x), atol=1e-10)
    assert gm.log_prob(x.float()).dtype == torch.float32
    h = 0.1; t = torch.arange(-7, 7 + h / 2, h, dtype=torch.float64)
    assert abs(gm.log_prob(torch.cartesian_prod(t, t)).exp().sum().item() * h * h - 1) < 1e-6
    assert torch.isfinite(gm.log_prob(torch.tensor([[1e4, 0.]], dtype=torch.float64))).all()


def test_score_is_the_gradient_of_log_prob():
    gm = weighted5()
    x = 3 * torch.randn(100, 2, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    g, = torch.autograd.grad(gm.log_prob(xg).sum(), xg)
    assert torch.allclose(gm.score(x), g, atol=1e-10)
    h = 1e-5
    fd = torch.stack([(gm.log_prob(x + h * e) - gm.log_prob(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    assert torch.allclose(gm.score(x), fd, atol=1e-6)
    assert gm.score(x.float()).dtype == torch.float32
    far = torch.tensor([[100., 0.]], dtype=torch.float64)  # pulled back towards the nearest centre
    assert torch.allclose(gm.score(far), (gm.means[0].double() - far) / 0.25, atol=1e-6)


def test_sampling_is_seeded_resumable_and_has_the_right_moments():
    gm = weighted5()
    seed_everything(0); a = gm.sample(10, device='cpu')
    seed_everything(0); assert torch.equal(gm.sample(10, device='cpu'), a)
    st = rng_state(); b = gm.sample(5, device='cpu'); set_rng_state(st)
    assert torch.equal(gm.sample(5, device='cpu'), b)
    assert a.dtype == torch.float32 and a.shape == (10, 2)
    n = 40_000; x = gm.sample(n, device='cpu').double()
    assert ((x.mean(0) - gm.mean()).abs() <= 5 * x.std(0) / n**.5).all()
    assert torch.allclose(torch.cov(x.T), gm.cov(), atol=0.15)
    O = torch.bincount(gm.mode_index(x), minlength=5).double(); E = n * gm.weights.double()
    assert ((O - E) ** 2 / E).sum() < 18.47  # chi^2_4 99.9% quantile
    assert torch.equal(gm.mode_index(gm.means), torch.arange(5))


def test_noised_mixture():
    g = gaussians5().noised(0.7)
    assert math.isclose(g.std, math.sqrt(0.25 + 0.49))
    assert torch.allclose(g.cov(), gaussians5().cov() + 0.49 * torch.eye(2, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match='non-negative'): gaussians5().noised(-0.1)


@pytest.mark.parametrize('kw, msg', [
    (dict(means=torch.zeros(3), std=1.), r'2-D tensor \(k, d\)'),
    (dict(means=torch.zeros(0, 2), std=1.), 'non-empty'),
    (dict(means=torch.zeros(3, 2), std=-1.), 'std must be a positive'),
    (dict(means=torch.zeros(3, 2), std=float('nan')), 'std must be a positive'),
    (dict(means=torch.zeros(3, 2), std=1., weights=torch.ones(4)), r'weights must have shape \(3\)'),
    (dict(means=torch.zeros(3, 2), std=1., weights=torch.zeros(3)), 'not all zero'),
    (dict(means=torch.tensor([[0., float('inf')]]), std=1.), 'means contains inf')])
def test_mixture_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg): GaussianMixture(**kw)


def test_mixture_bad_points():
    g = gaussians5()
    with pytest.raises(ValueError, match=r'x must have shape \(\*, 2\), got \(4, 3\)'): g.log_prob(torch.zeros(4, 3))
    with pytest.raises(TypeError, match='floating-point'): g.score(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='positive integer'): g.sample(0)
    with pytest.raises(ValueError, match='positive integer'): g.sample(2.5)


@pytest.mark.parametrize('name', TOYS)
def test_toys_are_standardised_and_seeded(name):
    ds = DATASETS[name]()
    assert isinstance(ds, Toy2D) and ds.name == name and ds.dim == 2 and ds.shape == (2,)
    seed_everything(1); x = ds.sample(20_000, device='cpu')
    seed_everything(1); assert torch.equal(ds.sample(20_000, device='cpu'), x)
    x = x.double(); sq = (x ** 2).sum(1)
    assert x.shape == (20_000, 2) and torch.isfinite(x).all()
    assert (x.mean(0).abs() <= 5 * x.std(0) / 20_000**.5).all()
    assert abs(sq.mean() - 2) <= 5 * sq.std() / 20_000**.5
    with pytest.raises(ValueError, match='positive integer'): ds.sample(-1)


def test_checkerboard_lies_on_black_cells():
    u = DATASETS['checkerboard']().sample(20_000, device='cpu').double() * math.sqrt(4 / 3)
    inner = ((u - u.round()).abs() > 1e-5).all(1)
    assert ((u[inner].floor().sum(1) % 2) == 0).all()


def test_registry():
    assert list(DATASETS) == ['gaussians5', 'gaussians8', 'gaussians25', 'gaussians_narrow', 'gaussians_uneven'] + TOYS + ['digits']
    for name, make in DATASETS.items():
        ds = make()
        assert ds.name == name and ds.sample(3, device='cpu').shape == (3, *ds.shape)
        if name != 'digits': assert ds.shape == (2,)
    for name in ('gaussians_narrow', 'gaussians_uneven'): assert isinstance(DATASETS[name](), GaussianMixture)


def test_array_data():
    ad = ArrayData(torch.arange(12).reshape(6, 2), name='ints')
    assert ad.x.dtype == torch.float32 and ad.dim == 2 and ad.shape == (2,) and len(ad) == 6 and ad.name == 'ints'
    seed_everything(2); s = ad.sample(6000, device='cpu')
    assert torch.equal(s[:, 1] - s[:, 0], torch.ones(6000))
    counts = torch.bincount((s[:, 0] / 2).long(), minlength=6)
    assert (counts > 800).all() and (counts < 1200).all()
    seed_everything(2); assert torch.equal(ad.sample(6000, device='cpu'), s)
    assert ArrayData(np.eye(3, 4)).dim == 4


def test_array_data_images():
    imgs = torch.arange(5.)[:, None, None, None].expand(5, 3, 4, 6).clone()  # image k is constant k
    ad = ArrayData(imgs.numpy(), name='imgs')
    assert (ad.shape, ad.dim, len(ad)) == ((3, 4, 6), 72, 5) and 'shape=(3, 4, 6)' in repr(ad)
    seed_everything(4); s = ad.sample(2000, device='cpu')
    assert s.shape == (2000, 3, 4, 6) and s.dtype == torch.float32
    assert (s == s[:, :1, :1, :1]).all()  # each draw is one whole image
    counts = torch.bincount(s[:, 0, 0, 0].long(), minlength=5)
    assert (counts > 300).all() and (counts < 500).all()
    seed_everything(4); assert torch.equal(ad.sample(2000, device='cpu'), s)


@pytest.mark.parametrize('x, err, msg', [
    ([[1., 2.]], TypeError, r'torch.Tensor of shape \(n, d\)'),
    ([[1., 2.]], TypeError, r'or \(n, c, h, w\)'),
    (torch.zeros(5), ValueError, r'2-D \(n, d\) or 4-D \(n, c, h, w\), got shape \(5,\)'),
    (torch.zeros(2, 3, 4), ValueError, r'got shape \(2, 3, 4\); for grey images \(n, h, w\) add a channel axis: x\[:, None\]'),
    (torch.zeros(2, 1, 3, 4, 5), ValueError, r'2-D \(n, d\) or 4-D \(n, c, h, w\), got shape \(2, 1, 3, 4, 5\)'),
    (torch.full((2, 1, 3, 3), float('inf')), ValueError, 'x contains inf'),
    (torch.zeros(0, 2), ValueError, 'non-empty'),
    (torch.ones(2, 2, dtype=torch.bool), TypeError, 'real numbers'),
    (torch.tensor([[0., float('nan')]]), ValueError, 'x contains NaN')])
def test_array_data_bad_input(x, err, msg):
    with pytest.raises(err, match=msg): ArrayData(x)


def test_load_array_roundtrip(tmp_path):
    xs = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / 'a.npy', xs); np.savez(tmp_path / 'one.npz', data=xs); np.savez(tmp_path / 'two.npz', x=xs, y=xs[:, :2])
    a = load_array(tmp_path / 'a.npy')
    assert a.dtype == torch.float32 and torch.allclose(a, torch.tensor(xs, dtype=torch.float32))
    assert load_array(str(tmp_path / 'one.npz')).shape == (50, 3)
    assert load_array(tmp_path / 'two.npz', key='y').shape == (50, 2)
    np.save(tmp_path / 'i.npy', np.arange(6).reshape(3, 2))
    assert load_array(tmp_path / 'i.npy').dtype == torch.float32


def test_load_csv_tables(tmp_path):
    "A .csv table, one sample per row, with or without a first row of column names (quoted too); one column is (n, 1)."
    xs = np.random.default_rng(0).normal(size=(40, 3))
    np.savetxt(tmp_path / 'plain.csv', xs, delimiter=',')
    np.savetxt(tmp_path / 'named.csv', xs, delimiter=',', header='"x","y","z"', comments='')
    np.savetxt(tmp_path / 'one.csv', xs[:, 0], delimiter=',', header='x', comments='')
    for f in ('plain.csv', 'named.csv'): assert torch.allclose(load_array(tmp_path / f), torch.tensor(xs, dtype=torch.float32))
    assert load_array(tmp_path / 'one.csv').shape == (40, 1)
    d = get_dataset(str(tmp_path / 'named.csv'))
    assert d.name == 'named' and d.sample(5).shape == (5, 3)


def test_load_array_images_roundtrip(tmp_path):
    ims = np.random.default_rng(1).uniform(-1, 1, size=(20, 3, 8, 8))
    np.save(tmp_path / 'im.npy', ims); np.savez(tmp_path / 'im.npz', images=ims.astype(np.float16))
    a = load_array(tmp_path / 'im.npy')
    assert a.shape == (20, 3, 8, 8) and a.dtype == torch.float32 and torch.allclose(a, torch.tensor(ims, dtype=torch.float32))
    assert torch.allclose(load_array(tmp_path / 'im.npz'), a, atol=1e-3)
    np.save(tmp_path / 'u8.npy', np.full((4, 1, 2, 2), 255, dtype=np.uint8))
    assert load_array(tmp_path / 'u8.npy').eq(255.).all()   # load_array reads it; ArrayData refuses it (one point repeated)


def test_load_array_3d_asks_for_a_channel_axis(tmp_path):
    np.save(tmp_path / 'grey.npy', np.zeros((10, 8, 8)))
    with pytest.raises(ValueError, match=r'got shape \(10, 8, 8\); for grey images \(n, h, w\) add a channel axis') as e:
        load_array(tmp_path / 'grey.npy')
    assert str(tmp_path / 'grey.npy') in str(e.value) and '(n, c, h, w)' in str(e.value)
    with pytest.raises(ValueError, match='add a channel axis'): get_dataset(str(tmp_path / 'grey.npy'))


def test_load_array_errors_name_the_file_and_the_problem(tmp_path):
    xs = np.random.default_rng(0).normal(size=(50, 3))
    def save(name, a): np.save(tmp_path / name, a); return tmp_path / name
    np.savez(tmp_path / 'two.npz', x=xs, y=xs); np.savez(tmp_path / 'none.npz')
    (tmp_path / 'bad.npy').write_bytes(b'not a numpy file'); (tmp_path / 'bad.npz').write_bytes(b'PK\x03\x04junk')
    (tmp_path / 'a.txt').write_text('1,2\n'); (tmp_path / 'bad.csv').write_text('x,y\n1,2\n3,oops\n')
    (tmp_path / 'empty.csv').write_text('x,y\n'); (tmp_path / 'bin.csv').write_bytes(b'\xff\xfe\x00junk')
    (tmp_path / 'trunc.npy').write_bytes(save('full.npy', xs).read_bytes()[:300])
    nan = xs.copy(); nan[[1, 4, 7], 0] = np.nan; nan[9, 2] = np.inf
    nan_im = np.zeros((20, 3, 4, 4)); nan_im[[0, 5], 2, 3, 3] = np.nan
    cases = [('missing.npy', None, FileNotFoundError, 'no such file'),
             ('a.txt', None, ValueError, r"unsupported file type '\.txt', expected \.npy, \.npz or \.csv"),
             ('bad.csv', None, ValueError, r"cannot read '.*bad\.csv' as a CSV table of numbers"), ('empty.csv', None, ValueError, 'empty'),
             ('bin.csv', None, ValueError, 'cannot read'), ('bad.csv', 'x', ValueError, "key='x' picks an array of a .npz archive"),
             ('bad.npy', None, ValueError, 'cannot read'), ('bad.npz', None, ValueError, 'cannot read'),
             ('trunc.npy', None, ValueError, 'cannot read'),
             ('two.npz', None, ValueError, r"holds several arrays: choose one of \['x', 'y'\], with key= or, on the command line, as --data .*two\.npz:x"),
             ('two.npz', 'z', ValueError, "has no array 'z'"), ('none.npz', None, ValueError, 'holds no arrays'),
             (save('v.npy', xs[:, 0]).name, None, ValueError, r'must be 2-D \(n, d\) or 4-D \(n, c, h, w\), got shape \(50,\)'),
             (save('five.npy', np.zeros((2, 1, 2, 2, 2))).name, None, ValueError, r'got shape \(2, 1, 2, 2, 2\)'),
             (save('s.npy', np.array([['a', 'b']])).name, None, ValueError, 'expected a numeric'),
             (save('c.npy', np.ones((2, 2), dtype=complex)).name, None, ValueError, 'expected a numeric'),
             (save('e.npy', np.zeros((0, 2))).name, None, ValueError, 'empty'),
             (save('nan.npy', nan).name, None, ValueError, '4 of 50 samples contain NaN or inf'),
             (save('nan_im.npy', nan_im).name, None, ValueError, '2 of 20 samples contain NaN or inf')]
    for name, key, err, msg in cases:
        with pytest.raises(err, match=msg) as e: load_array(tmp_path / name, key)
        assert str(tmp_path / name) in str(e.value)


def test_get_dataset(tmp_path):
    assert isinstance(get_dataset('gaussians25'), GaussianMixture) and get_dataset('pinwheel').name == 'pinwheel'
    rng = np.random.default_rng(0)
    np.save(tmp_path / 'mine.npy', rng.normal(size=(7, 3)))
    ds = get_dataset(str(tmp_path / 'mine.npy'))
    assert isinstance(ds, ArrayData) and (ds.name, ds.dim, ds.shape, len(ds)) == ('mine', 3, (3,), 7)
    np.save(tmp_path / 'pics.npy', rng.random((5, 3, 32, 32), dtype=np.float32))
    ds = get_dataset(str(tmp_path / 'pics.npy'))
    assert (ds.name, ds.shape, len(ds)) == ('pics', (3, 32, 32), 5) and ds.sample(2, device='cpu').shape == (2, 3, 32, 32)
    assert isinstance(get_dataset('gaussians_narrow'), GaussianMixture)
    with pytest.raises(ValueError, match=r"unknown dataset 'nope': choose one of gaussians5, gaussians8, gaussians25, gaussians_narrow, "
                                          r"gaussians_uneven, moons, swiss_roll, checkerboard, rings, pinwheel, digits, mnist, cifar10, celeba64, "
                                          r"or a path to a \.npy/\.npz array of shape \(n, d\) or \(n, c, h, w\), a \.csv table \(n, d\) or a folder of images"):
        get_dataset('nope')
    with pytest.raises(FileNotFoundError, match='no such file'): get_dataset(str(tmp_path / 'gone.npz'))


def test_get_dataset_reads_one_array_of_an_archive(tmp_path):
    xs = np.random.default_rng(0).normal(size=(40, 3)); np.savez(tmp_path / 'two.npz', x=xs, y=xs[:, :2])
    ds = get_dataset(f"{tmp_path / 'two.npz'}:y")
    assert (ds.name, ds.shape, len(ds)) == ('two-y', (2,), 40) and torch.equal(ds.x, torch.tensor(xs[:, :2], dtype=torch.float32))
    with pytest.raises(ValueError, match="holds several arrays") as e: get_dataset(str(tmp_path / 'two.npz'))
    assert f"--data {tmp_path / 'two.npz'}:x" in str(e.value)   # says how to pick one on the command line
    with pytest.raises(ValueError, match="has no array 'z'"): get_dataset(f"{tmp_path / 'two.npz'}:z")
    with pytest.raises(FileNotFoundError, match='no such file'): get_dataset(f"{tmp_path / 'gone.npz'}:x")


@pytest.mark.parametrize('x', [torch.ones(500, 2), torch.zeros(1, 3), torch.full((6, 1, 8, 8), -1.)])
def test_array_data_refuses_a_single_point(x):
    with pytest.raises(ValueError, match=rf"data 'mine' \(n={len(x)}\) is a single point repeated: there is no distribution to learn"):
        ArrayData(x, name='mine')
    ArrayData(torch.cat([x, x[:1] + 1e-3]), name='mine')   # one sample apart is enough


def test_load_digits():
    x, y = load_digits(device='cpu')
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (1797,) and y.dtype == torch.long
    assert (x.min().item(), x.max().item()) == (-1., 1.) and y.unique().tolist() == list(range(10))
    from sklearn.datasets import load_digits as sk
    assert torch.allclose((x[:, 0] + 1) * 8, torch.tensor(sk().images, dtype=torch.float32))


def test_digits_dataset():
    ds = get_dataset('digits')
    assert isinstance(ds, ArrayData) and (ds.name, ds.shape, ds.dim, len(ds)) == ('digits', (1, 8, 8), 64, 1797)
    assert ds.x.device.type == 'cpu' and torch.equal(ds.x, load_digits(device='cpu')[0]) and torch.equal(digits().x, ds.x)
    seed_everything(5); x = ds.sample(500, device='cpu')
    assert x.shape == (500, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    assert (x.flatten(1)[:, None] == ds.x.flatten(1)[None]).all(2).any(1).all()  # every draw is one of the digits
    seed_everything(5); assert torch.equal(ds.sample(500, device='cpu'), x)
    assert ds.sample(3).device.type == default_device().type
