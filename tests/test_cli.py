"Console scripts: the run-folder contract, seeds, resume guards, evaluation apart from training, divergence, user arrays and images, and clear errors with exit status 2."
import json, os, re, subprocess, sys
from dataclasses import asdict, fields
from types import SimpleNamespace
import numpy as np, pytest, torch
from gpm_nb.core import seed_everything
from gpm_nb.data import ArrayData, load_digits, get_dataset, gaussians5
from gpm_nb.gpm import METHODS, all_methods, RunConfig, DiscrFlow, flow_grid, spread
from gpm_nb.train import read_checkpoint, load_checkpoint, NonFiniteLossError, CheckpointError
from gpm_nb.cli import (train, make_run, run_configs, standardize, sample_run, load_run, bench, bench_compare, cpu_contention, gpm_train, gpm_sample, gpm_bench,
                        read_log, DivergedError, DivergenceCB, far_from_data)
from helpers import cli

METHOD_NAMES = list(all_methods())   # every built-in method keeps the run-folder contract

def sh(bin_dir, *args):
    "Run a console script; its exit status and stdout + stderr."
    r = subprocess.run([str(bin_dir/args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'})
    return r.returncode, r.stdout + r.stderr

def weights(run_dir):
    "The model's state dict in a run folder's checkpoint, loaded the safe way."
    return torch.load(run_dir/'checkpoint.pt', map_location='cpu', weights_only=True)['model']

def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def quick(method='discr_flow', **kw):
    "Keyword arguments of a small, quiet quick-preset run."
    return dict(method=method, data='gaussians5', preset='quick', quiet=True, **kw)

# ---------------------------------------------------------------- the run folder

def test_load_run_rebuilds_the_trained_model(tmp_path):
    "load_run: the model of a run folder in eval mode with the checkpoint's weights and the run's config; bad names and folders get errors."
    out = tmp_path/'r'
    train(**quick(steps=10, n_samples=100), out=out, grid_anneal=2.)
    model, config = load_run(out)
    assert not model.training and config == json.loads((out/'config.json').read_text())
    assert same_state(model.state_dict(), weights(out)) and torch.equal(model.particles.grid_for(7), flow_grid(7, anneal=2.))   # the run's grid, not the default
    torch.manual_seed(0); a = load_run(out)[0].sample(20)                                     # sample_run draws from it
    torch.manual_seed(0); torch.testing.assert_close(sample_run(out, 20), a)
    with pytest.raises(ValueError, match="unknown checkpoint 'newest'"): load_run(out, checkpoint='newest')
    with pytest.raises(ValueError, match='unknown config field'): load_run(out, grid_anneall=2.)
    with pytest.raises(CheckpointError, match='no checkpoint at'): load_run(tmp_path/'nothing')


def test_moment_prior_is_fitted_to_the_data_and_kept_in_the_checkpoint(tmp_path):
    "--prior moments: the particles start from the data's mean and covariance in the flow's scale; load_run restores that prior, not a refit."
    out = tmp_path/'r'
    train(**{**quick(steps=5, n_samples=64), 'data': 'gaussians_uneven'}, out=out, prior='moments')
    model, config = load_run(out)
    c, q = config['cfg']['data_scale'], get_dataset('gaussians_uneven')
    assert config['cfg']['prior'] == 'moments' and {'prior.mean', 'prior.chol'} <= set(weights(out))
    torch.testing.assert_close(model.prior.mean, c * q.mean().float(), atol=0.05, rtol=0)
    torch.testing.assert_close(model.prior.chol @ model.prior.chol.T, c * c * q.cov().float(), atol=0.2, rtol=0)
    assert same_state(model.state_dict(), weights(out)) and model.particles.prior is model.prior
    torch.manual_seed(0); z = model.particles.prior.sample(20000, 'cpu')
    torch.testing.assert_close(z.mean(0), model.prior.mean, atol=0.05, rtol=0)

def test_moment_prior_fits_images_as_pixel_vectors(tmp_path):
    "--prior moments on digits: the prior's mean and covariance are the pixels' (constant border pixels get the ridge), its draws keep the image shape."
    out = tmp_path/'r'
    train(**{**quick(steps=5, n_samples=64), 'data': 'digits'}, out=out, prior='moments')
    model, _ = load_run(out)
    x = get_dataset('digits').x.flatten(1)
    assert model.prior.mean.shape == (64,) and load_run(out)[0].sample(7).shape == (7, 1, 8, 8)
    torch.testing.assert_close(model.prior.mean, x.mean(0), atol=0.03, rtol=0)
    cov = model.prior.chol @ model.prior.chol.T
    torch.testing.assert_close(cov, torch.cov(x.T), atol=0.03, rtol=0)
    assert (cov.diagonal()[x.std(0) == 0] > 0).all()                 # the blank pixels: a small variance, not a singular fit

def test_moment_prior_keeps_pixel_variances_of_images_too_large_for_a_full_covariance(tmp_path):
    "--prior moments on 3x64x64 images (12288 coordinates, over MOMENT_MAX_DIM): the prior keeps each pixel's mean and variance, a checkpoint restores it, samples keep the shape."
    rng = np.random.default_rng(0)
    scale = np.linspace(0.05, 0.5, 3 * 64 * 64, dtype='float32').reshape(1, 3, 64, 64)      # a different spread for every pixel
    np.save(tmp_path/'big.npy', np.clip(rng.normal(size=(400, 3, 64, 64)).astype('float32') * scale, -1, 1))
    out = tmp_path/'x'
    train(method='discr_flow', data=str(tmp_path/'big.npy'), preset='quick', quiet=True, out=out, prior='moments', steps=1, batch_size=8, K=2,
          n_eval=16, n_samples=16, eval_every=1)
    model, _ = load_run(out)
    assert not model.prior.full and model.prior.chol.shape == (3 * 64 * 64,) and 'diagonal' in repr(model.prior)
    x = get_dataset(str(tmp_path/'big.npy')).x.flatten(1)
    torch.testing.assert_close(model.prior.mean, x.mean(0), atol=0.03, rtol=0)   # 20,000 draws of the 400 images: their mean
    torch.testing.assert_close(model.prior.chol, x.std(0), atol=0.05, rtol=0.1)   # 400 images: about 4% sampling error per pixel
    assert model.prior.chol.argmax() > model.prior.chol.argmin() and model.sample(3).shape == (3, 3, 64, 64)

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_train_writes_the_run_folder(tmp_path, method):
    out = tmp_path/'r'
    m = train(**quick(method, steps=15, n_samples=300), out=out)
    assert sorted(p.name for p in out.iterdir()) == \
        ['best.pt', 'checkpoint.pt', 'config.json', 'metrics.json', 'samples.npy', 'samples.png', 'train_log.jsonl']
    saved = json.loads((out/'metrics.json').read_text())
    assert saved == json.loads(json.dumps(m)) and 'diverged' not in saved
    assert read_checkpoint(out/'best.pt')['step'] == saved['best_eval']['step'] in (5, 10, 15)   # quick: an evaluation every 5 steps
    assert saved['step'] == 15 and saved['n_samples'] == 300
    for k in ('energy', 'sliced_w2', 'mmd'): assert np.isfinite(saved[k]) and np.isfinite(saved[k + '_floor'])
    assert saved['energy_floor'] > 0 and saved['sliced_w2_floor'] > 0   # (the unbiased MMD floor may be < 0)
    assert 0 <= saved['high_quality'] <= 1 and saved['n_modes'] == 5 and 0 <= saved['out_of_range'] <= 1
    s = np.load(out/'samples.npy')
    assert s.shape == (300, 2) and np.isfinite(s).all()
    assert (out/'samples.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    cfg = json.loads((out/'config.json').read_text())
    run, mcfg = METHODS[method].presets['quick']
    assert (cfg['method'], cfg['data'], cfg['preset'], cfg['shape'], cfg['standardize']) == (method, 'gaussians5', 'quick', [2], None)
    assert RunConfig(**cfg['run']) == RunConfig(**{**asdict(run), 'steps': 15})
    assert METHODS[method].config(**cfg['cfg']) == make_run(method, 'gaussians5', 'quick', device='cpu')['cfg']   # as resolved from the data
    ck = read_checkpoint(out/'checkpoint.pt')
    assert ck['step'] == 15 and ck['extra']['config'] == cfg
    log, warned = read_log(out)   # a quick run may end far from the data: a warning note
    assert log[0]['step'] == 10 and log[-1]['step'] == 15 and 'eval_energy' in log[-1]
    assert [l['warning'] for l in warned] == ([saved['warning']] if 'warning' in saved else [])

def test_read_log_parts_and_bad_logs(tmp_path):
    lines = [dict(step=10, time=0.1, d_loss=1.3), dict(step=10, time=0.2, eval_energy=0.5), dict(step=10, warning='w'), dict(step=12, diverged='d')]
    (tmp_path/'train_log.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
    assert read_log(tmp_path) == (lines[:2], lines[2:])
    (tmp_path/'train_log.jsonl').write_text(json.dumps(lines[0]) + '\n{"step": 20, "ti')    # a line cut short
    with pytest.raises(ValueError, match='line 2 of .*train_log.jsonl is not JSON'): read_log(tmp_path)
    with pytest.raises(FileNotFoundError, match='no training log at .*: is .* a gpm_train run folder'): read_log(tmp_path/'none')

def test_run_configs_and_overrides():
    run, cfg = run_configs('gan', 'quick', steps='7', lr=1, seed='4', loss='hinge')
    assert (run.steps, run.seed, cfg.lr, cfg.loss) == (7, 4, 1.0, 'hinge') and type(cfg.lr) is float
    assert run_configs('discr_flow', 'gpu') == METHODS['discr_flow'].presets['gpu']
    with pytest.raises(ValueError, match='quick, cpu, gpu'): run_configs('gan', 'tpu')
    with pytest.raises(ValueError, match='discr_flow, gan'): run_configs('gan9', 'quick')

# ---------------------------------------------------------------- the issue: seeds, resume, evaluation

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_seed_sets_the_initial_weights(method):
    a = make_run(method, 'gaussians5', 'quick', device='cpu', seed=1)
    torch.manual_seed(1234); torch.rand(100)                            # whatever came before must not matter
    b = make_run(method, 'gaussians5', 'quick', device='cpu', seed='1')
    c = make_run(method, 'gaussians5', 'quick', device='cpu', seed=2)
    sa, sb, sc = (r['model'].state_dict() for r in (a, b, c))
    assert same_state(sa, sb)
    assert sa.keys() == sc.keys() and not same_state(sa, sc)
    assert a['config']['run']['seed'] == 1 and c['config']['run']['seed'] == 2

def test_resume_continues_without_lr_decay(tmp_path):
    out = tmp_path/'r'
    assert run_configs('discr_flow', 'quick')[0].lr_decay == 0
    train(**quick(steps=10), out=out)
    with pytest.raises(ValueError, match='already holds a run'): train(**quick(steps=10), out=out)
    with pytest.raises(ValueError, match='another config'): train(**{**quick(steps=20), 'preset': 'cpu'}, out=out, resume=True)
    with pytest.raises(ValueError, match='steps >= 10'): train(**quick(steps=5), out=out, resume=True)
    assert train(**quick(steps=20), out=out, resume=True)['step'] == 20
    assert json.loads((out/'config.json').read_text())['run']['steps'] == 20
    ck = read_checkpoint(out/'checkpoint.pt')
    assert ck['step'] == 20 and ck['extra']['config']['run']['steps'] == 20
    steps = [json.loads(l)['step'] for l in (out/'train_log.jsonl').read_text().splitlines()]
    assert steps[:2] == [10, 10] and steps[-1] == 20                   # the log continues after the resume
    train(**quick(steps=20), out=tmp_path/'straight')                   # resuming is exact
    assert same_state(weights(out), weights(tmp_path/'straight'))
    with pytest.raises(ValueError, match='no checkpoint'): train(**quick(), out=tmp_path/'new', resume=True)

def test_resume_trims_the_log_of_a_stopped_run(tmp_path):
    "A run stopped after its last checkpoint left later log lines, the last one perhaps cut off: resuming drops them, so the log counts up once."
    out = tmp_path/'r'
    train(**quick(steps=10), out=out)
    with open(out/'train_log.jsonl', 'a') as f: f.write(''.join(json.dumps(dict(step=k, fake=1.)) + '\n' for k in (11, 20)) + '{"step": 2')
    train(**quick(steps=20), out=out, resume=True)
    steps, notes = read_log(out)                                         # every line is JSON again
    s = [r['step'] for r in steps]
    assert not any('fake' in r for r in steps) and s == sorted(s) and s[0] == 10 and s[-1] == 20, steps
    assert [r['step'] for r in notes] == [10, 20]                       # each finish's warning (a 10- and a 20-step quick run)

def test_interrupted_run_says_how_to_continue(tmp_path, capsys, monkeypatch):
    "Ctrl-C: exit status 130 and a message naming the kept checkpoint and the command that continues; the continued run is exact."
    out = tmp_path/'r'
    train(**quick(steps=10), out=out)
    step, calls = DiscrFlow.train_step, [0]
    def interrupted(self):
        calls[0] += 1
        if calls[0] == 5: raise KeyboardInterrupt
        return step(self)
    monkeypatch.setattr(DiscrFlow, 'train_step', interrupted)
    code, msg = cli(capsys, gpm_train, '--out', out, '--resume', '--steps', 20, '--quiet')
    assert code == 130 and 'interrupted at step 14' in msg and 'step 10) is kept' in msg and f'gpm_train --out {out} --resume' in msg, msg
    assert read_checkpoint(out/'checkpoint.pt')['step'] == 10
    monkeypatch.undo()
    assert train(out=out, resume=True, steps=20, quiet=True)['step'] == 20
    train(**quick(steps=20), out=tmp_path/'straight')
    assert same_state(weights(out), weights(tmp_path/'straight'))

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_resume_takes_the_runs_own_settings(capsys, tmp_path, method):
    "`gpm_train --out RUN --resume --steps N`: the method, data, preset and every override come from the run's config.json; the run goes on exactly."
    out, straight = tmp_path/'r', tmp_path/'straight'
    train(**{**quick(method, steps=10, eval_every=10, seed=3), 'data': 'moons'}, out=out)
    before = json.loads((out/'config.json').read_text())
    code, msg = cli(capsys, gpm_train, '--out', out, '--resume', '--steps', '20', '--quiet')
    assert code == 0 and read_checkpoint(out/'checkpoint.pt')['step'] == 20, msg
    after = json.loads((out/'config.json').read_text())
    assert after['run'] == {**before['run'], 'steps': 20} and {k: v for k, v in after.items() if k != 'run'} == {k: v for k, v in before.items() if k != 'run'}
    train(**{**quick(method, steps=20, eval_every=10, seed=3), 'data': 'moons'}, out=straight)
    assert same_state(weights(out), weights(straight))
    code, msg = cli(capsys, gpm_train, '--out', out, '--resume', '--steps', '30', '--data', 'gaussians5', '--quiet')
    assert code == 2 and "differs in: data: data='moons'" in msg, msg

def test_resume_with_more_steps_under_lr_decay_is_refused(tmp_path):
    out = tmp_path/'r'
    train(**quick(steps=10, lr_decay=0.5), out=out)
    cfg, ck = (out/'config.json').read_bytes(), (out/'checkpoint.pt').read_bytes()
    with pytest.raises(ValueError, match='schedule') as e: train(**quick(steps=20, lr_decay='0.5'), out=out, resume=True)
    assert 'steps 10' in str(e.value)
    assert (out/'config.json').read_bytes() == cfg and (out/'checkpoint.pt').read_bytes() == ck
    assert train(**quick(steps=10, lr_decay=0.5), out=out, resume=True)['step'] == 10   # the same horizon is fine

def test_resume_with_more_steps_under_an_annealed_push_is_refused(tmp_path):
    out = tmp_path/'r'
    train(**quick('sd_flow', steps=10, push_sigma_end=1.), out=out)
    with pytest.raises(ValueError, match='anneals its push to push_sigma_end at step 10'):
        train(**quick('sd_flow', steps=20, push_sigma_end=1.), out=out, resume=True)
    assert train(**quick('sd_flow', steps=10, push_sigma_end=1.), out=out, resume=True)['step'] == 10   # the same horizon is fine

def test_resume_with_another_seed_is_refused(tmp_path):
    out = tmp_path/'r'
    train(**quick(steps=5, seed=0), out=out)
    cfg, ck = (out/'config.json').read_bytes(), (out/'checkpoint.pt').read_bytes()
    with pytest.raises(ValueError, match='differs in: seed'): train(**quick(steps=10, seed=1), out=out, resume=True)
    assert (out/'config.json').read_bytes() == cfg and (out/'checkpoint.pt').read_bytes() == ck

def test_resume_a_run_made_before_a_config_field_was_added(tmp_path):
    "A config.json without a field added since (here the loss shift) resumes when the field is at its default, not otherwise."
    out = tmp_path/'r'
    train(**quick(steps=5), out=out)
    c = json.loads((out/'config.json').read_text()); del c['cfg']['shift']; (out/'config.json').write_text(json.dumps(c))
    assert train(**quick(steps=10), out=out, resume=True)['step'] == 10
    with pytest.raises(ValueError, match='differs in: loss, shift'): train(**quick(steps=10, loss='saturating', shift=5), out=out, resume=True)
    old = tmp_path/'old'             # a field the preset sets but the run predates takes the class default (the behaviour the run was made with)
    train(**quick(steps=5), out=old)
    c = json.loads((old/'config.json').read_text()); del c['cfg']['gp']; (old/'config.json').write_text(json.dumps(c))
    assert train(out=old, resume=True, steps=10, quiet=True)['step'] == 10 and json.loads((old/'config.json').read_text())['cfg']['gp'] == 0.

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_periodic_evaluation_does_not_change_training(tmp_path, method):
    "Six evaluations (and checkpoints) on the way or none: the same weights at the end."
    train(**quick(method, steps=30, eval_every=5, seed=3), out=tmp_path/'often')
    train(**quick(method, steps=30, eval_every='1000', seed='3'), out=tmp_path/'never')
    log = [json.loads(l) for l in (tmp_path/'often'/'train_log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log if 'eval_energy' in r] == [5, 10, 15, 20, 25, 30]
    assert read_checkpoint(tmp_path/'often'/'checkpoint.pt')['step'] == read_checkpoint(tmp_path/'never'/'checkpoint.pt')['step'] == 30
    assert same_state(weights(tmp_path/'often'), weights(tmp_path/'never'))

# ---------------------------------------------------------------- divergence

def test_divergence_reason():
    cb = DivergenceCB(floor=0.01)
    assert '50% of the samples' in cb.reason(dict(out_of_range=0.5, energy=0.1))
    assert cb.reason(dict(out_of_range=0.05, energy=0.1)) is None and cb.best == 0.1
    assert cb.reason(dict(out_of_range=0., energy=0.4)) is None            # above 10x best, below 50x floor
    assert cb.reason(dict(out_of_range=0., energy=0.9)) is None            # above 50x floor, below 10x best
    assert cb.best == 0.1
    why = cb.reason(dict(out_of_range=0., energy=1.1))
    assert 'energy distance rose to 1.1' in why and 'best 0.1' in why
    cb2 = DivergenceCB(floor=0.01, max_out=0.5)
    assert cb2.reason(dict(out_of_range=0.4, energy=3.)) is None and cb2.best == 3.

def test_diverged_run_keeps_the_last_good_checkpoint(tmp_path, capsys):
    "A generator lr of 0.03 blows the GAN up after its first evaluation: the checkpoint of step 5 is kept and sampled."
    out = tmp_path/'r'
    with pytest.raises(DivergedError) as e: train(**quick('gan', steps=60, eval_every=5, g_lr='0.03', n_samples=200), out=out)
    failed = int(re.search(r'diverged at step (\d+)', str(e.value)).group(1))
    ck = read_checkpoint(out/'checkpoint.pt')
    assert 5 <= ck['step'] < failed and 'last good checkpoint' in str(e.value)
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    saved = json.loads((out/'metrics.json').read_text())
    assert saved['step'] == ck['step'] and saved['diverged'] == str(e.value) and np.isfinite(saved['energy'])
    s = np.load(out/'samples.npy')
    assert s.shape == (200, 2) and np.isfinite(s).all()
    assert (sample_run(out, 10).abs() < 1e3).all()
    code, msg = cli(capsys, gpm_train, '--method', 'gan', '--preset', 'quick', '--steps', 60, '--eval_every', 5,
                    '--g_lr', 0.03, '--out', tmp_path/'cli', '--quiet')
    assert code == 1 and 'diverged at step' in msg and 'Traceback' not in msg, msg
    assert METHODS['gan'].remedy in msg and '--eta' not in msg, msg      # the GAN's own levers, not Discriminator Flow's

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_each_method_names_its_own_remedies(method, capsys, tmp_path):
    "A diverged or misfit run says what to change in flags its method takes: each flag of its remedy is accepted by gpm_train."
    remedy = METHODS[method].remedy
    flags = re.findall(r'--(\w+)', remedy)
    assert flags, remedy
    known = {f.name for c in (RunConfig, METHODS[method].config) for f in fields(c)}
    assert set(flags) <= known, set(flags) - known
    assert remedy in far_from_data(dict(energy=1., energy_floor=0.001), remedy=remedy)
    cb = DivergenceCB(0.001, remedy=remedy); cb.reason(dict(energy=0.002))    # a good evaluation, then one 500x worse
    tr = SimpleNamespace(step=20, metrics=dict(step=20, energy=1.), kept=lambda: 'the last good checkpoint (step 10) is kept')
    with pytest.raises(DivergedError, match=re.escape(f'To try: {remedy}; or train fewer steps.')): cb.after_step(tr)

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_nan_before_any_checkpoint_is_recorded(tmp_path, method):
    "lr = 1e30 makes the losses NaN within two steps: nothing to keep, but metrics.json says what happened."
    out = tmp_path/'r'
    with pytest.raises(NonFiniteLossError, match='no checkpoint was written yet'):
        train(**quick(method, steps=20, eval_every=5, **{'g_lr' if method == 'sd_flow' else 'lr': '1e30'}), out=out)
    assert not (out/'checkpoint.pt').exists() and not (out/'samples.npy').exists()
    saved = json.loads((out/'metrics.json').read_text())
    assert 'non-finite loss' in saved['diverged'] and saved['step'] <= 2

def test_nan_after_a_checkpoint_restores_it(tmp_path, monkeypatch):
    "Weights turn NaN at step 8: training stops, and the checkpoint of step 5 is what is kept, sampled and evaluated."
    orig, calls = DiscrFlow.train_step, []
    def poisoned(self):
        out = orig(self); calls.append(1)
        if len(calls) >= 8:
            with torch.no_grad():
                for p in self.field.parameters(): p.fill_(float('nan'))
            out = {**out, 'd_loss': float('nan')}
        return out
    monkeypatch.setattr(DiscrFlow, 'train_step', poisoned)
    out = tmp_path/'r'
    with pytest.raises(NonFiniteLossError, match='non-finite loss at step 8') as e:
        train(**quick(steps=20, eval_every=5, n_samples=100), out=out)
    assert 'step 5) is kept' in str(e.value)
    ck = read_checkpoint(out/'checkpoint.pt')
    assert ck['step'] == 5 and all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    saved = json.loads((out/'metrics.json').read_text())
    assert saved['step'] == 5 and 'non-finite loss at step 8' in saved['diverged'] and np.isfinite(saved['energy'])
    assert np.isfinite(np.load(out/'samples.npy')).all()

def test_divergence_at_the_final_evaluation_is_caught(tmp_path):
    out = tmp_path/'r'
    try: m = train(**quick('gan', steps=10, eval_every=1000, g_lr='0.3', n_samples=200), out=out)
    except DivergedError: m = None
    assert m is None, f"the run ended without DivergedError: out_of_range={m['out_of_range']:.2f}, energy={m['energy']:.3g}"
    assert 'diverged' in json.loads((out/'metrics.json').read_text())

def test_a_run_that_does_not_fit_says_so(tmp_path, capsys):
    "Two tight clusters in 3-D and 2 training steps: nothing diverges, but the final samples are far from the data, and the run warns."
    rng = np.random.default_rng(0)
    np.save(tmp_path/'x.npy', np.concatenate([rng.normal(3, 0.3, (500, 3)), rng.normal(-3, 0.3, (500, 3))]).astype(np.float32))
    m = train(method='discr_flow', data=str(tmp_path/'x.npy'), preset='quick', quiet=True, out=tmp_path/'r', steps=2, eval_every=2)
    assert 'diverged' not in m and m['energy'] > 20 * m['energy_floor'], m
    assert 'do not fit the data: their energy distance over 4 fresh draws' in m['warning'], m['warning']   # confirmed by a second look
    assert int(re.search(r'is (\d+)x the real-vs-real floor', m['warning']).group(1)) > 20, m['warning']
    assert m['warning'].count('fresh draws') == 1 and m['redrawn']['energy'] > 20 * m['redrawn']['energy_floor'], m
    assert json.loads((tmp_path/'r'/'metrics.json').read_text())['warning'] == m['warning']
    assert 'warning: the samples do not fit the data' in capsys.readouterr().err

def test_a_run_off_the_modes_says_so(tmp_path, capsys):
    "Stand-in models of the 5 Gaussians: one that misses a mode and one that draws every mode twice as wide each get a warning that says so and what to try; one that draws the data gets none."
    import gpm_nb.cli as cli_mod
    data = gaussians5()
    class Draws:
        def __init__(self, keep, wide=1.): self.keep, self.wide = keep, wide   # which modes the stand-in model draws, and how wide
        def sample(self, n, steps=None):
            x = data.sample(4 * n, 'cpu'); k = torch.cdist(x, data.means).argmin(1)
            return (data.means[k] + self.wide * (x - data.means[k]))[self.keep[k]][:n]
    config = dict(method='discr_flow', data='gaussians5', standardize=None)
    for d in 'abc': (tmp_path/d).mkdir()
    m = cli_mod._finish(tmp_path/'a', Draws(torch.tensor([True] * 5)), config, data, 10, 1., 2000)
    assert m['modes_covered'] == 5 and m['high_quality'] > 0.95 and 'warning' not in m, m
    m = cli_mod._finish(tmp_path/'c', Draws(torch.tensor([True] * 5), wide=2.), config, data, 10, 1., 2000)
    assert m['modes_covered'] == 5 and m['high_quality'] < 0.8 and "of the samples lie within 3 std of one of the data's 5 modes" in m['warning'], m
    m = cli_mod._finish(tmp_path/'b', Draws(torch.tensor([False] + [True] * 4)), config, data, 10, 1., 2000)
    assert m['modes_covered'] == 4 and "the samples miss 1 of the data's 5 modes" in m['warning'], m
    assert all(s in m['warning'] for s in ('within 3 std of a mode', 'samples.png', '--steps', '--gp 1')), m['warning']
    assert json.loads((tmp_path/'b'/'metrics.json').read_text())['warning'] == m['warning']
    assert "warning: " in capsys.readouterr().err

def test_a_final_draw_far_by_chance_is_not_a_misfit(tmp_path, monkeypatch):
    "The final draw's energy scripted to 50x its floor: the second look (4 fresh draws, 10 real pairs) finds a model that draws the data, and no warning is written."
    import gpm_nb.cli as cli_mod
    data = gaussians5()
    class Draws:
        def __init__(self, shift): self.shift = shift
        def sample(self, n, steps=None): return data.sample(n, 'cpu') + self.shift
    real = cli_mod.evaluate
    monkeypatch.setattr(cli_mod, 'evaluate', lambda x, d: {**real(x, d), 'energy': 0.05, 'energy_floor': 0.001})
    config = dict(method='gan', data='gaussians5', standardize=None)
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    m = cli_mod._finish(tmp_path/'a', Draws(0.), config, data, 10, 1., 2000)
    assert 'warning' not in m and 'warning' not in json.loads((tmp_path/'a'/'metrics.json').read_text()), m
    r = m['redrawn']   # the second look is recorded
    assert (r['draws'], r['pairs']) == (4, 10) and r['energy'] < 3 * r['energy_floor'], r
    m = cli_mod._finish(tmp_path/'b', Draws(1.), config, data, 10, 1., 2000)   # a model a unit off: far on the second look too
    assert 'do not fit the data: their energy distance over 4 fresh draws' in m['warning'] and m['redrawn']['energy'] > 20 * m['redrawn']['energy_floor'], m

def test_a_run_that_got_worse_warns_and_keeps_its_best(tmp_path, capsys, monkeypatch):
    "Evaluations scripted to 0.02 at step 5, then 0.04 and 0.09: no divergence, but a warning; best.pt holds step 5 and samples."
    import gpm_nb.cli as cli_mod
    energies, real = iter([0.02, 0.04, 0.09]), cli_mod.evaluate
    def scripted(x, data, floors=True):
        m = real(x, data, floors=floors)
        return m if floors else {**m, 'energy': next(energies), 'out_of_range': 0.}   # only the periodic evaluations are scripted
    monkeypatch.setattr(cli_mod, 'evaluate', scripted)
    out = tmp_path/'r'
    m = train(**quick(steps=15, eval_every=5, n_samples=100), out=out)
    assert 'got worse' in m['warning'] and '4.5x that of its best evaluation (0.02, step 5)' in m['warning'], m['warning']
    assert m['best_eval'] == {'step': 5, 'energy': 0.02} and json.loads((out/'metrics.json').read_text())['warning'] == m['warning']
    assert json.loads((out/'train_log.jsonl').read_text().splitlines()[-1]) == {'step': 15, 'warning': m['warning']}
    assert 'warning: the run got worse' in capsys.readouterr().err and f'gpm_sample {out} --checkpoint best' in m['warning']
    assert read_checkpoint(out/'best.pt')['step'] == 5 and read_checkpoint(out/'checkpoint.pt')['step'] == 15
    assert not same_state(torch.load(out/'best.pt', weights_only=True)['model'], weights(out))
    assert sample_run(out, 7, checkpoint='best').shape == (7, 2)
    code, msg = cli(capsys, gpm_sample, out, '--checkpoint', 'best', '--n', 9, '--out', tmp_path/'b.npy')
    assert code == 0 and np.load(tmp_path/'b.npy').shape == (9, 2), msg
    code, msg = cli(capsys, gpm_sample, out, '--checkpoint', 'worst', '--out', tmp_path/'w.npy')
    assert code == 2 and 'last or best' in msg and 'Traceback' not in msg, msg
    (out/'best.pt').unlink()
    code, msg = cli(capsys, gpm_sample, out, '--checkpoint', 'best', '--out', tmp_path/'w.npy')
    assert code == 2 and 'no checkpoint at' in msg and 'best.pt' in msg, msg

def test_digits_run_with_evaluations_is_not_declared_diverged(tmp_path):
    m = train(**{**quick('gan', steps=10, eval_every=5, n_samples=50), 'data': 'digits'}, out=tmp_path/'r')
    assert m['step'] == 10

# ---------------------------------------------------------------- errors on the command line: exit 2, no traceback

@pytest.mark.parametrize('args, names', [
    (('--method', 'gan9'), 'choose one of discr_flow, gan'),
    (('--data', 'spiral'), 'choose one of gaussians5, gaussians8'),
    (('--preset', 'tpu'), 'choose one of quick, cpu, gpu'),
    (('--loss', 'wgan'), 'choose one of vanilla, logit, arcsinh, saturating, hinge, ipm'),
    (('--method', 'gan', '--loss', 'wgan'), 'choose one of vanilla, logit, arcsinh, saturating, hinge, ipm'),
    (('--Kk', '3'), 'unknown config field Kk: the fields are K, '),
    (('--method', 'gan', '--K', '3'), 'unknown config field K: the fields are '),
    (('--K', 'many'), "config field K takes an int, got 'many'"),
    (('--gp', '-1'), 'config field gp must be >= 0'),
    (('--prior', 'fitted'), 'config field prior must be one of normal, moments'),
    (('--method', 'gan', '--g_act', 'tanh'), 'config field g_act must be one of leaky_relu, relu'),
    (('--lr_decay', '2'), 'config field lr_decay must be in [0, 1]'),
    (('--steps',), '--steps needs a value'),
    (('stray',), "unexpected argument 'stray'")])
def test_bad_arguments_exit_2(capsys, tmp_path, args, names):
    preset = [] if '--preset' in args else ['--preset', 'quick']
    code, out = cli(capsys, gpm_train, *preset, '--out', tmp_path/'x', '--quiet', *args)
    assert code == 2 and names in out and 'Traceback' not in out, out
    assert not (tmp_path/'x').exists()

@pytest.mark.parametrize('method, net', [('discr_flow', 'discriminator'), ('gan', 'generator')])
def test_unsupported_image_size_exits_2(capsys, tmp_path, method, net):
    np.save(tmp_path/'img16.npy', np.random.default_rng(0).random((50, 1, 16, 16), np.float32))
    code, out = cli(capsys, gpm_train, '--method', method, '--data', tmp_path/'img16.npy', '--preset', 'quick',
                    '--out', tmp_path/'x', '--quiet')
    assert code == 2 and f'no {net} for samples of shape (1, 16, 16)' in out and '8, 28, 32, 64' in out, out
    assert 'Traceback' not in out and not (tmp_path/'x').exists()

@pytest.mark.parametrize('content, problem', [(b'garbage', 'cannot read'), (np.zeros((0, 2)), 'empty'),
                                              (np.array([[0., np.nan], [1., 2.]]), 'NaN'), (np.zeros(5), 'shape'),
                                              (np.zeros((4, 8, 8)), 'add a channel axis'), (np.ones((500, 2)), 'a single point repeated')])
def test_bad_data_files_exit_2_and_name_the_file(capsys, tmp_path, content, problem):
    f = tmp_path/'bad.npy'
    if isinstance(content, bytes): f.write_bytes(content)
    else: np.save(f, content)
    code, out = cli(capsys, gpm_train, '--data', f, '--preset', 'quick', '--out', tmp_path/'x', '--quiet')
    assert code == 2 and 'bad.npy' in out and problem.lower() in out.lower() and 'Traceback' not in out, out
    code, out = cli(capsys, gpm_train, '--data', tmp_path/'missing.npy', '--preset', 'quick', '--out', tmp_path/'x')
    assert code == 2 and 'no such file' in out and 'missing.npy' in out, out

def test_console_scripts_help_and_errors(bin_dir, tmp_path):
    code, out = sh(bin_dir, 'gpm_train', '--help')
    assert code == 0, out
    for s in ['discr_flow', 'gan', 'free particles', 'generator', 'quick, cpu, gpu', 'digits',
              'K=56', 'eta=20.0', 't_emb=128', 'g_lr=0.0002', 'latent=128', 'n_critic=1', 'steps=4000', 'lr_decay=0.0',
              'seed=0', 'loss=', 'gp=0.0']:
        assert s in out, s
    code, out = sh(bin_dir, 'gpm_train', '--method', 'gan9', '--out', tmp_path/'x')
    assert code == 2 and 'choose one of discr_flow, gan' in out and 'Traceback' not in out, out
    code, out = sh(bin_dir, 'gpm_train', '--data', tmp_path/'none.npy', '--out', tmp_path/'x')
    assert code == 2 and 'none.npy' in out and 'Traceback' not in out, out
    assert not (tmp_path/'x').exists()

# ---------------------------------------------------------------- user arrays, digits, images

def test_standardize():
    seed_everything(0)
    v = standardize(ArrayData(torch.randn(2000, 3) * torch.tensor([1., 10., 100.]) + 5))
    x = v.sample(4000, 'cpu')
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(3), atol=0.1, rtol=0)
    im = standardize(ArrayData(torch.rand(50, 1, 8, 8) * 255))
    y = im.sample(200, 'cpu')
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6 and y.min() < -0.9 and y.max() > 0.9

def test_user_array_end_to_end(bin_dir, tmp_path):
    "Standardised for training, mapped back for the samples, through both console scripts."
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-20, 1, (500, 2)), rng.normal(20, 1, (500, 2))]).astype(np.float32)
    np.save(tmp_path/'two.npy', x)
    code, out = sh(bin_dir, 'gpm_train', '--data', tmp_path/'two.npy', '--preset', 'quick', '--steps', '40',
                   '--out', tmp_path/'r', '--n_samples', '400')
    assert code == 0, out
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    np.testing.assert_allclose(cfg['standardize']['mean'], x.mean(0), atol=1e-3)
    np.testing.assert_allclose(cfg['standardize']['scale'], x.std(0, ddof=1), rtol=1e-3)
    s = np.load(tmp_path/'r'/'samples.npy')
    assert s.shape == (400, 2) and 5 < np.abs(s).mean() < 40            # samples at the data's scale
    code, out = sh(bin_dir, 'gpm_sample', tmp_path/'r', '--n', '50', '--out', tmp_path/'s.npy')
    assert code == 0 and 'wrote (50, 2) samples' in out, out
    s2 = np.load(tmp_path/'s.npy')
    assert s2.shape == (50, 2) and 5 < np.abs(s2).mean() < 40

def test_discr_flow_data_scale_is_resolved_recorded_and_undone(tmp_path):
    "--data_scale 0: the factor to the tuned spread is derived once, recorded; the flow trains on scaled data and hands samples back unscaled."
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-20, 1, (500, 2)), rng.normal(20, 1, (500, 2))]).astype(np.float32)
    np.save(tmp_path/'two.npy', x)
    train(**{**quick(steps=20, n_samples=400), 'data': str(tmp_path/'two.npy')}, out=tmp_path/'r', data_scale=0.)
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    assert cfg['cfg']['data_scale'] == 2.2                                   # standardised data: spread 1 -> 2.2
    assert load_run(tmp_path/'r')[0].data_scale == 2.2
    model = make_run('discr_flow', str(tmp_path/'two.npy'), 'quick', device='cpu', data_scale=0.)['model']
    assert 1.9 < spread(model.data.sample(4000, 'cpu')) < 2.5                # what the flow trains on
    s = np.load(tmp_path/'r'/'samples.npy')
    assert s.shape == (400, 2) and 5 < np.abs(s).mean() < 40                 # back at the data's scale
    train(**{**quick(steps=30), 'data': str(tmp_path/'two.npy')}, out=tmp_path/'r', resume=True)
    assert json.loads((tmp_path/'r'/'config.json').read_text())['cfg']['data_scale'] == 2.2
    train(**quick(steps=5, n_samples=100), out=tmp_path/'g5', data_scale=0.)     # the 5 Gaussians: the tuned spread itself
    assert json.loads((tmp_path/'g5'/'config.json').read_text())['cfg']['data_scale'] == 1.

