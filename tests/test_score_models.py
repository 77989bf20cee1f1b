"Score fields in the particle-model shape: the learned denoiser field, kernel and score-difference fields, diffusion and score-driven generators, teachers, and the CLI's score methods."
import json, math, re
from dataclasses import replace, asdict
import numpy as np, pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.data import gaussians5, get_dataset
from gpm_nb.nets import MLP
from gpm_nb.scores import Denoiser, mixture_denoiser, edm_loss, SAMPLERS, get_sigmas_karras
from gpm_nb.gpm import METHODS, RunConfig
from gpm_nb.train import Trainer, save_checkpoint, load_checkpoint, read_checkpoint
from gpm_nb.score_models import (DenoiserField, KernelField, ScoreDifferenceField, ScoreGenerator, Diffusion, EDMConfig,
                                 SDFlowConfig, ScoreGANConfig, draw_sigmas, edm, sd_flow, score_gan, resolve_noise,
                                 resolve_push, resolve_score_gan, EDM_PRESETS, SCORE_GAN_PRESETS)
from gpm_nb.cli import train, sample_run, read_log, gpm_train, gpm_sample, load_run, make_run
from helpers import cli

class Exact(torch.nn.Module):
    "An exact mixture denoiser in the field shape."
    def __init__(self, mix): super().__init__(); self.denoiser = mixture_denoiser(mix)

def test_denoiser_field_learns_and_its_velocity_is_the_ode():
    seed_everything(0); p = gaussians5()
    f = DenoiserField(Denoiser(MLP(2, 2, 64, 2, 32), 0.5), lr=1e-3)
    x = p.sample(2000, 'cpu')
    gen = torch.Generator().manual_seed(0)
    before = edm_loss(f.denoiser, x, generator=gen).item()
    for _ in range(300): out = f.fit_step(p.sample(256, 'cpu'))
    after = edm_loss(f.denoiser, x, generator=torch.Generator().manual_seed(0)).item()
    assert set(out) == {'field_loss'} and after < 0.7 * before
    s = torch.full((5,), 0.8)
    assert torch.allclose(f(x[:5], s), (x[:5] - f.denoiser(x[:5], s)) / 0.8, atol=1e-6)
    assert f.time == 'sigma' and set(f.optimizers()) == {'field'}
    with pytest.raises(ValueError, match='P_std'): DenoiserField(Denoiser(MLP(2, 2, 8, 1, 8)), P_std=-1.)

def test_score_difference_is_sigma2_times_the_exact_score_difference():
    p, q = gaussians5(), gaussians5(); q.means = q.means * 0.5
    x, s = 2 * torch.randn(300, 2, dtype=torch.float64), torch.rand(300, dtype=torch.float64) + 0.3
    sd = ScoreDifferenceField(Exact(p), Exact(q), eta=2., fit_p=False)
    for i in (0, 17, 299):
        ref = s[i]**2 * (p.noised(s[i].item()).score(x[i:i+1]) - q.noised(s[i].item()).score(x[i:i+1]))
        assert torch.allclose(sd(x[i:i+1], s[i:i+1]), 2 * ref, atol=1e-9)

def test_kernel_field_remembers_and_refuses_before_fitting():
    k = KernelField()
    with pytest.raises(RuntimeError, match='fit_step'): k(torch.zeros(3, 2), torch.ones(3))
    y = torch.randn(50, 2); assert k.fit_step(y) == {} and k.optimizers() == {}
    assert torch.equal(k.y, y) and not k.y.requires_grad
    # at tiny sigma the kernel denoiser returns the nearest sample
    assert torch.allclose(k.denoiser(y[:4] + 1e-4, torch.full((4,), 1e-3)), y[:4], atol=1e-3)

def test_draw_sigmas_range_and_bad_input():
    s = draw_sigmas(10_000, 0.1, 10.)
    assert s.min() >= 0.1 and s.max() <= 10. and s.median() < 3
    for lo, hi in ((0., 1.), (2., 1.), (1., math.inf)):
        with pytest.raises(ValueError, match='sigma_min < sigma_max'): draw_sigmas(3, lo, hi)

