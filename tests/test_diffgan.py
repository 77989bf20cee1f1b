"Diffusion-GAN: the schedule, the pool, the adaptive length driven by a controlled discriminator, r_d for every loss, the velocity through the diffusion, resume with the adaptive state, the CLI, and bad input."
import json, math
from dataclasses import replace, fields
import numpy as np, pytest, torch
from torch import nn
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, get_dataset, ArrayData
from gpm_nb.monoflow import GAN_LOSSES
from gpm_nb.gpm import DiscriminatorField, RunConfig, METHODS, GAN, flow_grid
from gpm_nb.train import Trainer, LogCB, save_checkpoint, load_checkpoint
from gpm_nb.diffgan import (alphas_bar, linear_betas, diffuse, timestep_probs, AdaptiveDiffusion, DiffusedField, LevelNet, rd_zero,
                            DiffusionGANConfig, DiffusedDiscrFlowConfig, DIFFUSION_GAN_PRESETS, diffusion_gan, diffused_discr_flow,
                            resolve_diffusion, SIGMA_N_RATIO)
from gpm_nb.cli import train, sample_run, read_log, gpm_train, gpm_sample, make_run
from helpers import cli

torch.set_num_threads(1)

class Controlled(nn.Module):
    "A discriminator whose logits we set: `real` on data, `fake` on particles (told apart by a marker coordinate)."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(())); self.real, self.fake = 5., -5.
    def forward(self, y, c):
        is_real = y[:, 0] > 0        # data at +1e4, particles at -1e4: at T = 1000 sqrt(abar_T) 1e4 = 63 sigma_n, the sign survives
        return torch.where(is_real, self.real, self.fake) + 0 * self.w

def controlled_field(loss='vanilla', **kw):
    ad = AdaptiveDiffusion(sigma_n=1., **kw)
    return DiffusedField(DiscriminatorField(Controlled(), loss), ad)

def batch(n=128):
    return torch.full((n, 2), 1e4), torch.full((n, 2), -1e4), torch.zeros(n)

# ---------------------------------------------------------------- the schedule and the pool

def test_alphas_bar_is_the_product_and_diffusion_has_the_closed_form_moments():
    for T in (1, 2, 10, 1000):
        b = linear_betas(T).tolist()
        ref = [1.] + list(np.cumprod([1 - x for x in b]))
        np.testing.assert_allclose(alphas_bar(T).numpy(), ref, rtol=1e-13)
    assert linear_betas(5)[0] == 1e-4 and abs(linear_betas(5)[-1] - 2e-2) < 1e-15
    torch.manual_seed(0)
    ab = alphas_bar(1000)[300]
    x = 2. + 0.5 * torch.randn(200_000, 1, dtype=torch.float64)
    y = diffuse(x, ab.expand(len(x)), 0.8)
    assert abs(y.mean() - ab.sqrt() * 2) < 0.01 and abs(y.var() - (ab * 0.25 + (1 - ab) * 0.64)) < 0.01

def test_pool_is_half_clean_and_priority_never_draws_one():
    torch.manual_seed(0)
    ad = AdaptiveDiffusion(T_min=6, T_max=6)
    counts = torch.zeros(7)
    for _ in range(500):
        ad.redraw(); assert (ad.pool == 0).sum() == 32 and ad.pool.max() <= 6
        counts += torch.bincount(ad.pool, minlength=7)
    assert counts[1] == 0
    freq = counts[2:] / counts[2:].sum()
    assert torch.allclose(freq, torch.tensor([1., 2, 3, 4, 5]) / 15, atol=0.02)
    u = AdaptiveDiffusion(T_min=4, T_max=4, ts_dist='uniform', clean=0.25)
    assert (u.pool == 0).sum() == 16 and set(u.pool[16:].tolist()) <= {1, 2, 3, 4}

# ---------------------------------------------------------------- the adaptive length, driven by a controlled D

