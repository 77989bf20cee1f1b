"gpm_nb.report: a report's runs through the CLI (and their reuse), the verdict against the 2-D bar, and the digits table."
import json, os, subprocess
from pathlib import Path
from dataclasses import replace
import pytest
from gpm_nb.report import (run_cli, run_key, preset_repr, same_run, extra_tag, steps_args, check_runs, verdict, toy_table, toy_scatter, run_label, digits_table, report_toys,
                           clusters, clusters_file, df_record_run, digits_run, DF_RECORD_SETTING, gpm_train_process)
from gpm_nb.gpm import METHODS

def _run(**kw):
    return {**dict(method='discr_flow', data='gaussians5', preset='cpu', status=0, wall_s=90, err='', energy=0.004, energy_floor=0.002), **kw}

def test_verdict_passes_and_names_each_miss():
    assert verdict(_run()) == (True, '')
    assert verdict(_run(energy=0.025, energy_floor=0.001)) == (True, '')                  # under the absolute 0.03
    ok, why = verdict(_run(energy=0.05, energy_floor=0.008))                                # over max(5 x floor, 0.03)
    assert not ok and why == 'energy 0.05 > 0.04'
    ok, why = verdict(_run(high_quality=0.85, modes_covered=7, n_modes=8))
    assert not ok and why == '85% within 3 std; 7/8 modes'
    assert verdict(_run(high_quality=0.95, modes_covered=8, n_modes=8)) == (True, '')

def test_verdict_of_a_failed_run_gives_its_reason():
    r = dict(method='gan', data='moons', status=3, err='Traceback ... boom', diverged='particles left the data at step 900')
    assert verdict(r) == (False, 'exit 3: particles left the data at step 900')
    assert verdict(dict(r, diverged=None)) == (False, 'exit 3: Traceback ... boom')

def test_extra_tag_names_a_run_after_its_extra_arguments():
    assert extra_tag('--gp', '1') == 'gp-1' and extra_tag('--prior_std', 2.2) == 'prior_std-2.2' and extra_tag() == ''

def test_steps_args_gives_a_method_its_own_steps_or_none():
    steps = {'edm': 1500}
    assert steps_args(steps, 'edm') == ['--steps', '1500'] and steps_args(steps, 'gan') == []
    assert run_key('cpu', 'edm', 'digits', *steps_args(steps, 'edm')) != run_key('cpu', 'edm', 'digits')   # another command: another run

def test_digits_run_trains_on_digits_with_its_steps_and_tags_another_preset(monkeypatch):
    import gpm_nb.report as report
    calls = []
    monkeypatch.setattr(report, 'run_cli', lambda *a, **kw: calls.append((a, kw)) or ({}, None))
    digits_run('runs', 'cpu', 'sd_flow', '--seed', '1', steps={'sd_flow': 3000, 'edm': 10})
    digits_run('runs', 'digits', 'gan', report_preset='cpu')
    digits_run('runs', 'cpu', 'gan', report_preset='cpu')
    assert calls == [(('runs', 'cpu', 'sd_flow', 'digits', '--steps', '3000', '--seed', '1'), {'tag': ''}),   # its steps, then the extra arguments
                     (('runs', 'digits', 'gan', 'digits'), {'tag': 'preset-digits'}),   # not the report's preset: a folder of its own
                     (('runs', 'cpu', 'gan', 'digits'), {'tag': ''})]

def test_run_label_and_digits_table():
    assert run_label(_run()) == 'discr_flow (cpu)' and run_label({'method': 'gan'}) == 'gan'   # reports written before the preset was kept
    figs = dict(fd=10.5, fd_floor=1.65, precision=0.5, precision_floor=0.9, recall=0.92, recall_floor=0.91, classes_covered=10)
    lines = digits_table([(_run(**figs, preset='digits'), None), (dict(_run(**figs), method='gan'), None)]).splitlines()
    assert len(lines) == 3 and lines[0].startswith('method (preset)')
    assert lines[1].startswith('discr_flow (digits)') and ' 6.4 ' in lines[1] and '10/10' in lines[1]   # FD / floor = 6.4
    assert lines[2].startswith('gan (cpu)')

def test_run_cli_trains_once_then_reuses(tmp_path):
    r, out = run_cli(tmp_path, 'quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64', tag='t')
    assert out == tmp_path/'discr_flow-gaussians5-t' and r['status'] == 0, r['err']
    assert (r['method'], r['data'], r['preset']) == ('discr_flow', 'gaussians5', 'quick') and r['energy'] > 0
    assert json.loads((out/'report.json').read_text()) == r and (out/'samples.npy').exists()
    (out/'samples.npy').unlink()                                                            # a second call trains nothing
    assert run_cli(tmp_path, 'quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64', tag='t') == (r, out)
    assert not (out/'samples.npy').exists()
    assert r['key'] == run_key('quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64')
    bad, _ = run_cli(tmp_path, 'quick', 'no_such_method', 'gaussians5')
    assert bad['status'] == 2 and 'no_such_method' in bad['err'] and not verdict(bad)[0]