def test_score_gan_teacher_phase_then_fake_starts_as_a_copy():
    seed_everything(0); p = gaussians5()
    cfg = replace(SCORE_GAN_PRESETS['quick'][1], teacher_steps=5)
    m = score_gan(p, cfg, RunConfig(batch_size=32), device='cpu')
    assert set(m.optimizers()) == {'data_denoiser', 'fake_denoiser', 'generator'}
    g0 = {k: v.clone() for k, v in m.generator.state_dict().items()}
    for _ in range(5): out = m.train_step()
    assert set(out) == {'data_denoiser_loss'} and all(torch.equal(g0[k], v) for k, v in m.generator.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(m.field.p.parameters(), m.field.q.parameters()))
    pd = [t.clone() for t in m.field.p.parameters()]
    out = m.train_step()
    assert {'fake_denoiser_loss', 'g_loss', 'speed'} <= set(out) and m.it.item() == 6
    assert all(torch.equal(a, b) for a, b in zip(pd, m.field.p.parameters()))         # the data denoiser is fixed now
    assert not all(torch.equal(a, b) for a, b in zip(pd, m.field.q.parameters()))

def test_score_gan_teacher_phase_hands_over_its_weight_average():
    def after_teacher(decay):
        seed_everything(0)
        m = score_gan(gaussians5(), replace(SCORE_GAN_PRESETS['quick'][1], teacher_steps=5, teacher_ema=decay), RunConfig(batch_size=32), device='cpu')
        for _ in range(5): m.train_step()
        return m
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    last, avg = after_teacher(0.), after_teacher(0.9)
    assert last.teacher_ema is None and avg.teacher_ema.n_updates.item() == 5
    assert same(avg.field.p.denoiser, avg.teacher_ema.avg) and same(avg.field.q.denoiser, avg.field.p.denoiser)
    assert not same(avg.field.p.denoiser, last.field.p.denoiser)     # the same five iterations: the average is not the last iterate
    with pytest.raises(ValueError, match=re.escape('teacher_ema must be in [0, 1)')): ScoreGANConfig(teacher_ema=1.)

def test_score_gan_fits_its_fake_denoiser_to_its_share_of_a_batch():
    "fake_share: each generator iteration draws that share of the batch from the generator, and the fake denoiser's n_fake steps all fit those samples."
    seen = []
    for share, want in ((1., 32), (0.5, 16), (0.01, 1)):
        seed_everything(0)
        m = score_gan(gaussians5(), replace(SCORE_GAN_PRESETS['quick'][1], teacher_steps=1, n_fake=2, fake_share=share), RunConfig(batch_size=32), device='cpu')
        m.train_step()                                                       # the teacher phase
        fit, seen = m.field.q.fit_step, []
        m.field.q.fit_step = lambda x, *a, **k: (seen.append(x.shape), fit(x, *a, **k))[1]
        out = m.train_step()
        assert seen == [(want, 2)] * 2 and math.isfinite(out['g_loss']), (share, seen)
    assert SCORE_GAN_PRESETS['cpu'][1].fake_share == 0.5 and SCORE_GAN_PRESETS['digits'][1].fake_share == 1.
    with pytest.raises(ValueError, match=re.escape('fake_share must be in (0, 1]')): ScoreGANConfig(fake_share=0.)
    with pytest.raises(ValueError, match=re.escape('fit_share must be in (0, 1]')): ScoreGenerator(None, None, gaussians5(), fit_share=2.)

