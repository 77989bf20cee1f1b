"Console scripts: the run-folder contract, resume, user arrays, and clear errors with exit status 2."
import json, os, subprocess
import numpy as np, pytest, torch
from gpm_nb.cli import train, sample_run, bench

def sh(bin_dir, *args):
    r = subprocess.run([str(bin_dir/args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    return r.returncode, r.stdout + r.stderr

def test_train_writes_the_run_folder(tmp_path):
    m = train(preset='quick', steps=15, out=tmp_path/'r', quiet=True, n_samples=300)
    assert sorted(p.name for p in (tmp_path/'r').iterdir()) == \
        ['checkpoint.pt', 'config.json', 'metrics.json', 'samples.npy', 'samples.png', 'train_log.jsonl']
    saved = json.loads((tmp_path/'r'/'metrics.json').read_text())
    assert saved['step'] == 15 and saved['n_samples'] == 300
    for k in ('energy', 'sliced_w2', 'mmd'): assert np.isfinite(saved[k]) and np.isfinite(saved[k + '_floor'])
    assert saved['energy_floor'] > 0 and saved['sliced_w2_floor'] > 0   # (the unbiased MMD floor may be < 0)
    assert 0 <= saved['high_quality'] <= 1 and saved['n_modes'] == 5
    assert np.load(tmp_path/'r'/'samples.npy').shape == (300, 2)
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    assert (cfg['method'], cfg['data'], cfg['preset'], cfg['cfg']['steps']) == ('discr_flow', 'gaussians5', 'quick', 15)

def test_resume_continues_and_guards_the_run(tmp_path):
    out = tmp_path/'r'
    train(preset='quick', steps=10, out=out, quiet=True)
    with pytest.raises(ValueError, match='already holds a run'): train(preset='quick', steps=10, out=out, quiet=True)
    with pytest.raises(ValueError, match='another config'): train(preset='cpu', steps=20, out=out, resume=True, quiet=True)
    assert train(preset='quick', steps=20, out=out, resume=True, quiet=True)['step'] == 20
    steps = [json.loads(l)['step'] for l in (out/'train_log.jsonl').read_text().splitlines()]
    assert steps[:2] == [10, 10] and steps[-1] == 20    # the log continues after the resume
    with pytest.raises(ValueError, match='no checkpoint'): train(preset='quick', out=tmp_path/'new', resume=True, quiet=True)

def test_sample_run(tmp_path):
    train(preset='quick', steps=5, out=tmp_path/'r', quiet=True)
    assert sample_run(tmp_path/'r', 11).shape == (11, 2)
    assert sample_run(tmp_path/'r', 11, steps=4).shape == (11, 2)
    with pytest.raises(ValueError, match='no checkpoint'): sample_run(tmp_path/'none', 3)
    with pytest.raises(ValueError, match='must be >= 1'): sample_run(tmp_path/'r', 0)

@pytest.mark.parametrize('args, names', [(('--method', 'gan9'), 'discr_flow'), (('--data', 'spiral'), 'gaussians5, gaussians8'),
                                         (('--preset', 'tpu'), 'quick, cpu, gpu')])
def test_unknown_names_exit_2(bin_dir, tmp_path, args, names):
    code, out = sh(bin_dir, 'gpm_train', *args, '--out', tmp_path/'x')
    assert code == 2 and names in out and 'Traceback' not in out, out
    assert not (tmp_path/'x').exists()

@pytest.mark.parametrize('content, problem', [(b'garbage', 'bad.npy'), (np.zeros((0, 2)), 'empty'),
                                              (np.array([[0., np.nan], [1., 2.]]), 'NaN'), (np.zeros(5), 'shape')])
def test_bad_data_files_exit_2_and_name_the_file(bin_dir, tmp_path, content, problem):
    f = tmp_path/'bad.npy'
    if isinstance(content, bytes): f.write_bytes(content)
    else: np.save(f, content)
    code, out = sh(bin_dir, 'gpm_train', '--data', f, '--out', tmp_path/'x')
    assert code == 2 and 'bad.npy' in out and problem.lower() in out.lower() and 'Traceback' not in out, out

def test_user_array_end_to_end(bin_dir, tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-20, 1, (500, 2)), rng.normal(20, 1, (500, 2))]).astype(np.float32)
    np.save(tmp_path/'two.npy', x)
    code, out = sh(bin_dir, 'gpm_train', '--data', tmp_path/'two.npy', '--preset', 'quick', '--steps', '40',
                   '--out', tmp_path/'r', '--n_samples', '400')
    assert code == 0, out
    s = np.load(tmp_path/'r'/'samples.npy')
    assert s.shape == (400, 2) and 5 < np.abs(s).mean() < 40            # samples at the data's scale
    code, out = sh(bin_dir, 'gpm_sample', tmp_path/'r', '--n', '50', '--out', tmp_path/'s.npy')
    assert code == 0 and np.load(tmp_path/'s.npy').shape == (50, 2), out

def test_bench_reports_figures():
    b = bench(preset='quick', iters=2, n_samples=500, device='cpu')
    assert b['train_it_per_s'] > 0 and b['sample_seconds'] > 0 and b['peak_mem_mb'] > 0 and b['n_samples'] == 500

def test_resume_from_corrupt_checkpoint_is_refused_and_kept(tmp_path):
    out = tmp_path/'r'; train(preset='quick', steps=5, out=out, quiet=True)
    (out/'checkpoint.pt').write_bytes(b'\x00' * 64)
    with pytest.raises(ValueError, match='corrupt or truncated'): train(preset='quick', steps=10, out=out, resume=True, quiet=True)
    assert (out/'checkpoint.pt').read_bytes() == b'\x00' * 64       # nothing overwritten

def test_one_dimensional_user_data(tmp_path):
    np.save(tmp_path/'one.npy', np.random.default_rng(0).normal(3, 2, (400, 1)).astype(np.float32))
    m = train(data=str(tmp_path/'one.npy'), preset='quick', steps=5, out=tmp_path/'r', quiet=True, n_samples=100)
    assert np.load(tmp_path/'r'/'samples.npy').shape == (100, 1) and 'high_quality' not in m