def test_df_record_run_pins_the_records_setting_under_the_extra_arguments(tmp_path):
    "35-39's runs: the setting they were measured under on the command line, `extra` after it (the last flag wins), a folder of their own."
    r, out = df_record_run(tmp_path, 'quick', 'gaussians5', '--gp', '0.3', '--steps', '2', '--n_samples', '64')
    assert out == tmp_path/'discr_flow-gaussians5-record-gp-0.3-steps-2-n_samples-64' and r['status'] == 0, r['err']
    assert r['key']['args'][3:] == ['--prior', 'normal', '--gp', '0.1', '--grid_anneal', '1', '--x_emb', '0',
                                    '--gp', '0.3', '--steps', '2', '--n_samples', '64']
    cfg = json.loads((out/'config.json').read_text())['cfg']
    assert (cfg['prior'], cfg['gp'], cfg['grid_anneal'], cfg['x_emb']) == ('normal', 0.3, 1., 0)
    assert set(DF_RECORD_SETTING) == {'prior', 'gp', 'grid_anneal', 'x_emb'}
    _, out2 = df_record_run(tmp_path, 'quick', 'gaussians5', '--steps', '2', '--n_samples', '64', tag='')
    assert out2 == tmp_path/'discr_flow-gaussians5-record'

def test_run_cli_trains_again_when_the_command_or_the_preset_changed(tmp_path, monkeypatch):
    args = ('quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64')
    r, out = run_cli(tmp_path, *args, tag='t')
    assert r['status'] == 0 and r['step'] == 3, r['err']
    r2, out2 = run_cli(tmp_path, *args[:4], '4', *args[5:], tag='t')                      # another command: --steps 4
    assert out2 == out and r2['status'] == 0 and r2['step'] == 4 and r2['key'] != r['key']
    m = METHODS['discr_flow']
    run, cfg = m.presets['quick']
    monkeypatch.setitem(m.presets, 'quick', (run, replace(cfg, eta=cfg.eta / 2)))           # the preset's definition changed
    (out/'samples.npy').unlink()
    r3, _ = run_cli(tmp_path, *args[:4], '4', *args[5:], tag='t')
    assert r3['key']['preset_def'] != r2['key']['preset_def'] and (out/'samples.npy').exists()   # trained again

def test_run_cli_reuses_a_run_made_before_a_config_field_existed(tmp_path, monkeypatch):
    "A run cached before a field was added (its key lacks the field) is reused while the preset leaves the field at its default."
    args = ('quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64')
    r, out = run_cli(tmp_path, *args, tag='t')
    assert r['status'] == 0 and 'prior_std=1.0' in r['key']['preset_def'], r['err']
    m = METHODS['discr_flow']
    old = preset_repr(m.presets['quick'], ['prior_std'])                                 # the key before prior_std existed
    assert old != r['key']['preset_def'] and 'prior_std' not in old
    (out/'report.json').write_text(json.dumps(dict(r, key=dict(r['key'], preset_def=old))))
    (out/'samples.npy').unlink()
    r2, _ = run_cli(tmp_path, *args, tag='t')
    assert r2['key']['preset_def'] == old and not (out/'samples.npy').exists()             # reused: nothing trained
    run, cfg = m.presets['quick']
    monkeypatch.setitem(m.presets, 'quick', (run, replace(cfg, prior_std=2.)))              # the new field away from its default
    r3, _ = run_cli(tmp_path, *args, tag='t')
    assert r3['key']['preset_def'] == repr(m.presets['quick']) and (out/'samples.npy').exists()   # trained again
    assert not same_run(dict(r['key'], args=[*r['key']['args'], '--seed', '1']), r['key'])   # another command is never the same run

def test_run_cli_trains_again_after_a_run_stopped_before_its_report(tmp_path):
    "A report interrupted mid-run leaves a run folder without report.json: the next call trains it anew, not `gpm_train`'s refusal."
    out = tmp_path/'discr_flow-gaussians5-t'
    out.mkdir(); (out/'config.json').write_text('{}'); (out/'checkpoint.pt').write_bytes(b'half written')
    r, out2 = run_cli(tmp_path, 'quick', 'discr_flow', 'gaussians5', '--steps', '3', '--n_samples', '64', tag='t')
    assert out2 == out and r['status'] == 0 and r['step'] == 3, r['err']

