"Fields x pushers x recipes: the discriminator field, free particles, the generator's surrogate push, DiscrFlow and GAN, configs, registry."
import dataclasses, json, math
from dataclasses import asdict, fields, replace
import pytest, torch
from torch import nn
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, digits
from gpm_nb.integrate import FnField, integrate
from gpm_nb.gpm import (DiscriminatorField, GaussianPrior, FreeParticles, Generator, push_loss, DiscrFlow, GAN,
                        RunConfig, DiscriminatorConfig, DiscrFlowConfig, GANConfig, override, discriminator_net,
                        generator_net, discr_flow, gan, schedule_cbs, Method, METHODS, register, get_method, all_methods,
                        out_of_range, evaluate, gan_loss, GAN_LOSSES, DISCR_FLOW_PRESETS, GAN_PRESETS,
                        plain_random_states, per_sample_time, flow_grid, resolve_data_scale, particle_eta)
from gpm_nb.train import Trainer, CheckpointCB, load_checkpoint, LinearDecayCB

DF_RUN, DF_CFG = DISCR_FLOW_PRESETS['quick']
DF_CFG = resolve_data_scale(gaussians5(), DF_CFG)   # the 5 Gaussians: data_scale 1.0
assert DF_CFG.data_scale == 1.
GAN_RUN, GAN_CFG = GAN_PRESETS['quick']
LOSSES = list(GAN_LOSSES)

class LogRatio(nn.Module):
    "Exact log p/q for p = N(mu, I), q = N(0, I): D(x) = <x, mu> - |mu|^2/2, so grad D = mu everywhere."
    def __init__(self, mu): super().__init__(); self.mu = nn.Parameter(mu)
    def forward(self, x, t): return x @ self.mu - self.mu.pow(2).sum() / 2

class HalfSquare(nn.Module):
    "D(x) = |x|^2 / 2: grad D(x) = x, so the penalty tells where it was taken."
    def __init__(self): super().__init__(); self.a = nn.Parameter(torch.ones((), dtype=torch.float64))
    def forward(self, x, t): return self.a * x.pow(2).sum(1) / 2

class SmallD(nn.Module):
    "A time-blind discriminator."
    def __init__(self, d=2): super().__init__(); self.n = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    def forward(self, x, t): return self.n(x).squeeze(1)

def small_gen(d_in=3, d_out=2):
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, d_out))

def params(m): return [p.detach().clone() for p in m.parameters()]

def changed(a, b): return any(not torch.equal(x, y) for x, y in zip(a, b))

def build_df(**kw): return discr_flow(gaussians5(), replace(DF_CFG, **kw), DF_RUN, device='cpu')
def build_gan(**kw): return gan(gaussians5(), replace(GAN_CFG, **kw), GAN_RUN, device='cpu')

# ---------------------------------------------------------------- official configs, presets, registry

def test_official_discr_flow_config_is_the_papers():
    run, c = METHODS['discr_flow'].presets['gpu']
    assert (c.loss, c.K, c.eta, c.width, c.depth, c.t_emb, c.init_std, c.lr, c.beta1, c.beta2, run.batch_size, run.steps) == \
           ('vanilla', 56, 20., 512, 4, 128, 0.02, 2e-4, 0.5, 0.999, 128, 4000)
    assert (run, c) == (RunConfig(), DiscrFlowConfig())                       # the defaults are the official config
    assert (c.gp, c.ema, run.lr_decay) == (0., 0., 0.)

def test_official_gan_config_is_the_papers():
    run, c = METHODS['gan'].presets['gpu']
    assert (c.loss, c.width, c.depth, c.g_width, c.g_depth, c.latent, c.init_std, c.lr, c.g_lr, c.beta1, c.beta2,
            c.n_critic, run.batch_size, run.steps) == \
           ('vanilla', 512, 4, 512, 4, 128, 0.02, 2e-4, 2e-4, 0.5, 0.999, 1, 128, 1900)
    assert c == GANConfig() and (c.gp, c.ema, run.lr_decay) == (0., 0., 0.)

def test_official_configs_build_the_papers_networks():
    m = discr_flow(gaussians5(), *reversed(METHODS['discr_flow'].presets['gpu']), device='cpu')
    lin = [l for l in m.field.net.modules() if isinstance(l, nn.Linear)]
    assert [l.weight.shape[0] for l in lin] == [512] * 4 + [1] and lin[0].weight.shape[1] == 2 + 128
    assert m.K == 56 and m.field.eta == 20. and m.batch_size == 128
    assert abs(lin[1].weight.std().item() - 0.02) < 0.002 and lin[1].bias.abs().max() == 0
    g = m.field.opt
    assert isinstance(g, torch.optim.Adam) and g.defaults['lr'] == 2e-4 and g.defaults['betas'] == (0.5, 0.999)
    mg = gan(gaussians5(), *reversed(METHODS['gan'].presets['gpu']), device='cpu')
    glin = [l for l in mg.generator.net.modules() if isinstance(l, nn.Linear)]
    assert [tuple(l.weight.shape) for l in glin] == [(512, 128)] + [(512, 512)] * 3 + [(2, 512)]
    assert mg.generator.prior.shape == (128,) and mg.generator.opt.defaults['lr'] == 2e-4
    assert mg.generator.opt.defaults['betas'] == (0.5, 0.999) and mg.n_critic == 1

def test_init_std_zero_is_pytorchs_default_init(check_init):
    "init_std=0 leaves PyTorch's init in D and G; the default is GPM's N(0, 0.02^2) with zero biases."
    torch.manual_seed(0)
    for net in (build_df(init_std=0.).field.net, build_gan(init_std=0.).generator.net): check_init(net, 0.)
    check_init(build_df().field.net, 0.02)