def test_default_run_folder_is_named_after_the_data(tmp_path, monkeypatch):
    "runs/METHOD_DATA with the data's own name: two arrays of one archive (FILE.npz:KEY) get two folders."
    monkeypatch.chdir(tmp_path)
    xs = np.random.default_rng(0).normal(size=(200, 2)).astype('float32')
    np.savez(tmp_path/'two.npz', a=xs, b=2 * xs)
    for key in 'ab': train(**{**quick(steps=3), 'data': f'two.npz:{key}'})
    train(**quick(steps=3))
    assert sorted(p.name for p in (tmp_path/'runs').iterdir()) == ['discr_flow_gaussians5', 'discr_flow_two-a', 'discr_flow_two-b']

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_one_dimensional_user_data(tmp_path, method):
    "Every method trains on data (n, 1): its generator or denoiser keeps the column a discriminator's scalar output drops."
    np.save(tmp_path/'one.npy', np.random.default_rng(0).normal(3, 2, (400, 1)).astype(np.float32))
    m = train(**{**quick(method, steps=5, n_samples=100), 'data': str(tmp_path/'one.npy')}, out=tmp_path/'r')
    s = np.load(tmp_path/'r'/'samples.npy')
    assert s.shape == (100, 1) and np.isfinite(s).all() and 'high_quality' not in m and -3 < s.mean() < 9
    assert sample_run(tmp_path/'r', 7).shape == (7, 1)

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_digits(capsys, tmp_path, method):
    out = tmp_path/'r'
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', 'digits', '--preset', 'quick', '--steps', 10,
                    '--out', out, '--n_samples', 64, '--quiet')
    assert code == 0, msg
    s = np.load(out/'samples.npy')
    assert s.shape == (64, 1, 8, 8) and np.isfinite(s).all() and s.std() > 0
    if method == 'gan': assert s.min() >= -1 and s.max() <= 1           # tanh: inside the data's range [-1, 1]
    else: assert -1 < s.mean() < 1 and np.abs(s).max() < 10             # on the data's scale after 10 steps
    assert (out/'samples.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['shape'] == [1, 8, 8] and cfg['standardize'] is None and json.loads(msg.split('warning: ')[0])['step'] == 10   # stdout: the metrics; stderr may warn (10 steps)
    m = json.loads((out/'metrics.json').read_text())                    # the digits yardstick, beside its floors
    assert m['fd'] > m['fd_floor'] > 0 and 0 <= m['precision'] <= 1 and 0 < m['recall_floor'] <= 1
    assert 1 <= m['classes_covered'] <= 10 and len(m['class_hist']) == 10 and abs(sum(m['class_hist']) - 1) < 1e-6

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_image_array_in_0_255(capsys, tmp_path, method):
    "Images in [0, 255] train on [-1, 1] and come back in [0, 255]."
    x = ((load_digits(device='cpu')[0][:400] + 1) * 127.5).numpy()
    assert x.min() == 0 and x.max() == 255
    np.save(tmp_path/'img.npy', x)
    out = tmp_path/'r'
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', tmp_path/'img.npy', '--preset', 'quick',
                    '--steps', 5, '--out', out, '--n_samples', 32, '--quiet')
    assert code == 0, msg
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['standardize'] == dict(mean=127.5, scale=127.5) and cfg['shape'] == [1, 8, 8]
    s = np.load(out/'samples.npy')
    assert s.shape == (32, 1, 8, 8) and 0 <= s.mean() <= 255 and s.std() > 1
    if method == 'gan': assert s.min() >= -1e-3 and s.max() <= 255 + 1e-3
    t = sample_run(out, 20)
    assert t.shape == (20, 1, 8, 8) and 0 <= t.mean().item() <= 255