@pytest.mark.parametrize('loss', ['vanilla', 'hinge', 'ipm'])
def test_adaptive_T_follows_a_controlled_discriminator(loss):
    "A D that separates (r_d = 1) raises p by 4B/1e5 per 4 minibatches up to 1 (T -> T_max); one that fails (r_d = -1) lowers it to 0."
    torch.manual_seed(0)
    f = controlled_field(loss, T_min=10, T_max=1000)
    B, dp = 128, 4 * 128 / 100_000
    xr, xf, t = batch(B)
    if loss == 'ipm': f.field.net.real, f.field.net.fake = 12., 11.     # a critic without a zero point: r_d counts from 11.5
    for i in range(1, 1001):
        out = f.fit_step(xr, xf, t)
        k = i // 4
        assert out['r_d'] == 1. and math.isclose(out['p'], min(1., k * dp), abs_tol=1e-12)
        assert out['T'] == 10 + round(min(1., k * dp) * 990) and 10 <= out['T'] <= 1000
        assert 0 <= f.diffusion.pool.min() and f.diffusion.pool.max() <= out['T'] and 0 < out['clean'] < 1
    assert (out['p'], out['T']) == (1., 1000)
    f.field.net.real = -5. if loss != 'ipm' else 10.                    # now D fails on the data: r_d = -1
    for i in range(1000): out = f.fit_step(xr, xf, t)
    assert (out['r_d'], out['p'], out['T']) == (-1., 0., 10) and f.diffusion.rd.item() == -1.

def test_r_d_at_the_target_leaves_p_and_r_d_is_shift_invariant_for_the_critic():
    ad = AdaptiveDiffusion(T_min=10, T_max=100, d_target=0.5)
    for _ in range(4): ad.observe(0.5, 64)
    assert ad.p.item() == 0 and int(ad.T) == 10 and ad.batches.item() == 0
    for _ in range(8): ad.observe(1., 64)
    assert math.isclose(ad.p.item(), 2 * 4 * 64 / 1e5) and int(ad.T) == 10 + round(ad.p.item() * 90)
    dr, df = torch.randn(1000) + 1, torch.randn(1000) - 1
    ipm = GAN_LOSSES['ipm']
    assert torch.equal(torch.sign(dr - rd_zero(ipm, dr, df)), torch.sign(dr + 100 - rd_zero(ipm, dr + 100, df + 100)))
    assert rd_zero(GAN_LOSSES['vanilla'], dr + 100, df) == 0

def test_level_is_the_noise_level_or_the_raw_step():
    t = torch.tensor([0, 5, 10])
    a, b = AdaptiveDiffusion(T_min=10, T_max=1000), AdaptiveDiffusion(T_min=1000, T_max=1000)
    assert torch.allclose(a.level(t), (1 - alphas_bar(10)[t]).sqrt().float())
    assert a.level(t)[2] > 5 * b.level(t)[2]                         # raw t = 10 means far more noise at T = 10
    s = AdaptiveDiffusion(T_min=10, T_max=1000, cond='step')
    assert torch.equal(s.level(t), t.float() / 1000)

# ---------------------------------------------------------------- the field

def test_velocity_backpropagates_through_the_diffusion():
    "Logit loss and D(y) = a.y: v = eta E_pool[sqrt(abar_t)] a (eq. 4)."
    class Linear(nn.Module):
        def __init__(self): super().__init__(); self.a = nn.Parameter(torch.tensor([1., -2.]))
        def forward(self, y, c): return y @ self.a
    torch.manual_seed(0)
    ad = AdaptiveDiffusion(sigma_n=1., T_min=500, T_max=500)
    f = DiffusedField(DiscriminatorField(Linear(), 'logit', eta=3.), ad, n_draws=5000)
    v = f(torch.randn(2, 2), torch.zeros(2))
    ref = 3 * ad.abar[ad.pool].sqrt().mean().float() * torch.tensor([1., -2.])
    assert torch.allclose(v, ref.expand(2, 2), atol=0.03)