def test_cpu_preset_of_discr_flow_uses_pytorchs_init():
    run, c = METHODS['discr_flow'].presets['cpu']
    assert c.init_std == 0. and METHODS['discr_flow'].presets['gpu'][1].init_std == 0.02

def test_gan_digits_preset_is_its_cpu_preset_for_fewer_iterations():
    "The GAN on images takes its digits preset: the cpu preset for 6000 iterations instead of 20,000, with the leaky ReLU and Adam's beta2 and learning rates it was measured with, conv nets chosen by the shape."
    from gpm_nb.nets import ConvNet, ConvGenerator
    (run, c), (cpu_run, cpu) = METHODS['gan'].presets['digits'], METHODS['gan'].presets['cpu']
    assert METHODS['gan'].default_preset((1, 8, 8)) == 'digits' and METHODS['gan'].default_preset((2,)) == 'cpu'
    assert run == replace(cpu_run, steps=6000) and run.steps < cpu_run.steps
    assert (cpu.g_act, cpu.beta2, cpu.lr, cpu.g_lr) == ('relu', 0.99, 4e-4, 4e-4)
    assert c == replace(cpu, g_act='leaky_relu', beta2=0.999, lr=2e-4, g_lr=2e-4)
    m = gan(digits(), c, replace(run, batch_size=8), device='cpu')
    assert isinstance(m.field.net, ConvNet) and isinstance(m.generator.net, ConvGenerator), (type(m.field.net), type(m.generator.net))
    assert m.sample(4).shape == (4, 1, 8, 8)

def test_builtin_methods_are_found_from_gpm_alone():
    "A fresh process that imports only gpm_nb.gpm finds every built-in method (no side-effect import needed first)."
    import subprocess, sys
    code = ("from gpm_nb.gpm import METHODS, get_method, all_methods; assert list(METHODS) == ['discr_flow', 'gan']; "
            "print(get_method('edm').name, sorted(all_methods()))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(None, 1) == ['edm', "['diffflow', 'diffusion_gan', 'discr_flow', 'edm', 'gan', 'score_gan', 'sd_flow']\n"]
    with pytest.raises(ValueError, match='unknown method .vae.: choose one of discr_flow, gan, .*score_gan'): get_method('vae')

def test_every_method_has_the_three_presets():
    assert set(all_methods()) == {'discr_flow', 'gan', 'edm', 'sd_flow', 'score_gan', 'diffflow', 'diffusion_gan'}
    for m in METHODS.values():
        assert set(m.presets) >= {'quick', 'cpu', 'gpu'}, m.name          # and maybe presets of its own
        for name, (run, cfg) in m.presets.items():
            assert type(run) is RunConfig and type(cfg) is m.config, (m.name, name)
    assert METHODS['discr_flow'].build is discr_flow and METHODS['discr_flow'].recipe is DiscrFlow
    assert METHODS['gan'].build is gan and METHODS['gan'].recipe is GAN
    assert DF_RUN.steps < 1000 and GAN_RUN.steps < 1000          # quick is quick

def test_no_config_field_collides_with_the_run_config():
    run_names = {f.name for f in fields(RunConfig)}
    for m in METHODS.values():
        assert not run_names & {f.name for f in fields(m.config)}, m.name

def test_registry(monkeypatch):
    with pytest.raises(ValueError, match='unknown method .nope.: choose one of discr_flow, gan'): get_method('nope')
    assert get_method('gan') is METHODS['gan']
    monkeypatch.setitem(METHODS, 'tmp_method', None)                     # removed again after the test
    m = register(Method('tmp_method', 'f', 'free particles', DiscrFlow, DiscrFlowConfig, DISCR_FLOW_PRESETS, discr_flow))
    assert get_method('tmp_method') is m and 'tmp_method' in repr(m) and 'quick' in repr(m)

# ---------------------------------------------------------------- configs

@pytest.mark.parametrize('cls', [RunConfig, DiscriminatorConfig, DiscrFlowConfig, GANConfig])
def test_configs_are_frozen(cls):
    c = cls()
    name = fields(c)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError): setattr(c, name, getattr(c, name))

@pytest.mark.parametrize('make, msg', [
    (lambda: DiscrFlowConfig(K=0), 'config field K must be >= 1, got 0'),
    (lambda: DiscrFlowConfig(eta=-1.), 'config field eta must be > 0'),
    (lambda: DiscrFlowConfig(t_emb=3), 'config field t_emb must be even'),
    (lambda: DiscrFlowConfig(prior_std=0.), 'config field prior_std must be > 0, got 0.0'),
    (lambda: GANConfig(x_emb=5), r'config field x_emb must be even and >= 0 \(0: no input features\), got 5'),
    (lambda: DiscrFlowConfig(x_emb=16, x_freq=0.), 'config field x_freq must be > 0, got 0.0'),
    (lambda: DiscriminatorConfig(gp=-1.), 'config field gp must be >= 0, got -1.0'),
    (lambda: DiscriminatorConfig(init_std=-0.02), r"config field init_std must be >= 0 \(0: PyTorch's default init\), got -0.02"),
    (lambda: DiscrFlowConfig(loss='wgan'), "unknown GAN loss 'wgan': choose one of vanilla, logit, arcsinh, saturating, hinge, ipm"),
    (lambda: GANConfig(loss='wgan'), "unknown GAN loss 'wgan': choose one of vanilla, logit, arcsinh, saturating, hinge, ipm"),
    (lambda: DiscrFlowConfig(gp_on='everywhere'), 'gp_on must be one of interp, real, fake'),
    (lambda: DiscrFlowConfig(width=0), 'config field width must be >= 1'),
    (lambda: DiscrFlowConfig(ema=1.), r'config field ema must be in \[0, 1\)'),
    (lambda: GANConfig(n_critic=0), 'config field n_critic must be >= 1'),
    (lambda: GANConfig(g_lr=0.), 'config field g_lr must be > 0'),
    (lambda: RunConfig(lr_decay=1.5), r'config field lr_decay must be in \[0, 1\], got 1.5'),
    (lambda: RunConfig(steps=0), 'config field steps must be >= 1'),
    (lambda: RunConfig(seed=-1), 'config field seed must be >= 0')])