# ---------------------------------------------------------------- sampling a run, benchmarking

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_sample_run(tmp_path, capsys, method):
    out = tmp_path/'r'
    train(**quick(method, steps=5), out=out)
    assert sample_run(out, 11).shape == (11, 2)
    for seed in (1, 1, 2):
        code, msg = cli(capsys, gpm_sample, out, '--n', 30, '--seed', seed, '--out', tmp_path/f's{seed}.npy')
        assert code == 0 and 'wrote (30, 2) samples' in msg, msg
        if seed == 1: first = np.load(tmp_path/'s1.npy')
    assert np.array_equal(first, np.load(tmp_path/'s1.npy')) and not np.array_equal(first, np.load(tmp_path/'s2.npy'))
    if METHODS[method].pusher == 'free particles':
        assert sample_run(out, 11, steps=4).shape == (11, 2)
    else:
        with pytest.raises(ValueError, match='steps'): sample_run(out, 11, steps=4)
        code, msg = cli(capsys, gpm_sample, out, '--steps', 3, '--out', tmp_path/'x.npy')
        assert code == 2 and 'steps' in msg and 'Traceback' not in msg, msg
    with pytest.raises(ValueError, match='--n must be a positive integer, got 0'): sample_run(out, 0)
    with pytest.raises(ValueError, match='no checkpoint'): sample_run(tmp_path/'none', 3)
    code, msg = cli(capsys, gpm_sample, tmp_path/'none', '--out', tmp_path/'x.npy')
    assert code == 2 and 'no checkpoint' in msg and 'Traceback' not in msg, msg