def test_training_logs_p_T_r_d_and_clean_share_for_every_loss():
    p = gaussians5()
    run, cfg = DIFFUSION_GAN_PRESETS['quick']
    for loss in GAN_LOSSES:
        seed_everything(0)
        c = resolve_diffusion(p, replace(cfg, loss=loss, shift=5. if loss == 'saturating' else 0.))
        model = diffusion_gan(p, c, RunConfig(batch_size=64), device='cpu')
        log = LogCB(every=5); Trainer(model, [log]).fit(15)
        assert [r['step'] for r in log.history] == [5, 10, 15]
        for r in log.history:
            assert {'d_loss', 'g_loss', 'p', 'T', 'r_d', 'clean'} <= set(r), loss
            assert 0 <= r['p'] <= 1 and 10 <= r['T'] <= 1000 and -1 <= r['r_d'] <= 1 and 0 <= r['clean'] <= 1
        assert model.sample(100).isfinite().all()

def test_r_d_above_its_target_raises_T_in_training():
    "In real training T follows r_d: with d_target = 0.05 (below the r_d a quick discriminator reaches on 32 points) T grows; p, T stay in bounds."
    seed_everything(0)
    few = ArrayData(gaussians5().sample(32, 'cpu'))
    run, cfg = DIFFUSION_GAN_PRESETS['quick']
    model = diffusion_gan(few, resolve_diffusion(few, replace(cfg, d_target=0.05)), run, device='cpu')
    log = LogCB(every=10); Trainer(model, [log]).fit(100)
    h = log.history
    assert all(0 <= r['p'] <= 1 and 10 <= r['T'] <= 1000 for r in h) and h[-1]['T'] > 50
    ad = model.field.diffusion
    assert int(ad.T) == 10 + round(ad.p.item() * 990) and int(ad.pool.max()) <= int(ad.T)

def test_diffused_discriminator_flow_and_digits():
    seed_everything(0)
    cfg = DiffusedDiscrFlowConfig(width=32, depth=2, t_emb=16, s_emb=8, K=5, sigma_n=0.2)
    m = diffused_discr_flow(gaussians5(), cfg, RunConfig(batch_size=32), device='cpu')
    out = m.train_step()
    assert {'p', 'T', 'r_d', 'clean'} <= set(out) and m.sample(50).shape == (50, 2)
    m = diffused_discr_flow(gaussians5(), replace(cfg, grid_power=.5, grid_anneal=2., bf16=True), RunConfig(batch_size=32), device='cpu')
    assert torch.equal(m.particles.grid, flow_grid(5, .5, 2.)) and torch.equal(m.particles.grid_for(9), flow_grid(9, .5, 2.)) and m.bf16   # the config's grid and flow
    dg = get_dataset('digits')
    m = diffusion_gan(dg, resolve_diffusion(dg, DIFFUSION_GAN_PRESETS['quick'][1]), RunConfig(batch_size=16), device='cpu')
    assert 'T' in m.train_step() and m.sample(4).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match='images need t_emb=0'): diffused_discr_flow(dg, cfg)
    with pytest.raises(ValueError, match="runs at the data's own scale.*data_scale must be 1, got 2.0"): diffused_discr_flow(gaussians5(), replace(cfg, data_scale=2.))

def test_checkpoint_keeps_the_adaptive_state(tmp_path):
    "p, T, the pool and the r_d accumulator are in the state dict: a resumed model continues exactly."
    seed_everything(0)
    run, cfg = DIFFUSION_GAN_PRESETS['quick']
    cfg = resolve_diffusion(gaussians5(), cfg)
    a = diffusion_gan(gaussians5(), cfg, RunConfig(batch_size=32), device='cpu')
    for _ in range(40): a.field.diffusion.observe(1., 32)
    a.field.diffusion.observe(0.3, 32)                               # an accumulator in flight
    Trainer(a).fit(3)
    save_checkpoint(tmp_path/'c.pt', a, 3)
    b = diffusion_gan(gaussians5(), cfg, RunConfig(batch_size=32), device='cpu')
    load_checkpoint(tmp_path/'c.pt', b)
    for k in ('p', 'T', 'pool', 'rd', 'rd_sum', 'rd_n', 'batches'):
        assert torch.equal(getattr(a.field.diffusion, k), getattr(b.field.diffusion, k)), k
    assert a.field.diffusion.p.item() > 0 and int(a.field.diffusion.T) > 10
    load_checkpoint(tmp_path/'c.pt', a)                              # same RNG state for both
    ta, tb = Trainer(a), Trainer(b)
    ta.step = tb.step = 3; ta.fit(8); load_checkpoint(tmp_path/'c.pt', b); tb.fit(8)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