def test_config_validation_messages(make, msg):
    with pytest.raises(ValueError, match=msg): make()

def test_configs_round_trip_through_json():
    for m in METHODS.values():
        for run, cfg in m.presets.values():
            r2 = RunConfig(**json.loads(json.dumps(asdict(run))))
            c2 = m.config(**json.loads(json.dumps(asdict(cfg))))
            assert (r2, c2) == (run, cfg)
            # and through `override`, as gpm_sample rebuilds a run from config.json
            j = json.loads(json.dumps(dict(run=asdict(run), cfg=asdict(cfg))))
            assert override((RunConfig(), m.config()), **j['run'], **j['cfg']) == (run, cfg)

def test_override():
    run, cfg = RunConfig(), DiscrFlowConfig()
    r2, c2 = override((run, cfg), K='7', lr=1, eta='2.5', loss='hinge', steps=11, seed='3')
    assert (c2.K, c2.lr, c2.eta, c2.loss, r2.steps, r2.seed) == (7, 1.0, 2.5, 'hinge', 11, 3)
    assert type(c2.lr) is float and type(c2.K) is int                  # int -> float allowed
    assert (run, cfg) == (RunConfig(), DiscrFlowConfig())              # originals untouched
    assert override((run, cfg)) == (run, cfg)
    with pytest.raises(ValueError, match='unknown config field Kk: the fields are K, batch_size'): override((run, cfg), Kk=3)
    with pytest.raises(ValueError, match='unknown config fields a, b'): override((run, cfg), a=1, b=2)
    with pytest.raises(ValueError, match="config field K takes an int, got 'many'"): override((run, cfg), K='many')
    with pytest.raises(ValueError, match='config field K takes an int, got 1.5'): override((run, cfg), K=1.5)
    with pytest.raises(ValueError, match='config field steps takes an int, got True'): override((run, cfg), steps=True)
    with pytest.raises(ValueError, match='config field loss takes a str, got 3'): override((run, cfg), loss=3)
    assert [override((run, cfg), gp=s)[1].gp for s in ('3.', '.5', '1e-1', '2')] == [3., .5, .1, 2.]   # a float as a user types it
    with pytest.raises(ValueError, match="config field gp takes a float, got 'lots'"): override((run, cfg), gp='lots')
    with pytest.raises(ValueError, match='config field gp must be >= 0'): override((run, cfg), gp='-1')   # validated
    with pytest.raises(ValueError, match='unknown GAN loss'): override((run, GANConfig()), loss='wgan')

def test_schedule_cbs():
    assert schedule_cbs(RunConfig()) == []
    cb, = schedule_cbs(RunConfig(steps=300, lr_decay=.3))
    assert isinstance(cb, LinearDecayCB) and (cb.frac, cb.total) == (.3, 300)

# ---------------------------------------------------------------- the discriminator field

@pytest.mark.parametrize('loss, h_prime', [('vanilla', lambda d: torch.sigmoid(-d)), ('ipm', lambda d: torch.ones_like(d)),
                                           ('hinge', lambda d: torch.ones_like(d))])
def test_field_is_monotone_rescaled_log_ratio(loss, h_prime):
    "v(x) = -eta grad l_gen(D(x)) = eta h'(D) grad log(p/q), with h' > 0."
    mu = torch.tensor([1., -2.], dtype=torch.float64)
    f = DiscriminatorField(LogRatio(mu.clone()), loss, eta=2.5)
    x = torch.randn(8, 2, dtype=torch.float64); d = x @ mu - mu.pow(2).sum() / 2
    v = f(x, torch.zeros(8))
    torch.testing.assert_close(v, 2.5 * h_prime(d)[:, None] * mu)
    assert ((v @ mu) > 0).all() and not x.requires_grad and not v.requires_grad

def test_vanilla_discriminator_learns_log_ratio():
    "Trained on N(mu, I) vs N(0, I), D approaches the exact log-ratio (its optimum)."
    seed_everything(0); mu = torch.tensor([1.5, 0.])
    f = DiscriminatorField(SmallD(), lr=1e-2, betas=(.9, .999))
    for _ in range(500): f.fit_step(torch.randn(256, 2) + mu, torch.randn(256, 2), torch.zeros(256))
    x = torch.randn(500, 2) + mu / 2
    err = (f.net(x, None) - (x @ mu - mu.pow(2).sum() / 2)).abs().mean()
    assert err < 0.15, err

@pytest.mark.parametrize('gp_on', ['interp', 'real', 'fake'])
def test_gradient_penalty_value_and_report(gp_on):
    "D = log-ratio has grad D = mu everywhere: the penalty is (|mu| - c)^2 and enters d_loss with weight gp."
    mu = torch.tensor([3., 4.], dtype=torch.float64)
    f = DiscriminatorField(LogRatio(mu.clone()), 'vanilla', gp=2., gp_center=1., gp_on=gp_on)
    out = f.fit_step(torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64), torch.zeros(16))
    assert set(out) == {'d_loss', 'd_real', 'd_fake', 'gp'}
    assert math.isclose(out['gp'], (5. - 1.) ** 2, rel_tol=1e-9)
    assert math.isclose(out['d_loss'], out['d_real'] + out['d_fake'] + 2. * out['gp'], rel_tol=1e-9)
    assert 'gp' not in DiscriminatorField(LogRatio(mu.clone())).fit_step(torch.zeros(4, 2, dtype=torch.float64),
                                                                        torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4))