def test_gpm_sample_bad_arguments_exit_2(tmp_path, capsys):
    "A seed < 0, an --out that is not .npy (numpy would append .npy) or in no folder: a message, exit status 2, nothing written."
    out = tmp_path/'r'
    train(**quick(steps=5), out=out)
    for args, msg in [(('--seed', -1), 'seed must be a non-negative integer, got -1'),
                      (('--out', tmp_path/'s.txt'), f"give a .npy file name (numpy would write {tmp_path/'s.txt'}.npy)"),
                      (('--out', tmp_path/'no'/'s.npy'), f"there is no folder {tmp_path/'no'}")]:
        code, got = cli(capsys, gpm_sample, out, *args)
        assert code == 2 and msg in got and 'Traceback' not in got, got
    assert sorted(p.name for p in tmp_path.iterdir()) == ['r']

def test_non_finite_samples_are_refused(tmp_path, capsys):
    "A checkpoint whose weights hold a NaN samples NaN: sample_run and gpm_sample say so and write nothing."
    out = tmp_path/'r'
    train(**quick(steps=5), out=out)
    ckpt = torch.load(out/'checkpoint.pt', map_location='cpu', weights_only=True)
    w = next(v for k, v in ckpt['model'].items() if v.is_floating_point() and v.dim() == 2); w[0, 0] = float('nan')
    torch.save(ckpt, out/'checkpoint.pt')
    with pytest.raises(ValueError, match=r'samples of .* are NaN or infinite \(last checkpoint\): try --checkpoint best'): sample_run(out, 50)
    code, msg = cli(capsys, gpm_sample, out, '--n', 50, '--out', tmp_path/'s.npy')
    assert code == 2 and 'NaN or infinite' in msg and 'Traceback' not in msg and not (tmp_path/'s.npy').exists(), msg

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_checkpoint_round_trip_samples_identically(tmp_path, monkeypatch, method):
    "sample_run rebuilds the trained model from the run folder: same weights, same samples under the same seed."
    import gpm_nb.cli as cli_mod
    out = tmp_path/'r'
    train(**quick(method, steps=5), out=out)
    trained = make_run(method, 'gaussians5', 'quick', device='cpu', steps=5)['model']
    load_checkpoint(out/'checkpoint.pt', trained, restore_rng=False)
    rebuilt, draw = [], cli_mod.draw
    monkeypatch.setattr(cli_mod, 'draw', lambda model, *a: rebuilt.append(model) or draw(model, *a))
    x = sample_run(out, 25, device='cpu')
    m, = rebuilt
    assert same_state(m.state_dict(), trained.state_dict()) and same_state(m.state_dict(), weights(out))
    assert not m.training and x.shape == (25, 2)
    seed_everything(7); a = trained.eval().sample(25)
    seed_everything(7); b = m.sample(25)
    assert torch.equal(a, b)