def test_the_push_anneals_its_top_level_over_the_generators_iterations():
    "push_sigma_end: the push's top level goes from push_sigma_max to push_sigma_end geometrically over the iterations after the teacher's (eq. 2 of 17_score_models)."
    seed_everything(0)
    cfg = replace(SCORE_GAN_PRESETS['quick'][1], teacher_steps=2, push_sigma_max=4., push_sigma_end=0.25)
    m = score_gan(gaussians5(), cfg, RunConfig(steps=6, batch_size=32), device='cpu')
    tops = [m.train_step().get('sigma_top') for _ in range(6)]
    assert tops[:2] == [None, None]                                      # the teacher phase pushes nothing
    assert np.allclose(tops[2:], [4 * (0.25 / 4) ** (k / 4) for k in range(1, 5)]) and tops[-1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match=re.escape('push_sigma_end must lie in (push_sigma_min, push_sigma_max]')): SDFlowConfig(push_sigma_end=0.05)
    with pytest.raises(ValueError, match='more steps than teacher_steps'): score_gan(gaussians5(), cfg, RunConfig(steps=2), device='cpu')
    cpu, digits = SCORE_GAN_PRESETS['cpu'][1], SCORE_GAN_PRESETS['digits'][1]   # the cpu preset anneals (43_report_push_anneal); digits as measured, not
    assert (cpu.push_sigma_end, cpu.push_anneal_share, digits.push_sigma_end, digits.push_anneal_share) == (0.3, 0.75, 0., 1.)

def test_the_push_keeps_the_whole_range_for_the_rest_of_a_batch():
    "push_anneal_share: that share of each batch's levels lies below the annealed top, the rest spans the whole range."
    seed_everything(0); seen = []
    cfg = SDFlowConfig(latent=4, g_width=8, g_depth=1, push_sigma_max=3., push_sigma_end=0.3, push_anneal_share=0.5)
    m = sd_flow(gaussians5(), cfg, RunConfig(steps=1, batch_size=2000), device='cpu')
    m.field.forward = lambda x, s: (seen.append(s), torch.zeros_like(x))[1]
    assert m.train_step()['sigma_top'] == pytest.approx(0.3)
    s = seen[0]
    assert (s[1000:] <= 0.3).all() and (s[:1000] > 0.3).float().mean() > 0.8   # the whole range: (3^(1/3) - 0.3^(1/3)) / (3^(1/3) - 0.1^(1/3)) = 0.83
    with pytest.raises(ValueError, match=re.escape('anneal_share must be in (0, 1]')): ScoreGenerator(None, None, gaussians5(), anneal_share=0.)

def test_sd_flow_field_has_no_parameters_of_its_own():
    m = sd_flow(gaussians5(), SDFlowConfig(latent=4, g_width=16, g_depth=1), RunConfig(batch_size=16), device='cpu')
    assert set(m.optimizers()) == {'generator'} and list(m.field.parameters()) == []
    out = m.train_step(); assert set(out) == {'g_loss', 'speed', 'sigma_top'} and math.isfinite(out['g_loss'])
    assert out['sigma_top'] == 10.   # no push_sigma_end: the top level stays push_sigma_max
    with pytest.raises(ValueError, match='do not apply'): m.sample(4, sampler='heun')

def test_generator_init_std_zero_is_pytorchs_default_init():
    "init_std=0 builds the generator with PyTorch's init (weights spread like U(+-1/sqrt(fan_in)), biases nonzero), never N(0, 0)."
    torch.manual_seed(0)
    g = sd_flow(gaussians5(), SDFlowConfig(latent=4, g_width=64, g_depth=1, init_std=0.), RunConfig(batch_size=16), device='cpu').generator.net
    lin = [m for m in g.modules() if isinstance(m, torch.nn.Linear)]
    w = lin[1].weight                                                      # 64 -> 64: U(+-1/8), std 1/(8 sqrt 3) = 0.072
    assert abs(w.std().item() - 1 / (8 * math.sqrt(3))) < 0.01 and w.abs().max() <= 1 / 8 and lin[1].bias.abs().sum() > 0
    torch.manual_seed(0)
    g2 = sd_flow(gaussians5(), SDFlowConfig(latent=4, g_width=64, g_depth=1), RunConfig(batch_size=16), device='cpu').generator.net
    w2 = [m for m in g2.modules() if isinstance(m, torch.nn.Linear)][1].weight
    assert abs(w2.std().item() - 0.02) < 0.003                             # the default: N(0, 0.02^2)