def test_gradient_penalty_points():
    "grad D(x) = x: 'real' penalises at the data, 'fake' at the particles, 'interp' in between."
    x = torch.full((5, 2), 3., dtype=torch.float64); z = torch.zeros(5, 2, dtype=torch.float64); t = torch.zeros(5)
    pen = lambda on: DiscriminatorField(HalfSquare(), gp=1., gp_on=on).grad_penalty(x, z, t)
    torch.testing.assert_close(pen('real'), torch.full((5,), 18., dtype=torch.float64))
    torch.testing.assert_close(pen('fake'), torch.zeros(5, dtype=torch.float64))
    p = pen('interp'); assert ((p >= 0) & (p <= 18.)).all() and p.requires_grad

def test_discriminator_step_moves_only_the_discriminator():
    seed_everything(0); f = DiscriminatorField(SmallD(), lr=1e-2)
    p0 = params(f.net)
    out = f.fit_step(torch.randn(64, 2) + 2, torch.randn(64, 2), torch.zeros(64))
    assert changed(p0, params(f.net)) and all(math.isfinite(v) for v in out.values())
    assert list(f.optimizers()) == ['field']

# ---------------------------------------------------------------- the generator's surrogate push

@pytest.mark.parametrize('loss', LOSSES)
def test_push_gradient_equals_generator_loss_gradient(loss):
    "grad_theta of -mean <g(z), sg(v)> equals grad_theta of mean l_gen(D(g(z))) (eta = 1); D gets no gradient."
    seed_everything(0)
    D, G = SmallD().double(), small_gen().double()
    field = DiscriminatorField(D, loss)
    z, t = torch.randn(64, 3, dtype=torch.float64), torch.zeros(64)
    x = G(z)
    push_loss(x, field(x.detach(), t)).backward()
    surrogate = [p.grad.clone() for p in G.parameters()]
    assert all(p.grad is None for p in D.parameters())                 # stop-gradient on the field
    G.zero_grad()
    gan_loss(loss).gen(D(G(z), t)).mean().backward()
    for a, b in zip(surrogate, [p.grad for p in G.parameters()]): torch.testing.assert_close(a, b)
    assert any(a.abs().max() > 0 for a in surrogate)

def test_generator_push_is_one_step_on_the_generator_loss():
    "With SGD(lr), push moves theta by -lr grad mean l_gen(D(g(z))); it reports the surrogate loss and the speed."
    seed_everything(0)
    D, G = SmallD().double(), small_gen().double()
    field = DiscriminatorField(D, 'vanilla')
    gen = Generator(G, GaussianPrior((3,)), opt=lambda ps: torch.optim.SGD(ps, lr=0.1))
    z, t = torch.randn(32, 3, dtype=torch.float64), torch.zeros(32)
    gan_loss('vanilla').gen(D(G(z), t)).mean().backward()
    want = [p.detach() - 0.1 * p.grad for p in G.parameters()]
    G.zero_grad(); D.zero_grad()
    x = G(z).detach(); v = field(x, t)
    d0 = params(D)
    out = gen.push(z, field, t)
    assert set(out) == {'g_loss', 'speed'}
    assert math.isclose(out['g_loss'], -(x * v).sum(1).mean().item(), rel_tol=1e-9)
    assert math.isclose(out['speed'], v.norm(dim=1).mean().item(), rel_tol=1e-9)
    for a, b in zip(G.parameters(), want): torch.testing.assert_close(a.detach(), b)
    assert not changed(d0, params(D))                                   # the push leaves the field alone
    assert list(gen.optimizers()) == ['generator']

def test_push_loss_checks_shapes():
    with pytest.raises(ValueError, match='same shape'): push_loss(torch.zeros(4, 2), torch.zeros(4, 3))

def test_gan_train_step_returns_both_losses():
    seed_everything(0); m = build_gan()
    d0, g0 = params(m.field.net), params(m.generator.net)
    out = m.train_step()
    assert {'d_loss', 'd_real', 'd_fake', 'g_loss', 'speed'} <= set(out)
    assert all(math.isfinite(v) for v in out.values()) and out['speed'] > 0
    assert changed(d0, params(m.field.net)) and changed(g0, params(m.generator.net))
    assert set(m.optimizers()) == {'field', 'generator'}

def test_gan_n_critic_counts_field_updates():
    seed_everything(0); m = build_gan(n_critic=3)
    m.train_step()
    step = lambda opt: next(iter(opt.state.values()))['step'].item()
    assert (step(m.field.opt), step(m.generator.opt)) == (3, 1)

def test_gan_sample():
    seed_everything(0); m = build_gan()
    assert m.sample(7).shape == (7, 2) and m.sample(9000, chunk=4096).shape == (9000, 2)
    with pytest.raises(ValueError, match='steps'): m.sample(5, steps=3)
    with pytest.raises(ValueError, match='n must be a positive integer'): m.sample(0)

# ---------------------------------------------------------------- a parameterless field