def test_resume_from_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    out = tmp_path/'r'; train(**quick(steps=5), out=out)
    (out/'checkpoint.pt').write_bytes(b'\x00' * 64)
    with pytest.raises(ValueError, match='corrupt or truncated'): train(**quick(steps=10), out=out, resume=True)
    assert (out/'checkpoint.pt').read_bytes() == b'\x00' * 64          # nothing overwritten

def test_resume_with_a_corrupt_config_is_refused_and_kept(tmp_path):
    "A run folder whose config.json is not JSON: resuming says which file, and neither it nor the checkpoint is overwritten."
    out = tmp_path/'r'; train(**quick(steps=5), out=out)
    ck = (out/'checkpoint.pt').read_bytes(); (out/'config.json').write_text('{"method": "discr_')
    with pytest.raises(ValueError, match=r'config.json: no readable run configuration'): train(out=out, resume=True, quiet=True)
    assert (out/'config.json').read_text() == '{"method": "discr_' and (out/'checkpoint.pt').read_bytes() == ck

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_bench_reports_figures(method):
    b = bench(method, preset='quick', iters=2, n_samples=500, device='cpu')
    assert b['method'] == method and b['preset'] == 'quick' and b['device'] == 'cpu'
    assert b['train_it_per_s'] > 0 and b['peak_mem_mb'] > 0 and b['n_samples'] == 500 and b['threads'] >= 1
    assert b['sample_seconds'] >= 0 and (METHODS[method].pusher == 'generator' or b['sample_seconds'] > 0)   # a generator may take < 0.5 ms (rounds to 0)