# ---------------------------------------------------------------- the CLI

def test_cpu_preset_is_the_gans_with_the_diffusion():
    "Diffusion-GAN's cpu preset: the GAN's run, networks and Adam with a third of its penalty and input features at the data's scale (44_report_diffgan_penalty), and the diffusion's defaults but half their noise ratio (33_report_diffflow)."
    (run, c), (grun, g) = DIFFUSION_GAN_PRESETS['cpu'], METHODS['gan'].presets['cpu']
    assert run == grun and [f.name for f in fields(g) if getattr(c, f.name) != getattr(g, f.name)] == ['gp', 'x_emb', 'x_freq']
    assert (c.gp, g.gp) == (1., 3.) and (c.x_emb, c.x_freq) == (64, 0.) and g.x_emb == 0
    extra = {f.name for f in fields(c)} - {f.name for f in fields(g)}
    assert c.sigma_n_ratio == SIGMA_N_RATIO / 2 and SIGMA_N_RATIO == DiffusionGANConfig().sigma_n_ratio
    assert 'sigma_n_ratio' in extra and all(getattr(c, k) == getattr(DiffusionGANConfig(), k) for k in extra - {'sigma_n_ratio'}), extra

def test_cli_trains_resumes_and_samples(tmp_path, capsys):
    assert 'diffusion_gan' in METHODS and set(DIFFUSION_GAN_PRESETS) == {'quick', 'cpu', 'gpu', 'digits', 'cifar10'}
    out = tmp_path/'r'
    code, msg = cli(capsys, gpm_train, '--method', 'diffusion_gan', '--preset', 'quick', '--steps', 10, '--eval_every', 10,
                    '--out', out, '--quiet', '--n_samples', 200)
    assert code == 0, msg
    cfg = json.loads((out/'config.json').read_text())['cfg']
    assert cfg['sigma_n'] == pytest.approx(SIGMA_N_RATIO * 2.175, rel=0.02)   # resolved from the data and recorded
    log = read_log(out)[0]
    assert {'p', 'T', 'r_d', 'clean'} <= set(log[0])
    assert train('diffusion_gan', 'gaussians5', 'quick', out=out, resume=True, quiet=True, steps=20, eval_every=10)['step'] == 20
    train('diffusion_gan', 'gaussians5', 'quick', out=tmp_path/'straight', quiet=True, steps=20, eval_every=10)
    a, b = (torch.load(d/'checkpoint.pt', weights_only=True)['model'] for d in (out, tmp_path/'straight'))
    assert all(torch.equal(a[k], b[k]) for k in a) and 'field.diffusion.pool' in a
    code, msg = cli(capsys, gpm_sample, out, '--n', 30, '--out', tmp_path/'s.npy')
    assert code == 0 and 'wrote (30, 2) samples' in msg, msg
    assert sample_run(out, 7).shape == (7, 2)
    for extra in (['--loss', 'ipm', '--gp', '1'], ['--loss', 'saturating', '--shift', '5'], ['--ts_dist', 'uniform', '--cond', 'step'],
                  ['--x_emb', '16', '--x_freq', '0']):
        code, msg = cli(capsys, gpm_train, '--method', 'diffusion_gan', '--preset', 'quick', '--steps', 5, '--eval_every', 5,
                        '--out', tmp_path/extra[1], '--quiet', '--n_samples', 50, *extra)
        assert code == 0, msg
    assert json.loads((tmp_path/'16'/'config.json').read_text())['cfg']['x_freq'] == 0.25   # 0.55 over the 5 Gaussians' spread 2.18, recorded