def test_fn_field_in_free_particles():
    "FreeParticles follows any f(x, t): Euler on v = -x shrinks by (1 - h)^N; t is the grid's time per particle."
    seed_everything(0)
    p = FreeParticles(GaussianPrior((2,)), torch.linspace(0, 1, 11))
    shrink = FnField(lambda x, t: -x, name='shrink')
    z = torch.randn(6, 2)
    traj = p.trajectory(shrink, z)
    assert traj.shape == (11, 6, 2) and torch.equal(traj[0], z)
    torch.testing.assert_close(traj[-1], z * 0.9 ** 10)
    clock = FnField(lambda x, t: t[:, None].expand_as(x).to(x.dtype))
    torch.testing.assert_close(p.trajectory(clock, torch.zeros(3, 2))[-1], torch.full((3, 2), 0.45))
    heun = FreeParticles(GaussianPrior((2,)), torch.linspace(0, 1, 11), method='heun')
    torch.testing.assert_close(heun.trajectory(shrink, z)[-1], z * (1 - 0.1 + 0.005) ** 10)
    s = p.sample(shrink, 40, 'cpu', chunk=16)
    assert s.shape == (40, 2) and 0 < s.std() < 0.9 * 0.5                 # N(0, 0.9^20)
    assert len(list(shrink.parameters())) == 0 and shrink.fit_step(z, z, torch.zeros(6)) == {}

def test_fn_field_in_discr_flow_recipe():
    seed_everything(0)
    m = DiscrFlow(FnField(lambda x, t: -x), FreeParticles(GaussianPrior((2,)), flow_grid(4), regrid=flow_grid), gaussians5(), 16)
    assert m.optimizers() == {} and m.K == 4
    assert m.train_step() == {}
    Trainer(m).fit(2)
    assert m.sample(8).shape == (8, 2) and m.sample(8, steps=2).shape == (8, 2)
    fixed = DiscrFlow(FnField(lambda x, t: -x), FreeParticles(GaussianPrior((2,)), torch.linspace(0, 1, 5)), gaussians5(), 16)
    assert fixed.sample(8).shape == (8, 2)
    with pytest.raises(ValueError, match='one fixed grid of 4 steps'): fixed.sample(8, steps=2)   # no regrid: the trained grid only

def test_fn_field_in_gan_recipe():
    "A fixed field v = -x pushes the generator's outputs towards 0; only the generator has an optimiser."
    seed_everything(0)
    G = small_gen(4, 2)
    with torch.no_grad(): G[-1].bias.fill_(3.)
    m = GAN(FnField(lambda x, t: -x), Generator(G, GaussianPrior((4,)), lr=1e-2, betas=(.9, .999)), gaussians5(), 32)
    assert list(m.optimizers()) == ['generator']
    before = m.sample(200).norm(dim=1).mean()
    out = m.train_step()
    assert set(out) == {'g_loss', 'speed'} and out['g_loss'] > 0
    Trainer(m).fit(60)
    after = m.sample(200).norm(dim=1).mean()
    assert after < before / 2, (before, after)

# ---------------------------------------------------------------- Discriminator Flow

def test_one_pusher_step_is_euler_of_the_field():
    "z_1 = z_0 + eta/K v(z_0, 0), v = -grad_x l_gen(D(x, t)) computed here from the discriminator net."
    seed_everything(0); m = build_df()
    z = m.particles.prior.sample(6, 'cpu')
    zz = z.clone().requires_grad_(True)
    v, = torch.autograd.grad(-m.field.loss.gen(m.field.net(zz, torch.zeros(6))).sum(), zz)
    step = m.particles.trajectory(m.field, z, n_steps=1)[1]
    torch.testing.assert_close(step, z + DF_CFG.eta / DF_CFG.K * v)
    assert v.abs().max() > 0 and not torch.equal(step, z)

def test_trajectory_and_sample_shapes():
    seed_everything(0); m = build_df(); K = DF_CFG.K
    assert m.K == K
    z = m.particles.prior.sample(10, 'cpu')
    zs = m.particles.trajectory(m.field, z)
    assert zs.shape == (K + 1, 10, 2) and torch.equal(zs[0], z)
    assert m.particles.trajectory(m.field, z, n_steps=3).shape == (4, 10, 2)
    assert torch.equal(m.particles.trajectory(m.field, z, n_steps=0)[0], z)
    torch.testing.assert_close(m.particles.trajectory(m.field, z, n_steps=3)[3], zs[3])
    with pytest.raises(ValueError, match=f'n_steps <= {K}'): m.particles.trajectory(m.field, z, n_steps=K + 1)
    assert m.sample(5).shape == (5, 2) and m.sample(5, steps=3).shape == (5, 2)
    assert m.particles.sample(m.field, 40, 'cpu', chunk=16).shape == (40, 2)
    with pytest.raises(ValueError, match='steps must be a positive integer'): m.sample(5, steps=0)
    seed_everything(3); a = m.sample(8)
    seed_everything(3); b = m.particles.trajectory(m.field, m.particles.prior.sample(8, 'cpu'))[-1]
    torch.testing.assert_close(a, b)                                    # sampling = following the K-step flow

@pytest.mark.parametrize('method', ['euler', 'heun'])
def test_integrate_stop_is_the_trajectory_at_each_particles_step(method):
    "Particle i integrated with stop k_i ends where the full trajectory is at step k_i, the field seeing only moving rows."
    seed_everything(0); m = build_df()
    z0, grid = m.particles.prior.sample(300, 'cpu'), torch.linspace(0, 1, 8)
    k = torch.randint(8, (300,))
    full = integrate(m.field, z0, grid, method, traj=True)[1]
    rows = []
    def counting(x, t): rows.append(len(x)); return m.field(x, t)
    got = integrate(counting, z0, grid, method, stop=k)
    torch.testing.assert_close(got, full[k, torch.arange(300)], rtol=1e-5, atol=1e-6)
    assert (full[-1] - z0).abs().max() > 1e-3                          # the field moved the particles
    evals_per_step = 2 if method == 'heun' else 1
    assert sum(rows) == evals_per_step * k.sum().item() < evals_per_step * 300 * 7