def test_edm_noise_range_resolved_from_the_data():
    p = gaussians5()
    cfg = resolve_noise(p, EDMConfig(sigma_data=0., sigma_min=0., sigma_max=0.))
    assert 0 < cfg.sigma_min < 0.1 < 3 < cfg.sigma_max < 40
    assert cfg.sigma_data == pytest.approx(p.sample(20_000, 'cpu').pow(2).mean().sqrt().item(), rel=0.05)   # the data's RMS
    assert resolve_noise(p, EDMConfig()) == EDMConfig()                        # explicit values are kept
    big = type('Scaled', (), {'sample': lambda self, n, device=None: 100 * p.sample(n, device)})()
    cfg_big = resolve_noise(big, EDMConfig(sigma_data=0., sigma_min=0., sigma_max=0.))
    assert cfg_big.sigma_max == pytest.approx(100 * cfg.sigma_max, rel=0.2)      # scales with the data
    assert cfg_big.sigma_data == pytest.approx(100 * cfg.sigma_data, rel=0.1)
    assert resolve_noise(p, EDMConfig(sigma_data=0.)).sigma_data == pytest.approx(cfg.sigma_data, rel=0.05)   # each field resolved on its own
    with pytest.raises(ValueError, match='sigma_data must be set'): edm(p, EDMConfig(sigma_data=0.))
    with pytest.raises(ValueError, match='resolve them'): edm(p, EDMConfig(sigma_max=0.))
    for bad in (dict(sigma_min=2., sigma_max=1.), dict(sigma_min=-1.), dict(sampler='rk4'), dict(sample_steps=0)):
        with pytest.raises(ValueError): EDMConfig(**bad)

def test_push_floor_resolved_from_the_data(tmp_path):
    p = gaussians5(); rms = p.sample(20_000, 'cpu').pow(2).mean().sqrt().item()
    c = resolve_push(p, ScoreGANConfig(sigma_data=0., push_sigma_min=0.))
    assert c.push_sigma_min == pytest.approx(0.02 * rms, rel=0.05) and c.sigma_data == pytest.approx(rms, rel=0.05)
    assert resolve_push(p, SDFlowConfig()) == SDFlowConfig() and resolve_push(p, ScoreGANConfig()) == ScoreGANConfig()
    big = type('Scaled', (), {'sample': lambda self, n, device=None: 100 * p.sample(n, device)})()
    assert resolve_push(big, SDFlowConfig(push_sigma_min=0.)).push_sigma_min == pytest.approx(100 * c.push_sigma_min, rel=0.05)
    with pytest.raises(ValueError, match='raise push_sigma_max'): resolve_push(big, SDFlowConfig(push_sigma_min=0., push_sigma_max=1.))
    for build, cfg in ((sd_flow, SDFlowConfig(push_sigma_min=0.)), (score_gan, ScoreGANConfig(push_sigma_min=0.))):
        with pytest.raises(ValueError, match='resolve_push'): build(p, cfg)
    with pytest.raises(ValueError, match='sigma_data must be set'): score_gan(p, ScoreGANConfig(sigma_data=0.))
    # through the CLI, on a user's array: standardised, so the floor is 0.02 whatever the array's scale
    f = tmp_path/'x.npy'; np.save(f, 50 * p.sample(3000, 'cpu').numpy())
    for method, zeros in (('sd_flow', dict(push_sigma_min=0.)), ('score_gan', dict(push_sigma_min=0., sigma_data=0.))):
        train(method, str(f), 'quick', out=tmp_path/method, quiet=True, steps=2, **zeros)
        cfg = json.loads((tmp_path/method/'config.json').read_text())['cfg']
        assert cfg['push_sigma_min'] == pytest.approx(0.02, rel=0.02), cfg
        if method == 'score_gan': assert cfg['sigma_data'] == pytest.approx(1., rel=0.02), cfg