def test_bench_times_score_gan_after_its_teacher_steps(monkeypatch):
    "ScoreGAN's first teacher_steps fit only the data denoiser: timed apart, then skipped, so train_it_per_s times generator pushes."
    from gpm_nb.score_models import ScoreGenerator
    pushes, push = [], ScoreGenerator.push
    monkeypatch.setattr(ScoreGenerator, 'push', lambda self, n: pushes.append(int(self.it)) or push(self, n))
    b = bench('score_gan', preset='quick', iters=3, n_samples=100, device='cpu')   # the quick preset: 100 teacher steps
    assert b['teacher_it_per_s'] > 0 and b['train_it_per_s'] > 0
    assert pushes == [101, 102, 103], pushes   # the last teacher step (100) pushes nothing; then the 3 timed iterations
    assert 'teacher_it_per_s' not in bench('gan', preset='quick', iters=1, n_samples=10, device='cpu')

def test_gpm_bench_cli(capsys, monkeypatch):
    monkeypatch.setattr(os, 'getloadavg', lambda: (0., 0., 0.))   # an idle machine: stdout + stderr is the JSON alone
    code, out = cli(capsys, gpm_bench, '--method', 'gan', '--preset', 'quick', '--iters', 1, '--n_samples', 10)
    assert code == 0 and json.loads(out)['n_samples'] == 10, out
    code, out = cli(capsys, gpm_bench, '--method', 'gan9', '--preset', 'quick')
    assert code == 2 and 'choose one of discr_flow, gan' in out and 'Traceback' not in out, out
    for args, msg in [(('--iters', 0), '--iters must be a positive integer, got 0'), (('--profile', -1), '--profile must be a non-negative integer, got -1'),
                      (('--compare', '--iters', 0), '--iters must be a positive integer'), (('--data', 'nothere.npy'), "no such file: 'nothere.npy'")]:
        code, out = cli(capsys, gpm_bench, '--preset', 'quick', *args)
        assert code == 2 and msg in out and 'Traceback' not in out, out