def test_integrate_stop_bad_input():
    x, f = torch.zeros(4, 2), (lambda x, t: x)
    for stop, msg in [(torch.ones(3, dtype=torch.long), r'shape \(4,\)'), (torch.ones(4), 'integer tensor'),
                      (torch.full((4,), 3), r'lie in \[0, 2\]'), (torch.full((4,), -1), r'lie in \[0, 2\]'), ([1, 1, 1, 1], 'integer tensor')]:
        with pytest.raises(ValueError, match=msg): integrate(f, x, [0., .5, 1.], stop=stop)
    with pytest.raises(ValueError, match='stop excludes traj and callback'): integrate(f, x, [0., 1.], traj=True, stop=torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match='stop excludes traj and callback'): integrate(f, x, [0., 1.], callback=print, stop=torch.ones(4, dtype=torch.long))

def test_random_states_match_the_plain_computation():
    "The training states of ours (each particle stopped at its step, the time embedded once) = the plain computation's."
    seed_everything(0); m = build_df()
    for _ in range(40): m.train_step()                                       # a trained field: the particles travel
    torch.manual_seed(5); z, t = m.particles.random_states(m.field, 256, 'cpu')
    torch.manual_seed(5); zp, tp = plain_random_states(m.particles, m.field, 256, 'cpu')
    torch.manual_seed(5); z0 = m.particles.prior.sample(256, 'cpu')
    torch.testing.assert_close(z, zp, rtol=1e-5, atol=1e-5); assert torch.equal(t, tp)
    assert (zp - z0).norm(dim=1).max() > 0.1 and len(set(t.tolist())) == DF_CFG.K   # moved, at every step but the last

def test_sampling_matches_the_plain_computation():
    "Samples (the time embedded once per step) = the flow integrated with the time as a per-sample tensor."
    seed_everything(0); m = build_df()
    for _ in range(40): m.train_step()
    torch.manual_seed(2); x = m.sample(300)
    torch.manual_seed(2)
    with torch.no_grad(): xp = integrate(per_sample_time(m.field), m.particles.prior.sample(300, 'cpu'), m.particles.grid)
    torch.testing.assert_close(x, xp, rtol=1e-5, atol=1e-5)
    torch.manual_seed(2); assert (xp - m.particles.prior.sample(300, 'cpu')).norm(dim=1).max() > 0.1

def test_flow_grid_and_sampling_with_other_steps():
    "t_k = 1 - (1 - (k/K)^p)^q: uniform at p = q = 1; the model samples with another number of steps on a grid of the same shape."
    u = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.equal(flow_grid(4), u)
    torch.testing.assert_close(flow_grid(4, .5), u.sqrt())
    torch.testing.assert_close(flow_grid(4, anneal=2.), 1 - (1 - u) ** 2)
    torch.testing.assert_close(flow_grid(4, .5, 2.), 1 - (1 - u.sqrt()) ** 2)
    for p, q in ((.5, 1.), (1., 2.), (.5, 2.)):
        seed_everything(0); m = build_df(grid_power=p, grid_anneal=q)
        assert torch.equal(m.particles.grid, flow_grid(DF_CFG.K, p, q)) and torch.equal(m.particles.grid_for(6), flow_grid(6, p, q))
        torch.manual_seed(3); a = m.sample(8, steps=6)
        torch.manual_seed(3); b = integrate(m.field, m.particles.prior.sample(8, 'cpu'), flow_grid(6, p, q))
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='grid_power must be > 0'): DiscrFlowConfig(grid_power=0.)
    with pytest.raises(ValueError, match='grid_anneal must be > 0'): DiscrFlowConfig(grid_anneal=-1.)

def test_prior_std_sets_where_the_particles_start():
    "prior_std: the flow starts from N(0, prior_std^2 I) in the flow's scale; the same noise, scaled, moved by the same field."
    seed_everything(0); a = build_df()
    seed_everything(0); b = build_df(prior_std=2.5)
    assert a.particles.prior.std == 1. and b.particles.prior.std == 2.5
    torch.manual_seed(1); z = b.particles.prior.sample(20000, 'cpu')
    assert abs(z.std().item() - 2.5) < 0.05
    torch.manual_seed(4); za = a.particles.prior.sample(8, 'cpu')
    torch.manual_seed(4); torch.testing.assert_close(b.particles.prior.sample(8, 'cpu'), 2.5 * za)
    torch.manual_seed(4); xb = b.sample(8)
    with torch.no_grad(): torch.testing.assert_close(xb, integrate(per_sample_time(b.field), 2.5 * za, b.particles.grid) / b.data_scale)

def test_per_sample_time_materialises_a_shared_time():
    seen = []
    f = per_sample_time(lambda x, t: seen.append(t.stride()) or x)
    f(torch.zeros(5, 2), torch.full((1,), .5).expand(5))
    assert seen == [(1,)]

@pytest.mark.filterwarnings('ignore:bf16 on')   # on a CPU without native bfloat16 (the next test)
def test_bf16_flow_is_close_to_float32_and_trains_in_float32():
    "bf16 changes where the particles move only by bfloat16 rounding; the discriminator's weights stay float32."
    seed_everything(0); m = build_df(bf16=True)
    assert m.bf16 and DiscrFlowConfig().bf16 is False
    torch.manual_seed(1); a = m.sample(500)
    m.bf16 = False; torch.manual_seed(1); b = m.sample(500); m.bf16 = True
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    m.train_step()
    assert all(p.dtype == torch.float32 for p in m.field.parameters())