def test_diffusion_samples_with_every_sampler():
    seed_everything(0); p = gaussians5()
    run, cfg = EDM_PRESETS['quick']
    cfg = resolve_noise(p, cfg); m = edm(p, cfg, run, device='cpu')
    for _ in range(3): m.train_step()
    assert torch.equal(m.particles.grid, get_sigmas_karras(cfg.sample_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho))
    assert torch.equal(m.particles.grid_for(4), get_sigmas_karras(4, cfg.sigma_min, cfg.sigma_max, cfg.rho))   # other steps: the same range and rho
    for s in SAMPLERS:
        x = m.sample(7, steps=4, sampler=s); assert x.shape == (7, 2) and torch.isfinite(x).all()
    assert m.sample(3).shape == (3, 2)
    with pytest.raises(ValueError, match="unknown sampler"): m.sample(3, sampler='rk4')
    with pytest.raises(ValueError, match='n must be a positive integer'): m.sample(0)

# ---------------------------------------------------------------- the CLI

SCORE_METHODS = ['edm', 'sd_flow', 'score_gan']

@pytest.mark.parametrize('method', SCORE_METHODS)
def test_score_methods_train_resume_and_sample(tmp_path, method):
    out = tmp_path/'r'
    m = train(method, 'gaussians5', 'quick', out=out, quiet=True, steps=20)
    assert m['step'] == 20 and np.isfinite(m['energy'])
    cfg = json.loads((out/'config.json').read_text())
    if method == 'edm': assert cfg['cfg']['sigma_min'] > 0 and cfg['cfg']['sigma_max'] > 0   # resolved and recorded
    m2 = train(method, 'gaussians5', 'quick', out=out, quiet=True, steps=30, resume=True)
    assert m2['step'] == 30
    assert sample_run(out, 9).shape == (9, 2)

def test_gpm_sample_sampler_choice(tmp_path, capsys):
    train('edm', 'gaussians5', 'quick', out=tmp_path/'e', quiet=True, steps=5)
    train('gan', 'gaussians5', 'quick', out=tmp_path/'g', quiet=True, steps=5)
    code, msg = cli(capsys, gpm_sample, tmp_path/'e', '--n', 10, '--sampler', 'euler', '--steps', 4, '--out', tmp_path/'x.npy')
    assert code == 0 and np.load(tmp_path/'x.npy').shape == (10, 2), msg
    code, msg = cli(capsys, gpm_sample, tmp_path/'e', '--sampler', 'rk4', '--out', tmp_path/'x.npy')
    assert code == 2 and "unknown sampler 'rk4'" in msg and 'Traceback' not in msg
    code, msg = cli(capsys, gpm_sample, tmp_path/'g', '--sampler', 'heun', '--out', tmp_path/'x.npy')
    assert code == 2 and 'no sampler choice' in msg

@pytest.mark.parametrize('args, words', [
    (['--method', 'edm', '--sigma_min', '2', '--sigma_max', '1'], ['sigma_min < sigma_max']),
    (['--method', 'edm', '--sigma_data', '-1'], ['sigma_data must be >= 0']),
    (['--method', 'edm', '--sampler', 'rk4'], ["unknown sampler 'rk4'", 'dpmpp_2m']),
    (['--method', 'sd_flow', '--push_sigma_min', '-1'], ['push_sigma_min must be >= 0']),
    (['--method', 'score_gan', '--n_fake', '0'], ['n_fake must be >= 1']),
    (['--method', 'score_gan', '--fake_share', '1.5'], ['fake_share must be in (0, 1]']),
    (['--method', 'sd_flow', '--push_sigma_end', '20'], ['push_sigma_end must lie in (push_sigma_min, push_sigma_max]']),
    (['--method', 'score_gan', '--push_anneal_share', '0'], ['push_anneal_share must be in (0, 1]']),
    (['--method', 'score_gan', '--init_std', '-0.1'], ["init_std must be >= 0 (0: PyTorch's default init)"]),
    (['--method', 'edm', '--x_emb', '-2'], ['x_emb must be even and >= 0']),
    (['--method', 'edm', '--data', 'digits', '--x_emb', '16'], ['x_emb=16', 'vector data', 'leave x_emb at 0']),
    (['--method', 'discr_flow', '--data', 'digits', '--x_emb', '16'], ['x_emb=16', 'vector data', 'leave x_emb at 0']),
    (['--method', 'diffusion_gan', '--data', 'digits', '--x_emb', '16'], ['x_emb=16', 'vector data', 'leave x_emb at 0']),
])
def test_bad_score_configs_exit_2(capsys, tmp_path, args, words):
    code, msg = cli(capsys, gpm_train, *args, '--preset', 'quick', '--out', tmp_path/'r')
    assert code == 2 and all(w in msg for w in words) and 'Traceback' not in msg, msg