def test_bench_compare_times_the_three_variants():
    b = bench_compare(preset='quick', iters=2, n_samples=64, device='cpu')
    assert (b['method'], b['K'], b['batch_size'], b['n_samples']) == ('discr_flow', run_configs('discr_flow', 'quick')[1].K, 128, 64)
    for what in ('train', 'sample'):
        assert all(b[f'{what}_s_{k}'] > 0 for k in ('plain', 'ours', 'ours_bf16'))
        for k in ('ours', 'ours_bf16'): assert abs(b[f'{what}_speedup_{k}'] - b[f'{what}_s_plain'] / b[f'{what}_s_{k}']) < 0.02

def test_cpu_contention_warns_when_every_cpu_is_busy(capsys, monkeypatch):
    assert cpu_contention(load=0.5, cores=2) is None and cpu_contention(load=7.9, cores=8) is None
    assert 'load average 2.0 on 2 CPUs' in cpu_contention(load=2., cores=2) and 'run it alone' in cpu_contention(load=2., cores=2)
    monkeypatch.setattr(os, 'getloadavg', lambda: (64., 64., 64.))
    code = gpm_bench(['--method', 'gan', '--preset', 'quick', '--iters', '1', '--n_samples', '10']); cap = capsys.readouterr()
    assert code is None and json.loads(cap.out)['n_samples'] == 10, cap.out                      # the figures still print, on stdout
    assert cap.err.startswith('gpm_bench: warning: the machine is busy (load average 64.0') and 'run it alone' in cap.err, cap.err

def test_gpm_bench_compare_cli(capsys, monkeypatch):
    monkeypatch.setattr(os, 'getloadavg', lambda: (0., 0., 0.))
    code, out = cli(capsys, gpm_bench, '--compare', '--preset', 'quick', '--iters', 1, '--n_samples', 16, '--K', 4)
    assert code == 0 and json.loads(out)['K'] == 4 and 'train_speedup_ours_bf16' in json.loads(out), out
    code, out = cli(capsys, gpm_bench, '--compare', '--method', 'gan', '--preset', 'quick')
    assert code == 2 and '--compare times Discriminator Flow' in out and 'Traceback' not in out, out

def test_method_specific_presets():
    "A method may have presets of its own (Discriminator Flow's GPM image config); others refuse them by name."
    from gpm_nb.cli import preset_names
    assert preset_names('discr_flow')[:3] == ['quick', 'cpu', 'gpu'] and 'mnist' in preset_names('discr_flow')
    run, cfg = run_configs('discr_flow', 'mnist')
    assert (cfg.loss, cfg.K, cfg.eta, cfg.gp, cfg.gp_center, run.steps) == ('ipm', 64, 2., 0.04, 0., 200_000)
    with pytest.raises(ValueError, match="unknown preset 'mnist' for sd_flow: choose one of quick, cpu, gpu"): run_configs('sd_flow', 'mnist')

