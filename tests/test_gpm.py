"Fields and pushers: the discriminator field, free particles, Discriminator Flow configs."
from dataclasses import replace
import pytest, torch
from torch import nn
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5
from gpm_nb.gpm import (DiscriminatorField, FreeParticles, DiscrFlowConfig, DISCR_FLOW_PRESETS, METHODS, discr_flow,
                        gan_loss, evaluate)
from gpm_nb.train import Trainer, CheckpointCB, load_checkpoint

QUICK = DISCR_FLOW_PRESETS['quick']

class LogRatio(nn.Module):
    "Exact log p/q for p = N(mu, I), q = N(0, I)."
    def __init__(self, mu): super().__init__(); self.mu = nn.Parameter(mu)
    def forward(self, x, t): return x @ self.mu - self.mu.pow(2).sum() / 2

class SmallD(nn.Module):
    "A time-blind discriminator."
    def __init__(self): super().__init__(); self.n = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
    def forward(self, x, t): return self.n(x).squeeze(1)

def test_official_config_is_the_papers():
    c = DISCR_FLOW_PRESETS['gpu']
    assert (c.loss, c.K, c.eta, c.width, c.depth, c.t_emb, c.init_std, c.lr, c.beta1, c.beta2, c.batch_size, c.steps) == \
           ('vanilla', 56, 20., 512, 4, 128, 0.02, 2e-4, 0.5, 0.999, 128, 4000)

@pytest.mark.parametrize('loss, h_prime', [('vanilla', lambda d: torch.sigmoid(-d)), ('ipm', lambda d: torch.ones_like(d)),
                                           ('hinge', lambda d: torch.ones_like(d))])
def test_field_is_monotone_rescaled_log_ratio(loss, h_prime):
    mu = torch.tensor([1., -2.], dtype=torch.float64)
    f = DiscriminatorField(LogRatio(mu.clone()), loss)
    x = torch.randn(8, 2, dtype=torch.float64); d = x @ mu - mu.pow(2).sum() / 2
    torch.testing.assert_close(f(x, torch.zeros(8)), h_prime(d)[:, None] * mu)

def test_vanilla_discriminator_learns_log_ratio():
    "Trained on N(mu, I) vs N(0, I), D approaches the exact log-ratio (its optimum)."
    seed_everything(0); mu = torch.tensor([1.5, 0.])
    f = DiscriminatorField(SmallD(), lr=1e-2, betas=(.9, .999))
    for _ in range(600): f.fit_step(torch.randn(256, 2) + mu, torch.randn(256, 2), torch.zeros(256))
    x = torch.randn(500, 2) + mu / 2
    err = (f.net(x, None) - (x @ mu - mu.pow(2).sum() / 2)).abs().mean()
    assert err < 0.15, err

def test_gradient_penalty_runs_and_is_reported():
    seed_everything(0); p = gaussians5()
    m = discr_flow(p, replace(QUICK, gp=1.0), device='cpu')
    out = m.train_step()
    assert set(out) == {'d_loss', 'd_real', 'd_fake'} and out['d_loss'] > out['d_real'] + out['d_fake'] - 1e-6

def test_trajectory_and_sample_shapes():
    seed_everything(0); m = discr_flow(gaussians5(), QUICK, device='cpu')
    z = m.prior(10)
    assert m.trajectory(z).shape == (10, QUICK.K + 1, 2)
    assert m.trajectory(z, n_steps=3).shape == (10, 4, 2)
    assert m.sample(9000, chunk=4096).shape == (9000, 2)
    assert m.sample(5, steps=3).shape == (5, 2)
    assert torch.equal(m.trajectory(z)[:, 0], z)

def test_flow_is_euler_of_the_field():
    "One step of the pusher is z + eta/K v(z, 0)."
    seed_everything(0); m = discr_flow(gaussians5(), QUICK, device='cpu')
    z = m.prior(6)
    torch.testing.assert_close(m.trajectory(z, n_steps=1)[:, 1], z + m.eta / m.K * m.field(z, torch.zeros(6)))

def test_training_improves_samples():
    seed_everything(0); p = gaussians5(); m = discr_flow(p, replace(QUICK, steps=150), device='cpu')
    before = evaluate(m.sample(1000), p, floors=False)['energy']
    Trainer(m).fit(150)
    after = evaluate(m.sample(1000), p, floors=False)['energy']
    assert after < before / 2, (before, after)

def test_checkpoint_roundtrip_samples_identically(tmp_path):
    seed_everything(0); p = gaussians5(); m = discr_flow(p, QUICK, device='cpu')
    Trainer(m, [CheckpointCB(tmp_path/'c.pt')]).fit(20)
    m2 = discr_flow(p, QUICK, device='cpu'); load_checkpoint(tmp_path/'c.pt', m2, restore_rng=False)
    seed_everything(1); a = m.sample(50); seed_everything(1); b = m2.sample(50)
    torch.testing.assert_close(a, b)

@pytest.mark.parametrize('change, msg', [(dict(loss='wgan'), 'unknown GAN loss'), (dict(K=0), 'K must be >= 1'),
                                         (dict(width=0), 'width must be >= 1'), (dict(eta=-1.), 'eta > 0')])
def test_bad_configs(change, msg):
    with pytest.raises(ValueError, match=msg): discr_flow(gaussians5(), replace(QUICK, **change), device='cpu')

def test_bad_inputs():
    m = discr_flow(gaussians5(), QUICK, device='cpu')
    with pytest.raises(ValueError, match='n must be >= 1'): m.sample(0)
    with pytest.raises(ValueError, match='same shape'): m.field.fit_step(torch.zeros(4, 2), torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r'shape \(\*, 2\)'): m.field(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match='n_steps <= steps'): m.trajectory(m.prior(2), steps=3, n_steps=5)
    with pytest.raises(ValueError, match='vanilla, ipm, hinge'): gan_loss('nope')
    with pytest.raises(ValueError, match='NaN'): evaluate(torch.full((10, 2), float('nan')), gaussians5())

def test_methods_registry():
    assert 'discr_flow' in METHODS and METHODS['discr_flow'].build is discr_flow

def test_schedule_and_ema_options():
    from gpm_nb.gpm import schedule_cbs
    from gpm_nb.train import LinearDecayCB
    assert schedule_cbs(QUICK) == [] and isinstance(schedule_cbs(replace(QUICK, lr_decay=.3))[0], LinearDecayCB)
    seed_everything(0); m = discr_flow(gaussians5(), replace(QUICK, ema=0.9), device='cpu')
    assert m.sampling_field is m.field_ema and m.sample(4).shape == (4, 2)
    Trainer(m).fit(3)
    assert m.n_updates.item() == 3
    w, we = m.field.net.net[0].weight, m.field_ema.net.net[0].weight
    assert not torch.equal(w, we) and not we.requires_grad
    with pytest.raises(ValueError, match='ema < 1'): discr_flow(gaussians5(), replace(QUICK, ema=1.0), device='cpu')
    assert discr_flow(gaussians5(), QUICK, device='cpu').sampling_field is not None