def test_input_features_reach_the_denoiser_and_the_discriminator(tmp_path):
    "x_emb puts Fourier features of the input in front of the MLP of every denoiser and discriminator; the run keeps their frequencies."
    from gpm_nb.nets import InputFeatures
    feats = lambda model: [m for m in model.modules() if isinstance(m, InputFeatures)]
    for method, n_nets in (('edm', 1), ('discr_flow', 1), ('gan', 1), ('score_gan', 2), ('diffflow', 1), ('diffusion_gan', 1)):   # diffflow's split 1: the denoiser alone
        train(method, 'gaussians25', 'quick', tmp_path/method, quiet=True, x_emb=8, x_freq=2., steps=2, eval_every=2, n_eval=100)
        assert json.load(open(tmp_path/method/'config.json'))['cfg']['x_emb'] == 8
        model, _ = load_run(tmp_path/method)
        fs = feats(model.field)
        assert len(fs) >= n_nets and all(f.B.shape == (2, 4) for f in fs), method
        assert all(0.5 < f.B.std().item() < 5. for f in fs), method             # frequencies ~ N(0, x_freq^2)
        saved = read_checkpoint(tmp_path/method/'checkpoint.pt')['model']
        assert [k for k in saved if k.endswith('features.B')], method                   # the checkpoint carries B
    assert not feats(make_run('edm', 'gaussians25', 'quick', x_emb=0)['model'])         # x_emb=0: none

def test_a_presets_input_features_are_left_off_on_images(monkeypatch):
    "A preset's x_emb serves vector data; on images the run leaves it off (and says so in its config), an explicit --x_emb is an error."
    run, cfg = EDM_PRESETS['quick']
    monkeypatch.setitem(EDM_PRESETS, 'quick', (run, replace(cfg, x_emb=16)))
    assert make_run('edm', 'gaussians5', 'quick')['cfg'].x_emb == 16
    r = make_run('edm', 'digits', 'quick')
    assert r['cfg'].x_emb == 0 and r['config']['cfg']['x_emb'] == 0
    with pytest.raises(ValueError, match='x_emb=16: Fourier features of the input are for the MLPs of vector data'):
        make_run('edm', 'digits', 'quick', x_emb=16)

@pytest.mark.parametrize('method', ['edm', 'discr_flow', 'diffflow'])
def test_cpu_presets_input_features_on_vectors_and_their_conv_nets_on_digits(method):
    "The methods whose cpu preset gives its MLPs input features: built on vectors they carry them, built on digits (cpu preset named) the conv nets go without."
    from gpm_nb.nets import InputFeatures
    feats = lambda r: [m for m in r['model'].modules() if isinstance(m, InputFeatures)]
    vec = make_run(method, 'gaussians25', 'cpu', device='cpu')
    assert vec['cfg'].x_emb == 64 and feats(vec) and all(f.B.shape[0] == 2 for f in feats(vec))
    img = make_run(method, 'digits', 'cpu', device='cpu')
    assert img['cfg'].x_emb == 0 and not feats(img) and img['config']['cfg']['x_emb'] == 0