def test_toy_table_prints_every_run_and_lists_the_misses():
    runs = [(_run(high_quality=0.97, modes_covered=5, n_modes=5), None),
            (_run(method='diffusion_gan', data='gaussians8', energy=0.05, energy_floor=0.001, high_quality=0.5, modes_covered=6, n_modes=8), None),
            (dict(method='gan', data='moons', status=1, wall_s=40, err='', diverged='training diverged at step 900'), None)]   # no metrics
    table, failed = toy_table(runs, 'cpu')
    lines = table.splitlines()
    assert lines[0] == 'preset cpu' and lines[1].split() == ['data', 'method', 'energy', 'floor', 'x', 'floor', 'hq', 'modes', 'time', 'verdict']
    assert len(lines) == 5 and lines[1].index('energy') == 18 + len('diffusion_gan') + 2 + 3      # the method column fits the longest name
    assert lines[2].split() == ['gaussians5', 'discr_flow', '0.0040', '0.0020', '2.0', '0.970', '5/5', '90s', 'pass']
    assert lines[3].endswith('FAIL: energy 0.05 > 0.03; 50% within 3 std; 6/8 modes') and ' 50.0 ' in lines[3]
    assert lines[4].endswith('FAIL: exit 1: training diverged at step 900') and ' nan ' in lines[4]
    assert failed == ['diffusion_gan on gaussians8: energy 0.05 > 0.03; 50% within 3 std; 6/8 modes',
                      'gan on moons: exit 1: training diverged at step 900']
    assert toy_table(runs[:1], 'quick')[1] == []

def test_toy_scatter_draws_each_run_in_its_cell(tmp_path, monkeypatch):
    import numpy as np, matplotlib; matplotlib.use('Agg')
    (tmp_path/'a').mkdir(); np.save(tmp_path/'a'/'samples.npy', np.random.default_rng(0).normal(size=(3000, 2)))
    runs = [(_run(method='gan', data='moons'), tmp_path/'a'), (_run(method='discr_flow', data='rings'), tmp_path/'missing')]
    axs = toy_scatter(runs, ['discr_flow', 'gan'], ['moons', 'rings']).axes
    assert len(axs) == 4 and axs[2].get_title() == 'gan\nmoons' and len(axs[2].collections[0].get_offsets()) == 2000
    assert axs[1].get_title() == 'discr_flow\nrings' and not axs[1].collections          # no samples: a titled, empty cell
    assert not axs[0].axison and axs[2].axison                                             # no run: blank