def test_cpu_preset_resolves_the_features_from_the_data(tmp_path):
    "The cpu preset's x_freq = 0 becomes 0.55 over the data's spread: per toy, on a user's array (standardised: 0.55 whatever its units); images drop the features."
    for name, f in (('gaussians5', 0.25), ('gaussians8', 0.39), ('gaussians25', 0.19), ('moons', 0.55)):
        assert make_run('diffusion_gan', name, 'cpu', device='cpu')['cfg'].x_freq == f, name
    for scale in (1., 1000.):
        np.save(tmp_path/f'a{scale:g}.npy', scale * gaussians5().sample(3000, 'cpu').numpy())
        assert make_run('diffusion_gan', str(tmp_path/f'a{scale:g}.npy'), 'cpu', device='cpu')['cfg'].x_freq == 0.55
    r = make_run('diffusion_gan', 'digits', 'cpu', device='cpu')
    assert r['cfg'].x_emb == 0 and r['model'].sample(2).shape == (2, 1, 8, 8)

# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize('kw, msg', [
    (dict(d_target=1.5), 'config field d_target must be in (0, 1), got 1.5'),
    (dict(d_target=0.), 'config field d_target must be in (0, 1)'),
    (dict(T_min=100, T_max=50), 'config field T_min must be <= T_max, got T_min=100 > T_max=50'),
    (dict(ts_dist='cosine'), "config field ts_dist must be one of priority, uniform, got 'cosine'"),
    (dict(gp=-0.1), 'config field gp must be >= 0'),
    (dict(clean=-0.5), 'config field clean must be in [0, 1)'),
    (dict(sigma_n=-1.), 'config field sigma_n must be >= 0'),
    (dict(ada_kimg=0.), 'config field ada_kimg must be > 0'),
    (dict(cond='raw'), 'config field cond must be one of noise, step'),
    (dict(T_min=1), "config field T_min must be >= 2 with ts_dist='priority'"),
    (dict(x_freq=-0.5), 'config field x_freq must be >= 0 (0: from the data), got -0.5')])
def test_bad_config_names_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')): DiffusionGANConfig(**kw)

class Constant:
    "A data source (not an array, which refuses a single point) that draws one point over and over."
    def sample(self, n, device='cpu'): return torch.zeros(n, 2, device=device)

def test_bad_input_elsewhere(capsys, tmp_path):
    with pytest.raises(ValueError, match='d_target must be in'): AdaptiveDiffusion(d_target=1.)
    with pytest.raises(ValueError, match='T_min <= T_max'): AdaptiveDiffusion(T_min=20, T_max=10)
    with pytest.raises(ValueError, match="ts_dist='gamma': choose one of priority, uniform"): AdaptiveDiffusion(ts_dist='gamma')
    with pytest.raises(ValueError, match='clean share must be in'): AdaptiveDiffusion(clean=1.)
    with pytest.raises(ValueError, match='n_draws must be a positive integer'): controlled_field().__class__(DiscriminatorField(Controlled()), AdaptiveDiffusion(), 0)
    with pytest.raises(ValueError, match='sigma_n must be set'): diffusion_gan(gaussians5(), DiffusionGANConfig())
    with pytest.raises(ValueError, match=r'x_freq must be set for input features \(x_emb > 0\): resolve it from the data with `resolve_diffusion`'):
        diffusion_gan(gaussians5(), DiffusionGANConfig(sigma_n=0.2, x_emb=64, x_freq=0.))
    with pytest.raises(ValueError, match='the data have no spread'): resolve_diffusion(Constant(), DiffusionGANConfig())
    code, msg = cli(capsys, gpm_train, '--method', 'diffusion_gan', '--preset', 'quick', '--d_target', '2', '--out', tmp_path/'x')
    assert code == 2 and 'config field d_target must be in (0, 1)' in msg and 'Traceback' not in msg, msg

def test_init_std_zero_reaches_the_level_net():
    "init_std=0 means PyTorch's init for the diffused discriminator's MLP too (never N(0, 0) weights)."
    torch.manual_seed(0)
    m = diffusion_gan(gaussians5(), DiffusionGANConfig(sigma_n=0.2, width=32, depth=2, g_width=32, g_depth=2, latent=8, init_std=0.),
                      RunConfig(batch_size=16), device='cpu')
    lin = next(l for l in m.field.field.net.modules() if isinstance(l, nn.Linear))
    assert lin.weight.std() > 0.05 and lin.bias.abs().max() > 0.01
    g = next(l for l in m.generator.net.modules() if isinstance(l, nn.Linear))
    assert g.weight.std() > 0.05 and g.bias.abs().max() > 0.01