def test_score_gan_digits_preset_takes_image_networks_and_a_teacher(tmp_path):
    "ScoreGAN on digits with no preset named: its digits preset (U-Nets, a conv generator); with an EDM teacher it trains no data denoiser of its own."
    from gpm_nb.nets import UNet, MLP
    r = make_run('score_gan', 'digits', None, device='cpu')
    assert r['config']['preset'] == 'digits' and r['run'].batch_size == 128 and r['cfg'].push_sigma_min == 0.03
    mods = list(r['model'].modules())
    assert sum(isinstance(m, UNet) for m in mods) == 2 and not any(isinstance(m, MLP) for m in mods)   # data and fake denoisers
    assert r['cfg'].teacher_steps == SCORE_GAN_PRESETS['digits'][1].teacher_steps == EDM_PRESETS['digits'][0].steps
    train('edm', 'digits', 'quick', out=tmp_path/'edm', quiet=True, steps=2)
    with_teacher = make_run('score_gan', 'digits', None, device='cpu', teacher=str(tmp_path/'edm'))
    assert with_teacher['cfg'].teacher_steps == 0 and with_teacher['cfg'].width == EDM_PRESETS['quick'][1].width

def test_score_gan_from_a_saved_edm_run(tmp_path, capsys):
    train('edm', 'gaussians5', 'quick', out=tmp_path/'edm', quiet=True, steps=10, width=32)
    train('gan', 'gaussians5', 'quick', out=tmp_path/'gan', quiet=True, steps=5)
    code, msg = cli(capsys, gpm_train, '--method', 'score_gan', '--preset', 'quick', '--teacher', tmp_path/'edm',
                    '--steps', 10, '--out', tmp_path/'sg', '--quiet')
    assert code == 0, msg
    cfg = json.loads((tmp_path/'sg'/'config.json').read_text())['cfg']
    assert cfg['teacher_steps'] == 0 and cfg['width'] == 32                       # the teacher's architecture, no teacher phase
    teacher = torch.load(tmp_path/'edm'/'checkpoint.pt', weights_only=True)['model']
    log = read_log(tmp_path/'sg')[0]
    assert 'g_loss' in log[0] and log[0]['step'] == 10                              # the generator trains from the first step
    sg = torch.load(tmp_path/'sg'/'checkpoint.pt', weights_only=True)['model']
    k = next(k for k in teacher if k.startswith('field.denoiser.'))
    pre = 'field_ema.avg.denoiser.' if any(t.startswith('field_ema.') for t in teacher) else 'field.denoiser.'
    assert torch.equal(sg['field.p.denoiser.' + k[len('field.denoiser.'):]], teacher[pre + k[len('field.denoiser.'):]])
    for bad, words in ((tmp_path/'gan', 'holds a gan run'), (tmp_path/'none', 'no checkpoint at')):
        code, msg = cli(capsys, gpm_train, '--method', 'score_gan', '--preset', 'quick', '--teacher', bad, '--out', tmp_path/'x')
        assert code == 2 and words in msg and 'Traceback' not in msg, msg
    code, msg = cli(capsys, gpm_train, '--method', 'score_gan', '--preset', 'quick', '--teacher', tmp_path/'edm',
                    '--data', 'digits', '--out', tmp_path/'y')
    assert code == 2 and 'shape' in msg, msg
    other = score_gan(gaussians5(), replace(SCORE_GAN_PRESETS['quick'][1], width=48), RunConfig(batch_size=16))
    with pytest.raises(ValueError, match=r"another denoiser: pass its width, depth, t_emb, x_emb, x_freq \(its config.json: width=32, "):
        other.load_teacher(tmp_path/'edm')                                          # built by hand without the teacher's architecture

def test_help_lists_score_methods_and_samplers(capsys):
    code, msg = cli(capsys, gpm_train, '--help')
    assert code == 0 and all(w in msg for w in ('edm', 'sd_flow', 'score_gan', 'dpmpp_2m', 'teacher_steps', 'push_sigma_min'))

@pytest.mark.parametrize('method', SCORE_METHODS)
def test_score_methods_on_digits(tmp_path, method):
    m = train(method, 'digits', 'quick', out=tmp_path/'d', quiet=True, steps=5, n_samples=64)
    s = np.load(tmp_path/'d'/'samples.npy')
    assert s.shape == (64, 1, 8, 8) and np.isfinite(s).all() and 'fd' in m