@pytest.mark.parametrize('native', [True, False])
def test_bf16_flow_warns_where_bfloat16_products_are_slow(native, monkeypatch):
    "On a device without native bfloat16 products (an AVX2-only CPU: tens of times slower) a bf16 flow warns, naming the fix; elsewhere it is silent."
    import warnings, gpm_nb.gpm as G
    monkeypatch.setattr(G, 'native_bf16', lambda device: native)
    seed_everything(0); m = build_df(bf16=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        m.sample(8); m.train_step()
        m.bf16 = False; m.sample(8)                       # a float32 flow never warns
    slow = [str(w.message) for w in seen if 'bfloat16' in str(w.message)]
    assert slow == [] if native else len(slow) == 2 and all('drop --bf16' in s and 'cpu' in s for s in slow), slow

@pytest.mark.parametrize('loss', LOSSES)
def test_free_particles_move_at_one_speed_for_every_log_ratio_loss(loss):
    "Discriminator Flow's field runs at eta * 1/2 / h'(0) for the losses whose logit estimates log r (half eta for logit and arcsinh), at eta for hinge and IPM; the GAN's field keeps 1."
    shift = 5. if loss == 'saturating' else 0.
    cfg = replace(DF_CFG, loss=loss, shift=shift, eta=40.)
    want = {'vanilla': 40., 'logit': 20., 'arcsinh': 20., 'saturating': 20. * (1 + math.exp(-5)), 'hinge': 40., 'ipm': 40.}[loss]
    assert math.isclose(particle_eta(cfg), want, rel_tol=1e-9)
    assert math.isclose(discr_flow(gaussians5(), cfg, DF_RUN, device='cpu').field.eta, want, rel_tol=1e-9)
    assert gan(gaussians5(), replace(GAN_CFG, loss=loss, shift=shift), GAN_RUN, device='cpu').field.eta == 1.

def test_discr_flow_training_improves_energy():
    seed_everything(0); p = gaussians5(); m = discr_flow(p, DF_CFG, DF_RUN, device='cpu')
    before = evaluate(m.sample(1000), p, floors=False)['energy']
    Trainer(m).fit(DF_RUN.steps)
    after = evaluate(m.sample(1000), p, floors=False)['energy']
    assert after < before / 3, (before, after)

def test_gan_training_improves_energy():
    seed_everything(0); p = gaussians5(); m = gan(p, GAN_CFG, GAN_RUN, device='cpu')
    before = evaluate(m.sample(1000), p, floors=False)['energy']
    Trainer(m).fit(150)
    after = evaluate(m.sample(1000), p, floors=False)['energy']
    assert after < before / 2, (before, after)

@pytest.mark.parametrize('build', [build_df, build_gan], ids=['discr_flow', 'gan'])
def test_checkpoint_roundtrip_samples_identically(tmp_path, build):
    seed_everything(0); m = build()
    Trainer(m, [CheckpointCB(tmp_path/'c.pt')]).fit(20)
    seed_everything(5); m2 = build()
    assert changed(params(m), params(m2))
    load_checkpoint(tmp_path/'c.pt', m2, restore_rng=False)
    assert not changed(params(m), params(m2))
    seed_everything(1); a = m.sample(50); seed_everything(1); b = m2.sample(50)
    assert torch.equal(a, b)

def test_ema_options():
    seed_everything(0); m = build_df(ema=0.9)
    assert m.sampling_field is m.field_ema and m.sample(4).shape == (4, 2)
    Trainer(m).fit(3)
    assert m.field_ema.n_updates.item() == 3
    w, we = m.field.net.net[0].weight, m.field_ema.avg.net.net[0].weight
    assert not torch.equal(w, we) and not we.requires_grad
    plain = build_df()
    assert plain.field_ema is None and plain.sampling_field is plain.field
    seed_everything(0); g = build_gan(ema=0.9)
    Trainer(g).fit(3)
    assert g.generator_ema.n_updates.item() == 3
    seed_everything(1); a = g.sample(5); seed_everything(1); b = g.sample(5, ema=False)
    assert not torch.equal(a, b)                                        # the average samples, unless asked otherwise

# ---------------------------------------------------------------- builders and bad inputs

def test_networks_for_images():
    D = discriminator_net((1, 8, 8), DF_CFG, t_emb=DF_CFG.t_emb)
    assert D(torch.zeros(3, 1, 8, 8), torch.zeros(3)).shape == (3,)
    G = generator_net((1, 8, 8), GAN_CFG)
    assert G(torch.zeros(3, GAN_CFG.latent)).shape == (3, 1, 8, 8)
    for f, cfg in [(discriminator_net, DF_CFG), (generator_net, GAN_CFG)]:
        with pytest.raises(ValueError, match='8, 28, 32, 64'): f((1, 16, 16), cfg)
        with pytest.raises(ValueError, match='8, 28, 32, 64'): f((3, 8, 6), cfg)

@pytest.mark.parametrize('shape', [(2,), (1, 8, 8)])
def test_generator_activation_is_chosen_by_g_act(shape):
    "g_act picks the activation of every hidden layer of the generator, MLP or conv, and of nothing else."
    acts = lambda net: {type(m) for m in net.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))}
    assert acts(generator_net(shape, GAN_CFG)) == {nn.LeakyReLU}
    G = generator_net(shape, replace(GAN_CFG, g_act='relu'))
    assert acts(G) == {nn.ReLU} and G(torch.randn(3, GAN_CFG.latent)).shape == (3, *shape)
    assert acts(discriminator_net(shape, replace(DF_CFG, x_emb=0))) == {nn.LeakyReLU}
    with pytest.raises(ValueError, match="g_act must be one of leaky_relu, relu, got 'gelu'"): replace(GAN_CFG, g_act='gelu')