def test_run_cli_names_a_file_run_by_the_file(tmp_path):
    "A user's array: the run folder is named by the file's stem, the command keeps its path."
    import numpy as np
    np.save(tmp_path/'pts.npy', np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    r, out = run_cli(tmp_path/'runs', 'quick', 'discr_flow', str(tmp_path/'pts.npy'), '--steps', '2', '--n_samples', '64')
    assert out == tmp_path/'runs'/'discr_flow-pts' and r['status'] == 0 and r['data'] == str(tmp_path/'pts.npy'), r['err']
    assert np.load(out/'samples.npy').shape == (64, 3)

def test_check_runs_refuses_crashes_always_and_divergence_past_quick():
    ok, stopped, crashed, diverged = _run(), _run(status=1), _run(status=2, err='Traceback boom'), _run(diverged='at step 900')
    check_runs([(ok, None), (stopped, None)], 'quick'); check_runs([(ok, None), (diverged, None)], 'quick')
    check_runs([(ok, None)], 'cpu')
    with pytest.raises(AssertionError, match='boom'): check_runs([(ok, None), (crashed, None)], 'quick')
    with pytest.raises(AssertionError, match='a default diverged'): check_runs([(ok, None), (diverged, None)], 'cpu')
    with pytest.raises(AssertionError, match='a default diverged'): check_runs([(stopped, None)], 'cpu')

def test_report_toys_quick_is_one_of_each_kind_of_the_full_set():
    from gpm_nb.data import DATASETS
    full = report_toys('cpu')
    assert full == report_toys('gpu') and len(full) >= 10 and all(DATASETS[t]().shape == (2,) for t in full)
    assert 'digits' not in full and {'gaussians_uneven', 'swiss_roll', 'checkerboard'} <= set(full)
    quick = report_toys('quick')
    assert quick == ['gaussians5', 'gaussians8', 'moons'] and set(quick) < set(full)
    assert all(hasattr(DATASETS[t](), 'means') for t in quick[:2]) and not hasattr(DATASETS['moons'](), 'means')   # two mixtures, one shape

def test_clusters_file_is_written_once_in_a_new_folder(tmp_path):
    "The two-cluster array of the reports: (3000, d) points of N(+-3 * 1, 0.3^2 I) with equal weights, the same draw every time."
    import numpy as np, torch
    torch.manual_seed(5); before = torch.random.get_rng_state()
    f = clusters_file(tmp_path/'new'/'runs', 3)
    assert torch.equal(torch.random.get_rng_state(), before)                                          # the caller's random state untouched
    x = np.load(f); side = x.mean(1) > 0
    assert x.shape == (3000, 3) and 1400 < side.sum() < 1600 and np.abs(np.abs(x).mean(0) - 3).max() < 0.05
    assert abs(x[side].std(0).mean() - 0.3) < 0.02 and clusters(3).std == 0.3
    mtime = Path(f).stat().st_mtime_ns
    assert clusters_file(tmp_path/'new'/'runs', 3) == f and Path(f).stat().st_mtime_ns == mtime          # kept, not redrawn
    assert np.array_equal(np.load(clusters_file(tmp_path/'other', 3)), x)                              # the same draw (seed 0)

def test_the_sweep_record_holds_the_jobs_of_its_script():
    "Each line of nbs/df_sweep_h200.jsonl (read by 39_report_ring) is a job of tools/df_sweep.py's two rounds, the command the report names, with its metrics."
    import importlib.util
    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location('df_sweep', root/'tools/df_sweep.py'); sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    jobs = {(d, s, setting, tuple(args)) for r in (1, 2) for queue in sweep.jobs(r) for d, s, setting, args in queue}
    rows = [json.loads(l) for l in (root/'nbs/df_sweep_h200.jsonl').read_text().splitlines()]
    assert len(rows) == 54 and {r['device'] for r in rows} == {'cuda', 'cpu'}
    for r in rows:
        assert (r['data'], r['seed'], r['setting'], tuple(r['args'])) in jobs, r
        assert 'error' not in r and 0 < r['high_quality'] <= 1 and r['energy'] > 0 and r['energy_floor'] > 0, r
    cpu = METHODS['discr_flow'].presets['cpu'][1]                       # the setting the sweep chose is the preset's start and grid
    assert sweep.GP02 == ('--prior', 'moments', '--gp', '0.2', '--grid_anneal', '2') and (cpu.prior, cpu.grid_anneal) == ('moments', 2.)
    assert (cpu.x_emb, cpu.gp) == (64, 0.4)                              # with the input features that came later, a stronger penalty (30_report)

def test_a_forked_run_is_the_console_scripts_run(tmp_path, bin_dir):
    "gpm_train_process forks runs from a server that imported the package once: the run the console script makes, its exit status, its stderr, under the environment it is given."
    argv = ['--method', 'gan', '--data', 'gaussians5', '--preset', 'quick', '--steps', '20', '--eval_every', '10', '--quiet']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    status, err = gpm_train_process([*argv, '--out', tmp_path/'forked'], env)
    script = subprocess.run([str(bin_dir/'gpm_train'), *argv, '--out', str(tmp_path/'script')], capture_output=True, text=True, env=env)
    assert status == script.returncode == 0, err
    forked, by_script = (json.loads((tmp_path/run/'metrics.json').read_text()) for run in ('forked', 'script'))
    for m in (forked, by_script): m.pop('train_seconds')
    assert forked == by_script and forked['step'] == 20
    assert err == script.stderr   # the same warning (a 20-step run is far from the data), nothing else
    status, err = gpm_train_process(['--method', 'gan', '--loss', 'wgan', '--out', tmp_path/'bad'], env)
    assert status == 2 and "unknown GAN loss 'wgan'" in err and 'Traceback' not in err, err
    status, err = gpm_train_process(['--data', 'mnist', '--preset', 'quick', '--out', tmp_path/'bad'], {**env, 'GPM_DATA': str(tmp_path/'nowhere')})
    assert status == 2 and str(tmp_path/'nowhere') in err, err

def test_near_modes_reads_shares_and_spread_against_the_closed_form():
    "near_modes on the mixture's own samples gives Rayleigh's shares 1 - exp(-k^2/2) and a spread of 1; modes drawn half as wide give 0.5."
    import math, torch
    from gpm_nb.data import get_dataset
    from gpm_nb.report import near_modes
    p = get_dataset('gaussians5'); torch.manual_seed(0); x = p.sample(20_000, 'cpu')
    s = near_modes(x, 'gaussians5')
    for k in (1, 2, 3): assert abs(s[k] - (1 - math.exp(-k ** 2 / 2))) < 0.01, (k, s)
    assert abs(s['spread'] - 1) < 0.02 and s[20] == 1.
    k = torch.cdist(x, p.means).argmin(1)
    narrow = near_modes(p.means[k] + (x - p.means[k]) / 2, 'gaussians5')   # every sample half as far from its centre
    assert abs(narrow['spread'] - 0.5) < 0.01 and abs(narrow[1] - (1 - math.exp(-2))) < 0.01
    with pytest.raises(ValueError): near_modes(x, 'no_such_data')