def test_discr_flow_digits_preset(capsys, tmp_path):
    "Discriminator Flow on images takes its `digits` preset when none is named; it samples with its averaged discriminator, which the checkpoint keeps."
    out = tmp_path/'r'
    code, msg = cli(capsys, gpm_train, '--method', 'discr_flow', '--data', 'digits', '--steps', 4,
                    '--eval_every', 2, '--n_eval', 64, '--n_samples', 64, '--out', out, '--quiet')
    assert code == 0, msg
    cfg = json.loads((out/'config.json').read_text())
    cpu = run_configs('discr_flow', 'cpu')[1]
    assert cfg['preset'] == 'digits' and cfg['cfg']['ema'] > 0 and cfg['cfg']['lr'] > cpu.lr and cfg['cfg']['width'] > cpu.width
    assert np.load(out/'samples.npy').shape == (64, 1, 8, 8)
    state = torch.load(out/'checkpoint.pt', weights_only=False)['model']
    assert any(k.startswith('field_ema.avg.net.blocks') for k in state)       # the conv discriminator's average is saved
    code, msg = cli(capsys, gpm_train, '--method', 'sd_flow', '--data', 'digits', '--preset', 'digits', '--out', tmp_path/'g')
    assert code == 2 and "unknown preset 'digits' for sd_flow" in msg, msg

def test_default_preset_follows_the_data():
    "A run that names no preset: cpu on vectors, and on images too for a method without an image preset; a named one is kept."
    for method, data, want in [('discr_flow', 'gaussians5', 'cpu'), ('discr_flow', 'digits', 'digits'), ('gan', 'moons', 'cpu'),
                               ('gan', 'digits', 'digits'), ('edm', 'gaussians5', 'cpu'), ('edm', 'digits', 'digits'),
                               ('diffflow', 'gaussians5', 'cpu'), ('diffflow', 'digits', 'digits'), ('score_gan', 'digits', 'digits'),
                               ('sd_flow', 'digits', 'cpu')]:
        r = make_run(method, data, None, device='cpu')
        assert r['config']['preset'] == want and r['run'] == run_configs(method, want)[0], (method, data, r['config']['preset'])
    assert make_run('discr_flow', 'digits', 'quick', device='cpu')['config']['preset'] == 'quick'
    with pytest.raises(ValueError, match="unknown preset 'fast' for discr_flow"): make_run('discr_flow', 'no_such.npy', 'fast')   # before the data

# ---------------------------------------------------------------- folders of images

def _png_folder(root, sizes, mode='L'):
    from PIL import Image
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        a = rng.integers(0, 256, (s, s) if mode == 'L' else (s, s, 3), dtype=np.uint8)
        Image.fromarray(a, mode).save(root/f'img{i:03d}.png')
    return root

@pytest.mark.parametrize('method', METHOD_NAMES)
def test_train_on_a_folder_of_images(capsys, tmp_path, method):
    "A folder of PNGs trains (standardised onto [-1, 1], samples back in 0..255); mixed sizes need --image_size."
    folder = _png_folder(tmp_path/'imgs', [8] * 12)
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', folder, '--preset', 'quick', '--steps', 5,
                    '--out', tmp_path/'r', '--n_samples', 16, '--quiet')
    assert code == 0, msg
    s = np.load(tmp_path/'r'/'samples.npy')
    assert s.shape == (16, 1, 8, 8) and np.isfinite(s).all()
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    assert cfg['standardize'] == {'mean': 127.5, 'scale': 127.5} or cfg['standardize']['scale'] > 100
    mixed = _png_folder(tmp_path/'mixed', [8] * 5 + [12] * 3)
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', mixed, '--preset', 'quick', '--out', tmp_path/'m')
    assert code == 2 and 'img005.png' in msg and 'size' in msg, msg
    code, msg = cli(capsys, gpm_train, '--method', method, '--data', mixed, '--preset', 'quick', '--steps', 3,
                    '--image_size', 8, '--out', tmp_path/'m2', '--quiet', '--n_samples', 8)
    assert code == 0, msg
    assert json.loads((tmp_path/'m2'/'config.json').read_text())['image_size'] == 8

def test_bad_image_folders_say_which_file(capsys, tmp_path):
    (tmp_path/'empty').mkdir()
    code, msg = cli(capsys, gpm_train, '--data', tmp_path/'empty', '--preset', 'quick', '--out', tmp_path/'r')
    assert code == 2 and 'empty' in msg and '.png' in msg, msg
    folder = _png_folder(tmp_path/'bad', [8] * 3)
    (folder/'broken.png').write_bytes(b'not a png at all')
    code, msg = cli(capsys, gpm_train, '--data', folder, '--preset', 'quick', '--out', tmp_path/'r')
    assert code == 2 and 'broken.png' in msg, msg
    code, msg = cli(capsys, gpm_train, '--data', 'mnist', '--preset', 'quick', '--out', tmp_path/'r')
    assert code == 2 and 'MNIST' in msg and 'GPM_DATA' in msg, msg

def test_peak_memory_is_each_benchmarks_own():
    "A benchmark's peak memory is measured from its own start, not the process's past (Linux: VmHWM reset through clear_refs)."
    from gpm_nb.cli import _peak_mem_mb, _reset_peak_mem
    big = torch.ones(2**27); del big                                    # 512 MB, freed: only the peak remembers it
    before = _peak_mem_mb('cpu')
    assert before > 512
    if not os.path.exists('/proc/self/clear_refs'): pytest.skip('no /proc/self/clear_refs: the peak is the process lifetime one')
    _reset_peak_mem('cpu')
    assert _peak_mem_mb('cpu') < before - 256
    big = torch.ones(2**27); del big
    assert bench('gan', preset='quick', iters=1, n_samples=16, device='cpu')['peak_mem_mb'] < before - 256

def test_gpm_bench_child_process_does_not_inherit_the_parents_peak():
    "A `gpm_bench` started from a process with a large resident size reports its own peak (ru_maxrss would report the parent's)."
    big = torch.ones(2**28)                                             # 1 GB resident in this process while the child starts
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'gpm_bench'), '--method', 'gan', '--preset', 'quick',
                        '--iters', '1', '--n_samples', '16'], capture_output=True, text=True)
    del big
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['peak_mem_mb'] < 900


def test_gpm_sample_inception_fid(capsys, tmp_path):
    "--inception_fid on an image run prints the samples' FID against the run's data beside its real-vs-real floor; no weights, or a run on vectors, exit 2 before sampling."
    from gpm_nb.yardstick import INCEPTION_URL, stand_in_inception_weights
    w = stand_in_inception_weights(tmp_path/'w.pth')
    run = tmp_path/'img'
    code, msg = cli(capsys, gpm_train, '--method', 'gan', '--data', 'digits', '--preset', 'quick', '--steps', 5, '--n_samples', 32, '--out', run, '--quiet')
    assert code == 0, msg
    code, msg = cli(capsys, gpm_sample, run, '--n', 6, '--out', tmp_path/'s.npy', '--inception_fid', '--inception_weights', w)
    assert code == 0, msg
    fid, floor = map(float, re.search(r"Inception FID against 6 images of the run's data: (\S+) \(real-vs-real floor, 6 other images: (\S+)\)", msg).groups())
    assert fid > floor > 0 and np.load(tmp_path/'s.npy').shape == (6, 1, 8, 8)   # 5 iterations of a GAN: far from the digits
    code, msg = cli(capsys, gpm_sample, run, '--out', tmp_path/'t.npy', '--inception_fid', '--inception_weights', tmp_path/'none.pth')
    assert code == 2 and INCEPTION_URL in msg and not (tmp_path/'t.npy').exists(), msg
    vec = tmp_path/'vec'
    code, msg = cli(capsys, gpm_train, '--method', 'gan', '--preset', 'quick', '--steps', 5, '--n_samples', 32, '--out', vec, '--quiet')
    assert code == 0, msg
    code, msg = cli(capsys, gpm_sample, vec, '--out', tmp_path/'u.npy', '--inception_fid', '--inception_weights', w)
    assert code == 2 and 'is for images' in msg and not (tmp_path/'u.npy').exists(), msg