def test_bad_inputs():
    m = build_df()
    with pytest.raises(ValueError, match='n must be a positive integer'): m.sample(0)
    with pytest.raises(ValueError, match='same shape'): m.field.fit_step(torch.zeros(4, 2), torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r'shape \(\*, 2\)'): m.field(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match='vanilla, logit, arcsinh, saturating, hinge, ipm'): gan_loss('nope')
    with pytest.raises(ValueError, match='gp must be >= 0'): DiscriminatorField(SmallD(), gp=-1.)
    with pytest.raises(ValueError, match='interp, real, fake'): DiscriminatorField(SmallD(), gp_on='mid')
    with pytest.raises(ValueError, match='std must be > 0'): GaussianPrior((2,), std=0.)
    with pytest.raises(ValueError, match='euler, heun, euler_maruyama'): FreeParticles(GaussianPrior((2,)), [0., 1.], 'rk4')
    with pytest.raises(ValueError, match='g .the noise scale.'): FreeParticles(GaussianPrior((2,)), [0., 1.], 'euler_maruyama')
    with pytest.raises(ValueError, match='strictly'): FreeParticles(GaussianPrior((2,)), [0., 1., 1.])
    with pytest.raises(ValueError, match='n_critic must be a positive integer'):
        GAN(FnField(lambda x, t: -x), Generator(small_gen(), GaussianPrior((3,))), gaussians5(), n_critic=0)
    with pytest.raises(ValueError, match='batch_size must be a positive integer'):
        DiscrFlow(FnField(lambda x, t: -x), FreeParticles(GaussianPrior((2,)), [0., 1.]), gaussians5(), 0)
    with pytest.raises(ValueError, match='NaN'): evaluate(torch.full((10, 2), float('nan')), gaussians5())

def test_out_of_range_and_evaluate():
    y = torch.tensor([[-1., 0.], [1., 0.], [0., 1.], [0., -1.]])       # mean 0, radius 1: out beyond 3
    assert out_of_range(torch.tensor([[2.9, 0.], [0., -1.2]]), y) == 0.
    assert out_of_range(torch.tensor([[3.1, 0.], [0.5, 0.5]]), y) == 0.5
    assert out_of_range(torch.tensor([[0., -3.1], [9., 9.]]), y) == 1.
    assert out_of_range(torch.tensor([[0., -1.6]]), y, margin=0.5) == 1.
    seed_everything(0); p = gaussians5()
    good, bad = evaluate(p.sample(500), p), evaluate(torch.randn(500, 2) * 0.1, p)
    assert good['energy'] < 5 * good['energy_floor'] and bad['energy'] > 20 * good['energy']
    assert (good['modes_covered'], good['n_modes'], bad['out_of_range']) == (5, 5, 0.)
    assert good['high_quality'] > 0.9 and bad['modes_covered'] < 5

def test_out_of_range_of_images_inside_the_data_range():
    seed_everything(0); d = digits()
    y = d.sample(500, 'cpu')
    assert out_of_range(d.sample(500, 'cpu'), y) < 0.05
    x = (d.sample(500, 'cpu') + 0.01 * torch.randn(500, 1, 8, 8)).clamp(-1, 1)
    assert out_of_range(x, y) < 0.05
    assert out_of_range(torch.zeros(500, 1, 8, 8), y) < 0.05
    assert out_of_range(torch.full((500, 1, 8, 8), 9.), y) == 1.


@pytest.mark.parametrize('method', list(all_methods()))
def test_builders_take_samples_as_a_tensor_or_array_and_refuse_wrong_configs(method):
    "Every method's builder trains on plain samples (tensor or numpy array, resolved like the CLI's data); arguments of the wrong kind are a TypeError that names them."
    from gpm_nb.cli import run_configs
    m = get_method(method)
    run, cfg = run_configs(method, 'quick')
    x = gaussians5().sample(400, 'cpu')
    for data in (x, x.numpy()):
        c = m.resolve(data, cfg) if m.resolve else cfg
        model = m.build(data, c, replace(run, batch_size=64), device='cpu')
        assert type(model.data).__name__ == 'ArrayData' and torch.equal(model.data.x, x)
        model.train_step(); assert model.sample(5).shape == (5, 2)
    other = RunConfig() if method != 'gan' else DiscrFlowConfig()
    with pytest.raises(TypeError, match=f"cfg must be an instance of {m.config.__name__}, got {type(other).__name__}"):
        m.build(x, other, run, device='cpu')
    with pytest.raises(TypeError, match=f"run must be an instance of RunConfig, got {m.config.__name__}"):
        m.build(x, cfg, cfg, device='cpu')
    with pytest.raises(TypeError, match='data must be a tensor or numpy array of samples'):
        m.build(x.tolist(), cfg, run, device='cpu')


def test_evaluate_takes_arrays_and_refuses_samples_unlike_the_data():
    "evaluate: samples and data as tensors or arrays; the same figures as before for a tensor (no extra random draw); clear errors for bad shapes."
    p = gaussians5()
    torch.manual_seed(0); x = p.sample(300, 'cpu')   # seeded: two unseeded 300-sample draws are 0.05 apart or more in about 1 run in 8
    torch.manual_seed(1); a = evaluate(x, p, floors=False)
    torch.manual_seed(1); b = evaluate(x.numpy(), p, floors=False)
    assert a == b and a['modes_covered'] == 5
    torch.manual_seed(1); y = p.sample(300, 'cpu')
    torch.manual_seed(2); c = evaluate(x, y, floors=False)                # data given as samples
    assert c['energy'] < 0.05 and 'high_quality' not in c
    assert evaluate(x.double(), p, floors=False)['energy'] > 0             # float64 samples stay float64
    with pytest.raises(ValueError, match=r'samples must have shape \(n, \.\.\.\), one sample per row, got \(300,\)'): evaluate(x[:, 0], p)
    with pytest.raises(ValueError, match=r"samples of shape \(3,\) cannot be compared with the data's, of shape \(2,\)"):
        evaluate(torch.randn(10, 3), p)
    with pytest.raises(ValueError, match='samples contains NaN'): evaluate(torch.full((10, 2), float('nan')), p)
